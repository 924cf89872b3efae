"""Tests for pipeline.backbone and pipeline.weights (real ResNet-50 with random weights)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet50

from pipeline.errors import WeightsError
from pipeline.extract.backbone import (
    FEATURE_DIM,
    ResNetFeatureExtractor,
    fuse_conv_bn,
    load_backbone,
)
from pipeline.extract.weights import (
    PROBE_TIMEOUT_S,
    file_sha256,
    host_reachable,
    imagenet_cache_path,
    imagenet_state_dict,
    weights_identity,
)

# ResNet-50 minus its 2048 x 1000 classifier (+ bias): 25,557,032 - 2,049,000
RESNET50_NO_FC = 23_508_032


@pytest.fixture(scope="module")
def model() -> ResNetFeatureExtractor:
    return load_backbone("random:0")


@pytest.mark.slow
@pytest.mark.parametrize("b,size", [(1, 224), (8, 64), (3, 64), (5, 96)])
def test_output_shape(model: ResNetFeatureExtractor, b: int, size: int) -> None:
    with torch.inference_mode():
        y = model(torch.randn(b, 3, size, size))
    assert y.shape == (b, FEATURE_DIM) and torch.isfinite(y).all()


@pytest.mark.slow
def test_batch_rows_are_independent(model: ResNetFeatureExtractor) -> None:
    # eval-mode BatchNorm: a row's vector must not depend on the other rows of its batch
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        full, one = model(x), model(x[1:2])
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_frozen_counts_and_unfreeze(model: ResNetFeatureExtractor) -> None:
    assert model.parameter_counts() == {"trainable": 0, "frozen": RESNET50_NO_FC,
                                        "total": RESNET50_NO_FC}
    m = ResNetFeatureExtractor(freeze=False)
    assert m.parameter_counts()["trainable"] == RESNET50_NO_FC
    m.freeze()
    assert m.parameter_counts()["frozen"] == RESNET50_NO_FC
    m.unfreeze()
    assert m.parameter_counts()["frozen"] == 0


@pytest.mark.slow
def test_random_seed_is_deterministic_across_processes(model: ResNetFeatureExtractor) -> None:
    code = ("from pipeline.extract.backbone import load_backbone; m = load_backbone('random:0'); "
            "print(repr(float(sum(p.double().sum() for p in m.parameters()))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    here = float(sum(p.double().sum() for p in model.parameters()))
    assert float(out) == here
    other = load_backbone("random:1")
    assert not torch.equal(other.net.conv1.weight, model.net.conv1.weight)
    # the caller's global RNG is untouched by a seeded build
    torch.manual_seed(123)
    a = torch.rand(1)
    torch.manual_seed(123)
    load_backbone("random:5")
    assert torch.equal(torch.rand(1), a)


@pytest.mark.slow
@pytest.mark.parametrize("with_fc", [True, False])
def test_state_dict_file_loads_and_is_fingerprinted_by_digest(tmp_path: Path,
                                                              with_fc: bool) -> None:
    torch.manual_seed(7)
    src = resnet50(weights=None)
    sd = src.state_dict()
    if not with_fc:
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    m = load_backbone(str(path))
    torch.testing.assert_close(m.net.layer4[2].conv3.weight, src.layer4[2].conv3.weight)
    ident = weights_identity(str(path))
    assert ident == {"kind": "file", "sha256": file_sha256(path)}
    # same tensors, different file bytes -> a different identity (digest, not the path name)
    torch.save({**sd, "extra_note": torch.zeros(1)}, tmp_path / "w2.pt")
    assert weights_identity(str(tmp_path / "w2.pt")) != ident


def test_bad_weight_files_raise_weights_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot be loaded"):
        load_backbone(str(junk))
    wrong = tmp_path / "wrong.pt"
    torch.save({"conv1.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WeightsError, match="does not fit"):
        load_backbone(str(wrong))
    with pytest.raises(WeightsError, match="no such file"):
        weights_identity(str(tmp_path / "missing.pt"))


@pytest.mark.parametrize("content", ["module", "junk"])
def test_weights_load_error_never_advises_weights_only_false(tmp_path: Path,
                                                              content: str) -> None:
    from pipeline.extract.weights import file_state_dict

    path = tmp_path / "w.pt"
    if content == "module":  # a whole pickled model, the usual mistake
        torch.save(torch.nn.Linear(2, 2), path)
    else:
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError) as e:
        file_state_dict(path)
    msg = str(e.value)
    assert "torch.save(model.state_dict(), PATH)" in msg and str(path) in msg
    assert "weights_only" not in msg and "False" not in msg and "\x1b" not in msg, msg
    if content == "module":
        assert "torch.nn.modules.linear.Linear" in msg  # says what it refused


def test_imagenet_offline_fails_fast_naming_the_cache_path(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    cache = imagenet_cache_path()
    assert cache == tmp_path / "th" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"
    # Tests never download: where the host is reachable, simulate offline with the env switch;
    # here (no network) the real connect probe is what fails fast.
    monkeypatch.setenv("SSIMCACHE_OFFLINE", "1" if host_reachable(
        "download.pytorch.org", 443, PROBE_TIMEOUT_S) else "0")
    with pytest.raises(WeightsError) as e:
        imagenet_state_dict()
    msg = str(e.value)
    assert str(cache) in msg and "--weights PATH" in msg and "random:SEED" in msg
    assert weights_identity("imagenet") == {"kind": "torchvision",
                                            "name": "ResNet50_Weights.IMAGENET1K_V2"}


@pytest.mark.slow
def test_fused_backbone_has_no_batchnorm_and_matches_the_plain_one(model) -> None:
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # a copy
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = model(x), fused(x)
    assert b.shape == (3, FEATURE_DIM)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min().item() > 0.99999
    assert (a - b).abs().max().item() <= 1e-3 * a.abs().max().item()


@pytest.mark.slow
def test_extract_worker_fuses_only_what_it_builds() -> None:
    from pipeline.extract.spec import ExtractConfig
    from pipeline.extract.worker import ExtractWorker

    cfg = ExtractConfig(weights="random:0", image_size=32)
    built = ExtractWorker(cfg)
    built.prepare()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in built._backbone.modules())
    plain = ExtractWorker(ExtractConfig(weights="random:0", image_size=32, fuse_bn=False))
    plain.prepare()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain._backbone.modules())


@pytest.mark.parametrize("channels_last", [True, False])
def test_worker_input_equals_preprocess_to_tensor_to_the_bit(channels_last: bool) -> None:
    """to_input's lookup table gives what Preprocess.to_tensor gives (fp32), and its bf16
    rounding (what autocast fed the first conv), for every uint8 value in every channel."""
    import numpy as np

    from pipeline.extract.spec import ExtractConfig
    from pipeline.extract.worker import ExtractWorker

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    batch[1].reshape(-1, 3)[:256] = np.arange(256, dtype=np.uint8)[:, None]  # every value
    for precision in ("fp32", "bf16"):
        w = ExtractWorker(ExtractConfig(weights="random:0", image_size=32, precision=precision,
                                        channels_last=channels_last))
        w.prepare()
        want = w.pre.to_tensor(batch)
        got = w.to_input(batch)
        if precision == "bf16":
            want = want.to(torch.bfloat16)
        assert got.dtype == want.dtype and got.shape == (2, 3, 32, 32)
        assert torch.equal(got, want)
        assert got.is_contiguous(memory_format=torch.channels_last if channels_last
                                 else torch.contiguous_format)


def test_bf16_model_converted_once_gives_the_autocast_vectors() -> None:
    """prepare() converts the fused model to bf16 once; the vectors equal those of the fp32
    model under autocast (the previous bf16 path) to the bit, so the fingerprint stands."""
    import numpy as np

    from pipeline.extract.spec import ExtractConfig
    from pipeline.extract.worker import ExtractWorker

    cfg = ExtractConfig(weights="random:0", image_size=48, precision="bf16")
    w = ExtractWorker(cfg)
    w.prepare()
    assert next(w._backbone.parameters()).dtype == torch.bfloat16
    batch = np.random.default_rng(1).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    got = w.forward(batch)
    ref = fuse_conv_bn(load_backbone("random:0")).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(w.pre.to_tensor(batch)).float().numpy()
    assert got.dtype == np.float32 and got.shape == (3, FEATURE_DIM)
    np.testing.assert_array_equal(got, want)
    # an injected fp32 module is the caller's: it keeps its dtype and runs under autocast
    injected = load_backbone("random:0")
    wi = ExtractWorker(cfg, backbone=injected)
    wi.prepare()
    assert next(injected.parameters()).dtype == torch.float32
    assert wi.forward(batch).shape == (3, FEATURE_DIM)
