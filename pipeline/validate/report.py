"""Validation reports: JSON (checked against schema.json) and HTML with embedded plots."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from pipeline.atomic import atomic_write_text

SCHEMA_PATH = Path(__file__).with_name("schema.json")

_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}


def load_schema() -> dict[str, Any]:
    """The documented report schema (JSON Schema 2020-12)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def _is(value: Any, type_name: str) -> bool:
    if type_name in ("integer", "number") and isinstance(value, bool):
        return False  # JSON booleans are not numbers
    return isinstance(value, _TYPES[type_name])


def _check(value: Any, schema: dict[str, Any], root: dict[str, Any], at: str,
           errors: list[str]) -> None:
    # The subset of JSON Schema the report schema uses; no third-party validator needed.
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in names):
            errors.append(f"{at}: expected {'|'.join(names)}, got {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        errors.append(f"{at}: {value} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{at}: missing required key '{key}'")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if "propertyNames" in schema:
                _check(key, schema["propertyNames"], root, f"{at}.{key} (name)", errors)
            if key in props:
                _check(item, props[key], root, f"{at}.{key}", errors)
            elif extra is False:
                errors.append(f"{at}: unexpected key '{key}'")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{at}.{key}", errors)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{at}: fewer than {schema['minItems']} items")
        if "items" in schema:
            for i, item in enumerate(value):
                _check(item, schema["items"], root, f"{at}[{i}]", errors)


def schema_errors(report: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """Problems of `report` against the schema plus the rules JSON Schema cannot say (rows as
    long as columns, `passed` agreeing with the statuses). Empty list == valid."""
    schema = schema or load_schema()
    errors: list[str] = []
    _check(report, schema, schema, "$", errors)
    if errors:
        return errors
    for name, check in report["checks"].items():
        if check["name"] != name:
            errors.append(f"$.checks.{name}: name is {check['name']!r}")
        if (check["status"] == "fail") != bool(check["failures"]):
            errors.append(f"$.checks.{name}: status {check['status']} disagrees with failures")
        for tname, table in check["tables"].items():
            for i, row in enumerate(table["rows"]):
                if len(row) != len(table["columns"]):
                    errors.append(f"$.checks.{name}.tables.{tname}.rows[{i}]: {len(row)} cells "
                                  f"for {len(table['columns'])} columns")
    statuses = [c["status"] for c in report["checks"].values()]
    if report["passed"] != ("fail" not in statuses):
        errors.append("$.passed disagrees with the check statuses")
    for s in ("pass", "fail", "skip"):
        if report["counts"][s] != statuses.count(s):
            errors.append(f"$.counts.{s} is {report['counts'][s]}, checks say {statuses.count(s)}")
    return errors


def jsonable(value: Any) -> Any:
    """Non-finite floats -> "nan"/"inf"/"-inf" (strict JSON has none); tuples -> lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_json_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Atomic write of the report as strict JSON."""
    return atomic_write_text(path, json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """check name -> [(caption, base64 PNG)]: grad norms, latency vs batch, RSS over runs."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    out: dict[str, list[tuple[str, str]]] = {}
    checks, cfg = report["checks"], report["config"]
    grads = checks.get("gradients", {}).get("tables", {}).get("grad_norms")
    if grads and grads["rows"]:
        rows = grads["rows"]
        vals = [r[1] if isinstance(r[1], (int, float)) and r[1] > 0 else float("nan")
                for r in rows]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.18 * len(rows)), 3.5))
        ax.bar(range(len(rows)), vals, color=["tab:blue" if r[2] == "ok" else "tab:red"
                                              for r in rows])
        ax.set_yscale("log")
        ax.axhline(cfg["vanish_threshold"], ls="--", color="grey")
        ax.axhline(cfg["explode_threshold"], ls="--", color="grey")
        ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=90, fontsize=6)
        ax.set_ylabel("gradient norm")
        out["gradients"] = [("Gradient norm per trainable layer (dashed: vanish/explode "
                             "thresholds; red: flagged)", _png(fig))]
        plt.close(fig)
    lat = checks.get("performance", {}).get("figures", {}).get("latency_ms")
    if lat:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for threads, per in lat.items():
            bs = sorted(per, key=int)
            ax.plot([int(b) for b in bs], [per[b] for b in bs], marker="o",
                    label=f"{threads} thread(s)")
        ax.set_xlabel("batch size")
        ax.set_ylabel("median ms per batch")
        ax.legend()
        out["performance"] = [("Latency vs batch size", _png(fig))]
        plt.close(fig)
    rss = checks.get("memory", {}).get("series", {}).get("rss_mb")
    if rss:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(range(1, len(rss) + 1), rss)
        ax.set_xlabel("inference #")
        ax.set_ylabel("RSS (MiB)")
        out["memory"] = [("RSS over repeated batch-1 inferences (leak check)", _png(fig))]
        plt.close(fig)
    return out


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%}"
        ".pass{color:#070}.fail{color:#b00;font-weight:bold}.skip{color:#777}")


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: verdicts, each check's figures and tables, embedded plots."""
    plots = _plots(report)
    verdict = "PASSED" if report["passed"] else "FAILED"
    m = report["model"]
    parts = [f"<!doctype html><meta charset='utf-8'><title>ssimcache validate: {verdict}</title>",
             f"<style>{_CSS}</style><h1>ssimcache validate: <span class="
             f"'{'pass' if report['passed'] else 'fail'}'>{verdict}</span></h1>",
             f"<p>{html.escape(report['created'])} · {report['seconds']:.1f} s · "
             f"{html.escape(str(report['machine']))}</p>",
             f"<p>Model {html.escape(m['class'])} ({html.escape(m['source'])}): "
             f"{m['params']['total']:,} parameters, {m['params']['trainable']:,} trainable, "
             f"{m['params']['frozen']:,} frozen, {m['weights_mb']:.1f} MiB</p>",
             _table(["check", "status", "summary", "seconds"],
                    [[n, c["status"], c["summary"], c["seconds"]]
                     for n, c in report["checks"].items()])]
    for name, c in report["checks"].items():
        parts.append(f"<h2>{html.escape(name)}: <span class='{c['status']}'>"
                     f"{c['status']}</span></h2><p>{html.escape(c['summary'])}</p>")
        if c["failures"]:
            parts.append("<ul>" + "".join(f"<li class='fail'>{html.escape(f)}</li>"
                                          for f in c["failures"]) + "</ul>")
        figs = [[k, json.dumps(jsonable(v)) if isinstance(v, (dict, list)) else v]
                for k, v in c["figures"].items() if k != "traceback"]
        if figs:
            parts.append(_table(["figure", "value"], figs))
        for tname, t in c["tables"].items():
            parts.append(f"<h3>{html.escape(tname)}</h3>" + _table(t["columns"], t["rows"]))
        for caption, png in plots.get(name, []):
            parts.append(f"<figure><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{png}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(parts) + "\n"


def write_html_report(path: str | Path, report: dict[str, Any]) -> Path:
    """Atomic write of the HTML report."""
    return atomic_write_text(path, render_html(jsonable(report)))
