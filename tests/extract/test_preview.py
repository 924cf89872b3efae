"""The preview block: the label's own steps on a small copy of the image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.extract import preview
from pipeline.extract.runner import extract
from pipeline.extract.spec import ExtractConfig, block_fingerprints
from pipeline.images.inputs import expand_inputs
from pipeline.labels.definition import MIN_SIDE, label_image
from store.hdf5 import FeatureStore
from store.keys import content_key


class CountingBackbone(torch.nn.Module):
    feature_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x.mean((2, 3))[:, :2]


def _cfg(**kw) -> ExtractConfig:
    return ExtractConfig(**{"features": ("preview",), "weights": "random:0", "workers": 2, **kw})


def test_a_small_image_gets_its_true_labels_numbers(tmp_path: Path, make_image) -> None:
    """At most PREVIEW_SIDE px a side, the preview is the label itself."""
    path = make_image(tmp_path / "logo.png", (96, 60), "two_colour")
    label = label_image(path)
    got = preview.compute(Image.open(path).convert("RGB"))
    assert got.shape == (preview.DIM,) and got.dtype == np.float32
    assert got[0] == pytest.approx(math.log10(label.svg_bytes), abs=1e-6)
    assert got[2] == pytest.approx(label.ssim, abs=1e-6)
    assert got[1] >= math.log10(2)  # at least one path


def test_a_large_image_is_previewed_on_its_box_scaled_copy(tmp_path: Path, make_image) -> None:
    big = make_image.image((512, 300), "noisy_flat", seed=3)
    small = preview.small_copy(big)
    assert small.size == (128, 75)  # longer side PREVIEW_SIDE, aspect kept
    expected = big.resize((128, 75), Image.Resampling.BOX)
    assert np.array_equal(np.asarray(small), np.asarray(expected))
    small.save(tmp_path / "small.png")
    label = label_image(tmp_path / "small.png")
    got = preview.compute(big)
    assert got[0] == pytest.approx(math.log10(label.svg_bytes), abs=1e-6)
    assert got[2] == pytest.approx(label.ssim, abs=1e-6)
    # a texture yields more paths and bytes than a two-colour logo of the same size
    flat = preview.compute(make_image.image((512, 300), "two_colour"))
    assert got[0] > flat[0] and got[1] > flat[1]


@pytest.mark.parametrize("size", [(1000, 8), (3, 3), (2, 40)])
def test_thin_or_tiny_images_are_enlarged_to_ssims_window(size, make_image) -> None:
    img = make_image.image(size, "noise")
    small = preview.small_copy(img)
    assert min(small.size) >= MIN_SIDE and max(small.size) <= max(preview.PREVIEW_SIDE,
                                                                  MIN_SIDE * max(size))
    assert np.isfinite(preview.compute(img)).all()


def test_preview_fingerprint_follows_decoding_and_its_libraries(monkeypatch) -> None:
    base = block_fingerprints(_cfg(features=("resnet50", "preview")))
    for change in ({"image_size": 32}, {"weights": "random:1"}, {"precision": "bf16"}):
        fps = block_fingerprints(_cfg(features=("resnet50", "preview"), **change))
        assert fps["preview"] == base["preview"] and fps["resnet50"] != base["resnet50"]
    assert block_fingerprints(_cfg(background="black"))["preview"] != base["preview"]
    # another VTracer release may write other SVGs: the namespace must change with it
    real = preview._installed
    monkeypatch.setattr(preview, "_installed",
                        lambda d: "99.0" if d == "vtracer" else real(d))
    assert block_fingerprints(_cfg())["preview"] != base["preview"]


def test_extract_fills_the_preview_namespace_without_the_backbone(tmp_path: Path,
                                                                  make_image) -> None:
    paths = [make_image(tmp_path / "in" / f"im{i}.png", (40 + 30 * i, 50), "noisy_flat", seed=i)
             for i in range(3)]
    backbone = CountingBackbone()
    report = extract(expand_inputs([tmp_path / "in"]), tmp_path / "f.h5", _cfg(),
                     backbone=backbone, progress=False)
    assert report.computed == 3 and list(report.fingerprints) == ["preview"]
    assert backbone.calls == 0
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        ns = fs.namespace(report.fingerprints["preview"])
        assert ns.dim == preview.DIM and ns.dtype == "float32" and len(ns) == 3
        for p in paths:
            want = preview.compute(Image.open(p).convert("RGB"))
            np.testing.assert_array_equal(ns.get(content_key(p)), want)


def test_a_vectorizer_failure_is_a_report_row_naming_the_block(tmp_path: Path, make_image,
                                                                monkeypatch) -> None:
    from pipeline.labels import definition

    good = make_image(tmp_path / "in" / "good.png", (30, 30), "two_colour")
    bad = make_image(tmp_path / "in" / "bad.png", (31, 30), "noise")
    real = definition.vectorize

    def vectorize(rgb):
        if rgb.size == (31, 30):
            raise RuntimeError("vtracer panicked")
        return real(rgb)

    monkeypatch.setattr(definition, "vectorize", vectorize)
    report = extract(expand_inputs([tmp_path / "in"]), tmp_path / "f.h5", _cfg(),
                     progress=False)
    assert report.computed == 1 and report.failed == 1
    (path, reason), = report.failures
    assert str(path) == str(bad) and "preview block" in reason and "vtracer panicked" in reason
    with FeatureStore(tmp_path / "f.h5", mode="r") as fs:
        ns = fs.namespace(report.fingerprints["preview"])
        assert len(ns) == 1 and ns.get(content_key(good)) is not None
