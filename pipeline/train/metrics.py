"""Regression and IQA metrics of predicted vs true SSIM: MAE, RMSE, PLCC, SRCC, R², within-t."""

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
