"""The MLP head: 2048-d cached features -> predicted SSIM, with MC-dropout uncertainty."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.head.config import HeadConfig
from pipeline.measure import count_parameters, weights_bytes

__all__ = ["HeadConfig", "SSIMPredictor", "count_parameters", "summary", "format_summary"]


class SSIMPredictor(nn.Module):
    """Linear -> BatchNorm1d (optional) -> ReLU -> Dropout per hidden layer, then Linear -> (0, 1).

    Feature standardisation lives inside the module as buffers (`feature_mean`, `feature_std`;
    identity until training sets them) so a checkpoint or an export carries it along.
    """

    def __init__(self, config: HeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or HeadConfig()
        c = self.config
        self.register_buffer("feature_mean", torch.zeros(c.input_dim))
        self.register_buffer("feature_std", torch.ones(c.input_dim))
        layers: list[nn.Module] = []
        width = c.input_dim
        for hidden in c.hidden_dims:
            layers.append(nn.Linear(width, hidden))
            if c.batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU())
            layers.append(nn.Dropout(c.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming (He) normal for the hidden Linears, zero biases; BatchNorm weight 1, bias 0.

        The output Linear gets a small normal init instead: Kaiming fan_out on a 128 -> 1 layer
        has std sqrt(2), which saturates the sigmoid at the start (measured: the head then
        never leaves the saturated region on the demo data and predicts worse than the mean).
        """
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        out = self.mlp[-1]
        nn.init.normal_(out.weight, std=1e-3)

    def init_output_bias(self, mean_label: float) -> None:
        """Start predicting the training labels' mean: bias = inverse output activation."""
        if self.config.output == "linear":
            z = float(mean_label)
        else:
            m = min(max(float(mean_label), 1e-4), 1 - 1e-4)
            z = np.log(m / (1 - m)) if self.config.output == "sigmoid" else np.arctanh(2 * m - 1)
        with torch.no_grad():
            self.mlp[-1].bias.fill_(float(z))

    def set_feature_stats(self, mean: np.ndarray, std: np.ndarray) -> None:
        """Standardise inputs as (x - mean) / std. Dimensions (near-)constant in the training
        set (dead ReLUs of a random backbone are all zero) keep std 1: dividing by ~0 would
        turn any unseen non-zero value there into a saturating input."""
        std = np.asarray(std, dtype=np.float64)
        tiny = std < max(1e-6, 1e-3 * float(np.median(std)))
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(np.where(tiny, 1.0, std), dtype=torch.float32))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, 1) pre-activation output."""
        return self.mlp((features - self.feature_mean) / self.feature_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) features -> (B, 1) predicted SSIM in (0, 1)."""
        z = self.logits(features)
        if self.config.output == "tanh":
            return 0.5 * (torch.tanh(z) + 1.0)
        if self.config.output == "linear":
            return z
        return torch.sigmoid(z)

    @torch.no_grad()
    def predict_with_uncertainty(self, features: torch.Tensor, samples: int = 30,
                                 seed: int = 0) -> dict[str, torch.Tensor]:
        """Monte Carlo dropout: `samples` stochastic passes with dropout on, BatchNorm in eval.

        Returns (B,) tensors: mean, std, low/high (the 5th/95th percentiles, a 90% interval).
        Seeded through a private RNG state, so the same seed gives the same result and the
        global torch RNG is left untouched.
        """
        if samples < 2:
            raise ValueError(f"samples must be >= 2 for an uncertainty estimate, got {samples}")
        was_training = self.training
        self.eval()
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.train()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                draws = torch.stack([self(features)[:, 0] for _ in range(samples)])  # (S, B)
        finally:
            self.train(was_training)
        return {
            "mean": draws.mean(0),
            "std": draws.std(0),
            "low": torch.quantile(draws, 0.05, dim=0),
            "high": torch.quantile(draws, 0.95, dim=0),
        }

    def fold_numpy(self) -> dict[str, np.ndarray]:
        """Eval-mode head as plain arrays: standardisation and BatchNorm folded into the Linears.

        Returns {"W0", "b0", ..., "W{L}", "b{L}"} with W_i of shape (in, out), so inference is
        `relu(x @ W0 + b0) ... @ W_L + b_L` followed by the output activation. Dropout is kept
        as layer boundaries only; MC dropout in numpy applies it after every hidden ReLU.
        """
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        norms = [m for m in self.mlp if isinstance(m, nn.BatchNorm1d)]
        out: dict[str, np.ndarray] = {}
        with torch.no_grad():
            mean = self.feature_mean.double()
            std = self.feature_std.double()
            for i, lin in enumerate(linears):
                w = lin.weight.double()  # (out, in)
                b = lin.bias.double()
                if i == 0:  # fold (x - mean) / std into the first Linear
                    b = b - (w / std) @ mean
                    w = w / std
                if i < len(norms):  # y = gamma * (z - mu) / sqrt(var + eps) + beta
                    bn = norms[i]
                    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                    w = w * scale[:, None]
                    b = (b - bn.running_mean.double()) * scale + bn.bias.double()
                out[f"W{i}"] = w.T.contiguous().float().numpy()
                out[f"b{i}"] = b.float().numpy()
        return out


def summary(module: nn.Module, batch_size: int = 256) -> dict[str, Any]:
    """Layer list, parameter counts and a float32 memory estimate (weights, + Adam state and
    activations for one training batch of `batch_size`)."""
    counts = count_parameters(module)
    layers = [f"{name}: {m}" for name, m in module.named_modules()
              if name and not list(m.children())]
    params_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers_bytes = weights_bytes(module) - params_bytes
    widths = [m.out_features for m in module.modules() if isinstance(m, nn.Linear)]
    # Each layer keeps a few (B, width) float32 activations for backward (linear, BN, ReLU, mask).
    activations = 4 * batch_size * sum(widths) * 4
    return {
        **counts,
        "layers": layers,
        "inference_bytes": params_bytes + buffers_bytes,
        # weights + grads + AdamW's two moments + activations
        "training_bytes": 4 * params_bytes + buffers_bytes + activations,
    }


def format_summary(info: dict[str, Any]) -> str:
    """A printable model summary."""
    lines = list(info["layers"])
    lines.append(f"parameters: {info['total']:,} (trainable {info['trainable']:,}, "
                 f"frozen {info['frozen']:,})")
    lines.append(f"memory: inference ~{info['inference_bytes'] / 2**20:.1f} MiB, "
                 f"training ~{info['training_bytes'] / 2**20:.1f} MiB")
    return "\n".join(lines)
