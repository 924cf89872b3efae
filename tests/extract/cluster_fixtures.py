"""Helpers the cluster tests share: a tiny backbone that can die, images, configs, store checks."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.extract.run import ExtractReport
from pipeline.extract.spec import ExtractConfig
from store.hdf5 import FeatureStore
from store.namespace import Namespace

N_IMAGES = 12


class TinyBackbone(nn.Module):
    """(B, 3, S, S) -> (B, 16); with `die_marker`, the first process to run it dies at once."""

    feature_dim = 16

    def __init__(self, die_marker: str | None = None) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g))
            self.conv.bias.zero_()
        self.die_marker = die_marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.die_marker is not None:
            try:
                os.close(os.open(self.die_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:  # first call anywhere: die mid-shard, with no cleanup, like an OOM kill
                os._exit(1)
        return torch.relu(self.conv(x)).mean(dim=(2, 3))  # (B, 16)


def make_images(folder: Path) -> list[Path]:
    """N_IMAGES random PNGs and one broken one (a failure row), in that order."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(N_IMAGES):
        p = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(p)
        out.append(p)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return [*out, folder / "broken.png"]


def cfg_for(**kw) -> ExtractConfig:
    # The backbone block alone unless a test asks for more (both blocks: their own test).
    base = dict(features=("resnet50",), weights="random:0", image_size=32, batch_size=4,
                threads=1, workers=1)
    return ExtractConfig(**{**base, **kw})


def local_reference(cfg: ExtractConfig) -> ExtractConfig:
    """The local reference for a built ResNet-50: 2 torch threads, like a default run on 2
    cores. Workers run 1 thread but route 1x1 convs to oneDNN, as torch does for >1 thread,
    so they give these bits; a local 1-thread run takes torch's native path (~1e-4 apart)."""
    return dataclasses.replace(cfg, threads=2)


def rows(store: Path, fp: str) -> dict[str, np.ndarray]:
    """{key: vector} of one namespace; no key twice."""
    with FeatureStore(store, mode="r") as fs:
        ns = fs.namespace(fp)
        keys = ns.keys()
        assert len(keys) == len(set(keys))
        return dict(zip(keys, ns.get_many(keys), strict=True))


def assert_same(local: Path, remote: Path, fp: str, n: int = N_IMAGES) -> None:
    """The same keys and bit-identical vectors in both stores, and the remote one verifies."""
    a, b = rows(local, fp), rows(remote, fp)
    assert set(a) == set(b) and len(a) == n
    for k in a:  # bitwise: workers take the local run's kernels (cluster.md)
        assert np.array_equal(a[k], b[k]), (k, float(np.abs(a[k] - b[k]).max()))
    with FeatureStore(remote, mode="r") as fs:
        assert fs.verify() == []


def report_fields(rep: ExtractReport) -> tuple:
    """Everything two runs over the same inputs must agree on (not speed or timings)."""
    return (rep.seen, rep.cached, rep.computed, rep.failed, rep.duplicates, rep.keys,
            rep.failures, rep.fingerprints)


def spy_writes(monkeypatch) -> list[tuple[str, str]]:
    """Record (namespace, key) for every key the driver asks the store to write."""
    written: list[tuple[str, str]] = []
    put_many = Namespace.put_many

    def spy(self, keys, vectors):
        written.extend((self.fingerprint, k) for k in keys)
        return put_many(self, keys, vectors)

    monkeypatch.setattr(Namespace, "put_many", spy)
    return written
