"""Tests of QualityPredictionModel: the seed plan's day-13 integration test, weights mapping."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.export.model import PRETRAINED_ENV, QualityPredictionModel, resolve_weights
from pipeline.head.checkpoint import save_checkpoint
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor


@pytest.fixture
def offline_pretrained(monkeypatch):
    # ImageNet weights cannot be downloaded here: `pretrained: True` is served by random:0.
    monkeypatch.setenv(PRETRAINED_ENV, "random:0")


@pytest.mark.slow  # real ResNet-50 at 224 px
def test_day13_integration(offline_pretrained):
    """Test complete model architecture pipeline (the seed plan's test, unchanged)."""
    config = {
        'pretrained': True,
        'freeze_backbone': True,
        'feature_dim': 2048,
        'hidden_dims': [1024, 512, 256, 128],
        'dropout_rate': 0.3,
        'use_batch_norm': True,
        'version': '1.0.0'
    }
    model = QualityPredictionModel(config)
    model.eval()
    batch_size = 4
    dummy_input = torch.randn(batch_size, 3, 224, 224)
    with torch.no_grad():
        ssim_pred, features = model(dummy_input)
    assert ssim_pred.shape == (batch_size, 1)
    assert features.shape == (batch_size, 2048)
    assert torch.all(ssim_pred >= 0.0) and torch.all(ssim_pred <= 1.0)
    # the rest of the contract: predict_ssim / extract_features agree with forward
    with torch.no_grad():
        assert torch.equal(model.extract_features(dummy_input), features)
        assert torch.equal(model.predict_ssim(dummy_input), ssim_pred)
    assert model.weights == "random:0" and model.model_version == "1.0.0"
    backbone_params = list(model.feature_extractor.parameters())
    assert backbone_params and not any(p.requires_grad for p in backbone_params)
    assert all(p.requires_grad for p in model.predictor.parameters())


def test_weights_resolution(monkeypatch, fake_backbone):
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    assert resolve_weights({}) == "imagenet"
    assert resolve_weights({"pretrained": False}) == "random:0"
    assert resolve_weights({"weights": "random:5", "pretrained": True}) == "random:5"
    monkeypatch.setenv(PRETRAINED_ENV, "random:0")
    assert resolve_weights({"pretrained": True}) == "random:0"
    with pytest.raises(ConfigError, match="unknown config key"):
        QualityPredictionModel({"hidden": [3]}, backbone=fake_backbone())


def test_from_checkpoint_uses_recorded_weights_and_head(tmp_path, fake_backbone):
    torch.manual_seed(0)
    head = SSIMPredictor(HeadConfig(input_dim=54, hidden_dims=(16,))).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", head, fingerprint="f" * 64,
                           feature_spec={}, extract_config={"weights": "random:3"})
    model = QualityPredictionModel.from_checkpoint(str(path), backbone=fake_backbone())
    assert model.weights == "random:3" and not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.predict_ssim(x), head(fake_backbone()(x)))
