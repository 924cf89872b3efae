"""The `ssimcache` group: lazy subcommands, typed errors -> `Error:` + exit 1, usage -> exit 2."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from pipeline import cli as cli_module
from pipeline.cli import COMMANDS, HELP, cli
from pipeline.errors import PipelineError
from store.errors import StoreCorruptError


def test_every_declared_command_resolves_to_a_click_command():
    assert set(COMMANDS) == set(HELP)
    for name in COMMANDS:
        cmd = cli.get_command(click.Context(cli), name)
        assert isinstance(cmd, click.Command), name


def test_help_lists_commands_without_importing_torch():
    code = ("import sys; from click.testing import CliRunner; from pipeline.cli import cli; "
            "r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'extract' in r.output and 'score' in r.output; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_pipeline_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True,
                         text=True, check=True)
    assert "Usage: ssimcache" in out.stdout or "Usage: python -m pipeline" in out.stdout
    assert "store" in out.stdout


@pytest.mark.parametrize("exc", [PipelineError("bad labels.csv line 3: fix it"),
                                 StoreCorruptError("x.h5 is damaged: move it aside")])
def test_typed_errors_become_error_lines_and_exit_1(monkeypatch, exc):
    @click.command()
    def boom() -> None:
        raise exc

    monkeypatch.setattr(cli_module.LazyGroup, "get_command",
                        lambda self, ctx, name: boom if name == "boom" else None)
    result = CliRunner().invoke(cli, ["boom"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and str(exc) in result.output


def test_other_exceptions_are_bugs_and_keep_their_traceback(monkeypatch):
    @click.command()
    def boom() -> None:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(cli_module.LazyGroup, "get_command", lambda self, ctx, name: boom)
    result = CliRunner().invoke(cli, ["boom"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_usage_errors_exit_2():
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2
    assert CliRunner().invoke(cli, ["store", "info"]).exit_code == 2  # missing STORE argument


def test_bench_all_runs_every_benchmark_with_its_defaults(monkeypatch):
    from pipeline.cli import bench_cmd

    calls = []

    @click.command()
    @click.option("--n", default=7)
    def fake(n: int) -> None:
        calls.append(n)

    monkeypatch.setattr(bench_cmd, "BENCHES", {"one": "x:y", "two": "x:y"})
    monkeypatch.setattr(bench_cmd._BenchGroup, "get_command",
                        lambda self, ctx, name: bench_cmd.bench_all if name == "all" else fake)
    result = CliRunner().invoke(cli, ["bench", "all"])
    assert result.exit_code == 0, result.output
    assert calls == [7, 7] and "== bench one ==" in result.output
