"""`ssimcache extract` and `ssimcache bench extract`: flags -> ExtractConfig -> runner -> output."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.cli.options import config_default, spec_options


@click.command("extract")
@click.argument("images", nargs=-1, required=True)
@click.option("--store", "store_path", required=True, type=click.Path(dir_okay=False),
              help="HDF5 feature store (created if absent, missing folders too).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              default=config_default("extract.json"),
              show_default="configs/extract.json of this checkout if present, else built-in",
              help="JSON defaults; flags override it.")
@spec_options
@click.option("--batch-size", type=click.IntRange(1), show_default="8",
              help="Images per forward pass and per committed store batch.")
@click.option("--workers", type=click.IntRange(0), show_default="0 = number of cores",
              help="Decode/hash threads.")
@click.option("--threads", type=click.IntRange(0), show_default="0 = number of cores",
              help="torch intra-op threads.")
@click.option("--max-pixels", type=click.IntRange(1), show_default="64000000",
              help="Larger images fail (decompression-bomb guard).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write failures to this CSV (path,reason; missing folders are created; "
                   "names keep their exact characters and bytes).")
@click.option("--strict", is_flag=True, help="Exit 1 if any input failed.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object instead of the summary line.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--backend", type=click.Choice(["local", "dask", "ray"]), default="local",
              show_default=True, help="Where images are hashed and embedded: here, or on a "
              "Dask or Ray cluster (workers read the images; this process only stats them, "
              "decides what is missing and alone writes the store).")
@click.option("--scheduler", help="Dask scheduler address (tcp://host:8786) or Ray address "
              "('auto', 'ray://host:10001'); omitted: 2 local worker processes.")
def extract(images: tuple[str, ...], store_path: str, config_path: str | None,
            report_path: Path | None, strict: bool, as_json: bool, no_progress: bool,
            compile_: bool | None, backend: str, scheduler: str | None,
            **flags: object) -> None:
    """Compute the feature blocks (--features: the CPU ResNet-50 vector, image statistics)
    of IMAGES (files, folders, globs, @list.txt) into the store, one namespace per block.

    Each image is decoded once; only the blocks a key lacks for this configuration are
    computed, so a rerun after a crash resumes and a grown folder computes only the new images.
    """
    from pipeline.atomic import write_failure_report
    from pipeline.config import build_config
    from pipeline.extract.runner import extract as run_extract
    from pipeline.extract.spec import ExtractConfig
    from pipeline.images.inputs import IMAGE_SUFFIXES, display_path, expand_inputs

    cfg = build_config(ExtractConfig, config_path, {**flags, "compile": compile_})
    if scheduler and backend == "local":
        raise click.BadParameter("needs --backend dask or ray", param_hint="--scheduler")
    paths = expand_inputs(images)
    if not paths:  # e.g. a folder of .svg files: say so instead of a silent "seen 0"
        shown = " ".join(map(display_path, images))
        click.echo(f"warning: no images found in {shown} (looked for "
                   f"{', '.join(sorted(IMAGE_SUFFIXES))})", err=True)
        if strict:
            raise click.ClickException("no images found and --strict is set")
    # One rule for every output: missing folders are created (here the store's, since the
    # store refuses a missing folder and `extract --store new/f.h5` is a natural first command).
    Path(store_path).parent.mkdir(parents=True, exist_ok=True)
    if backend == "local":
        report = run_extract(paths, store_path, cfg, progress=not no_progress)
    else:  # pipeline/extract/cluster.py: workers hash and compute, this process writes
        from pipeline.extract.cluster import extract_on_cluster

        report = extract_on_cluster(paths, store_path, cfg, backend=backend,
                                    scheduler=scheduler, progress=not no_progress)
    if report_path is not None:
        write_failure_report(report_path, report.failures)
    elif report.failures:
        for path, reason in report.failures[:10]:  # escaped: a name may hold \r or odd bytes
            click.echo(f"failed: {display_path(path)}: {display_path(reason)}", err=True)
        more = len(report.failures) - 10
        click.echo(f"... and {more} more" if more > 0 else "(use --report FILE for a CSV)",
                   err=True)
    if as_json:
        click.echo(json.dumps(report.to_json()))
    else:
        click.echo(report.summary())
    if strict and report.failures:
        raise click.ClickException(f"{report.failed} input(s) failed and --strict is set")


@click.command("extract")
@click.option("--images", type=click.IntRange(1), default=300, show_default=True,
              help="Generated 256x256 PNGs.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True,
              help="Timed runs per mode (median reported).")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Forward batch of the extract modes (extract's default).")
@click.option("--image-size", type=click.IntRange(16), default=224, show_default=True)
@click.option("--modes", default="a,b,c,d,g,e,b0,c0", show_default=True,
              help="Comma-separated keys of pipeline.bench.extract.MODES: a (naive seed loop), "
                   "b (defaults, backbone only), c (bf16), d (bf16 + --compile), g (fp32 + "
                   "--compile), e (b with the imstats block too), f (e with preview too: "
                   "extract's default blocks), b0/c0 (b/c before the bf16 change); candidates "
                   "b_w1, c_w1 (1 decode thread), c_b4, c_b16, d_b16 (batch), b_p0, c_p0, e_p0 "
                   "(decode and model in turn).")
@click.option("--peak-size", type=click.IntRange(16), default=2048, show_default=True,
              help="Side of the square torch.mm that measures the machine's peak GFLOP/s.")
@click.option("--peak-repeats", type=click.IntRange(1), default=10, show_default=True,
              help="Matmuls per precision and probe (best counts).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("bench-results/extract.json"), show_default=True)
def bench_extract(images: int, repeats: int, batch_size: int, image_size: int, modes: str,
                  peak_size: int, peak_repeats: int, out: Path) -> None:
    """Extract throughput per mode (random:0 weights), end to end and model-only, as a
    fraction of this machine's roofline (matmul peak measured in the same run) and of a conv
    probe's peak (oneDNN's convolutions outrun the matmul); figures above the higher of the
    two are marked INVALID. Exit 1 if any is."""
    from pipeline.atomic import atomic_write_text
    from pipeline.bench.extract import MODES, format_table, run_bench

    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    bad = sorted(set(wanted) - set(MODES))
    if bad or not wanted:
        raise click.BadParameter(f"unknown mode(s) {bad}; known: {', '.join(MODES)}",
                                 param_hint="--modes")
    result = run_bench(n_images=images, repeats=repeats, batch_size=batch_size,
                       image_size=image_size, modes=wanted, peak_size=peak_size,
                       peak_repeats=peak_repeats, log=lambda s: click.echo(s, err=True))
    atomic_write_text(out, json.dumps(result, indent=2))
    click.echo(format_table(result))
    click.echo(f"wrote {out}")
    if not result["valid"]:
        raise click.ClickException("a figure is above the roofline measured in this run "
                                   "(marked INVALID above): it was not measured as it claims")
