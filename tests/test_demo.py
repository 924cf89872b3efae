"""Test of `ssimcache demo` on a tiny generated set (real ResNet-50, random:0, 64 px)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli


@pytest.mark.slow  # the whole demo, real ResNet-50
def test_demo_offline_falls_back_to_random_weights(tmp_path, monkeypatch, make_dataset):
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1")  # imagenet must not be fetched: fall back
    csv = make_dataset(tmp_path / "data", n=40, svg_bytes=True)  # both targets
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["demo", "--labels", str(csv), "--out-dir", str(out),
                                   "--image-size", "64", "--epochs", "3", "--no-progress",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert "falling back to --weights random:0" in res.stderr
    s = json.loads(res.stdout)
    assert s["weights"] == "random:0" and s["extract"]["computed"] == 40
    assert s["test_metrics"]["n"] == s["train"]["test"] > 0
    assert 0 < len(s["scored"]) <= 5
    assert all(0 < r["predicted_ssim"] < 1 for r in s["scored"]), s["scored"]
    assert all(r["predicted_svg_bytes"] > 0 and r["true_svg_bytes"] > 0 for r in s["scored"])
    assert "svg_bytes" in s["test_metrics"] and s["blocks"]["head"] == ["imstats", "preview"]
    for path in s["outputs"].values():
        assert (out / path.split("/")[-1]).is_file()
    # a rerun reuses the store: nothing recomputed
    again = CliRunner().invoke(cli, ["demo", "--labels", str(csv), "--out-dir", str(out),
                                     "--weights", "random:0", "--image-size", "64",
                                     "--epochs", "2", "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "0 computed, 40 cached" in again.stdout and "total" in again.stdout
    assert "SVG bytes: within" in again.stdout and "SVG true" in again.stdout
