"""`ssimcache train`, `evaluate` and `export`: fit the head, measure it, ship it."""

from __future__ import annotations

import json
from typing import Any

import click

from pipeline.cli.options import config_default, extractor_options, features_option
from pipeline.cli.params import IMAGE_SIZE, SEED, FiniteFloat


def _fmt(v: Any) -> str:
    return "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")


def metrics_table(named: dict[str, dict[str, Any]]) -> str:
    """Rows = sets, columns = metrics; per-family rows indented under each set."""
    from pipeline.train.metrics import METRIC_KEYS

    lines = [f"{'set':<22}" + "".join(f"{k:>12}" for k in METRIC_KEYS)]
    for name, m in named.items():
        lines.append(f"{name:<22}" + "".join(f"{_fmt(m.get(k)):>12}" for k in METRIC_KEYS))
        for fam, fm in m.get("per_family", {}).items():
            lines.append(f"  {fam:<20}" + "".join(f"{_fmt(fm.get(k)):>12}" for k in METRIC_KEYS))
    return "\n".join(lines)


def detail_table(name: str, m: dict[str, Any]) -> str:
    """SVG bytes per family, then SSIM bias and both targets per size bucket (longer side);
    empty when the report has neither."""
    lines = []
    b = m.get("svg_bytes")
    if b:
        lines.append(f"{name}: svg bytes{'':<8}{'n':>6}{'±25%':>8}{'med|log10|':>12}")
        for fam, fb in {"all": b, **b.get("per_family", {})}.items():
            lines.append(f"  {fam:<20}{fb['n']:>6}{_fmt(fb.get('within_25pct')):>8}"
                         f"{_fmt(fb.get('median_abs_log10_ratio')):>12}")
    sizes = m.get("per_size")
    if sizes:
        lines.append(f"{name}: by size (px){'':<7}{'n':>6}{'bias':>9}{'MAE':>8}{'PLCC':>8}"
                     f"{'bytes ±25%':>12}")
        for bucket, sm in sizes.items():
            sb = sm.get("svg_bytes") or {}
            lines.append(f"  {bucket:<20}{sm['n']:>6}{sm['bias']:>+9.4f}{_fmt(sm.get('mae')):>8}"
                         f"{_fmt(sm.get('plcc')):>8}{_fmt(sb.get('within_25pct')):>12}")
    return "\n".join(lines)


def lofo_table(lofo: dict[str, Any]) -> str:
    """Leave-one-family-out: one row per held-out family, then all of them pooled."""
    lines = [f"leave-one-family-out ({', '.join(lofo['features'])}): each family scored by a "
             "head trained without it", f"{'family':<22}{'n':>6}{'PLCC':>8}{'SRCC':>8}"
             f"{'MAE':>8}{'bytes ±25%':>12}{'med|log10|':>12}"]
    rows = {**lofo["families"], "ALL (pooled)": lofo["overall"]}
    for name, m in rows.items():
        b = m.get("svg_bytes") or {}
        lines.append(f"{name:<22}{m['n']:>6}{_fmt(m.get('plcc')):>8}{_fmt(m.get('srcc')):>8}"
                     f"{_fmt(m.get('mae')):>8}{_fmt(b.get('within_25pct')):>12}"
                     f"{_fmt(b.get('median_abs_log10_ratio')):>12}")
    return "\n".join(lines)


@click.command("train")
@click.option("--labels", type=click.Path(dir_okay=False), required=True,
              help="Labels CSV `path,ssim[,svg_bytes][,family]` (paths relative to its folder).")
@click.option("--store", type=click.Path(dir_okay=False), required=True,
              help="Feature store (HDF5); missing images are extracted into it.")
@click.option("--out", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint to write (.safetensors, atomic).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=config_default("train.json"), show_default="configs/train.json",
              help="Training JSON config (TrainConfig fields).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Maximum epochs [default: 150 / config]")
@click.option("--seed", type=SEED, default=None,
              help="Split/init/shuffle seed, 0..2**64-1 [default: 0]")
@click.option("--val-fraction", type=FiniteFloat(0, 1, min_open=True, max_open=True),
              default=None, help="Share of keys in the validation split [default: 0.2]")
@click.option("--test-fraction", type=FiniteFloat(0, 1, max_open=True), default=None,
              help="Share of keys held out for testing [default: 0.1]")
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=None,
              help="AdamW learning rate, finite and > 0 [default: 1e-3]")
@extractor_options
@features_option("The head reads them concatenated. [default: configs/train.json's, else "
                 "imstats,preview: measured best on unseen families with random backbone "
                 "weights]")
@click.option("--lofo", is_flag=True,
              help="Also run the leave-one-family-out evaluation: a head per family, trained "
                   "on all the others and scored on it (the honest figure for unseen images; "
                   "slower: one training per family). Recorded in the checkpoint.")
@click.option("--lofo-json", type=click.Path(dir_okay=False), default=None,
              help="Write the leave-one-family-out metrics JSON here (implies --lofo).")
@click.option("--lofo-html", type=click.Path(dir_okay=False), default=None,
              help="Write the leave-one-family-out HTML report here (implies --lofo).")
@click.option("--cached-only", is_flag=True,
              help="Do not extract: fail with the list of labelled images missing from the store.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def train(labels: str, store: str, out: str, config_path: str | None, epochs: int | None,
          seed: int | None, val_fraction: float | None, test_fraction: float | None,
          lr: float | None, weights: str | None, precision: str | None,
          image_size: int | None, extract_config: str | None,
          features: tuple[str, ...] | None, lofo: bool, lofo_json: str | None,
          lofo_html: str | None, cached_only: bool, no_progress: bool, as_json: bool) -> None:
    """Train the heads on cached features of the labelled images (extracting any that the
    store lacks): SSIM after vectorization, and log10 of the SVG's bytes when the labels have
    svg_bytes. A deterministic split by content key, AdamW, a cosine schedule and early
    stopping on validation loss; metrics go into the checkpoint and are printed."""
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig
    from pipeline.train.fit import TrainConfig
    from pipeline.train.run import run_train

    cfg = build_config(TrainConfig, config_path,
                       {"epochs": epochs, "seed": seed, "val_fraction": val_fraction,
                        "test_fraction": test_fraction, "lr": lr, "features": features})
    ecfg = build_config(ExtractConfig, extract_config or config_default("extract.json"),
                        {"weights": weights, "precision": precision, "image_size": image_size})
    lofo = lofo or bool(lofo_json or lofo_html)
    summary = run_train(labels, store, ecfg, cfg, out, cached_only=cached_only,
                        progress=not no_progress, lofo=lofo)
    predictions = summary.pop("lofo_predictions", None)
    if lofo:
        from pipeline.train.report import write_lofo_reports

        write_lofo_reports(summary["metrics"]["lofo"], predictions, lofo_json, lofo_html)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    blocks = ", ".join(f"{b} {fp[:12]}…" for b, fp in summary["fingerprints"].items())
    weights = f", weights {ecfg.weights}" if "resnet50" in summary["fingerprints"] else ""
    click.echo(f"checkpoint {summary['checkpoint']} (blocks {blocks}{weights})")
    click.echo(f"rows {summary['rows']}: train {summary['train']}, val {summary['val']}, "
               f"test {summary['test']}; extracted {summary['extracted']}, "
               f"skipped {len(summary['skipped'])}")
    click.echo(f"best epoch {summary['best_epoch']} of {summary['epochs_run']}, val loss "
               f"{summary['best_val_loss']:.5f}, peak RSS {summary['peak_rss_mb']:.0f} MB")
    click.echo(metrics_table({k: v for k, v in summary["metrics"].items() if k != "lofo"}))
    if "test" in summary["metrics"] and detail_table("test", summary["metrics"]["test"]):
        click.echo(detail_table("test", summary["metrics"]["test"]))
    if lofo:
        click.echo(lofo_table(summary["metrics"]["lofo"]))
    _echo_skipped(summary["skipped"])


def _echo_skipped(skipped: list[Any], word: str = "skipped") -> None:
    """(path, reason) rows on stderr: the first 10, then how many more."""
    for path, reason in skipped[:10]:
        click.echo(f"{word} {path}: {reason}", err=True)
    if len(skipped) > 10:
        click.echo(f"... and {len(skipped) - 10} more {word}", err=True)


@click.command("evaluate")
@click.option("--labels", type=click.Path(dir_okay=False), required=True,
              help="Labels CSV `path,ssim[,svg_bytes][,family]`.")
@click.option("--store", type=click.Path(dir_okay=False), required=True,
              help="Feature store; images it lacks are extracted with the checkpoint's settings.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint written by `ssimcache train`.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the metrics JSON here ('-' = stdout).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Write the HTML report (scatter + residual histogram) here.")
@click.option("--split", type=click.Choice(["all", "train", "val", "test"]), default="all",
              show_default=True, help="Only rows in this train-time split (by key hash).")
@extractor_options
@click.option("--cached-only", is_flag=True, help="Fail instead of extracting missing images.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def evaluate(labels: str, store: str, checkpoint: str, json_out: str | None,
             html_out: str | None, split: str, weights: str | None, precision: str | None,
             image_size: int | None, extract_config: str | None, cached_only: bool,
             no_progress: bool) -> None:
    """Evaluate a checkpoint: for SSIM, MAE, RMSE, PLCC, SRCC, R², share within 0.05 / 0.1;
    for SVG bytes (when the checkpoint has the bytes head and the labels svg_bytes), the median
    absolute log10 ratio and the share within ±25 %; overall, per family and per size bucket
    (longer side), with each bucket's mean bias. Extractor settings default to those recorded
    in the checkpoint."""
    from pipeline.train.evaluate import evaluate as run_eval
    from pipeline.train.evaluate import write_reports
    from pipeline.train.report import dumps

    ev = run_eval(labels, store, checkpoint, split=split, config_path=extract_config,
                  overrides={"weights": weights, "precision": precision,
                             "image_size": image_size},
                  cached_only=cached_only, progress=not no_progress)
    to_stdout = json_out == "-"
    written = write_reports(ev, None if to_stdout else json_out, html_out)
    _echo_skipped(ev.skipped)  # stderr, so `--json -` stays the JSON and nothing else
    _echo_skipped(ev.non_finite, "left out")
    for warning in ev.report.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if to_stdout:
        click.echo(dumps(ev.report))  # strict JSON: a non-finite number becomes null
        return
    left_out = f", {len(ev.non_finite)} not finite" if ev.non_finite else ""
    blocks = ", ".join(f"{b} {fp[:12]}…" for b, fp in ev.context["fingerprints"].items())
    click.echo(f"{checkpoint} on {labels} (split {split}, blocks {blocks}); n {ev.report['n']}, "
               f"skipped {len(ev.skipped)} unreadable{left_out}, extracted "
               f"{ev.context['extracted']}")
    click.echo(metrics_table({split: ev.report}))
    if detail_table(split, ev.report):
        click.echo(detail_table(split, ev.report))
    for path in written:
        click.echo(f"wrote {path}")


@click.command("export")
@click.option("--checkpoint", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint written by `ssimcache train`.")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), required=True,
              help="Export format.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="File to write.")
@click.option("--full", is_flag=True,
              help="Backbone + head (input (B,3,S,S) normalised images) instead of the head "
                   "alone (input (B,D) features of the checkpoint's blocks, e.g. 2048 for "
                   "resnet50); resnet50-only heads.")
@click.option("--image-size", type=IMAGE_SIZE, default=None,
              help="Example input size for --full, 16..4096 [default: the checkpoint's]")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export(checkpoint: str, fmt: str, out: str, full: bool, image_size: int | None,
           as_json: bool) -> None:
    """Export the head (or backbone + head with --full) to ONNX or TorchScript; the export is
    run once against eager PyTorch and refused if any output differs by more than 1e-5."""
    from pipeline.export.formats import export as run_export

    result = run_export(checkpoint, fmt, out, full=full, image_size=image_size)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"wrote {result['path']} ({fmt}, {'backbone + head' if full else 'head'}, "
                   f"input {result['input_shape']}); max |export - eager| = "
                   f"{result['max_abs_diff']:.2e}")
