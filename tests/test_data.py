"""Tests for the embedded dataset: data/labels.csv, data/images and data/README.md agree."""

from __future__ import annotations

import csv
import importlib.util
import re
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.labels.definition import label_image
from pipeline.train.labels_csv import read_labels

DATA = Path(__file__).resolve().parent.parent / "data"
# Minimum images per family (the build draws 150-300 each, 80 and 48 of the two high-resolution
# families; a few SVGs may fail to render).
FAMILIES = {
    "twemoji": 200, "fluent_flat": 200, "fluent_modern": 200, "simple_icons": 200,
    "tabler": 200, "flags": 180, "meteocons": 180, "tango": 180, "openclipart": 250,
    "photo": 200, "texture": 180, "digital_art": 120, "photo_hires": 70, "desktop_art": 40,
    "fontawesome": 140, "noisy_gradient": 100,
}
SVG_FAMILIES = set(FAMILIES) - {"photo", "texture", "digital_art", "photo_hires", "desktop_art",
                                "noisy_gradient"}
# images/<family>/<source>_<size>.png, or <source>_<size>_c<k>.jpg|png for crop k of a source.
NAME = re.compile(r"^(?P<source>.+)_(?P<size>\d+)(?:_c(?P<crop>\d+))?\.(?:png|jpg)$")
# The drawn ladder, plus 640 and 896 px used only by photo's large crops (README "Sizes").
LADDER = (128, 192, 256, 384, 512, 640, 768, 896, 1024)
PHOTO_LARGE = (640, 768, 896, 1024)
# The committed set measures about 64.0 MiB (data/README "Size on disk"); 64.5 leaves a little room
# for a rebuild with other package versions, under the repository's 65 MiB cap (60 until the
# generated noisy_gradient family, 5.0 MiB, was added).
BUDGET_MIB = 64.5


@pytest.fixture(scope="module")
def rows():
    return read_labels(DATA / "labels.csv")  # also checks every path exists and [-1, 1]


@pytest.fixture(scope="module")
def build():
    """data/build.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("data_build", DATA / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["data_build"] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["data_build"]
    return module


@pytest.fixture(scope="module")
def sizes(rows):
    out = {}
    for r in rows:
        with Image.open(r.path) as im:
            out[r.path] = im.size
    return out


def test_csv_has_the_fixed_columns():
    with open(DATA / "labels.csv", newline="", encoding="utf-8") as f:
        assert next(csv.reader(f)) == ["path", "ssim", "svg_bytes", "family"]


def test_labels_parse_every_path_exists_values_in_range(rows):
    assert len(rows) >= 2000
    for r in rows:
        assert r.path.is_file(), r.path
        assert -1.0 <= r.ssim <= 1.0
        assert DATA / "images" / r.family in r.path.parents  # images/<family>/..., inside
        assert isinstance(r.svg_bytes, int) and r.svg_bytes > 0, r.path
    assert len({r.path for r in rows}) == len(rows)  # no duplicate rows


def test_every_image_is_labelled_no_orphans(rows):
    on_disk = {p for p in (DATA / "images").rglob("*") if p.is_file()}
    assert on_disk == {r.path for r in rows}


def test_each_family_present_with_minimum_counts(rows):
    counts = Counter(r.family for r in rows)
    assert set(counts) == set(FAMILIES)
    for fam, least in FAMILIES.items():
        assert counts[fam] >= least, (fam, counts[fam])


def test_native_sizes_named_and_spread(rows, sizes):
    buckets = Counter()
    non_square = 0
    for r in rows:
        m = NAME.match(r.path.name)
        assert m, r.path
        w, h = sizes[r.path]
        assert max(w, h) == int(m["size"]), (r.path, w, h)  # the name carries the longer side
        assert 128 <= max(w, h) <= 1024, r.path
        buckets[max(w, h)] += 1
        non_square += w != h
    assert set(buckets) == set(LADDER)  # every rung of the ladder, nothing else
    assert sum(1 for n in buckets.values() if n >= 100) >= 5, buckets
    assert non_square >= len(rows) // 5  # native aspect: flags, clip art, crops


def test_photo_has_large_crops_from_several_sources(rows):
    # The large photo crops (build.build_large_photos): photographs at 640-1024 px, spread over
    # the sizes and over many source photos, none upscaled (the name's size is the pixel size).
    large = [NAME.match(r.path.name) for r in rows
             if r.family == "photo" and int(NAME.match(r.path.name)["size"]) >= 640]
    assert len(large) >= 50, len(large)
    per_size = Counter(int(m["size"]) for m in large)
    assert all(per_size[s] >= 10 for s in PHOTO_LARGE), per_size
    assert len({m["source"] for m in large}) >= 10


def test_sources_mostly_distinct(rows):
    # SVG families render each source once; cropped families spread over their sources.
    by_family: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_family[r.family].append(NAME.match(r.path.name)["source"])
    for fam, sources in by_family.items():
        if fam in SVG_FAMILIES:
            assert len(set(sources)) == len(sources), fam
        else:
            most = Counter(sources).most_common(1)[0][1]
            assert most <= max(20, len(sources) // 8), (fam, Counter(sources).most_common(3))


def test_labels_spread_per_family_and_overall(rows):
    by_family: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_family[r.family].append(r.ssim)
    for fam, values in by_family.items():
        assert max(values) - min(values) >= 0.1, fam
    assert statistics.pstdev([r.ssim for r in rows]) >= 0.08


def test_dataset_size_within_budget():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total <= BUDGET_MIB * 2**20, total / 2**20


def test_stored_labels_match_the_label_definition(rows):
    # One image per family relabelled from the committed file: the CSV is the real label.
    firsts = {}
    for r in rows:
        firsts.setdefault(r.family, r)
    for r in firsts.values():
        label = label_image(r.path)
        assert label.ssim == pytest.approx(r.ssim, abs=2e-6), r.path
        assert label.svg_bytes == r.svg_bytes, r.path


def test_readme_tables_match_csv(build):
    text = (DATA / "README.md").read_text(encoding="utf-8")
    assert build.summary(DATA / "labels.csv") in text  # ssim + svg_bytes, per family and size


def test_generated_images_redraw_from_their_seeds(build):
    # noisy_gradient has no source files: build.py draws each image from a seed of its own.
    # Redrawing three of them must give the committed files' sizes and pixels (up to JPEG).
    index = [f.name for f in build.FAMILIES].index("noisy_gradient")
    fam = build.FAMILIES[index]
    seeds = build.synth_seeds(np.random.default_rng([0, index]), fam.count)
    for k in (0, 1, fam.count - 1):
        longer, drawn = build.draw_synth(int(seeds[k]), fam.weights)
        path = DATA / "images" / fam.name / f"gradient-{k:03d}_{longer}.jpg"
        assert path.is_file(), path
        with Image.open(path) as im:
            committed = np.asarray(im.convert("RGB"), dtype=np.int16)
        assert committed.shape[:2] == (drawn.height, drawn.width), path
        diff = np.abs(committed - np.asarray(drawn, dtype=np.int16))
        assert diff.mean() < 3.0, (path, diff.mean())  # JPEG q92 on grain: ~1-2 levels


def test_generated_family_is_deterministic_and_varied(build, tmp_path):
    fam = build.Family("noisy_gradient", 6, "synth", build.HIRES_WEIGHTS)
    first = build.build_synth_family(fam, np.random.default_rng(5), tmp_path / "a")
    again = build.build_synth_family(fam, np.random.default_rng(5), tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert all(build.SOURCE_RE.match(p.name) for p in first)  # <source>_<size>.jpg
    means = []
    for p in first:
        with Image.open(p) as im:
            means.append(np.asarray(im.convert("L"), dtype=float).mean())
    assert max(means) - min(means) > 20  # not one image six times
