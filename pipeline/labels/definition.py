"""The label: SSIM between an image and its VTracer vectorization rendered back by resvg, and
the size in bytes of that SVG."""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import ImageError, PipelineError
from pipeline.images.decode import DEFAULT_MAX_PIXELS, WHITE, decode_image, to_rgb
from pipeline.images.inputs import read_file

# Written into reports and checkpoints so a label is never reused under a different
# definition without it showing. Decoding is stage one's decoder (pipeline.images.decode) with
# a white background, so a label and a feature vector describe the same pixels.
LABEL_DEFINITION: dict[str, object] = {
    "name": "ssim_after_vectorization",
    "flatten": "pipeline.images.decode.decode_image: alpha composited on white, RGB",
    "vectorizer": "vtracer.convert_raw_image_to_svg(png, img_format='png'), default parameters",
    "renderer": "resvg_py.svg_to_bytes at the raster's width x height, background white",
    "ssim": "skimage structural_similarity on PIL 'L' luma, gaussian 11x11 sigma 1.5, "
    "K1 0.01, K2 0.03, data_range 255, use_sample_covariance False",
    "svg_bytes": "len(svg.encode('utf-8')) of the same default-parameter VTracer SVG",
}

# Imported by the label itself; checked before a run so a missing extra is one clear error,
# not every image turned into a report row.
LABEL_MODULES = ("vtracer", "resvg_py", "skimage.metrics")

# SSIM's Gaussian window (sigma 1.5, truncated at 3.5 sigma) is 11x11 in skimage, which refuses
# a smaller image; such images cannot be labelled. (skimage's own message says 7, its minimum
# for the uniform window: 7-10 px images used to fail with an untranslated ValueError.)
MIN_SIDE = 11


@dataclass(frozen=True)
class Label:
    """The two targets of one image: SSIM after vectorization and the SVG's size in bytes."""

    ssim: float
    svg_bytes: int


@dataclass
class LabelResult:
    """What a labelling run produced: ok rows in input order, and failures as report rows."""

    labels: list[tuple[Path, Label]] = field(default_factory=list)
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
            f"labelling needs {', '.join(missing)}, dependencies of ssimcache: reinstall it "
            "(pip install -e .) or pip install vtracer resvg-py"
        )


def decode_for_label(source: str | os.PathLike | bytes,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A file path or encoded bytes -> RGB on white, through stage one's decoder and its
    pixel guard; ImageError (naming the file) if unreadable, too large or too small."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    data = source if isinstance(source, bytes) else read_file(source)
    rgb = decode_image(data, max_pixels, WHITE, name=name)
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(
            f"{name}: image is {rgb.size[0]}x{rgb.size[1]}, SSIM needs at least "
            f"{MIN_SIDE} pixels a side; upscale it or leave it out"
        )
    return rgb


def vectorize(rgb: Image.Image) -> str:
    """VTracer with its default parameters on the RGB raster -> SVG text."""
    import vtracer

    buf = io.BytesIO()
    rgb.save(buf, format="PNG")
    return vtracer.convert_raw_image_to_svg(buf.getvalue(), img_format="png")


def render(svg: str, size: tuple[int, int]) -> Image.Image:
    """resvg render of `svg` at `size` (width, height) on white -> RGB."""
    import resvg_py

    width, height = size
    png = resvg_py.svg_to_bytes(svg_string=svg, width=width, height=height, background="white")
    with Image.open(io.BytesIO(bytes(png))) as out:
        rendered = to_rgb(out, WHITE)
    if rendered.size != size:
        # VTracer writes width/height equal to the raster, so resvg renders at exactly that
        # size; resvg keeps the aspect ratio when asked for another, so a mismatch would only
        # be rounding. Resize deterministically rather than fail (documented in data/README.md).
        rendered = rendered.resize(size, Image.Resampling.BICUBIC)
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


def label_image(source: str | os.PathLike | bytes,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> Label:
    """The label of one image file (or its encoded bytes); ImageError if unusable."""
    rgb = decode_for_label(source, max_pixels)
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    svg, ssim = vectorize_and_score(rgb, name)
    return Label(ssim=ssim, svg_bytes=len(svg.encode("utf-8")))


def vectorize_and_score(rgb: Image.Image, name: str) -> tuple[str, float]:
    """The label's steps on a decoded RGB raster (at least MIN_SIDE a side): the VTracer SVG
    and the SSIM of its resvg render to the raster; ImageError naming `name` if VTracer or
    resvg fail."""
    try:
        svg = vectorize(rgb)
        rendered = render(svg, rgb.size)
    except Exception as e:  # vtracer/resvg raise their own (untyped) errors
        raise ImageError(f"{name}: vectorize/render failed ({e})") from e
    return svg, ssim_luma(rgb, rendered)


def _label_or_reason(path: Path, max_pixels: int) -> tuple[Label | None, str]:
    """Worker body: never raises for a bad image, so one file cannot stop the pool.

    The reason leaves out the path: report rows and CLI lines already carry it.
    """
    try:
        return label_image(path, max_pixels), ""
    except ImageError as e:
        reason = str(e)
        prefix = f"{path}: "
        return None, reason[len(prefix):] if reason.startswith(prefix) else reason
    except Exception as e:  # noqa: BLE001 - any per-image failure becomes a report row
        return None, f"unexpected {type(e).__name__}: {e}"


def iter_labels(
    paths: Sequence[Path], workers: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Iterator[tuple[Path, Label | None, str]]:
    """Yield (path, label or None, failure reason) in input order, each as soon as it and the
    ones before it are done, across `workers` processes (1 = in this process).

    Raises PipelineError before any work if the `labels` extra is missing. Closing the
    generator early (an interrupted caller) cancels the pending images.
    """
    require_label_modules()
    outcomes: Iterable[tuple[Label | None, str]]
    one = partial(_label_or_reason, max_pixels=max_pixels)
    if workers <= 1 or len(paths) <= 1:
        outcomes = map(one, paths)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        # Small chunks: per-image cost varies 100x (flat icon vs photo), big chunks straggle.
        outcomes = pool.map(one, paths, chunksize=2)
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
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LabelResult:
    """Label many images, in input order, across `workers` processes (1 = in this process).

    `on_done(n)` is called as results arrive (progress bars advance with it).
    """
    result = LabelResult()
    for path, value, reason in iter_labels(paths, workers, max_pixels):
        if value is None:
            result.failures.append((path, reason))
        else:
            result.labels.append((path, value))
        if on_done is not None:
            on_done(1)
    return result
