"""Leave-one-family-out evaluation: for each family, train on all the others and predict it.

The honest figure for images from families the head never saw: a random split puts renders of
the same icon set (and crops of the same photo) on both sides, which flatters any model."""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pipeline.errors import PipelineError
from pipeline.train.fit import TrainConfig, split_of
from pipeline.train.metrics import by_size, bytes_metrics, compute_metrics
from pipeline.train.run import fit_heads, log_bytes


def leave_one_family_out(data: Any, cfg: TrainConfig, progress: bool = True) -> dict[str, Any]:
    """{"families": {F: metrics of F's images by the head trained without F}, "overall":
    metrics of every image predicted that way, "per_size": by image size, "predictions":
    per-row arrays for the report}. Each held-out head early-stops on a key-hash validation
    split of the other families (the configured val_fraction); test_fraction is not used."""
    families = np.array([f or "" for f in data.families], dtype=object)
    names = sorted({f for f in families if f})
    if len(names) < 2:
        raise PipelineError(f"leave-one-family-out needs at least 2 families in the labels' "
                            f"family column, found {names or 'none'}")
    lb = log_bytes(data.svg_bytes)
    val = np.array([split_of(k, cfg.seed, cfg.val_fraction, 0.0) == "val" for k in data.keys])
    pred = np.full(len(data.y), np.nan, dtype=np.float64)
    pred_b = np.full(len(data.y), np.nan, dtype=np.float64)
    per: dict[str, Any] = {}
    for name in tqdm(names, desc="leave-one-family-out", unit="family", disable=not progress):
        held = families == name
        heads = fit_heads(data.x, data.y, lb, np.flatnonzero(~held & ~val),
                          np.flatnonzero(~held & val), cfg, progress=False)
        p, pb = heads.predict(data.x[held])
        pred[held] = p
        per[name] = compute_metrics(data.y[held], p)
        if pb is not None:
            pred_b[held] = pb
            per[name]["svg_bytes"] = bytes_metrics(data.svg_bytes[held], pb)
    known = ~np.isnan(pred)  # rows without a family are never held out
    y = np.asarray(data.y, dtype=np.float64)
    overall = compute_metrics(y[known], pred[known])
    has_bytes = lb is not None and cfg.svg_bytes
    if has_bytes:
        overall["svg_bytes"] = bytes_metrics(data.svg_bytes[known], pred_b[known])
    return {"families": per, "overall": overall,
            "per_size": by_size(data.sizes[known], y[known], pred[known],
                                data.svg_bytes[known] if has_bytes else None,
                                pred_b[known] if has_bytes else None),
            "held_out": int(known.sum()), "features": list(cfg.features),
            "predictions": {"ssim": pred[known].tolist(),
                            "true": y[known].tolist(),
                            "family": families[known].tolist()}}
