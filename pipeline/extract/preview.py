"""The `preview` feature block: the label itself, taken on a small copy of the image.

The image is box-scaled to at most PREVIEW_SIDE px on its longer side and put through the
label's own steps (pipeline/labels/definition.py: VTracer with default parameters, resvg,
SSIM on luma). Three numbers come out: log10 of the small SVG's bytes, log10(1 + its number
of paths) and its SSIM. They tell the head what the statistics in `imstats` can only guess
at: how VTracer clusters this image's colours and how many shapes it writes. Measured on
images outside data/ (docs/stage-two.md), adding them to imstats lifts the share of SVG sizes
predicted within +-25 % from about 0.37 to 0.55 and SSIM's PLCC at 192-1024 px from about
0.79 to 0.86, for about 8 ms per image on one core (VTracer 4 ms, render + SSIM 4 ms).

An image whose longer side is at most PREVIEW_SIDE gets its true label's numbers. No torch;
needs vtracer and resvg-py (base dependencies).
"""

from __future__ import annotations

import functools
import math
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from PIL import Image

from pipeline.labels.definition import MIN_SIDE, vectorize_and_score

NAME = "preview"
# Bumped whenever a number's definition changes: it is part of the block's fingerprint.
VERSION = 1
# 128 measured against 96 on images outside data/: bytes within +-25 % 0.55 vs 0.45, SSIM
# PLCC 0.86 vs 0.84, for 8 ms instead of 5.5 ms per image.
PREVIEW_SIDE = 128
FEATURES = ("log_svg_bytes", "log_paths", "ssim")
DIM = len(FEATURES)


@functools.cache
def _installed(dist: str) -> str:
    """The installed version of `dist` (read from its metadata once per process)."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "missing"


def spec(background: tuple[int, int, int], colour_pipeline: str) -> dict[str, Any]:
    """The block's fingerprint spec: its version, the preview size, decoding, and the versions
    of the libraries whose output it is."""
    return {"block": NAME, "version": VERSION, "features": list(FEATURES),
            "params": {"side": PREVIEW_SIDE, "resample": "box"},
            "decode": {"background": list(background), "colour": colour_pipeline},
            "versions": {d: _installed(d) for d in ("vtracer", "resvg-py", "scikit-image")}}


def small_copy(rgb: Image.Image) -> Image.Image:
    """`rgb` box-scaled to at most PREVIEW_SIDE px a side (never up); a copy thinner than
    SSIM's MIN_SIDE is then repeated pixel-wise (nearest) up to it."""
    w, h = rgb.size
    s = min(1.0, PREVIEW_SIDE / max(w, h))
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    small = rgb if (sw, sh) == (w, h) else rgb.resize((sw, sh), Image.Resampling.BOX)
    if min(sw, sh) < MIN_SIDE:
        k = math.ceil(MIN_SIDE / min(sw, sh))
        small = small.resize((sw * k, sh * k), Image.Resampling.NEAREST)
    return small


def compute(rgb: Image.Image) -> np.ndarray:
    """(DIM,) float32: the small copy's log10 SVG bytes, log10(1 + paths) and SSIM."""
    svg, ssim = vectorize_and_score(small_copy(rgb), "preview block")
    return np.array([math.log10(len(svg.encode("utf-8"))), math.log10(1 + svg.count("<path")),
                     ssim], dtype=np.float32)
