"""The `ssimcache` command: one click group whose subcommands load lazily.

Subcommands live in `pipeline/cli/*_cmd.py` and are imported only when invoked, so
`ssimcache score` on cached images never pays for importing torch. This package is the only
place that imports click, prints for the user or exits; typed errors (`StoreError`,
`PipelineError`) become `Error: ...` with exit code 1, usage errors exit 2.
"""

from __future__ import annotations

import importlib
import warnings

import click

from pipeline.errors import PipelineError, PipelineWarning
from store.errors import StoreError

# name -> "module:attribute"; the module is imported only when the command runs.
COMMANDS: dict[str, str] = {
    "extract": "pipeline.cli.extract_cmd:extract",
    "train": "pipeline.cli.train_cmd:train",
    "evaluate": "pipeline.cli.train_cmd:evaluate",
    "score": "pipeline.cli.score_cmd:score",
    "export": "pipeline.cli.train_cmd:export",
    "demo": "pipeline.cli.demo_cmd:demo",
    "validate": "pipeline.cli.validate_cmd:validate",
    "label": "pipeline.cli.label_cmd:label",
    "bench": "pipeline.cli.bench_cmd:bench",
    "store": "pipeline.cli.store_cmd:store",
}

HELP = {
    "extract": "Run the CPU ResNet-50 over images into the feature store.",
    "train": "Train the MLP head on cached features against SSIM labels.",
    "evaluate": "Evaluate a checkpoint on labelled images (MAE, RMSE, PLCC, SRCC, ...).",
    "score": "Predict SSIM-after-vectorization for images (cached ones without torch).",
    "export": "Export a trained head (or backbone + head) to ONNX or TorchScript.",
    "demo": "Run extract -> train -> evaluate -> score on the embedded dataset.",
    "validate": "Run the architecture validation suite and write JSON/HTML reports.",
    "label": "Compute SSIM-after-vectorization labels for images (VTracer + resvg).",
    "bench": "Benchmarks: store, extract, score, cluster.",
    "store": "Inspect and maintain a feature store: info, verify, prune, compact, export.",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module on first use and translates typed errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the static help so `--help` does not import every subcommand (and torch).
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("once", PipelineWarning)  # a file loaded twice: once
                warnings.showwarning = _warning_printer(warnings.showwarning)
                return super().invoke(ctx)
        except (StoreError, PipelineError) as e:
            raise click.ClickException(str(e)) from e


def _warning_printer(default):
    """showwarning: our own warnings as one `warning: ...` line on stderr, others unchanged."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, PipelineWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)
    return show


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ssimcache")
def cli() -> None:
    """ssimcache: predict how faithful a raster logo's SVG vectorization will be (its SSIM)
    and how heavy the SVG will be, from cached feature blocks (image statistics, CPU
    ResNet-50) and small MLP heads.

    Typical flow: `ssimcache extract` images into a store, `ssimcache train` a head on
    labelled images, then `ssimcache score` images in milliseconds.
    """


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="ssimcache")
