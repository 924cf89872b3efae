"""`ssimcache bench ...`: each benchmark's command lives beside its stage's CLI module."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" of a click command; imported only when run.
BENCHES: dict[str, str] = {
    "store": "pipeline.cli.store_cmd:bench_store",
    "extract": "pipeline.cli.extract_cmd:bench_extract",
    "score": "pipeline.cli.score_cmd:bench_score",
    "cluster": "pipeline.cli.cluster_cmd:bench_cluster",
    "predict": "pipeline.cli.score_cmd:bench_predict",
}


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*BENCHES, "all"]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "all":
            return bench_all
        target = BENCHES.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Benchmarks. Each runs its baseline and candidate in one process, prints a table of
    medians and ratios, and writes JSON (see each command's --help)."""


@click.command("all")
@click.pass_context
def bench_all(ctx: click.Context) -> None:
    """Run every benchmark with its defaults, one after the other."""
    group = ctx.parent.command
    for name in BENCHES:
        cmd = group.get_command(ctx, name)
        click.echo(f"== bench {name} ==")
        ctx.invoke(cmd)
