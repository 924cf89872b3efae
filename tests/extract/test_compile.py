"""`--compile`: inductor with freezing gives the eager model's vectors under its own namespace."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.extract.spec import ExtractConfig, feature_spec
from pipeline.extract.worker import ExtractWorker
from store.keys import fingerprint


class SmallNet(torch.nn.Module):
    """Conv + BN + ReLU + pool: what freezing folds (BN into the conv, weights prepacked)."""

    feature_dim = 16

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _cfg(**kw) -> ExtractConfig:
    return ExtractConfig(weights="random:0", features=("resnet50",), image_size=32,
                         batch_size=4, **kw)


def test_compiled_vectors_match_eager_and_live_in_their_own_namespace(monkeypatch) -> None:
    import torch._inductor.config as inductor_config
    import torch._inductor.freezing as freezing

    monkeypatch.setattr(inductor_config, "freezing", False)  # restored after: prepare sets it

    frozen = []
    real_freeze = freezing.freeze

    def counting_freeze(*args, **kwargs):
        frozen.append(1)
        return real_freeze(*args, **kwargs)

    monkeypatch.setattr(freezing, "freeze", counting_freeze)  # inductor imports it per compile
    batch = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    eager = ExtractWorker(_cfg(), backbone=SmallNet().eval()).forward(batch)
    compiled_worker = ExtractWorker(_cfg(compile=True), backbone=SmallNet().eval())
    compiled = compiled_worker.forward(batch)
    assert compiled_worker._model is not compiled_worker._backbone  # really compiled
    assert frozen  # ... with inductor's freezing pass (weights as constants)
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-5)
    short = compiled_worker.forward(batch[:3])  # a short last batch: padded, same rows
    np.testing.assert_allclose(short, compiled[:3], rtol=1e-5, atol=1e-6)
    spec = feature_spec(_cfg(compile=True))
    assert spec["compile"] == "inductor+freezing"  # not the pre-freezing `true`
    assert fingerprint(spec) != fingerprint(feature_spec(_cfg()))
