"""Labels and features decode an image to the same pixels, whatever its mode (one decoder)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.extract.preprocess import Preprocess
from pipeline.extract.spec import ExtractConfig
from pipeline.labels.definition import decode_for_label

# Every mode some Pillow writer can store ("La" has none: it is only ever made in memory).
MODES = ["1", "L", "LA", "P", "P+transparency", "PA", "RGB", "RGBA", "RGBa", "I",
         "I;16", "F", "CMYK", "YCbCr", "LAB", "HSV"]


def _image(make_image, mode: str) -> Image.Image:
    rng = np.random.default_rng(0)
    base = make_image.image((32, 24), "noise", rng, "RGBA")  # 30% of pixels see-through
    if mode == "P+transparency":
        img = base.convert("RGB").quantize(16)
        img.info["transparency"] = 3
        return img
    if mode in ("I", "I;16", "F"):
        grey = rng.integers(0, 65536 if mode != "F" else 300, (24, 32))
        if mode == "I;16":
            return Image.frombytes("I;16", (32, 24), grey.astype("<u2").tobytes())
        return Image.fromarray(grey.astype(np.int32 if mode == "I" else np.float32))
    if mode in ("RGBa", "PA"):
        return base.convert(mode) if mode != "PA" else base.convert("P").convert("PA")
    return base.convert(mode)


def _encoded(make_image, img: Image.Image) -> bytes | None:
    for fmt in ("PNG", "TIFF", "WEBP"):
        try:
            return make_image.encode(img, fmt)
        except (OSError, ValueError, KeyError):
            continue
    return None


@pytest.mark.parametrize("mode", MODES)
def test_label_and_feature_decoders_see_the_same_pixels(make_image, mode):
    data = _encoded(make_image, _image(make_image, mode))
    assert data is not None, f"no Pillow writer takes mode {mode}"
    for_label = np.asarray(decode_for_label(data))
    for_features = np.asarray(Preprocess(ExtractConfig(weights="random:0")).decode(data))
    assert for_label.dtype == np.uint8 and for_label.shape == (24, 32, 3)
    np.testing.assert_array_equal(for_label, for_features)
