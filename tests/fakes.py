"""The suite's test doubles and generated data, in one place: one fake backbone, one image
factory, a labelled image set and a head trained on it. conftest.py serves them as fixtures;
import this module only where a fixture cannot reach (a subprocess, a subclass)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

Size = int | tuple[int, int]  # a side, or (width, height) as Pillow counts
Seed = int | np.random.Generator  # a Generator continues the caller's stream


class FakeBackbone(nn.Module):
    """(B, 3, S, S) -> (B, dim) from pixel statistics: channel means pooled on a grid x grid
    layout, then per-channel std and mean (3 grid^2 + 6 values: 54 by default). The std tracks
    the noise level that make_dataset's labels depend on, so a head can learn from it. Any
    other `dim` maps those statistics through a fixed seeded matrix. No weights, deterministic;
    counts forward calls and rows, so tests can tell what was computed."""

    def __init__(self, dim: int = 54, grid: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.feature_dim = dim  # read by the extract worker like ResNet-50's 2048
        self.grid = grid
        stats = 3 * grid * grid + 6
        proj = None
        if dim != stats:
            g = torch.Generator().manual_seed(seed)
            proj = torch.randn(stats, dim, generator=g) / stats ** 0.5  # (stats, dim)
        self.register_buffer("proj", proj, persistent=False)
        self.calls = 0
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        x = x.float()
        parts = [x.std((2, 3)), x.mean((2, 3))]  # (B, 3) each
        if self.grid:
            parts.insert(0, nn.functional.adaptive_avg_pool2d(x, self.grid).flatten(1))
        stats = torch.cat(parts, 1)  # (B, 3 grid^2 + 6)
        return stats if self.proj is None else stats @ self.proj


KINDS = ("noise", "flat", "two_colour", "transparent", "noisy_flat")


class ImageFactory:
    """Generated images. Called, it writes one to `path` (format from the suffix, parents
    made) and returns the path; `.image` returns it, `.bytes` encodes it, `.encode` encodes any
    Pillow image.

    Kinds: "noise" (uniform 0-255 per channel; as RGBA, 30% of pixels fully transparent),
    "flat" (one colour), "two_colour" (a colour square, half the sides, centred on white),
    "transparent" (an RGBA disc with a half-transparent ring on a transparent background),
    "noisy_flat" (a colour plus Gaussian noise of sd 90 x amount). `mode` converts the result
    ("flat" is drawn in it directly, so `colour` may be any value that mode takes)."""

    def __call__(self, path: Path | str, size: Size = 32, kind: str = "noise", seed: Seed = 0,
                 mode: str | None = None, *, colour: object = None, amount: float = 0.5,
                 **save: object) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.image(size, kind, seed, mode, colour=colour, amount=amount).save(path, **save)
        return path

    def bytes(self, size: Size = 32, kind: str = "noise", seed: Seed = 0,
              mode: str | None = None, *, colour: object = None, amount: float = 0.5,
              fmt: str = "PNG", **save: object) -> bytes:
        return self.encode(self.image(size, kind, seed, mode, colour=colour, amount=amount),
                           fmt, **save)

    @staticmethod
    def encode(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
        buf = io.BytesIO()
        img.save(buf, fmt, **save)
        return buf.getvalue()

    @staticmethod
    def image(size: Size = 32, kind: str = "noise", seed: Seed = 0, mode: str | None = None,
              *, colour: object = None, amount: float = 0.5) -> Image.Image:
        w, h = (size, size) if isinstance(size, int) else size
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        if kind == "flat":
            if colour is not None:
                return Image.new(mode or "RGB", (w, h), colour)
            img = Image.new("RGB", (w, h), (200, 30, 30))
        elif kind == "noise":
            if mode == "RGBA":
                rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
                rgba[..., 3] = np.where(rng.random((h, w)) < 0.3, 0, rgba[..., 3])
                return Image.fromarray(rgba, "RGBA")
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        elif kind == "two_colour":
            img = Image.new("RGB", (w, h), (255, 255, 255))
            fill = (200, 30, 30) if colour is None else tuple(int(c) for c in colour)
            img.paste(fill, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
        elif kind == "transparent":
            yy, xx = np.mgrid[:h, :w]
            r = np.hypot(yy - h / 2, xx - w / 2)
            rgba = np.zeros((h, w, 4), dtype=np.uint8)
            rgba[..., :3] = (20, 60, 220) if colour is None else colour
            side = min(w, h)
            rgba[..., 3] = np.where(r < side / 4, 255, np.where(r < side / 3, 128, 0))
            img = Image.fromarray(rgba, "RGBA")
        elif kind == "noisy_flat":
            base = np.asarray((128, 128, 128) if colour is None else colour)
            pixels = base + amount * rng.normal(0, 90, (h, w, 3))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        else:
            raise ValueError(f"unknown image kind {kind!r} (one of {', '.join(KINDS)})")
        return img if mode is None or mode == img.mode else img.convert(mode)


make_image = ImageFactory()


def svg_bytes_for(ssim: float) -> int:
    """Labels' SVG size growing with the noise, as real SVGs do: 1 - ssim is 0.8 x noise,
    bytes are 2,000 x (1 + 20 x noise)."""
    return round(2000 * (1 + 20 * (1 - ssim) / 0.8))


def make_dataset(root: Path, n: int = 40, seed: int = 0, size: int = 32,
                 name: str = "labels.csv", svg_bytes: bool = False) -> Path:
    """`n` PNGs (flat colour + noise of amount a) under root/images, labels 1 - 0.8 a, two
    families, with `svg_bytes` an svg_bytes column (svg_bytes_for); returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,ssim,svg_bytes,family" if svg_bytes else "path,ssim,family"]
    for i in range(n):
        a = rng.random()
        base = rng.integers(0, 256, 3)
        rel = f"images/img{i:03d}.png"
        make_image(root / rel, size, "noisy_flat", rng, colour=base, amount=a)
        ssim = f"{1 - 0.8 * a:.6f}"
        size_cell = f"{svg_bytes_for(float(ssim))}," if svg_bytes else ""
        lines.append(f"{rel},{ssim},{size_cell}{'flat' if i % 2 else 'noisy'}")
    csv = root / name
    csv.write_text("\n".join(lines) + "\n")
    return csv


def extract_cfg(**overrides: object):
    """An ExtractConfig matching FakeBackbone on small images (weights only name it)."""
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig

    values = {"weights": "random:0", "image_size": 32, "batch_size": 16, "workers": 1,
              "threads": 1, **overrides}
    return build_config(ExtractConfig, None, values)


def small_train_cfg(**overrides: object):
    """A TrainConfig for a few dozen rows: small head, one thread, seconds at most."""
    from pipeline.train.fit import TrainConfig

    values = {"epochs": 60, "batch_size": 16, "patience": 60, "hidden_dims": (64, 32),
              "dropout": 0.1, "lr": 3e-3, "val_fraction": 0.25, "test_fraction": 0.15,
              "threads": 1,  # tiny matrices: a second thread only adds contention
              **overrides}
    return TrainConfig(**values)


def trained_setup(root: Path, n: int = 40,
                  features: tuple[str, ...] = ("resnet50", "imstats"),
                  **extract: object) -> dict[str, Path]:
    """Dataset + store + checkpoint trained on FakeBackbone features and image statistics (a
    few seconds), or on the blocks `features` names."""
    from pipeline.train.run import run_train

    csv = make_dataset(root, n=n)
    store = root / "features.h5"
    ckpt = root / "head.safetensors"
    run_train(str(csv), str(store), extract_cfg(**extract),
              small_train_cfg(epochs=30, features=features), str(ckpt), progress=False,
              backbone=FakeBackbone())
    return {"csv": csv, "store": store, "ckpt": ckpt, "root": root}
