"""`ssimcache validate`: the architecture validation suite, with JSON and HTML reports."""

from __future__ import annotations

import json
import os

import click

from pipeline.cli.options import config_default, extractor_options
from pipeline.cli.params import LEAK_ITERATIONS

CHECK_NAMES = ("dimensions", "gradients", "memory", "performance", "stability", "robustness",
               "profile", "comparison")


def _check_list(ctx: click.Context, param: click.Parameter, value: str | None
                ) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    bad = sorted(set(names) - set(CHECK_NAMES))
    if bad or not names:
        raise click.BadParameter(f"unknown check(s) {bad}; choose from {', '.join(CHECK_NAMES)}")
    return names


def summary_table(report: dict) -> str:
    """One row per check: status, seconds, summary; failures listed under their check."""
    lines = [f"{'check':<12} {'status':<6} {'seconds':>8}  summary"]
    for name, c in report["checks"].items():
        lines.append(f"{name:<12} {c['status']:<6} {c['seconds']:>8.2f}  {c['summary']}")
        lines += [f"{'':<12} ! {f}" for f in c["failures"]]
    verdict = "PASSED" if report["passed"] else "FAILED"
    counts = report["counts"]
    lines.append(f"{verdict}: {counts['pass']} pass, {counts['fail']} fail, "
                 f"{counts['skip']} skipped ({report['model']['source']}, "
                 f"{report['seconds']:.1f} s)")
    return "\n".join(lines)


@click.command("validate")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Head checkpoint from `ssimcache train` [default: an untrained default head]")
@extractor_options
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              default=config_default("validate.json"), show_default="configs/validate.json",
              help="Validation JSON config (ValidateConfig fields: thresholds, batch sizes, "
                   "targets, head configs to compare).")
@click.option("--checks", callback=_check_list, default=None,
              help=f"Comma-separated checks to run [default: all: {','.join(CHECK_NAMES)}]")
@click.option("--images", multiple=True,
              help="Images, folders, globs or @list.txt for the robustness check (repeatable) "
                   "[default: the --labels images]")
@click.option("--store", type=click.Path(dir_okay=False), default=None,
              help="Feature store for the architecture comparison (with --labels).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Labels CSV `path,ssim[,svg_bytes][,family]`: its images feed the "
                   "robustness check (unless --images), its labels the comparison (with "
                   "--store).")
@click.option("--cached-only", is_flag=True,
              help="Comparison: fail instead of extracting labelled images the store lacks.")
@click.option("--leak-iterations", type=LEAK_ITERATIONS, default=None,
              help="Repeated inferences of the leak check, 20..10000 [default: 100 / config]")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON report here ('-' = stdout); schema: "
                   "pipeline/validate/schema.json.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Write the HTML report (tables + plots) here.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
def validate(checkpoint: str | None, weights: str | None, precision: str | None,
             image_size: int | None, extract_config: str | None, config_path: str | None,
             checks: tuple[str, ...] | None, images: tuple[str, ...], store: str | None,
             labels: str | None, cached_only: bool, leak_iterations: int | None,
             json_out: str | None, html_out: str | None, no_progress: bool) -> None:
    """Validate the model architecture (backbone + head): dimensions, gradient flow, memory,
    performance against the seed targets, numerical stability, robustness (needs images),
    layer profile, and a comparison of head configs (needs --store and --labels). Each check
    reports pass/fail with its measured figures.

    Exit status: 0 when every check that ran passed (skipped checks do not fail), 1 when any
    check failed or on an error."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # quiet torch.profiler's C++ logging
    from pipeline.config import build_config
    from pipeline.validate.report import (
        jsonable,
        schema_errors,
        write_html_report,
        write_json_report,
    )
    from pipeline.validate.runner import ValidateConfig, validate_files

    cfg = build_config(ValidateConfig, config_path,
                       {"checks": checks, "leak_iterations": leak_iterations})
    report = validate_files(
        cfg, checkpoint=checkpoint,
        extract_config=extract_config or (None if checkpoint else config_default("extract.json")),
        overrides={"weights": weights, "precision": precision, "image_size": image_size},
        images=images, store=store, labels=labels, cached_only=cached_only,
        progress=not no_progress)
    problems = schema_errors(jsonable(report))
    if problems:  # a bug here, not a model finding: say so loudly
        raise click.ClickException(f"the report does not match its schema: {problems[:5]}")
    to_stdout = json_out == "-"
    written = []
    if json_out and not to_stdout:
        written.append(write_json_report(json_out, report))
    if html_out:
        written.append(write_html_report(html_out, report))
    if to_stdout:
        click.echo(json.dumps(jsonable(report), indent=2, allow_nan=False))
    else:
        click.echo(summary_table(report))
        for path in written:
            click.echo(f"wrote {path}")
    if not report["passed"]:
        raise SystemExit(1)
