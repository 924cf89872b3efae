"""`ssimcache label`: compute SSIM-after-vectorization labels and append them to a CSV."""

from __future__ import annotations

import json
import os
from contextlib import closing
from pathlib import Path

import click


@click.command("label")
@click.argument("images", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Labels CSV to append `path,ssim,svg_bytes,family` rows to (created with a "
                   "header if new, missing folders too); paths are written relative to its "
                   "folder. One run at a time per CSV (lock file <out>.lock).")
@click.option("--family", default="", show_default=True,
              help="Value of the family column for these images (e.g. the source set).")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              show_default="all cores", help="Labelling processes.")
@click.option("--max-pixels", type=click.IntRange(1), default=None, show_default="64000000",
              help="Larger images fail before decoding (the same guard as extract).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write failures as a `path,reason` CSV here (written even when empty; "
                   "missing folders are created).")
@click.option("--strict", is_flag=True, help="Exit 1 if any image fails (default: exit 0 and "
              "report the failures).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def label(images: tuple[str, ...], out: Path, family: str, workers: int,
          max_pixels: int | None, report: Path | None,
          strict: bool, no_progress: bool, as_json: bool) -> None:
    """Label IMAGES (files, folders, globs, @list.txt) with the SSIM between each image and its
    VTracer vectorization rendered back by resvg (luma, 11x11 Gaussian window, sigma 1.5; alpha
    composited on white), and the size in bytes of that SVG (svg_bytes). Each row is appended
    as its image finishes and images already listed in --out are skipped, so an interrupted
    run resumes where it stopped. A second run on the same --out while one is going fails at
    once (it would append every row twice).
    """
    from tqdm import tqdm

    from pipeline.atomic import write_failure_report
    from pipeline.images.decode import DEFAULT_MAX_PIXELS
    from pipeline.images.inputs import display_path, expand_inputs
    from pipeline.labels.definition import iter_labels, require_label_modules
    from pipeline.labels.writer import LabelWriter, existing_paths, labels_lock, relative_to_csv

    require_label_modules()  # a missing extra is one error, not every image a report row
    paths = expand_inputs(images)
    values: list[float] = []
    svg_sizes: list[int] = []
    failures: list[tuple[Path, str]] = []
    # The lock spans reading what is done and appending: two runs must not both find the same
    # images missing.
    with labels_lock(out):
        done = existing_paths(out)
        todo = [p for p in paths if relative_to_csv(p, out) not in done]
        # Rows go to the CSV as they arrive (input order), so an interrupted run keeps its work.
        results = iter_labels(todo, workers=min(workers, max(1, len(todo))),
                              max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
        # closing(): an interrupted run shuts the worker pool down now, not at garbage collection.
        with tqdm(total=len(todo), desc="label", unit="img", disable=no_progress) as bar, \
                LabelWriter(out, family) as writer, closing(results):
            for path, value, reason in results:
                if value is None:
                    failures.append((path, reason))
                else:
                    writer.write(path, value)
                    values.append(value.ssim)
                    svg_sizes.append(value.svg_bytes)
                bar.update(1)
    written = writer.written
    if report is not None:
        write_failure_report(report, failures)

    summary = {
        "seen": len(paths),
        "skipped_already_labelled": len(paths) - len(todo),
        "labelled": written,
        "failed": len(failures),
        "mean_ssim": sum(values) / len(values) if values else None,
        "median_svg_bytes": sorted(svg_sizes)[len(svg_sizes) // 2] if svg_sizes else None,
        "out": str(out),
        "report": str(report) if report is not None else None,
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        mean = (f", mean SSIM {summary['mean_ssim']:.4f}, median SVG "
                f"{summary['median_svg_bytes']:,} bytes" if values else "")
        click.echo(f"labelled {written} image(s) into {display_path(out)}{mean}; "
                   f"{summary['skipped_already_labelled']} already labelled, "
                   f"{len(failures)} failed")
    if failures:
        where = (f"; see {display_path(report)}" if report is not None
                 else " (use --report FILE for all)")
        click.echo(f"{len(failures)} image(s) failed{where}", err=True)
        if report is None:
            for path, reason in failures[:10]:  # escaped: a name may hold \r or odd bytes
                click.echo(f"  {display_path(path)}: {display_path(reason)}", err=True)
        if strict:
            raise click.ClickException(f"{len(failures)} image(s) failed (--strict)")
