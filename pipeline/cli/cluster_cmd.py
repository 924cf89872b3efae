"""`ssimcache bench cluster`: local extract vs Dask vs Ray, workers or driver hashing."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("cluster")
@click.option("--images", type=click.IntRange(1), default=200, show_default=True,
              help="Generated 256x256 PNGs, the same set for every path.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs per path, interleaved (median reported).")
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Local worker processes per engine (one thread each).")
@click.option("--engines", default="dask,ray", show_default=True,
              help="Which of dask, ray to measure (comma-separated), one after the other.")
@click.option("--image-size", type=click.IntRange(16), default=224, show_default=True,
              help="Model input side in pixels.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images per forward pass, hence per shard sent to a worker.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench-results/cluster.json"), show_default=True,
              help="Where the JSON result is written.")
def bench_cluster(images: int, repeats: int, workers: int, engines: str, image_size: int,
                  batch_size: int, out: Path) -> None:
    """Extract throughput here vs on local Dask and Ray clusters, with workers hashing vs the
    driver hashing; image bytes the driver reads (random:0 weights, fp32)."""
    from pipeline.atomic import atomic_write_text
    from pipeline.bench.cluster import format_table, run_bench

    wanted = [e.strip() for e in engines.split(",") if e.strip()]
    bad = sorted(set(wanted) - {"dask", "ray"})
    if bad or not wanted:
        raise click.BadParameter(f"use dask and/or ray, got {engines!r}", param_hint="--engines")
    result = run_bench(n_images=images, repeats=repeats, workers=workers,
                       image_size=image_size, batch_size=batch_size, engines=wanted,
                       log=lambda s: click.echo(s, err=True))
    atomic_write_text(out, json.dumps(result, indent=2))
    click.echo(format_table(result))
    click.echo(f"wrote {out}")
