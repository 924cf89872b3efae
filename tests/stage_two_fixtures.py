"""Shared helpers of the stage-two tests: a tiny labelled image set and a fake backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn


class TinyBackbone(nn.Module):
    """(B, 3, S, S) -> (B, 54): 4x4 pooled means + per-channel std and mean. The std tracks the
    noise level that the generated labels depend on, so a head can learn from it."""

    feature_dim = 54

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(x.float(), 4).flatten(1)  # (B, 48)
        return torch.cat([pooled, x.float().std((2, 3)), x.float().mean((2, 3))], 1)


def make_dataset(root: Path, n: int = 40, seed: int = 0, size: int = 32,
                 name: str = "labels.csv") -> Path:
    """`n` PNGs (flat colour + noise of amount a) under root/images, labels 1 - 0.8 a, two
    families; returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["path,ssim,family"]
    for i in range(n):
        a = rng.random()
        base = rng.integers(0, 256, 3)
        img = base + a * rng.normal(0, 90, (size, size, 3))
        rel = f"images/img{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / rel)
        lines.append(f"{rel},{1 - 0.8 * a:.6f},{'flat' if i % 2 else 'noisy'}")
    csv = root / name
    csv.write_text("\n".join(lines) + "\n")
    return csv


def extract_cfg(**overrides):
    """An ExtractConfig matching TinyBackbone on small images (weights only name it)."""
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig

    values = {"weights": "random:0", "image_size": 32, "batch_size": 16, "workers": 1,
              "threads": 1, **overrides}
    return build_config(ExtractConfig, None, values)


def small_train_cfg(**overrides):
    from pipeline.train.fit import TrainConfig

    values = {"epochs": 60, "batch_size": 16, "patience": 60, "hidden_dims": (64, 32),
              "dropout": 0.1, "lr": 3e-3, "val_fraction": 0.25, "test_fraction": 0.15,
              "threads": 1,  # tiny matrices: a second thread only adds contention
              **overrides}
    return TrainConfig(**values)


def trained_setup(root: Path, n: int = 40,
                  features: tuple[str, ...] = ("resnet50", "imstats"),
                  **extract: object) -> dict[str, Path]:
    """Dataset + store + checkpoint trained on TinyBackbone features and image statistics (a
    few seconds), or on the blocks `features` names."""
    from pipeline.train.run import run_train

    csv = make_dataset(root, n=n)
    store = root / "features.h5"
    ckpt = root / "head.safetensors"
    run_train(str(csv), str(store), extract_cfg(**extract),
              small_train_cfg(epochs=30, features=features), str(ckpt), progress=False,
              backbone=TinyBackbone())
    return {"csv": csv, "store": store, "ckpt": ckpt, "root": root}
