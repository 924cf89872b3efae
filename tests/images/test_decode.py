"""Tests for pipeline.images.decode: robust decoding, backgrounds, resizing."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ImageError, PipelineError
from pipeline.images.decode import decode_image, parse_background, resize_rgb

BIG = 10**8


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h and that has no pixel data (a bomb costs nothing here)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))


# -- decode_image ----------------------------------------------------------------------------

def test_rgba_is_composited_on_background_not_dropped(make_image) -> None:
    # Fully transparent red: dropping alpha would expose red; compositing gives the background.
    data = make_image.bytes((8, 8), "flat", mode="RGBA", colour=(255, 0, 0, 0))
    assert decode_image(data, BIG).getpixel((0, 0)) == (255, 255, 255)
    assert decode_image(data, BIG, (0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)
    half = make_image.bytes((8, 8), "flat", mode="RGBA", colour=(0, 0, 0, 128))
    assert decode_image(half, BIG).getpixel((0, 0)) == (127, 127, 127)


def test_la_and_palette_with_transparency(make_image) -> None:
    la = make_image.bytes((4, 4), "flat", mode="LA", colour=(0, 0))
    assert decode_image(la, BIG).getpixel((1, 1)) == (255, 255, 255)
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.info["transparency"] = 1
    gif = make_image.encode(p, "GIF", transparency=1)
    assert decode_image(gif, BIG).getpixel((0, 0)) == (255, 255, 255)
    p_opaque = make_image.encode(p, "PNG")  # no transparency chunk: the palette colour shows
    p2 = Image.new("P", (4, 4), 1)
    p2.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    assert decode_image(make_image.encode(p2, "PNG"), BIG).getpixel((0, 0)) == (255, 0, 0)
    assert decode_image(p_opaque, BIG).mode == "RGB"


def test_16bit_is_scaled_not_clipped(make_image) -> None:
    a = np.array([[0, 32896, 65535, 257]], dtype=np.uint16)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    out = np.asarray(decode_image(make_image.encode(img), BIG))
    assert out[0, :, 0].tolist() == [0, 128, 255, 1]
    i32 = Image.fromarray(a.astype(np.int32))  # mode "I" (e.g. from TIFF)
    tiff = make_image.encode(i32, "TIFF")
    assert np.asarray(decode_image(tiff, BIG))[0, :, 0].tolist() == [0, 128, 255, 1]


def test_gray_cmyk_and_bilevel_become_rgb(make_image) -> None:
    g = decode_image(make_image.bytes((3, 3), "flat", mode="L", colour=77), BIG)
    assert g.mode == "RGB" and g.getpixel((0, 0)) == (77, 77, 77)
    cmyk = make_image.bytes((3, 3), "flat", mode="CMYK", colour=(0, 255, 255, 0), fmt="JPEG")
    c = decode_image(cmyk, BIG)
    r, gg, b = c.getpixel((1, 1))
    assert r > 200 and gg < 60 and b < 60  # cyan/magenta/yellow inks -> red
    bilevel = make_image.bytes((3, 3), "flat", mode="1", colour=1)
    assert decode_image(bilevel, BIG).getpixel((0, 0)) == (255,) * 3


def test_exif_orientation_applied(make_image) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    data = make_image.bytes((20, 10), "flat", colour=(200, 0, 0), fmt="JPEG", exif=exif)
    out = decode_image(data, BIG)
    assert out.size == (10, 20)


def test_gif_first_frame(make_image) -> None:
    frames = [make_image.image((6, 6), "flat", colour=c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(buf.getvalue(), BIG).getpixel((2, 2))
    assert r > 200 and b < 50


@pytest.mark.parametrize("kind", ["empty", "garbage", "truncated_png", "truncated_jpeg"])
def test_bad_bytes_fail_with_reason(kind: str, make_image) -> None:
    noisy = make_image.image(64, "noise")
    data = {"empty": b"", "garbage": b"this is not an image at all",
            "truncated_png": make_image.encode(noisy)[:-400],
            "truncated_jpeg": make_image.encode(noisy, "JPEG")[:600]}[kind]
    with pytest.raises(ImageError, match="f.png: "):
        decode_image(data, BIG, name="f.png")


def test_bomb_guard_own_limit_and_pillow_error(make_image) -> None:
    # Below Pillow's warning limit but above ours: our guard must catch it before decoding.
    with pytest.raises(ImageError, match="too large"):
        decode_image(make_image.bytes((200, 200), "flat", mode="L", colour=0),
                     max_pixels=10_000)
    # Over 2x Pillow's limit (which follows max_pixels up): its DecompressionBombError (not an
    # OSError) is caught and reported like ours.
    with pytest.raises(ImageError, match="too large"):
        decode_image(_png_header_only(20_000, 20_000), max_pixels=100_000_000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_max_pixels_can_be_raised_beyond_pillows_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after
    bomb = _png_header_only(20_000, 10_000)  # 200M pixels > Pillow's 178,956,970 error limit
    with pytest.raises(ImageError, match=r"too large \(20000x10000 = 200000000 pixels > "
                                         r"max_pixels 150000000\)"):
        decode_image(bomb, max_pixels=150_000_000)  # ours, from the header, before decoding
    with pytest.raises(ImageError) as e:  # allowed: it gets to decoding (no real pixels here)
        decode_image(bomb, max_pixels=300_000_000)
    assert "too large" not in str(e.value) and "cannot decode" in str(e.value)


def test_parse_background() -> None:
    assert parse_background("white") == parse_background("#ffffff") == (255, 255, 255)
    assert parse_background([1, 2, 3]) == (1, 2, 3)
    with pytest.raises(PipelineError):
        parse_background("not-a-colour")


# -- resize_rgb ------------------------------------------------------------------------------

def test_resize_direct_keeps_whole_image_crop_drops_edges() -> None:
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :10] = 255  # a white band at the left edge
    img = Image.fromarray(a)
    direct = resize_rgb(img, 16)
    crop = resize_rgb(img, 16, resize="shorter+crop")
    assert direct.shape == crop.shape == (16, 16, 3) and direct.dtype == np.uint8
    assert direct[:, 0].mean() > 200  # the band survives a direct resize
    assert crop[:, 0].mean() < 10  # and is cropped away by shorter+crop


def test_resize_options_change_pixels(make_image) -> None:
    img = make_image.image((70, 50), "noise", seed=1)
    outs = [resize_rgb(img, 24, interpolation=i, antialias=aa)
            for i, aa in [("bilinear", True), ("bicubic", True), ("bilinear", False)]]
    assert all(o.shape == (24, 24, 3) for o in outs)
    assert not np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    with pytest.raises(PipelineError):
        resize_rgb(img, 24, interpolation="lanczos", antialias=False)


def test_images_module_does_not_import_torch() -> None:
    # score/label expand inputs with it; cached scoring must not pay for importing torch
    import subprocess
    import sys

    code = "import sys, pipeline.images; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False"
