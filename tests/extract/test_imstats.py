"""The imstats block's statistics: what each kind of number responds to, and how the texture
statistics sample a large image (patches filtered one by one, then pooled)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipeline.extract import imstats
from pipeline.extract.spec import ExtractConfig, block_fingerprints

F = {name: i for i, name in enumerate(imstats.FEATURES)}


def _stats(img: Image.Image) -> dict[str, float]:
    v = imstats.compute(img)
    assert v.shape == (imstats.DIM,) and v.dtype == np.float32 and np.isfinite(v).all()
    return {name: float(v[i]) for name, i in F.items()}


def _noise(size: tuple[int, int], amplitude: float, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    grey = 128 + rng.normal(0, amplitude, (size[1], size[0]))
    return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB")


def test_size_statistics_are_the_native_size() -> None:
    s = _stats(Image.new("RGB", (300, 150), "white"))
    assert s["log_width"] == pytest.approx(math.log(300))
    assert s["log_height"] == pytest.approx(math.log(150))
    assert s["log_pixels"] == pytest.approx(math.log(300 * 150))
    assert s["log_aspect"] == pytest.approx(math.log(2))


def test_a_flat_image_has_no_texture_one_colour_and_no_foreground() -> None:
    s = _stats(Image.new("RGB", (128, 128), (200, 30, 30)))
    assert s["grad_x"] == s["grad_y"] == s["laplace_mean"] == 0
    assert s["lstd_flat"] == 1 and s["ssim_if_flattened"] == pytest.approx(1)
    assert s["log_colours_4bit"] == 0 and s["top_colour_share"] == pytest.approx(1)
    assert s["log_regions"] == 0 and s["foreground_share"] == 0


def test_grain_lowers_what_flattening_would_keep() -> None:
    """Noise is what VTracer flattens away: more of it, less of SSIM's structure survives."""
    mild, strong = _stats(_noise((160, 160), 2)), _stats(_noise((160, 160), 25))
    assert strong["ssim_if_flattened"] < mild["ssim_if_flattened"] - 0.2
    assert strong["grad_x"] > 5 * mild["grad_x"]
    assert strong["lstd_texture"] + strong["lstd_edge"] > 0.5 > mild["lstd_texture"]


def test_topology_counts_components_and_holes() -> None:
    img = Image.new("RGB", (128, 128), "white")
    d = ImageDraw.Draw(img)
    d.ellipse((10, 10, 70, 70), outline="black", width=8)  # a ring: one hole
    d.rectangle((90, 90, 110, 110), fill="black")          # and a separate square
    s = _stats(img)
    assert s["log_fg_components"] == pytest.approx(math.log1p(2))
    assert s["log_holes"] == pytest.approx(math.log1p(1))
    assert 0 < s["foreground_share"] < 0.5


def test_large_images_are_sampled_by_patches_filtered_one_by_one() -> None:
    """Above GRID * PATCH px a side the texture statistics are the mean of each patch's own,
    computed as if it were a small image: no filter reads across two patches."""
    img = _noise((500, 400), 20, seed=1)
    img.paste(Image.new("RGB", (250, 400), "white"))  # half flat, half grain
    a = np.asarray(img)
    patches = imstats._patches(a)
    assert patches.shape == (imstats.GRID ** 2, imstats.PATCH, imstats.PATCH, 3)
    one_by_one = np.mean([imstats._texture(p) for p in patches], axis=0)
    np.testing.assert_allclose(imstats._texture(a), one_by_one, rtol=1e-5, atol=1e-6)
    # the whole image below the threshold
    small = a[:imstats.GRID * imstats.PATCH, :imstats.GRID * imstats.PATCH]
    assert imstats._patches(small).shape == (1, *small.shape)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 2), (47, 49), (2000, 30)])
def test_thin_tiny_and_odd_images_give_finite_statistics(size: tuple[int, int]) -> None:
    _stats(_noise(size, 30))


def test_the_version_is_in_the_fingerprint(monkeypatch) -> None:
    """A new definition must miss every cached vector of the old one."""
    cfg = ExtractConfig(features=("imstats",), weights="random:0")
    before = block_fingerprints(cfg)["imstats"]
    monkeypatch.setattr(imstats, "VERSION", imstats.VERSION + 1)
    assert block_fingerprints(cfg)["imstats"] != before
