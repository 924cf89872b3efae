"""Tests for the embedded dataset: data/labels.csv, data/images and data/README.md agree."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from pipeline.labels.definition import label_image
from pipeline.train.labels_csv import read_labels

DATA = Path(__file__).resolve().parent.parent / "data"
FAMILIES = {"twemoji", "fluent_flat", "fluent_modern", "simple_icons", "photo"}


@pytest.fixture(scope="module")
def rows():
    return read_labels(DATA / "labels.csv")  # also checks every path exists and [-1, 1]


def test_labels_parse_every_path_exists_values_in_range(rows):
    assert len(rows) >= 1200
    for r in rows:
        assert r.path.is_file(), r.path
        assert -1.0 <= r.ssim <= 1.0
        assert DATA / "images" in r.path.parents  # relative to data/, inside the set
    assert len({r.path for r in rows}) == len(rows)  # no duplicate rows


def test_each_family_present_and_balanced(rows):
    counts = Counter(r.family for r in rows)
    assert set(counts) == FAMILIES
    assert counts["photo"] >= 150
    assert all(counts[f] >= 200 for f in FAMILIES - {"photo"})


def test_images_are_256_square_and_all_labelled(rows):
    on_disk = {p for p in (DATA / "images").rglob("*") if p.is_file()}
    assert on_disk == {r.path for r in rows}  # no orphan images, no missing ones
    for r in rows:
        with Image.open(r.path) as im:
            assert im.size == (256, 256), r.path


def test_dataset_size_within_budget():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total <= 40 * 2**20


def test_stored_labels_match_the_label_definition(rows):
    # One image per family relabelled from the committed file: the CSV is the real label.
    firsts = {}
    for r in rows:
        firsts.setdefault(r.family, r)
    for r in firsts.values():
        assert label_image(r.path).ssim == pytest.approx(r.ssim, abs=2e-6), r.path


def test_readme_distribution_matches_csv(rows):
    text = (DATA / "README.md").read_text(encoding="utf-8")
    counts = Counter(r.family for r in rows)
    for fam, n in counts.items():
        assert re.search(rf"^\| {fam} \| {n} \|", text, re.M), f"README row for {fam}"
