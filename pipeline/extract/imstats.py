"""The `imstats` feature block: cheap statistics of the decoded image that predict how VTracer
will do, computed from the image at its native size (numpy, scipy.ndimage, skimage.measure;
no torch).

Three kinds of number, each chosen for a way vectorization loses SSIM:
- size: native width, height, pixel count and aspect ratio (the label is taken at native size);
- pixel-scale texture, measured on native-resolution pixels (the whole image up to 192 x 192,
  else a 4 x 4 grid of 48-px patches): gradient and local-contrast histograms, the share of
  SSIM's structure term that survives flattening or posterizing (grain, shading, noise);
- layout, measured on the image scaled to at most 128 px: colour counts and entropy,
  same-colour neighbourhoods, regions, and the foreground's topology (strokes, holes, islands).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

NAME = "imstats"
# Bumped whenever a statistic's definition changes: it is part of the block's fingerprint.
# 3: texture from 4 x 4 patches of 48 px (was 64, and the whole image up to 256 x 256): half
# the CPU time on a 256-px image (bench extract: 8.3 -> 4.0 ms), so that the block fits beside
# the backbone on 2 cores.
VERSION = 3
WORK_SIDE = 128      # layout statistics: the image scaled to at most this many px a side
PATCH, GRID = 48, 4  # texture statistics: GRID x GRID native patches of PATCH px
C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # SSIM's constants for 8-bit data
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, as Pillow's mode "L"
STD_BINS = (1.0, 3.0, 8.0, 20.0)  # local std edges: flat | grain | shading | texture | edge

SIZE = ("log_width", "log_height", "log_pixels", "log_aspect")
TEXTURE = ("grad_x", "grad_y", "grad_small", "grad_mid", "grad_strong", "laplace_mean",
           "laplace_strong", "lstd_flat", "lstd_grain", "lstd_shading", "lstd_texture",
           "lstd_edge", "ssim_if_flattened", "ssim_if_posterized")
LAYOUT = ("log_colours_4bit", "entropy_4bit", "colours_over_1pct", "top_colour_share",
          "top5_colour_share", "log_colours_6bit", "entropy_6bit", "grey_std", "grey_mean",
          "non_white_share", "channel_std", "saturation", "isolated_pixels",
          "few_same_neighbours", "boundary_pixels", "log_region_density")
REGIONS = ("log_regions", "log_regions_kept", "log_kept_boundary_native",
           "kept_area_share", "mean_kept_region_log_area")
TOPOLOGY = ("foreground_share", "log_fg_components", "log_holes", "enclosed_background",
            "log_islands", "stroke_width", "soft_edge_ratio")
FEATURES = SIZE + TEXTURE + LAYOUT + REGIONS + TOPOLOGY
DIM = len(FEATURES)


def spec(background: tuple[int, int, int], colour_pipeline: str) -> dict[str, Any]:
    """The block's fingerprint spec: its definition version, parameters, decoding and the
    library versions whose numerics it uses."""
    import PIL
    import scipy

    def mm(v: str) -> str:
        return ".".join(v.split(".")[:2])

    return {"block": NAME, "version": VERSION, "features": list(FEATURES),
            "params": {"work_side": WORK_SIDE, "patch": PATCH, "grid": GRID,
                       "std_bins": list(STD_BINS)},
            "decode": {"background": list(background), "colour": colour_pipeline},
            "versions": {"numpy": mm(np.__version__), "scipy": mm(scipy.__version__),
                         "pillow": mm(PIL.__version__)}}


def compute(rgb: Image.Image) -> np.ndarray:
    """(DIM,) float32 statistics of one decoded RGB image, in FEATURES order."""
    w, h = rgb.size
    native = np.asarray(rgb, dtype=np.uint8)  # (H, W, 3)
    work = native
    if max(w, h) > WORK_SIDE:
        s = WORK_SIDE / max(w, h)
        small = rgb.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BOX)
        work = np.asarray(small, dtype=np.uint8)
    values = [np.log(w), np.log(h), np.log(w * h), np.log(w / h)]
    values += _texture(native)
    values += _layout(work)
    values += _regions(work, scale=max(w, h) / max(work.shape[:2]))
    values += _topology(work)
    return np.asarray(values, dtype=np.float32)


def _box(x: np.ndarray) -> np.ndarray:
    """SSIM's 7-px window, boxed for speed, inside each patch of an (N, h, w) stack."""
    return ndimage.uniform_filter(x, (1, 7, 7), mode="reflect")


def _moments(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = _box(g)
    return mu, np.maximum(_box(g * g) - mu * mu, 0.0)


def _ssim(a: np.ndarray, b: np.ndarray, mu_a: np.ndarray, var_a: np.ndarray) -> float:
    mu_b, var_b = _moments(b)
    cov = _box(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + C1) * (2 * cov + C2)
    return float((num / ((mu_a ** 2 + mu_b ** 2 + C1) * (var_a + var_b + C2))).mean())


def _patches(a: np.ndarray) -> np.ndarray:
    """Native-resolution pixels as an (N, h, w, 3) stack: the whole image if it is small, else
    GRID x GRID patches of PATCH px spread over it (equal sizes: a statistic pooled over the
    stack is the mean of the per-patch ones)."""
    h, w = a.shape[:2]
    if h * w <= (GRID * PATCH) ** 2 or h < PATCH or w < PATCH:
        return a[None]
    ys = np.linspace(0, h - PATCH, GRID).astype(int)
    xs = np.linspace(0, w - PATCH, GRID).astype(int)
    return np.stack([a[y:y + PATCH, x:x + PATCH] for y in ys for x in xs])


def _texture(native: np.ndarray) -> list[float]:
    g = _luma(_patches(native))  # (N, h, w); filters run inside each patch
    gx, gy = np.abs(np.diff(g, axis=2)), np.abs(np.diff(g, axis=1))
    gm = np.concatenate([gx.ravel(), gy.ravel()])
    lap = np.abs(ndimage.correlate1d(g, [1, -2, 1], axis=1, mode="reflect")
                 + ndimage.correlate1d(g, [1, -2, 1], axis=2, mode="reflect"))
    mu, var = _moments(g)
    std = np.sqrt(var)
    edges = (0.0, *STD_BINS, np.inf)
    std_hist = [float(((std >= lo) & (std < hi)).mean())
                for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    poster = np.floor(g / 16) * 16 + 8  # 16 grey levels: banding of smooth shading
    return [_mean(gx), _mean(gy), _mean((gm > 0.5) & (gm <= 4)), _mean((gm > 4) & (gm <= 16)),
            _mean(gm > 32), float(lap.mean()), float((lap > 48).mean()), *std_hist,
            float((C2 / (var + C2)).mean()),  # SSIM's structure term if texture were lost
            _ssim(g, poster, mu, var)]


def _mean(x: np.ndarray) -> float:
    """Mean, 0 for no values (a 1-px image has no gradients)."""
    return float(x.mean()) if x.size else 0.0


def _layout(a: np.ndarray) -> list[float]:
    n = a.shape[0] * a.shape[1]
    r, g_, b = (np.ascontiguousarray(a[..., i]) for i in range(3))  # planes: fast reductions
    q4 = (r >> 4).astype(np.int32) << 8 | (g_ >> 4).astype(np.int32) << 4 | (b >> 4)  # 4096
    nz4 = np.sort(_shares(q4, n))[::-1]
    q6 = (r >> 2).astype(np.int32) << 12 | (g_ >> 2).astype(np.int32) << 6 | (b >> 2)
    nz6 = _shares(q6, n)  # 6 bits a channel: VTracer's default colour precision
    grey = _luma(a)
    hi = np.maximum(np.maximum(r, g_), b).astype(np.float32)
    lo = np.minimum(np.minimum(r, g_), b).astype(np.float32)
    same = np.zeros(q4.shape, np.int8)  # 4-neighbours of the same 4-bit colour
    h_eq, v_eq = q4[:, 1:] == q4[:, :-1], q4[1:, :] == q4[:-1, :]
    same[:, 1:] += h_eq
    same[:, :-1] += h_eq
    same[1:, :] += v_eq
    same[:-1, :] += v_eq
    _, regions = ndimage.label(same >= 2)
    return [float(np.log(len(nz4))), _entropy(nz4), float((nz4 > 0.01).sum()),
            float(nz4[0]), float(nz4[:5].sum()), float(np.log(len(nz6))), _entropy(nz6),
            float(grey.std()), float(grey.mean()), float((grey < 250).mean()),
            float(np.mean([c.std(dtype=np.float32) for c in (r, g_, b)])),
            float(((hi - lo) / (hi + 1)).mean()), float((same == 0).mean()),
            float((same <= 1).mean()), float((same < 4).mean()),
            float(np.log1p(regions) - np.log(n))]


def _shares(codes: np.ndarray, n: int) -> np.ndarray:
    """Share of pixels of each colour code present (unordered)."""
    counts = np.bincount(codes.ravel())
    return counts[counts > 0] / n


def _entropy(p: np.ndarray) -> float:
    return float(-(p * np.log2(p)).sum())


def _luma(a: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W) float32 luma."""
    return a.astype(np.float32) @ LUMA


SPECKLE_AREA = 16  # VTracer drops patches under filter_speckle (4 px) squared, native pixels


def _regions(a: np.ndarray, scale: float) -> list[float]:
    """Same-colour regions (4 bits a channel, 4-connected) as VTracer would trace them: how
    many, how many survive its speckle filter, and their boundary length at native scale —
    the paths and points an SVG is made of."""
    from skimage.measure import label

    r, g_, b = (a[..., i].astype(np.int32) >> 4 for i in range(3))
    lab = label(r << 8 | g_ << 4 | b, background=-1, connectivity=1)  # (H, W) region ids
    areas = np.bincount(lab.ravel())[1:]
    keep = areas >= max(1.0, SPECKLE_AREA / scale ** 2)  # the speckle area in working pixels
    kept_id = np.concatenate([[False], keep])
    h_edge = (lab[:, 1:] != lab[:, :-1]) & (kept_id[lab[:, 1:]] | kept_id[lab[:, :-1]])
    v_edge = (lab[1:, :] != lab[:-1, :]) & (kept_id[lab[1:, :]] | kept_id[lab[:-1, :]])
    boundary = (h_edge.sum() + v_edge.sum()) * scale  # in native pixels
    n = a.shape[0] * a.shape[1]
    return [float(np.log(len(areas))), float(np.log1p(keep.sum())), float(np.log1p(boundary)),
            float(areas[keep].sum() / n),
            float(np.log(areas[keep] * scale ** 2).mean()) if keep.any() else 0.0]


def _topology(a: np.ndarray) -> list[float]:
    """Foreground against the border's dominant colour: components, holes, islands, strokes."""
    q = (a >> 4).astype(np.int32)
    border = np.concatenate([q[0], q[-1], q[:, 0], q[:, -1]])
    code = np.bincount(border[:, 0] * 256 + border[:, 1] * 16 + border[:, 2]).argmax()
    bg = np.array([code // 256, (code // 16) % 16, code % 16]) * 16 + 8
    dist = np.abs(a.astype(np.int16) - bg).max(-1)  # (H, W) distance to the background colour
    fg = dist > 48
    lab_fg, n_fg = ndimage.label(fg)
    lab_bg, n_bg = ndimage.label(~fg)
    outer = np.unique(np.concatenate([lab_bg[0], lab_bg[-1], lab_bg[:, 0], lab_bg[:, -1]]))
    holes = np.setdiff1d(np.arange(1, n_bg + 1), outer)
    enclosed = np.isin(lab_bg, holes)
    islands = 0
    if len(holes) and n_fg > 1:  # foreground pieces inside holes (VTracer may fill around them)
        near = ndimage.binary_dilation(enclosed, iterations=2) & fg
        biggest = np.bincount(lab_fg.ravel())[1:].argmax() + 1
        islands = len(np.setdiff1d(np.unique(lab_fg[near]), [0, biggest]))
    perimeter = (fg[:, 1:] != fg[:, :-1]).sum() + (fg[1:] != fg[:-1]).sum()
    return [float(fg.mean()), float(np.log1p(n_fg)), float(np.log1p(len(holes))),
            float(enclosed.mean()), float(np.log1p(islands)),
            float(2 * fg.sum() / (perimeter + 1)),
            float(((dist > 12) & (dist < 180)).mean() / (fg.mean() + 1e-3))]
