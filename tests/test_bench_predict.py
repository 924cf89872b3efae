"""bench predict: truth vs first-contact vs cached timings per (family, size), consistent."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.bench.predict import pick_images, run_bench
from pipeline.cli import cli


def _labels(tmp_path, make_image, sizes=(256, 256, 512)):
    """Logo-like images (a colour block on white) whose longer side is each of `sizes`."""
    rng = np.random.default_rng(0)
    lines = ["path,ssim,svg_bytes,family"]
    for i, side in enumerate(sizes):
        path = make_image(tmp_path / f"im{i}.png", (side // 2 + 8, side), "two_colour",
                          colour=rng.integers(0, 255, 3))
        lines.append(f"{path.name},0.9,1000,{'a' if i % 2 else 'b'}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_cells_are_picked_by_family_and_longer_side(tmp_path, make_image):
    cells = pick_images(_labels(tmp_path, make_image), per_cell=5)
    assert {k: len(v) for k, v in cells.items()} == {("b", 256): 1, ("a", 256): 1,
                                                     ("b", 512): 1}


def test_bench_predict_reports_consistent_speedups(tmp_path, make_image):
    result = run_bench(_labels(tmp_path, make_image), per_cell=1, repeats=1,
                       blocks_list=(("imstats",),), log=lambda s: None)
    assert [c["size"] for c in result["cells"]] == [256, 256, 512]
    for c in result["cells"]:
        m = c["imstats"]
        assert c["truth_ms"] > 0 and m["first_contact_ms"] > 0 and m["cached_ms"] > 0
        assert m["speedup_first"] == pytest.approx(c["truth_ms"] / m["first_contact_ms"])
        assert m["speedup_cached"] == pytest.approx(c["truth_ms"] / m["cached_ms"])
    assert set(result["by_size"]) == {"256", "512"}
    assert "load_average" in result["machine"]


def test_bench_predict_cli_writes_json(tmp_path, monkeypatch, make_image):
    import pipeline.bench.predict as bp

    real = bp.run_bench
    monkeypatch.setattr(bp, "run_bench", lambda *a, **k: real(
        *a, **{**k, "blocks_list": (("imstats",),)}))
    out = tmp_path / "p.json"
    labels = _labels(tmp_path, make_image)
    res = CliRunner().invoke(cli, ["bench", "predict", "--labels", str(labels),
                                   "--per-cell", "1", "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["blocks"] == ["imstats"] and "x-first" in res.output
