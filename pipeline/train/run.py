"""`ssimcache train`'s runner: labels -> vectors -> key-hash split -> the SSIM head and the SVG
bytes head -> metrics (random split, and leave-one-family-out on request) -> checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.head.mlp import SSIMPredictor
from pipeline.measure import peak_rss_mb
from pipeline.train.fit import TrainConfig, TrainResult, predict, split_keys, train_head
from pipeline.train.metrics import full_report

# The second head trains only where most rows carry a size: a CSV from before svg_bytes
# existed (or hand-made without it) trains the SSIM head alone.
MIN_BYTES_SHARE = 0.9


@dataclass
class Heads:
    """The heads fitted on one training set: SSIM, and log10 SVG bytes when labels allow."""

    ssim: TrainResult
    svg_bytes: TrainResult | None

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N,) predicted SSIM and (N,) predicted log10 bytes (None without that head)."""
        return predict(self.ssim.head, x), (None if self.svg_bytes is None
                                            else predict(self.svg_bytes.head, x))


def log_bytes(svg_bytes: np.ndarray | None) -> np.ndarray | None:
    """log10 of the labelled SVG sizes (NaN where unknown); None if too few are known."""
    if svg_bytes is None or len(svg_bytes) == 0:
        return None
    known = np.isfinite(svg_bytes) & (svg_bytes > 0)
    if known.mean() < MIN_BYTES_SHARE:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(known, np.log10(svg_bytes), np.nan)


def fit_heads(x: np.ndarray, y: np.ndarray, lb: np.ndarray | None, train: np.ndarray,
              val: np.ndarray, cfg: TrainConfig, progress: bool = True) -> Heads:
    """Train the SSIM head (and the bytes head on rows with a known size) on rows `train`,
    early-stopping on rows `val`."""
    ssim = train_head(x[train], y[train], x[val], y[val], cfg, progress=progress)
    second = None
    if cfg.svg_bytes and lb is not None:
        tr, va = train[np.isfinite(lb[train])], val[np.isfinite(lb[val])]
        if len(tr) >= 2 and len(va) >= 1:
            second = train_head(x[tr], lb[tr], x[va], lb[va], cfg.for_bytes(), progress=progress)
    return Heads(ssim, second)


def run_train(labels_csv: str, store_path: str, extract_cfg: Any, cfg: TrainConfig, out: str, *,
              cached_only: bool = False, progress: bool = True, backbone: Any = None,
              lofo: bool = False) -> dict[str, Any]:
    """labels CSV -> vectors of cfg.features (extracting what is missing) -> split by key ->
    heads -> checkpoint. With `lofo`, also the leave-one-family-out evaluation
    (pipeline.train.lofo), recorded in the checkpoint's metrics.

    Returns a JSON-ready summary: checkpoint path, fingerprints, split sizes, best epochs,
    val/test metrics, skipped images, peak RSS (and "lofo").
    """
    from pipeline.config import config_to_dict
    from pipeline.extract.spec import block_specs
    from pipeline.head.checkpoint import save_checkpoint
    from pipeline.train.features import gather
    from pipeline.train.labels_csv import read_labels

    ecfg = dataclasses.replace(extract_cfg, features=cfg.features)
    rows = read_labels(labels_csv)
    data = gather(rows, store_path, ecfg, cached_only=cached_only, progress=progress,
                  backbone=backbone)
    lb = log_bytes(data.svg_bytes)
    split = split_keys(data.keys, cfg)
    parts = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    heads = fit_heads(data.x, data.y, lb, parts["train"], parts["val"], cfg, progress)
    metrics: dict[str, Any] = {}
    for name in ("val", "test"):
        idx = parts[name]
        if len(idx):
            pred, pred_b = heads.predict(data.x[idx])
            metrics[name] = full_report(data.y[idx], pred, [data.families[i] for i in idx],
                                   data.sizes[idx], data.svg_bytes[idx], pred_b)
    lofo_predictions = None
    if lofo:
        from pipeline.train.lofo import leave_one_family_out

        metrics["lofo"] = leave_one_family_out(data, cfg, progress=progress)
        lofo_predictions = metrics["lofo"].pop("predictions")  # for the report, not the file
    split_info = {"method": "sha256(seed:key) -> [test | val | train]", "seed": cfg.seed,
                  "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
                  "counts": {k: int(len(v)) for k, v in parts.items()}}
    training = _training_summary(heads, labels_csv, len(data.skipped))
    specs = block_specs(ecfg)
    save_checkpoint(out, heads.ssim.head, features=[{**b, "spec": specs[b["block"]]}
                                                    for b in data.blocks],
                    extract_config=config_to_dict(ecfg), train_config=config_to_dict(cfg),
                    metrics=metrics, extra={"split": split_info, "training": training},
                    bytes_head=_head(heads.svg_bytes))
    fps = {b["block"]: b["fingerprint"] for b in data.blocks}
    return {"checkpoint": str(out), "fingerprints": fps, "rows": len(rows),
            "extracted": data.extracted, **split_info["counts"], **training,
            "skipped": data.skipped, "warnings": data.warnings, "metrics": metrics,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            **({"lofo_predictions": lofo_predictions} if lofo else {})}


def _head(result: TrainResult | None) -> SSIMPredictor | None:
    return None if result is None else result.head


def _training_summary(heads: Heads, labels_csv: str, skipped: int) -> dict[str, Any]:
    s = heads.ssim
    out = {"best_epoch": s.best_epoch, "epochs_run": s.epochs_run,
           "best_val_loss": s.best_val_loss, "final_train_loss": s.history[-1]["train_loss"],
           "labels": str(labels_csv), "skipped": skipped,
           "svg_bytes_head": heads.svg_bytes is not None}
    if heads.svg_bytes is not None:
        out["svg_bytes_best_epoch"] = heads.svg_bytes.best_epoch
        out["svg_bytes_best_val_loss"] = heads.svg_bytes.best_val_loss
    return out
