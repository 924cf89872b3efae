"""`ssimcache demo`: extract -> train -> evaluate -> score on the embedded dataset."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from pipeline.cli.options import config_default, flag

ROOT = Path(__file__).resolve().parents[2]


@click.command("demo")
@click.option("--labels", type=click.Path(dir_okay=False), default=str(ROOT / "data/labels.csv"),
              show_default="data/labels.csv", help="Labelled images to run on.")
@click.option("--out-dir", type=click.Path(file_okay=False), default="out", show_default=True,
              help="Where the store, checkpoint and reports go (reused by a rerun).")
@flag("weights", "[default: configs/extract.json's, else {}; offline, imagenet falls back "
                 "to random:0 with a notice]")
@flag("precision", "[default: bf16 here: about twice fp32's speed on CPUs with AVX512-BF16]")
@flag("image_size", "[default: configs/extract.json's, else {}]")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Maximum training epochs [default: configs/train.json]")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def demo(labels: str, out_dir: str, weights: str | None, precision: str | None,
         image_size: int | None, epochs: int | None, no_progress: bool, as_json: bool) -> None:
    """Run the whole pipeline on the embedded dataset: extract features into OUT/features.h5,
    train a head (OUT/head.safetensors), evaluate it on the held-out test split (JSON + HTML
    report), score a few test images without torch, and print a summary."""
    from pipeline.config import build_config
    from pipeline.demo import run_demo
    from pipeline.extract.spec import ExtractConfig
    from pipeline.train.fit import TrainConfig

    precision = precision or "bf16"
    # bf16 runs fastest at batch 16 here (bench extract's c_b16: faster than 8 in every round)
    ecfg = build_config(ExtractConfig, config_default("extract.json"),
                        {"weights": weights, "precision": precision, "image_size": image_size,
                         "batch_size": 16 if precision == "bf16" else None})
    tcfg = build_config(TrainConfig, config_default("train.json"), {"epochs": epochs})
    t = time.perf_counter()
    s = run_demo(labels, out_dir, ecfg, tcfg, progress=not no_progress,
                 notice=lambda m: click.echo(m, err=True))
    s["times"]["total_s"] = time.perf_counter() - t
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    m, e, tr = s["test_metrics"], s["extract"], s["train"]
    click.echo("")
    click.echo(f"ssimcache demo — weights {s['weights']}, {s['precision']}, "
               f"{s['image_size']}px")
    click.echo(f"  blocks    extracted {'+'.join(s['blocks']['extracted'])}, head reads "
               f"{'+'.join(s['blocks']['head'])}")
    click.echo(f"  extract   {e['computed']} computed, {e['cached']} cached, {e['failed']} "
               f"failed ({e['images_per_s']:.1f} img/s)   {s['times']['extract_s']:6.1f} s")
    click.echo(f"  train     {tr['train']}/{tr['val']}/{tr['test']} train/val/test, best epoch "
               f"{tr['best_epoch']} of {tr['epochs_run']}        {s['times']['train_s']:6.1f} s")
    click.echo(f"  evaluate  test n={m['n']}: MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  "
               f"PLCC {m['plcc'] or 0:.3f}  SRCC {m['srcc'] or 0:.3f}  R² {m['r2'] or 0:.3f}  "
               f"within 0.05 {m['within_0.05']:.2f}   {s['times']['evaluate_s']:6.1f} s")
    b = m.get("svg_bytes")
    if b:
        click.echo(f"            SVG bytes: within ±25 % {b['within_25pct']:.2f}, median "
                   f"|log10 ratio| {b['median_abs_log10_ratio']:.3f}")
    click.echo(f"  score     {len(s['scored'])} test images (numpy head, no torch)"
               f"{'':21}{s['times']['score_s']:6.1f} s")
    for row in s["scored"]:
        sizes = ""
        if row["predicted_svg_bytes"] is not None:
            sizes = (f"   SVG true {row['true_svg_bytes'] or 0:>9,} B  predicted "
                     f"{row['predicted_svg_bytes']:>9,} B")
        click.echo(f"    {Path(row['path']).name:<28} {row['family'] or '':<13} SSIM true "
                   f"{row['true_ssim']:.3f}  predicted {row['predicted_ssim']:.3f}{sizes}")
    click.echo(f"  total {s['times']['total_s']:.1f} s")
    for name, path in s["outputs"].items():
        click.echo(f"  {name:<10} {path}")
    if s["weights"] == "random:0":
        click.echo("NOTICE: random:0 backbone weights were used (no ImageNet weights offline).",
                   err=True)
