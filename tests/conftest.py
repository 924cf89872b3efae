"""Shared fixtures: one fake backbone, one image factory, a labelled image set and a head
trained on it (all made in tests/fakes.py, imported on first use so that tests without torch
never load it). Each fixture is a factory, session-wide, so module fixtures can use it too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.fakes import FakeBackbone, ImageFactory


@pytest.fixture(scope="session")
def fake_backbone() -> type[FakeBackbone]:
    """The fake backbone class: `fake_backbone()` maps (B, 3, S, S) to (B, 54) pixel
    statistics; `fake_backbone(dim=16)` to 16 values; `.calls` / `.rows` count its work."""
    from tests.fakes import FakeBackbone

    return FakeBackbone


@pytest.fixture(scope="session")
def make_image() -> ImageFactory:
    """`make_image(path, size=(w, h), kind="noise", seed=0, mode=None)` writes an image and
    returns its path; `.image(...)` / `.bytes(...)` / `.encode(img)` for in-memory use.
    Kinds: noise, flat, two_colour, transparent, noisy_flat (see tests/fakes.py)."""
    from tests.fakes import make_image

    return make_image


@pytest.fixture(scope="session")
def make_dataset() -> Callable[..., Path]:
    """`make_dataset(root, n=40, seed=0, size=32, name="labels.csv", svg_bytes=False)`: n
    noisy flat PNGs under root/images and their labels CSV (ssim = 1 - 0.8 x noise, families
    flat/noisy); returns the CSV path."""
    from tests.fakes import make_dataset

    return make_dataset


@pytest.fixture(scope="session")
def extract_cfg() -> Callable[..., object]:
    """`extract_cfg(**overrides)`: an ExtractConfig for the fake backbone on 32-px images."""
    from tests.fakes import extract_cfg

    return extract_cfg


@pytest.fixture(scope="session")
def small_train_cfg() -> Callable[..., object]:
    """`small_train_cfg(**overrides)`: a TrainConfig sized for a few dozen rows."""
    from tests.fakes import small_train_cfg

    return small_train_cfg


@pytest.fixture(scope="session")
def trained_setup() -> Callable[..., dict[str, Path]]:
    """`trained_setup(root, n=40, features=("resnet50", "imstats"), **extract)`: make_dataset
    + store + checkpoint trained on fake-backbone features; returns csv/store/ckpt/root."""
    from tests.fakes import trained_setup

    return trained_setup
