"""The label: SSIM between an image and its VTracer vectorization rendered back by resvg."""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import ImageError, PipelineError

# Written into reports (and checkpoints, by stage two) so a label is never reused under a
# different definition without it showing.
LABEL_DEFINITION: dict[str, object] = {
    "name": "ssim_after_vectorization",
    "flatten": "alpha composited on white, RGB",
    "vectorizer": "vtracer.convert_raw_image_to_svg(png, img_format='png'), default parameters",
    "renderer": "resvg_py.svg_to_bytes at the raster's width x height, background white",
    "ssim": "skimage structural_similarity on PIL 'L' luma, gaussian 11x11 sigma 1.5, "
    "K1 0.01, K2 0.03, data_range 255, use_sample_covariance False",
}

# Imported by the label itself; checked before a run so a missing extra is one clear error,
# not every image turned into a report row.
LABEL_MODULES = ("vtracer", "resvg_py", "skimage.metrics")

# SSIM's 11x11 window needs at least 7 pixels a side in skimage; smaller images cannot be labelled.
MIN_SIDE = 7


@dataclass
class LabelResult:
    """What a labelling run produced: ok rows in input order, and failures as report rows."""

    labels: list[tuple[Path, float]] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def require_label_modules() -> None:
    """Raise PipelineError naming the missing packages if the `labels` extra is not installed."""
    missing = []
    for name in LABEL_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        raise PipelineError(
            f"labelling needs {', '.join(missing)}; install the labels extra: "
            "pip install 'ssimcache[labels]'"
        )


def flatten_on_white(image: Image.Image) -> Image.Image:
    """Return an RGB image with any transparency composited onto white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: Pillow's convert would clip at 255; scale to 8 bits instead.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode a file path or encoded bytes into an RGB image flattened on white."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        raw = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(raw) as img:
            img.load()
            # The orientation a viewer shows (and stage one extracts) is the one labelled.
            rgb = flatten_on_white(ImageOps.exif_transpose(img))
    except FileNotFoundError as e:
        raise ImageError(f"{name}: file not found; check the path") from e
    except Image.UnidentifiedImageError as e:  # Pillow's message repeats the path
        raise ImageError(f"{name}: cannot decode image (format not recognised); remove or "
                         "re-export the file") from e
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{name}: cannot decode image ({e}); remove or re-export the file") from e
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(
            f"{name}: image is {rgb.size[0]}x{rgb.size[1]}, SSIM needs at least "
            f"{MIN_SIDE} pixels a side; upscale it or leave it out"
        )
    return rgb


def vectorize_and_render(rgb: Image.Image) -> Image.Image:
    """VTracer (defaults) on the RGB raster, rendered by resvg on white at the same size."""
    import resvg_py
    import vtracer

    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    svg = vtracer.convert_raw_image_to_svg(buf.getvalue(), img_format="png")
    width, height = rgb.size
    png = resvg_py.svg_to_bytes(svg_string=svg, width=width, height=height, background="white")
    with Image.open(io.BytesIO(bytes(png))) as out:
        rendered = flatten_on_white(out)
    if rendered.size != rgb.size:
        # VTracer writes width/height equal to the raster, so resvg renders at exactly that
        # size; resvg keeps the aspect ratio when asked for another, so a mismatch would only
        # be rounding. Resize deterministically rather than fail (documented in data/README.md).
        rendered = rendered.resize(rgb.size, Image.Resampling.BICUBIC)
    return rendered


def ssim_luma(a: Image.Image, b: Image.Image) -> float:
    """SSIM (Wang et al. 2004) of the PIL 'L' luma of two same-size RGB images."""
    from skimage.metrics import structural_similarity

    la = np.asarray(a.convert("L"), dtype=np.float64)  # (H, W)
    lb = np.asarray(b.convert("L"), dtype=np.float64)  # (H, W)
    value = structural_similarity(
        la, lb, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    return float(value)


def label_image(source: str | os.PathLike | bytes) -> float:
    """The label of one image file (or its encoded bytes), in [-1, 1]; ImageError if unusable."""
    rgb = decode_image(source)
    try:
        rendered = vectorize_and_render(rgb)
    except ImageError:
        raise
    except Exception as e:  # vtracer/resvg raise their own (untyped) errors
        name = "<bytes>" if isinstance(source, bytes) else str(source)
        raise ImageError(f"{name}: vectorize/render failed ({e})") from e
    return ssim_luma(rgb, rendered)


def _label_or_reason(path: Path) -> tuple[float | None, str]:
    """Worker body: never raises for a bad image, so one file cannot stop the pool.

    The reason leaves out the path: report rows and CLI lines already carry it.
    """
    try:
        return label_image(path), ""
    except ImageError as e:
        reason = str(e)
        prefix = f"{path}: "
        return None, reason[len(prefix):] if reason.startswith(prefix) else reason
    except Exception as e:  # noqa: BLE001 - any per-image failure becomes a report row
        return None, f"unexpected {type(e).__name__}: {e}"


def iter_labels(
    paths: Sequence[Path], workers: int = 1
) -> Iterator[tuple[Path, float | None, str]]:
    """Yield (path, label or None, failure reason) in input order, each as soon as it and the
    ones before it are done, across `workers` processes (1 = in this process).

    Raises PipelineError before any work if the `labels` extra is missing. Closing the
    generator early (an interrupted caller) cancels the pending images.
    """
    require_label_modules()
    outcomes: Iterable[tuple[float | None, str]]
    if workers <= 1 or len(paths) <= 1:
        outcomes = map(_label_or_reason, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        # Small chunks: per-image cost varies 100x (flat icon vs photo), big chunks straggle.
        outcomes = pool.map(_label_or_reason, paths, chunksize=2)
    try:
        for path, (value, reason) in zip(paths, outcomes, strict=True):
            yield path, value, reason
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def label_images(
    paths: Sequence[Path],
    workers: int = 1,
    on_done: Callable[[int], None] | None = None,
) -> LabelResult:
    """Label many images, in input order, across `workers` processes (1 = in this process).

    `on_done(n)` is called as results arrive (progress bars advance with it).
    """
    result = LabelResult()
    for path, value, reason in iter_labels(paths, workers):
        if value is None:
            result.failures.append((path, reason))
        else:
            result.labels.append((path, value))
        if on_done is not None:
            on_done(1)
    return result
