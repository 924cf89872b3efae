"""Tests for pipeline.labels and `ssimcache label`, on generated images."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline.cli import cli
from pipeline.errors import ImageError, PipelineError
from pipeline.labels.definition import LABEL_MODULES, label_image, label_images
from pipeline.train.labels_csv import read_labels

# The images: 64-px squares from the shared factory (two_colour: a red square on white;
# noise: uniform; transparent: a blue disc and a half-transparent ring on nothing).
SIDE = 64


def test_flat_two_colour_square_is_near_perfect(make_image):
    assert label_image(make_image.bytes(SIDE, "two_colour")).ssim >= 0.99


def test_uniform_noise_labels_low(make_image):
    assert label_image(make_image.bytes(SIDE, "noise")).ssim < 0.5


def test_transparency_is_composited_on_white(make_image):
    rgba = make_image.image(SIDE, "transparent")
    # By hand: out = a * colour + (1 - a) * 255, per channel.
    arr = np.asarray(rgba).astype(np.float64)
    a = arr[..., 3:4] / 255.0
    flat = np.rint(arr[..., :3] * a + 255.0 * (1 - a)).astype(np.uint8)
    by_hand = label_image(make_image.encode(Image.fromarray(flat, "RGB")))
    assert label_image(make_image.encode(rgba)).ssim == pytest.approx(by_hand.ssim, abs=1e-9)
    # ... and not on black: the same pixels flattened on black label differently.
    on_black = Image.new("RGB", rgba.size, (0, 0, 0))
    on_black.paste(rgba, mask=rgba.split()[3])
    assert label_image(make_image.encode(on_black)).ssim != pytest.approx(by_hand.ssim, abs=1e-6)


def test_labels_deterministic_and_in_range_across_processes(tmp_path, make_image):
    paths = [make_image(tmp_path / f"img{i}.png", SIDE, kind, seed)
             for i, (kind, seed) in enumerate([("two_colour", 0), ("noise", 1),
                                               ("transparent", 0)])]
    first = label_images(paths, workers=1)
    second = label_images(paths, workers=2)  # process pool: same values, same order
    assert not first.failures and not second.failures
    assert first.labels == second.labels
    assert [p for p, _ in first.labels] == paths
    assert all(-1.0 <= v.ssim <= 1.0 and v.svg_bytes > 0 for _, v in first.labels)


def test_broken_missing_and_tiny_files_become_failure_rows(tmp_path, make_image):
    good = make_image(tmp_path / "good.png", SIDE, "two_colour")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage, not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    tiny = make_image(tmp_path / "tiny.png", 9, "flat", colour="red")  # under SSIM's 11
    missing = tmp_path / "missing.png"
    result = label_images([broken, good, truncated, tiny, missing], workers=2)
    assert [p for p, _ in result.labels] == [good]
    reasons = dict(result.failures)
    assert set(reasons) == {broken, truncated, tiny, missing}
    assert "not found" in reasons[missing] and "11 pixels" in reasons[tiny]
    with pytest.raises(ImageError, match="not a readable image"):
        label_image(broken)


def test_sixteen_bit_grey_is_scaled_not_clipped(make_image):
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    img16 = Image.fromarray(ramp)
    img8 = Image.fromarray(np.rint(ramp / 257).astype(np.uint8)).convert("RGB")
    assert label_image(make_image.encode(img16)).ssim == pytest.approx(
        label_image(make_image.encode(img8)).ssim, abs=1e-9)


def test_cli_label_appends_reports_and_resumes(tmp_path, make_image):
    imgs = tmp_path / "imgs"
    make_image(imgs / "square.png", SIDE, "two_colour")
    make_image(imgs / "logo.png", SIDE, "transparent")
    (imgs / "broken.png").write_bytes(b"not a png at all")
    out, report = tmp_path / "labels.csv", tmp_path / "fails.csv"
    runner = CliRunner()
    args = ["label", str(imgs), "--out", str(out), "--family", "test", "--workers", "1",
            "--report", str(report), "--no-progress"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    rows = read_labels(out)
    assert sorted(r.path.name for r in rows) == ["logo.png", "square.png"]
    assert {r.family for r in rows} == {"test"}
    assert out.read_text().splitlines()[1].startswith("imgs/")
    with open(report, newline="") as f:
        fails = list(csv.reader(f))
    assert len(fails) == 2 and fails[1][0].endswith("broken.png")
    # the path is its own column: the reason does not repeat it
    assert "broken.png" not in fails[1][1] and fails[1][1].startswith("not an image")

    # Rerun: labelled images are skipped (no duplicate rows, no second header); --strict fails.
    res = runner.invoke(cli, [*args, "--strict", "--json"])
    assert res.exit_code == 1 and "failed (--strict)" in res.output
    assert out.read_text().count("path,ssim") == 1 and len(read_labels(out)) == 2


def test_cli_label_usage_errors(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["label", "--out", str(tmp_path / "x.csv")]).exit_code == 2
    res = runner.invoke(cli, ["label", "x.png", "--out", "o.csv", "--workers", "0"])
    assert res.exit_code == 2
    res = runner.invoke(cli, ["label", str(tmp_path / "*.png"), "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 1 and "matches no file" in res.output


def test_cli_failure_line_names_the_path_once(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    res = CliRunner().invoke(cli, ["label", str(broken), "--out", str(tmp_path / "o.csv"),
                                   "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("  "))
    assert line == f"  {broken}: " + line.split(": ", 1)[1] and line.count("broken.png") == 1
    assert "not an image" in line


@pytest.mark.parametrize("module", LABEL_MODULES)
def test_missing_label_package_is_one_clear_error(tmp_path, monkeypatch, module, make_image):
    img = make_image(tmp_path / "square.png", SIDE, "two_colour")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    out = tmp_path / "labels.csv"
    res = CliRunner().invoke(cli, ["label", str(img), "--out", str(out), "--workers", "1",
                                   "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and "pip install vtracer resvg-py" in res.output
    assert module in res.output
    assert not out.exists(), "nothing labelled, nothing written"
    with pytest.raises(PipelineError, match=r"reinstall it"):
        label_images([img])


# Runs `ssimcache label` in a child whose labeller SIGKILLs the process (no cleanup, no
# flush, no finally) when asked for image number KILL_AT (0-based): KILL_AT images are done.
_KILLED_CHILD = """
import os, signal, sys
import pipeline.labels.definition as L
from pipeline.cli import cli
real, calls = L.label_image, [0]
def label_then_die(path, max_pixels):
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    calls[0] += 1
    return real(path, max_pixels)
L.label_image = label_then_die
cli(sys.argv[2:], prog_name="ssimcache")
"""


def test_killed_run_keeps_finished_rows_and_rerun_labels_only_the_rest(tmp_path, make_image):
    imgs = tmp_path / "imgs"
    for i in range(5):
        make_image(imgs / f"n{i}.png", 16, "noise", seed=i)
    out = tmp_path / "labels.csv"
    args = ["label", str(imgs), "--out", str(out), "--workers", "1", "--no-progress"]
    kill_at = 3
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(kill_at), *args],
                           cwd=Path(__file__).resolve().parents[2], capture_output=True,
                           text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    text = out.read_text()
    assert text.endswith("\n"), "no half row"
    rows = read_labels(out)
    assert [r.path.name for r in rows] == ["n0.png", "n1.png", "n2.png"]

    res = CliRunner().invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["skipped_already_labelled"] == kill_at and summary["labelled"] == 2
    rows = read_labels(out)
    assert sorted(r.path.name for r in rows) == [f"n{i}.png" for i in range(5)]
    assert rows[0].ssim == pytest.approx(label_image(imgs / "n0.png").ssim, abs=1e-6)
    assert rows[0].svg_bytes == label_image(imgs / "n0.png").svg_bytes


def test_svg_bytes_is_the_utf8_size_of_the_default_vtracer_svg(make_image):
    import vtracer

    from pipeline.labels.definition import vectorize

    img = make_image.image(SIDE, "transparent")
    flat = Image.new("RGB", img.size, "white")
    flat.paste(img, mask=img.split()[3])
    svg = vtracer.convert_raw_image_to_svg(make_image.encode(flat), img_format="png")
    got = label_image(make_image.encode(img))
    assert got.svg_bytes == len(svg.encode("utf-8")) == len(vectorize(flat).encode("utf-8"))
    # a busier image makes a heavier SVG
    assert label_image(make_image.bytes(SIDE, "noise")).svg_bytes > 10 * got.svg_bytes


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets filters
def test_label_refuses_a_pixel_bomb_before_decoding(tmp_path, make_image):
    """B2: `label` shares stage one's pixel guard (a small file declaring a huge canvas)."""
    bomb = make_image(tmp_path / "bomb.png", 12_000, "flat", mode="1", colour=0)  # 144 MP
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError, match="too large"):
        label_image(bomb)
    with pytest.raises(ImageError, match="too large"):
        label_image(make_image(tmp_path / "square.png", SIDE, "two_colour"), max_pixels=100)
    res = CliRunner().invoke(cli, ["label", str(bomb), "--out", str(tmp_path / "o.csv"),
                                   "--workers", "1", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["failed"] == 1 and "too large" in res.stderr

