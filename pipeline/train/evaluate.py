"""Evaluate a checkpoint on labelled images: metrics overall and per family, JSON/HTML reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.head.checkpoint import load_checkpoint
from pipeline.head.numpy_head import NONFINITE_REASON, NumpyHead
from pipeline.train.metrics import full_report
from pipeline.train.report import write_html, write_json

SPLITS = ("all", "train", "val", "test")


@dataclass
class Evaluation:
    report: dict[str, Any]        # the JSON: n, mae, ..., per_family
    y_true: np.ndarray            # (N,)
    y_pred: np.ndarray            # (N,)
    families: list[str | None]
    context: dict[str, Any]       # checkpoint, fingerprint, split, skipped (count), ...
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) unreadable
    # (path, reason) of rows whose prediction is NaN/Inf: left out of the metrics and y_*
    non_finite: list[tuple[str, str]] = field(default_factory=list)


def evaluate(labels_csv: str | Path, store_path: str | Path, checkpoint: str | Path, *,
             split: str = "all", config_path: str | Path | None = None,
             overrides: dict[str, Any] | None = None, cached_only: bool = False,
             progress: bool = True, backbone: Any = None) -> Evaluation:
    """Predict every labelled image (extracting missing vectors with the checkpoint's extractor
    settings) and compute the metrics; `split` keeps only rows of that train-time split.
    Images that cannot be read are left out of the metrics and listed in `skipped`; rows whose
    prediction is not finite (a cached vector that overflows the head) are left out too, listed
    in `non_finite`, and the report says so in `warnings` (one NaN would make every metric
    NaN, which JSON cannot even hold)."""
    from pipeline.extract.spec import extract_config_for
    from pipeline.train.features import gather
    from pipeline.train.fit import split_of
    from pipeline.train.labels_csv import read_labels

    if split not in SPLITS:
        raise PipelineError(f"split must be one of {SPLITS}, got {split!r}")
    ckpt = load_checkpoint(checkpoint)
    cfg = extract_config_for(ckpt.meta.get("extract_config", {}), config_path, overrides,
                             blocks=ckpt.block_names, source=f"checkpoint {checkpoint}")
    rows = read_labels(labels_csv)
    data = gather(rows, store_path, cfg, cached_only=cached_only, progress=progress,
                  backbone=backbone, expected=ckpt.fingerprints)
    idx = np.arange(len(data.keys))  # (N,) rows of `data` to evaluate
    if split != "all":
        s = ckpt.meta.get("split")
        if not s:
            raise PipelineError(f"checkpoint {checkpoint} records no split; use --split all")
        idx = np.array([i for i, k in enumerate(data.keys)
                        if split_of(k, s["seed"], s["val_fraction"], s["test_fraction"]) == split],
                       dtype=int)
        if len(idx) == 0:
            raise PipelineError(f"no labelled rows fall in the '{split}' split")
    head = NumpyHead(ckpt.numpy_head, output=ckpt.head_config.output)
    y_pred = head(data.x[idx])
    finite = np.isfinite(y_pred)
    non_finite = [(str(data.rows[i].path), NONFINITE_REASON) for i in idx[~finite]]
    idx, y_pred = idx[finite], y_pred[finite]
    y_true = data.y[idx]
    families = [data.families[i] for i in idx]
    pred_bytes = None
    if ckpt.bytes_config is not None:  # the second head: log10 of the SVG's bytes
        pred_bytes = NumpyHead(ckpt.bytes_numpy, output="linear")(data.x[idx])
    report = full_report(y_true, y_pred, families, data.sizes[idx], data.svg_bytes[idx],
                        pred_bytes)
    if non_finite:
        report["warnings"] = [
            f"{len(non_finite)} of {len(finite)} predictions are not finite (NaN/Inf) and are "
            f"left out of these metrics (first: {non_finite[0][0]}): {NONFINITE_REASON}"]
    context = {"checkpoint": str(checkpoint), "labels": str(labels_csv),
               "fingerprints": ckpt.fingerprints, "split": split,
               "weights": cfg.weights, "extracted": data.extracted,
               "skipped": len(data.skipped), "non_finite": len(non_finite)}
    return Evaluation(report, y_true, y_pred, families, context, skipped=data.skipped,
                      non_finite=non_finite)


def write_reports(ev: Evaluation, json_path: str | Path | None = None,
                  html_path: str | Path | None = None) -> list[Path]:
    """Write the JSON report (exactly the metric dict) and/or the HTML page, atomically."""
    written = []
    if json_path:
        written.append(write_json(json_path, ev.report))
    if html_path:
        written.append(write_html(html_path, ev.report, ev.y_true, ev.y_pred, ev.families,
                                  context=ev.context))
    return written
