"""The one image decoder: bytes -> 8-bit RGB (EXIF, alpha on a background, pixel guard), resize."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageColor, ImageOps

from pipeline.errors import ImageError, PipelineError

# Our own pixel guard (below) refuses large images with a clear reason, so Pillow's warning
# for images between its limit and twice it would only be noise on stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# Stage one's and labelling's pixel guard: larger images fail before their pixels are decoded.
DEFAULT_MAX_PIXELS = 64_000_000
WHITE = (255, 255, 255)

# Bumped whenever decode_image's colour handling changes: it is part of the fingerprint.
COLOUR_PIPELINE = "rgb8-v1: exif-transpose; first frame; alpha/transparency composited on " \
                  "background; 16-bit /257; CMYK/YCbCr/LAB via Pillow convert; gray->RGB"

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def parse_background(value: str | Iterable[int]) -> tuple[int, int, int]:
    """'white', '#rrggbb' or [r, g, b] -> an RGB tuple (the fingerprint hashes the tuple)."""
    if isinstance(value, str):
        try:
            rgb = ImageColor.getrgb(value)
        except ValueError:
            raise PipelineError(f"background {value!r} is not a colour; use a name "
                                "like 'white' or '#rrggbb'") from None
    else:
        rgb = tuple(int(v) for v in value)
    if len(rgb) < 3 or not all(0 <= v <= 255 for v in rgb[:3]):
        raise PipelineError(f"background {value!r} must be three values in 0..255")
    return (rgb[0], rgb[1], rgb[2])


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing transparency on `background`."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit gray: scale the full range down (/257 maps 65535 -> 255) instead of clipping.
        a = np.asarray(img).astype(np.float32)
        a = np.clip(a, 0, 65535) / 257.0
        img = Image.fromarray(np.rint(a).astype(np.uint8), "L")
        mode = "L"
    elif mode == "F":
        img = img.convert("L")  # Pillow clips float pixels to 0..255
        mode = "L"
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode == "RGB":
        return img
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 background: tuple[int, int, int] = WHITE,
                 name: str = "<bytes>") -> Image.Image:
    """Encoded bytes -> RGB image (EXIF-rotated, first frame). Raises ImageError with the reason.

    Truncated files fail (LOAD_TRUNCATED_IMAGES stays off: a grey-padded image would cache a
    wrong vector). Images over `max_pixels` fail before their pixels are decoded.
    """
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes)")
    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS (178,956,970 by default) inside open(),
    # so a max_pixels above that could never be honoured. Our own check below reads the size
    # from the header, before any pixel is decoded, so Pillow's limit only needs to follow
    # ours upwards. The limit is process-wide; it only ever rises, so threads cannot undo it.
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > limit:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:  # not an OSError: catch it by name
        raise ImageError(f"{name}: too large ({e})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (format not recognised)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is one failed input
        raise ImageError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w * h > max_pixels:
        # Pillow only errors above 2x its MAX_IMAGE_PIXELS; below that it decodes silently.
        raise ImageError(f"{name}: too large ({w}x{h} = {w * h} pixels > max_pixels {max_pixels}); "
                         "raise max_pixels if the image is trusted")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: image has zero size ({w}x{h})")
    try:
        img.seek(0)  # GIF/TIFF: the first frame
        img.load()  # inside the try: truncation and decoder errors surface here
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img, background)
        rgb.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: too large ({e})") from None
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"{name}: cannot decode ({type(e).__name__}: {e})") from None
    return rgb


def resize_rgb(img: Image.Image, size: int, resize: str = "direct",
               interpolation: str = "bilinear", antialias: bool = True) -> np.ndarray:
    """RGB image -> uint8 array (size, size, 3).

    "direct" squashes to size x size (logos must not lose their edges to a crop);
    "shorter+crop" scales the shorter side to `size` and centre-crops. With antialias the
    resize is Pillow's (a filter whose support grows with the scale factor); without, it is
    torch's point-sampled interpolate (what plain `F.interpolate` does on tensors).
    """
    if interpolation not in INTERPOLATIONS:
        raise PipelineError(f"interpolation {interpolation!r} unknown; use one of "
                            f"{sorted(INTERPOLATIONS)}")
    w, h = img.size
    if resize == "direct":
        tw, th = size, size
    elif resize == "shorter+crop":
        scale = size / min(w, h)
        tw, th = max(size, round(w * scale)), max(size, round(h * scale))
    else:
        raise PipelineError(f"resize {resize!r} unknown; use 'direct' or 'shorter+crop'")
    if antialias or interpolation == "nearest":
        arr = np.asarray(img.resize((tw, th), INTERPOLATIONS[interpolation], reducing_gap=None))
    else:
        arr = _torch_resize(np.asarray(img), th, tw, interpolation)
    if (tw, th) != (size, size):
        top, left = (th - size) // 2, (tw - size) // 2
        arr = arr[top:top + size, left:left + size]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _torch_resize(arr: np.ndarray, h: int, w: int, interpolation: str) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if interpolation == "lanczos":
        raise PipelineError("interpolation 'lanczos' needs antialias on (Pillow's filter); "
                            "use bilinear or bicubic with antialias off")
    mode = interpolation  # bilinear | bicubic
    t = torch.from_numpy(np.array(arr)).permute(2, 0, 1)[None].float()  # (1,3,H,W)
    out = F.interpolate(t, size=(h, w), mode=mode, align_corners=False, antialias=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
