"""Tests of the MLP head: shapes, init, config round trip, MC dropout, numpy folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor, count_parameters, format_summary, summary
from pipeline.head.numpy_head import NumpyHead


def _trained_like(cfg: HeadConfig, seed: int = 0) -> SSIMPredictor:
    """A head whose BatchNorm running stats and feature stats are not the identity."""
    torch.manual_seed(seed)
    head = SSIMPredictor(cfg)
    head.set_feature_stats(np.full(cfg.input_dim, 2.0), np.full(cfg.input_dim, 1.5))
    head.train()
    with torch.no_grad():
        for _ in range(5):
            head(_features(64, cfg.input_dim))
    return head.eval()


def _features(n: int, dim: int) -> torch.Tensor:
    """Inputs distributed like the feature stats above (mean 2, std ~1.5)."""
    return 2.0 + 1.5 * torch.randn(n, dim)


def test_forward_shape_range_and_layers():
    head = SSIMPredictor().eval()
    out = head(torch.randn(5, 2048) * 10)
    assert out.shape == (5, 1)
    assert torch.all((out >= 0) & (out <= 1))
    linears = [m for m in head.mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (2048, 1024), (1024, 512), (512, 256), (256, 128), (128, 1)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.mlp) == 4
    assert all(m.p == 0.3 for m in head.mlp if isinstance(m, nn.Dropout))
    no_bn = SSIMPredictor(HeadConfig(batch_norm=False))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in no_bn.mlp)


def test_init_kaiming_and_batchnorm():
    torch.manual_seed(0)
    head = SSIMPredictor()
    first = head.mlp[0]
    assert torch.all(first.bias == 0)
    # kaiming_normal fan_out: std = sqrt(2 / fan_out) = sqrt(2 / 1024)
    assert first.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.05)
    bn = head.mlp[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_tanh_output_is_scaled_to_unit_interval():
    head = SSIMPredictor(HeadConfig(input_dim=8, hidden_dims=(4,), output="tanh")).eval()
    out = head(torch.randn(100, 8) * 50)
    assert torch.all((out >= 0) & (out <= 1))


def test_config_json_round_trip_and_validation():
    cfg = HeadConfig(input_dim=16, hidden_dims=(8, 4), dropout=0.1, batch_norm=False)
    assert HeadConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        HeadConfig.from_dict({"input_dim": 3, "depth": 2})
    with pytest.raises(ConfigError, match="dropout"):
        HeadConfig(dropout=1.5)


def test_mc_dropout_seeded_and_spread():
    head = _trained_like(HeadConfig(input_dim=32, hidden_dims=(64, 32)))
    x = torch.rand(6, 32)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = head.predict_with_uncertainty(x, samples=20, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "MC dropout must not consume the global RNG"
    b = head.predict_with_uncertainty(x, samples=20, seed=7)
    c = head.predict_with_uncertainty(x, samples=20, seed=8)
    assert torch.all(a["std"] > 0)
    assert torch.equal(a["mean"], b["mean"]) and torch.equal(a["std"], b["std"])
    assert not torch.equal(a["mean"], c["mean"])
    assert torch.all(a["low"] <= a["high"])
    assert not head.training, "eval mode is restored"
    with pytest.raises(ValueError):
        head.predict_with_uncertainty(x, samples=1)


@pytest.mark.parametrize("batch_norm", [True, False])
def test_numpy_fold_matches_torch(batch_norm):
    cfg = HeadConfig(batch_norm=batch_norm)
    head = _trained_like(cfg)
    x = _features(33, 2048)
    with torch.no_grad():
        expected = head(x)[:, 0].numpy()
    got = NumpyHead(head.fold_numpy())(x.numpy())
    assert got.shape == (33,)
    assert np.abs(got - expected).max() < 1e-5
    # single vector in, one score out
    assert NumpyHead(head.fold_numpy())(x[0].numpy()).shape == (1,)


def test_numpy_mc_dropout_seeded():
    head = _trained_like(HeadConfig(input_dim=32, hidden_dims=(64, 32)))
    nh = NumpyHead(head.fold_numpy(), dropout=0.3)
    x = np.random.default_rng(0).random((5, 32), dtype=np.float32)
    a = nh.predict_with_uncertainty(x, samples=25, seed=3)
    b = nh.predict_with_uncertainty(x, samples=25, seed=3)
    assert np.all(a["std"] > 0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert np.all((a["low"] <= a["mean"]) & (a["mean"] <= a["high"]))
    assert not np.array_equal(a["mean"], nh.predict_with_uncertainty(x, 25, seed=4)["mean"])
    # a row's draws come from its own (seed, key) stream: the same alone and in any batch
    keyed = nh.predict_with_uncertainty(x, 25, seed=3, keys=list("abcde"))
    alone = nh.predict_with_uncertainty(x[2:3], 25, seed=3, keys=["c"])
    flipped = nh.predict_with_uncertainty(x[::-1], 25, seed=3, keys=list("edcba"))
    for k in keyed:
        assert keyed[k][2] == alone[k][0] == flipped[k][2], k
    assert not np.array_equal(keyed["std"], a["std"])  # keys, not positions, seed the rows
    with pytest.raises(ValueError, match="keys"):
        nh.predict_with_uncertainty(x, 5, keys=["a"])
    # no dropout -> no spread
    assert np.all(NumpyHead(head.fold_numpy(), dropout=0.0)
                  .predict_with_uncertainty(x, samples=5)["std"] < 1e-6)


def test_summary_counts_trainable_and_frozen():
    head = SSIMPredictor()
    info = summary(head)
    assert info["trainable"] == sum(p.numel() for p in head.parameters())
    assert info["frozen"] == 0
    for p in head.mlp[0].parameters():
        p.requires_grad_(False)
    counts = count_parameters(head)
    assert counts["frozen"] == 2048 * 1024 + 1024
    assert counts["total"] == info["total"]
    text = format_summary(summary(head))
    assert "frozen 2,098,176" in text and "MiB" in text


def test_output_starts_at_mean_label_and_dead_dims_are_not_amplified():
    torch.manual_seed(0)
    for output in ("sigmoid", "tanh"):
        head = SSIMPredictor(HeadConfig(input_dim=16, hidden_dims=(8,), output=output))
        head.init_output_bias(0.93)
        out = head.eval()(torch.randn(10, 16))
        assert torch.allclose(out, torch.full_like(out, 0.93), atol=0.01)
    head = SSIMPredictor(HeadConfig(input_dim=4, hidden_dims=(4,)))
    head.set_feature_stats(np.zeros(4), np.array([0.0, 1e-9, 2.0, 3.0]))
    assert head.feature_std.tolist() == [1.0, 1.0, 2.0, 3.0]
