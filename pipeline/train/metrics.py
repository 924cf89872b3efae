"""Metrics of predictions: SSIM (MAE, RMSE, PLCC, SRCC, R², within-t), SVG bytes (median
|log10 ratio|, share within +-25 %), and both per image-size bucket (bias included)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC_KEYS = ("n", "mae", "rmse", "plcc", "srcc", "r2", "within_0.05", "within_0.1")


def rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata 'average')."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # Boundaries of runs of equal values in the sorted array.
    new_run = np.concatenate(([True], sorted_a[1:] != sorted_a[:-1]))
    run_id = np.cumsum(new_run) - 1                        # (n,) run index per sorted position
    starts = np.flatnonzero(new_run)                        # first position of each run
    ends = np.concatenate((starts[1:], [len(a)]))           # one past the last
    avg = (starts + ends - 1) / 2.0 + 1.0                   # average 1-based rank of each run
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = avg[run_id]
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    if len(x) < 2 or denom == 0:
        return None  # undefined for constant inputs (scipy returns nan); JSON has no NaN
    return float(np.clip((xc * yc).sum() / denom, -1.0, 1.0))


def compute_metrics(y_true: Sequence[float] | np.ndarray,
                    y_pred: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The metric dict (keys METRIC_KEYS); correlations and R² are None where undefined."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d of equal length, got {t.shape}, {p.shape}")
    n = len(t)
    if n == 0:
        return {"n": 0, **{k: None for k in METRIC_KEYS[1:]}}
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    return {
        "n": n,
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "plcc": _pearson(p, t),
        "srcc": _pearson(rankdata(p), rankdata(t)),
        "r2": None if ss_tot == 0 else float(1.0 - (err ** 2).sum() / ss_tot),
        "within_0.05": float((np.abs(err) <= 0.05).mean()),
        "within_0.1": float((np.abs(err) <= 0.1).mean()),
    }


def metrics_report(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray,
                   families: Sequence[str | None] | None = None) -> dict[str, Any]:
    """`{"n", "mae", ..., "per_family": {FAMILY: {same keys}}}`; per_family is {} without
    families (rows with no family are counted overall only)."""
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    report = compute_metrics(t, p)
    per: dict[str, Any] = {}
    if families is not None:
        fam = np.array([f if f is not None else "" for f in families], dtype=object)
        for name in sorted({f for f in families if f}):
            mask = fam == name
            per[name] = compute_metrics(t[mask], p[mask])
    report["per_family"] = per
    return report


BYTES_KEYS = ("n", "median_abs_log10_ratio", "within_25pct", "mean_log10_ratio")
# Size buckets by the image's longer side (px), named by their range.
SIZE_EDGES = (160, 224, 320, 448, 640, 896)  # 128 | 192 | 256 | 384 | 512 | 768 | 1024 px


def bytes_metrics(true_bytes: Sequence[float] | np.ndarray,
                  pred_log10: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """How far predicted SVG sizes are from the true ones, in ratio terms: the median
    |log10(pred / true)|, the share of images within +-25 % (|pred / true - 1| <= 0.25), and
    the mean log10 ratio (> 0: over-predicted). Rows without a true size are left out."""
    t = np.asarray(true_bytes, dtype=np.float64)
    p = np.asarray(pred_log10, dtype=np.float64)
    ok = np.isfinite(t) & (t > 0) & np.isfinite(p)
    if not ok.any():
        return {"n": 0, **{k: None for k in BYTES_KEYS[1:]}}
    r = p[ok] - np.log10(t[ok])  # log10(pred / true)
    return {"n": int(ok.sum()), "median_abs_log10_ratio": float(np.median(np.abs(r))),
            "within_25pct": float((np.abs(10.0 ** r - 1.0) <= 0.25).mean()),
            "mean_log10_ratio": float(r.mean())}


def size_bucket(longer_side: int) -> str:
    """'<160', '160-223', '224-319', ..., '896+' for an image's longer side in px."""
    lo = 0
    for edge in SIZE_EDGES:
        if longer_side < edge:
            return f"{max(lo, 1)}-{edge - 1}" if lo else f"<{edge}"
        lo = edge
    return f"{lo}+"


def by_size(sizes: Sequence[int], y_true: np.ndarray, y_pred: np.ndarray,
            true_bytes: np.ndarray | None = None,
            pred_log10: np.ndarray | None = None) -> dict[str, Any]:
    """{bucket: SSIM metrics + "bias" (mean predicted - true) [+ "svg_bytes": bytes metrics]},
    buckets in size order."""
    bucket_of = {b: i for i, b in enumerate(size_bucket(e - 1) for e in (*SIZE_EDGES, 10**9))}
    names = [size_bucket(int(s)) for s in sizes]
    order = sorted(set(names), key=bucket_of.__getitem__)
    out: dict[str, Any] = {}
    for b in order:
        m = np.array([n == b for n in names])
        row = compute_metrics(y_true[m], y_pred[m])
        row["bias"] = float(np.mean(y_pred[m] - y_true[m]))
        if true_bytes is not None and pred_log10 is not None:
            row["svg_bytes"] = bytes_metrics(true_bytes[m], pred_log10[m])
        out[b] = row
    return out


def full_report(y: np.ndarray, pred: np.ndarray, families: list[str | None],
                sizes: np.ndarray | None, true_bytes: np.ndarray | None,
                pred_log10: np.ndarray | None) -> dict[str, Any]:
    """Metrics of one set: SSIM overall and per family; SVG bytes overall and per family;
    both per size bucket."""
    out = metrics_report(y, pred, families)
    if pred_log10 is not None and true_bytes is not None:
        fam = np.array([f or "" for f in families], dtype=object)
        out["svg_bytes"] = {**bytes_metrics(true_bytes, pred_log10), "per_family": {
            f: bytes_metrics(true_bytes[fam == f], pred_log10[fam == f])
            for f in sorted({f for f in families if f})}}
    if sizes is not None:
        out["per_size"] = by_size(sizes, np.asarray(y, np.float64), np.asarray(pred, np.float64),
                                  true_bytes if pred_log10 is not None else None, pred_log10)
    return out
