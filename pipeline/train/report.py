"""Evaluation reports: JSON and a self-contained HTML page (scatter + residuals), atomic writes."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import atomic_write_text, json_safe
from pipeline.train.metrics import METRIC_KEYS


def dumps(report: dict[str, Any]) -> str:
    """Strict JSON text of a report (non-finite numbers as null)."""
    return json.dumps(json_safe(report), indent=2, sort_keys=False, allow_nan=False)


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    return atomic_write_text(path, dumps(report) + "\n")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(y_true: np.ndarray, y_pred: np.ndarray,
           families: list[str | None] | None) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    # Only finite pairs can be drawn (matplotlib refuses NaN/Inf axis limits and bins).
    keep = np.isfinite(y_true) & np.isfinite(y_pred)
    y_true, y_pred = y_true[keep], y_pred[keep]
    if families is not None:
        families = [f for f, k in zip(families, keep, strict=True) if k]
    if not len(y_true):  # nothing to draw: empty axes rather than a crash
        y_true = y_pred = np.zeros(0)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if families is not None and any(families):
        names = sorted({f or "(none)" for f in families})
        fam = np.array([f or "(none)" for f in families], dtype=object)
        for name in names:
            m = fam == name
            ax.scatter(y_true[m], y_pred[m], s=8, alpha=0.6, label=name)
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.scatter(y_true, y_pred, s=8, alpha=0.6)
    # Zoom on the data (logo labels crowd near 1); the dashed line is a perfect prediction.
    lo = float(min(y_true.min(initial=1.0), y_pred.min(initial=1.0))) - 0.02
    hi = float(max(y_true.max(initial=1.0), y_pred.max(initial=1.0))) + 0.01
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("true SSIM")
    ax.set_ylabel("predicted SSIM")
    ax.set_title("predicted vs true")
    scatter = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.hist(y_pred - y_true, bins=40, color="#4070a0")
    ax.axvline(0, color="k", lw=1)
    ax.set_xlabel("residual (predicted - true)")
    ax.set_ylabel("images")
    ax.set_title("residuals")
    hist = _png(fig)
    plt.close(fig)
    return scatter, hist


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return str(v) if isinstance(v, int) else f"{v:.4f}"


def render_html(report: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray,
                families: list[str | None] | None = None, title: str = "ssimcache evaluation",
                context: dict[str, Any] | None = None) -> str:
    """A standalone HTML page: metrics table (overall + per family), context, two plots."""
    scatter, hist = _plots(np.asarray(y_true, float), np.asarray(y_pred, float), families)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("set", *METRIC_KEYS))
    rows = [("all", report), *report.get("per_family", {}).items()]
    body = "".join(
        "<tr><td>" + html.escape(name) + "</td>"
        + "".join(f"<td>{_fmt(m.get(k))}</td>" for k in METRIC_KEYS) + "</tr>"
        for name, m in rows)
    ctx = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                  for k, v in (context or {}).items())
    ctx += "".join(f"<li><b>warning</b>: {html.escape(str(w))}</li>"
                   for w in report.get("warnings", []))
    extra = _bytes_table(report) + _size_table(report)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}
img{{margin:1em 1em 0 0}}</style></head><body>
<h1>{html.escape(title)}</h1><ul>{ctx}</ul>
<table><tr>{head}</tr>{body}</table>{extra}
<div><img alt="predicted vs true" src="data:image/png;base64,{scatter}">
<img alt="residual histogram" src="data:image/png;base64,{hist}"></div>
</body></html>
"""


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c) if not isinstance(c, str) else c)}"
                                    "</td>" for c in r) + "</tr>" for r in rows)
    return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _bytes_table(report: dict[str, Any]) -> str:
    """SVG size predictions: overall and per family (when the report has them)."""
    b = report.get("svg_bytes")
    if not b:
        return ""
    keys = ["n", "median_abs_log10_ratio", "within_25pct", "mean_log10_ratio"]
    rows = [["all", *(b.get(k) for k in keys)]]
    rows += [[f, *(m.get(k) for k in keys)] for f, m in b.get("per_family", {}).items()]
    return _table("SVG size (predicted vs true bytes)", ["set", *keys], rows)


def _size_table(report: dict[str, Any]) -> str:
    """Per image-size bucket (longer side): SSIM bias, MAE, PLCC, and bytes within +-25 %."""
    per = report.get("per_size")
    if not per:
        return ""
    rows = [[b, m["n"], m.get("bias"), m.get("mae"), m.get("plcc"),
             (m.get("svg_bytes") or {}).get("within_25pct")] for b, m in per.items()]
    return _table("By image size (longer side, px)", ["size", "n", "bias (pred - true)", "mae",
                                                      "plcc", "bytes within 25%"], rows)


def write_lofo_reports(lofo: dict[str, Any], predictions: dict[str, Any] | None,
                       json_path: str | Path | None, html_path: str | Path | None) -> list[Path]:
    """The leave-one-family-out metrics as JSON and/or an HTML page (pooled predictions)."""
    written = []
    if json_path:
        written.append(write_json(json_path, lofo))
    if html_path and predictions:
        report = {**lofo["overall"], "per_family": lofo["families"],
                  "per_size": lofo.get("per_size")}
        written.append(atomic_write_text(html_path, render_html(
            report, np.asarray(predictions["true"]), np.asarray(predictions["ssim"]),
            list(predictions["family"]), title="ssimcache leave-one-family-out",
            context={"features": ", ".join(lofo["features"]), "held out": lofo["held_out"],
                     "method": "each family predicted by a head trained on all the others"})))
    return written


def write_html(path: str | Path, report: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray,
               families: list[str | None] | None = None,
               context: dict[str, Any] | None = None) -> Path:
    return atomic_write_text(path, render_html(report, y_true, y_pred, families,
                                               context=context))
