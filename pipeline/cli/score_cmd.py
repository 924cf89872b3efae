"""`ssimcache score` (cached images without torch) and `ssimcache bench score`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from pipeline.cli.options import config_default
from pipeline.cli.params import SEED, UNCERTAINTY

# With --uncertainty: the MC-dropout mean, std and 90 % interval, after predicted_ssim (which is
# the deterministic, dropout-off prediction and may lie outside [low, high]).
UNC_COLS = ("mean", "std", "low", "high")


def _rows(paths: list[Path], keys: list[str | None], pred: Any, size: Any,
          unc: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for i, (p, k) in enumerate(zip(paths, keys, strict=True)):
        value = float(pred[i])
        # A non-finite value is a failure row (its reason goes to stderr), never NaN in JSON.
        ok = math.isfinite(value)
        nbytes = float(size[i])
        row: dict[str, Any] = {"path": str(p), "key": k,
                               "predicted_ssim": value if ok else None,
                               "predicted_svg_bytes": round(nbytes) if ok and
                               math.isfinite(nbytes) else None}
        if unc is not None:
            for name in UNC_COLS:
                v = float(unc[name][i])
                row[name] = v if ok and math.isfinite(v) else None
        rows.append(row)
    return rows


def _render(rows: list[dict[str, Any]], fmt: str, uncertainty: bool) -> str | bytes:
    """The output: JSON text (ASCII; a name that is not UTF-8 carries surrogate escapes, which
    os.fsencode turns back into its bytes), CSV bytes (UTF-8, such names as their own bytes,
    any character quoted), or a table for the terminal (odd characters escaped)."""
    from pipeline.atomic import ENCODING, PATH_ERRORS, csv_line
    from pipeline.images.inputs import display_path

    cols = ["path", "key", "predicted_ssim", "predicted_svg_bytes"] + (
        list(UNC_COLS) if uncertainty else [])
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "csv":
        lines = [csv_line(cols)] + [
            csv_line(["" if r[c] is None else (f"{r[c]:.6f}" if isinstance(r[c], float)
                                               else r[c]) for c in cols]) for r in rows]
        return "".join(lines).rstrip("\n").encode(ENCODING, PATH_ERRORS)
    rows = [{**r, "path": display_path(r["path"])} for r in rows]
    width = max([len("path"), *(len(r["path"]) for r in rows)])
    head = f"{'path':<{width}}  {'predicted_ssim':>14}  {'svg_bytes':>10}" + (
        f"  {'mc_mean':>8}  {'std':>8}  {'90% interval':>17}" if uncertainty else "")
    lines = [head]
    for r in rows:
        v = "failed" if r["predicted_ssim"] is None else f"{r['predicted_ssim']:.4f}"
        b = "-" if r["predicted_svg_bytes"] is None else f"{r['predicted_svg_bytes']:,}"
        line = f"{r['path']:<{width}}  {v:>14}  {b:>10}"
        if uncertainty and r["predicted_ssim"] is not None:
            line += (f"  {r['mean']:>8.4f}  {r['std']:>8.4f}  "
                     f"[{r['low']:.4f}, {r['high']:.4f}]")
        lines.append(line)
    return "\n".join(lines)


@click.command("score")
@click.argument("images", nargs=-1, required=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint written by `ssimcache train`.")
@click.option("--store", type=click.Path(dir_okay=False), required=True,
              help="Feature store; uncached images are extracted into it (with the "
                   "checkpoint's extractor settings; missing folders are created).")
@click.option("--cached-only", is_flag=True,
              help="Never extract (never imports torch): fail listing images not in the store.")
@click.option("--uncertainty", type=UNCERTAINTY, default=None,
              help="Add MC-dropout mean, std and 90% interval from N stochastic passes, "
                   "2..1000 (seeded per image key, so an image's numbers do not depend on the "
                   "others).")
@click.option("--seed", type=SEED, default=None,
              help="MC-dropout seed, 0..2**64-1 [default: 0 / config]")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True, help="Output format; csv/json columns: path,key,predicted_ssim,"
                                      "predicted_svg_bytes (+ mean,std,low,high with "
                                      "--uncertainty; bytes empty if the checkpoint has no "
                                      "svg_bytes head). csv keeps each "
                                      "name's bytes; the table escapes control characters and "
                                      "bytes that are not UTF-8 (\\r, \\xff).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=config_default("score.json"), show_default="configs/score.json",
              help="Scorer JSON config (ScoreConfig fields).")
@click.option("--no-progress", is_flag=True, help="Hide the extraction progress bar.")
@click.option("--strict", is_flag=True,
              help="Exit 1 if any input failed (unreadable image, or a prediction that is not "
                   "finite); without it, failures are rows plus a warning on stderr.")
def score(images: tuple[str, ...], checkpoint: str, store: str, cached_only: bool,
          uncertainty: int | None, seed: int | None, fmt: str, config_path: str | None,
          no_progress: bool, strict: bool) -> None:
    """Predict SSIM-after-vectorization and the SVG's size in bytes for IMAGES (files,
    folders, globs, @list.txt), one row per input in input order. Cached images are scored by
    numpy copies of the heads without importing torch; images that fail to decode, or whose
    prediction is not finite, print as failed rows with the reason on stderr (exit 1 with
    --strict)."""
    from pipeline.config import build_config
    from pipeline.images.inputs import display_path, expand_inputs
    from pipeline.score import ScoreConfig, Scorer

    cfg = build_config(ScoreConfig, config_path, {"seed": seed})
    # One row per input in input order: expand each argument on its own (folders/globs in
    # place) so a repeated argument keeps its rows; hashing and extraction de-duplicate.
    paths = [p for item in images for p in expand_inputs([item])]
    if not cached_only:  # uncached images are extracted into it: missing folders are created
        Path(store).parent.mkdir(parents=True, exist_ok=True)
    with Scorer(store, checkpoint, cfg) as scorer:
        keys, pred, size = scorer.predict_paths(paths, cached_only=cached_only,
                                                progress=not no_progress)
        unc = None
        ok = [i for i, k in enumerate(keys) if k is not None]
        if ok and uncertainty:
            import numpy as np

            part = scorer.uncertainty([keys[i] for i in ok], samples=uncertainty)
            unc = {n: np.full(len(paths), np.nan, dtype=np.float32) for n in part}
            for n, v in part.items():
                unc[n][ok] = v
        # one line per failed path, even when it was given twice
        failures = list(dict.fromkeys(scorer.failures))
    click.echo(_render(_rows(paths, keys, pred, size, unc), fmt, uncertainty is not None))
    for path, reason in failures:
        click.echo(f"failed {display_path(path)}: {display_path(reason)}", err=True)
    if failures:
        if strict:
            raise SystemExit(1)
        click.echo(f"warning: {len(failures)} of {len(paths)} input(s) failed (rows above, "
                   "reasons on stderr); --strict makes this exit 1", err=True)


@click.command("score")
@click.option("--keys", "n_keys", type=click.IntRange(min=100), default=100_000,
              show_default=True, help="Cached keys in the bulk-scoring case.")
@click.option("--single", type=click.IntRange(min=10), default=2000, show_default=True,
              help="Single-key calls timed per case (p50/p99).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repeats of the bulk and fresh-process cases (median reported).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where to build the synthetic store [default: a temp dir].")
@click.option("--out", type=click.Path(dir_okay=False), default="bench-results/score.json",
              show_default=True, help="JSON results file.")
def bench_score(n_keys: int, single: int, repeats: int, workdir: str | None, out: str) -> None:
    """Scorer on cached keys: single-key p50/p99 on score-LRU hit, feature-LRU hit and store
    miss; N keys in one call vs the naive per-key loop; `ssimcache score` of one cached image as
    a fresh process (wall time, torch imported?). Prints a table and writes JSON."""
    from pipeline.bench.score import format_table, run_bench
    from pipeline.train.report import write_json

    result = run_bench(n_keys=n_keys, single=single, repeats=repeats, workdir=workdir)
    click.echo(format_table(result))
    write_json(out, result)
    click.echo(f"wrote {out}")


@click.command("predict")
@click.option("--labels", "labels_csv", type=click.Path(dir_okay=False, path_type=Path),
              default=Path(__file__).resolve().parents[2] / "data" / "labels.csv",
              show_default="data/labels.csv", help="Labelled images to time (their sizes and "
              "families pick the cells).")
@click.option("--per-cell", type=click.IntRange(1), default=3, show_default=True,
              help="Images per (family, size) cell.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs per cell (median reported).")
@click.option("--out", type=click.Path(dir_okay=False), default="bench-results/predict.json",
              show_default=True, help="JSON results file.")
def bench_predict(labels_csv: Path, per_cell: int, repeats: int, out: str) -> None:
    """When prediction pays: per image size (256, 512, 1024 px) and family, ms per image of
    computing the true label (VTracer + resvg + SSIM) against first-contact prediction
    (extract + score, model already built) and scoring a cached image; random:0 weights."""
    from pipeline.atomic import atomic_write_text
    from pipeline.bench.predict import format_table, run_bench

    result = run_bench(labels_csv, per_cell=per_cell, repeats=repeats,
                       log=lambda s: click.echo(s, err=True))
    atomic_write_text(out, json.dumps(result, indent=2))
    click.echo(format_table(result))
    click.echo(f"wrote {out}")
