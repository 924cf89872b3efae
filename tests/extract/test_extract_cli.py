"""Tests for `ssimcache extract`: output, report, --strict, offline imagenet, kill and resume."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.extract.weights import PROBE_TIMEOUT_S, host_reachable
from store.hdf5 import FeatureStore

REPO = Path(__file__).resolve().parents[2]
FAST = ["--weights", "random:0", "--image-size", "32", "--no-progress"]


def _images(folder: Path, n: int, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    out = []
    for i in range(n):
        p = folder / f"im{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
        out.append(p)
    return out


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


@pytest.mark.slow
def test_summary_json_report_and_strict(tmp_path: Path) -> None:
    d = tmp_path / "in"
    _images(d, 3)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    store, report = tmp_path / "f.h5", tmp_path / "out" / "fails.csv"
    run = CliRunner().invoke
    res = run(cli, ["extract", str(d), "--store", str(store), *FAST, "--report", str(report)])
    assert res.exit_code == 0, res.output
    line = res.stdout.strip().splitlines()[-1]
    assert re.match(r"seen 4, already cached 0, computed 3, failed 1, [\d.]+ img/s, "
                    r"namespaces resnet50 [0-9a-f]{12}, imstats [0-9a-f]{12}, "
                    r"preview [0-9a-f]{12}$", line), line
    with open(report, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"] and rows[1][0] == str(d / "broken.png")
    res = run(cli, ["extract", str(d), "--store", str(store), *FAST, "--json"])
    # without --report, stderr names each failed file and its reason
    assert f"failed: {d / 'broken.png'}: " in res.stderr, res.stderr
    obj = json.loads(res.stdout)
    assert set(obj) == {"seen", "cached", "computed", "failed", "images_per_s", "fingerprint",
                        "fingerprints"}
    assert list(obj["fingerprints"]) == ["resnet50", "imstats", "preview"]  # configs/extract.json
    assert (obj["cached"], obj["computed"], obj["failed"]) == (3, 0, 1)
    res = run(cli, ["extract", str(d), "--store", str(store), *FAST, "--strict"])
    assert res.exit_code == 1 and "--strict" in res.output
    (d / "broken.png").unlink()
    assert run(cli, ["extract", str(d), "--store", str(store), *FAST, "--strict"]).exit_code == 0


def test_no_images_found_warns_and_strict_fails(tmp_path: Path) -> None:
    d = tmp_path / "svgs"
    d.mkdir()
    (d / "logo.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    store = tmp_path / "f.h5"
    res = CliRunner().invoke(cli, ["extract", str(d), "--store", str(store), *FAST])
    assert res.exit_code == 0 and f"no images found in {d}" in res.stderr, res.output
    res = CliRunner().invoke(cli, ["extract", str(d), "--store", str(store), *FAST, "--strict"])
    assert res.exit_code == 1 and "no images found" in res.output


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    run = CliRunner().invoke
    res = run(cli, ["extract", str(tmp_path), "--store", "x.h5", "--weights", "nonsense"])
    assert res.exit_code == 2 and "random:SEED" in res.output
    res = run(cli, ["extract", str(tmp_path), "--store", "x.h5", "--precision", "fp8"])
    assert res.exit_code == 2


@pytest.mark.slow
def test_imagenet_offline_fails_fast_with_directions(tmp_path: Path) -> None:
    _images(tmp_path / "in", 1)
    # Tests never download: a reachable host is made offline with the env switch; without a
    # network (here) the real connect probe is what must fail fast.
    offline = "1" if host_reachable("download.pytorch.org", 443, PROBE_TIMEOUT_S) else "0"
    # A subprocess timeout, not a timing assert: a hang fails the test instead of blocking CI.
    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", str(tmp_path / "in"), "--store",
         str(tmp_path / "f.h5"), "--weights", "imagenet", "--no-progress"],
        capture_output=True, text=True, timeout=45, cwd=tmp_path,
        env=_env(TORCH_HOME=str(tmp_path / "th"), SSIMCACHE_OFFLINE=offline))
    assert res.returncode == 1, res.stderr
    cache = tmp_path / "th" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert res.stderr.startswith("Error: ") and "Traceback" not in res.stderr
    assert str(cache) in res.stderr and "--weights PATH" in res.stderr
    assert "random:SEED" in res.stderr


@pytest.mark.slow
def test_kill_mid_run_then_resume(tmp_path: Path) -> None:
    n = 40
    _images(tmp_path / "in", n, size=64)
    store = tmp_path / "f.h5"
    args = [sys.executable, "-m", "pipeline", "extract", str(tmp_path / "in"), "--store",
            str(store), "--weights", "random:0", "--batch-size", "2", "--threads", "1"]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env=_env(), cwd=tmp_path)
    seen, deadline = b"", time.monotonic() + 120
    try:
        # tqdm updates the bar after each committed batch: kill at the first "k/40" with k >= 2
        while time.monotonic() < deadline:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            # only the extract bar: the hash bar's "40/40" comes before any commit
            done = [int(k) for k in re.findall(rb"extract:[^\r\n]*?(\d+)/%d" % n, seen)]
            if done and max(done) >= 2:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, seen.decode(errors="replace")
    with FeatureStore(store, mode="r") as fs:
        # committed per block: a kill may fall between a batch's two writes
        committed = set.intersection(*(set(fs.namespace(fp).keys())
                                       for fp in fs.fingerprints()))
    assert 2 <= len(committed) < n, "the run was not killed mid-way"
    res = subprocess.run(args + ["--json", "--no-progress"], capture_output=True, text=True,
                         timeout=300, env=_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    obj = json.loads(res.stdout)
    k = len(committed)
    assert (obj["cached"], obj["computed"], obj["failed"]) == (k, n - k, 0)
    with FeatureStore(store, mode="r") as fs:
        assert fs.verify() == []
        assert [len(fs.namespace(fp)) for fp in fs.fingerprints()] == [n, n, n]


def test_default_config_is_found_from_any_cwd(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import default_config

    # resolved next to the package, not the cwd: the same defaults from any directory
    monkeypatch.chdir(tmp_path)
    assert default_config("extract.json") == REPO / "configs" / "extract.json"
    res = CliRunner().invoke(cli, ["extract", "--help"])
    assert res.exit_code == 0 and "configs/extract.json" in res.output


@pytest.mark.slow
def test_bench_extract_reports_roofline_and_marks_impossible_figures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Roofline fields present and consistent; a timing above the roofline is INVALID."""
    import pipeline.bench.extract as bench

    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", "extract", "--images", "3", "--repeats", "1",
                                      "--modes", "a,b,c,c0,e,f", "--image-size", "32",
                                      "--batch-size", "2", "--peak-repeats", "2", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    modes = {m["mode"]: m for m in data["modes"]}
    assert set(modes) == {"a", "b", "c", "c0", "e", "f"} and data["images"] == 3
    assert modes["a"]["ratio_to_a"] == 1.0
    # bf16 converted once gives the vectors of the autocast path it replaced, to the bit
    assert modes["c"]["identical_vectors_to"] == ["c0"]
    # e adds the imstats block to b's pass: the same backbone vectors, its speed relative to b
    assert "b" in modes["e"]["identical_vectors_to"]
    assert data["blocks_over_backbone"] == pytest.approx(
        modes["e"]["images_per_s"] / modes["b"]["images_per_s"])
    # f adds preview too (extract's default blocks)
    assert "b" in modes["f"]["identical_vectors_to"]
    assert data["default_blocks_over_backbone"] == pytest.approx(
        modes["f"]["images_per_s"] / modes["b"]["images_per_s"])
    assert "default blocks (f: + preview) / backbone alone (b)" in result.output
    assert len(modes["b"]["other_cpu_share"]) == 1  # one round
    roof = data["roofline"]
    assert roof["gflop_per_image"] == pytest.approx(0.1668, rel=0.01)  # ResNet-50 at 32 px
    assert roof["peak_gflops"]["fp32"] > 0 and roof["peak_gflops"]["bf16"] > 0
    assert data["valid"] is True and "load_average" in data["machine"]
    assert data["load_average_after"] is not None
    for m in modes.values():
        assert m["images_per_s"] > 0 and m["model_only_images_per_s"] > 0
        assert m["ratio_to_a"] == pytest.approx(m["images_per_s"] / modes["a"]["images_per_s"])
        peak = roof["peak_gflops"][m["precision"]]
        for speed, frac in (("images_per_s", "roofline_fraction"),
                            ("model_only_images_per_s", "model_only_roofline_fraction"),
                            ("network_images_per_s", "network_roofline_fraction")):
            assert m[frac] == pytest.approx(m[speed] * roof["gflop_per_image"] / peak)
        assert m["valid"] is True and m["invalid_reasons"] == []
        conv = roof["conv_peak_gflops"][m["precision"]]
        assert m["conv_roofline_fraction"] == pytest.approx(
            m["images_per_s"] * roof["gflop_per_image"] / conv)
    assert modes["c"]["precision"] == "bf16" and modes["b"]["precision"] == "fp32"
    assert set(modes["b"]["phases_ms_per_image"]) == set(bench.PHASES)
    assert sum(modes["b"]["phases_ms_per_image"].values()) == pytest.approx(
        1000.0 / modes["b"]["images_per_s"], rel=1e-3)  # ms/img: the phases are the wall time
    assert 0.99 < modes["c"]["cos_min"] <= 1.0 + 1e-6  # bf16 vs fp32 vectors
    assert "img/s" in result.output and "roofline: fp32" in result.output

    # Inject a timing twice the fp32 ceiling: the row is marked, the table flags it, exit 1.
    fake = json.loads(out.read_text())
    row = next(m for m in fake["modes"] if m["mode"] == "b")
    row["images_per_s"] = 2 * roof["images_per_s_ceiling"]["fp32"]
    bench.judge(row, fake["roofline"])
    assert row["valid"] is False and row["roofline_fraction"] == pytest.approx(2.0)
    assert "end to end" in row["invalid_reasons"][0]
    # Above the matmul peak but below a conv probe that measured higher: real, so valid.
    roomy = {**fake["roofline"], "conv_peak_gflops": {
        p: 3 * v for p, v in fake["roofline"]["peak_gflops"].items()}}
    ok_row = bench.judge(dict(row), roomy)
    assert ok_row["valid"] is True and ok_row["roofline_fraction"] == pytest.approx(2.0)
    assert ok_row["conv_roofline_fraction"] == pytest.approx(2.0 / 3.0)
    fake["valid"] = False
    monkeypatch.setattr(bench, "run_bench", lambda **kw: fake)
    res = CliRunner().invoke(cli, ["bench", "extract", "--out", str(tmp_path / "fake.json")])
    assert res.exit_code == 1 and "INVALID mode b: end to end" in res.output
    assert json.loads((tmp_path / "fake.json").read_text())["valid"] is False


def test_bench_extract_cli_runs_the_modules_default_modes() -> None:
    from pipeline.bench.extract import DEFAULT_MODES
    from pipeline.cli.extract_cmd import bench_extract

    (modes,) = [p for p in bench_extract.params if p.name == "modes"]
    assert modes.default == ",".join(DEFAULT_MODES)  # e (both blocks) included
