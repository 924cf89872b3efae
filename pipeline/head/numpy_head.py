"""The trained head in plain numpy (BatchNorm folded): scores cached vectors without torch."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

# Why a row whose prediction is NaN/Inf fails (score) or is left out (evaluate): the head is
# checked at load, so the cause is a feature vector with extreme values that overflow it.
NONFINITE_REASON = ("predicted SSIM is not finite (NaN/Inf): its cached feature vector has "
                    "extreme values; re-extract the image (`ssimcache store verify` checks the "
                    "store)")


class NumpyHead:
    """Eval-mode head: `relu(x @ W0 + b0) ... @ W_L + b_L`, then sigmoid, scaled tanh or
    nothing (linear).

    Built from `SSIMPredictor.fold_numpy()` arrays (feature standardisation and BatchNorm already
    folded into the Linears), so it matches the torch head in eval mode to float32 rounding.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], output: str = "sigmoid",
                 dropout: float = 0.0) -> None:
        n = sum(1 for k in arrays if k.startswith("W"))
        if n == 0 or any(f"W{i}" not in arrays or f"b{i}" not in arrays for i in range(n)):
            raise ValueError(f"numpy head arrays must be W0,b0..WL,bL; got {sorted(arrays)}")
        self.weights = [np.ascontiguousarray(arrays[f"W{i}"], dtype=np.float32) for i in range(n)]
        self.biases = [np.ascontiguousarray(arrays[f"b{i}"], dtype=np.float32) for i in range(n)]
        self.output = output
        self.dropout = dropout
        self.input_dim = self.weights[0].shape[0]

    def _activate(self, z: np.ndarray) -> np.ndarray:
        if self.output == "tanh":
            return 0.5 * (np.tanh(z) + 1.0)
        if self.output == "linear":
            return z
        return 1.0 / (1.0 + np.exp(-z))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, D) or (D,) features -> (N,) float32 predicted SSIM; NaN where a vector's
        extreme values overflow (callers report such rows, so numpy's warnings are muted)."""
        h = np.atleast_2d(np.asarray(x, dtype=np.float32))
        last = len(self.weights) - 1
        with np.errstate(over="ignore", invalid="ignore"):
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = h @ w
                h += b
                if i < last:
                    np.maximum(h, 0.0, out=h)
            return self._activate(h[:, 0]).astype(np.float32)

    def predict_with_uncertainty(self, x: np.ndarray, samples: int = 30, seed: int = 0,
                                 keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Monte Carlo dropout in numpy: `samples` passes with inverted dropout after every hidden
        ReLU (as nn.Dropout in train mode; BatchNorm stays folded = eval mode, as in the torch
        version).

        Each row draws its masks from its own PCG64 stream seeded by `row_seed(seed, key)`, key
        = `keys[i]` (a content key) or, without `keys`, the row index; rows are also computed
        one at a time, so a row's result is bit-identical whatever else is in the call and the
        same (seed, key) always gives the same result.

        Returns (N,) arrays: mean, std (unbiased, like torch.std), low/high = 5th/95th percentile.
        """
        if samples < 2:
            raise ValueError(f"samples must be >= 2 for an uncertainty estimate, got {samples}")
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        names = [str(i) for i in range(len(x))] if keys is None else [str(k) for k in keys]
        if len(names) != len(x):
            raise ValueError(f"got {len(names)} keys for {len(x)} rows")
        draws = np.empty((x.shape[0], samples), dtype=np.float32)  # (N, S)
        with np.errstate(over="ignore", invalid="ignore"):  # overflow -> NaN, reported
            self._draw(x, names, samples, seed, draws)
        return {
            "mean": draws.mean(1),
            "std": draws.std(1, ddof=1),
            "low": np.quantile(draws, 0.05, axis=1).astype(np.float32),
            "high": np.quantile(draws, 0.95, axis=1).astype(np.float32),
        }

    def _draw(self, x: np.ndarray, names: list[str], samples: int, seed: int,
              draws: np.ndarray) -> None:
        """Fill (N, S) `draws`: row r's MC passes from its own (seed, key) stream."""
        keep = 1.0 - self.dropout
        last = len(self.weights) - 1
        for r, name in enumerate(names):
            rng = np.random.default_rng(row_seed(seed, name))
            # The first Linear sees no dropout: once per row, then tiled over samples. (S, H0)
            first = np.maximum(x[r:r + 1] @ self.weights[0] + self.biases[0], 0.0)
            h = np.repeat(first, samples, axis=0)
            for i in range(1, last + 1):
                if keep < 1.0:
                    h = h * (rng.random(h.shape, dtype=np.float32) < keep) / np.float32(keep)
                h = h @ self.weights[i] + self.biases[i]
                if i < last:
                    h = np.maximum(h, 0.0)
            draws[r] = self._activate(h[:, 0])


# nn.BatchNorm1d's default eps; SSIMPredictor never changes it and state dicts do not store it.
BN_EPS = 1e-5


def head_layout(input_dim: int, hidden_dims: Sequence[int], batch_norm: bool
                ) -> tuple[list[tuple[str, str | None]], int]:
    """[(linear prefix, batchnorm prefix | None), ...] of SSIMPredictor's `mlp` Sequential:
    each hidden layer is Linear, [BatchNorm1d], ReLU, Dropout; then the output Linear."""
    step = 4 if batch_norm else 3
    layers: list[tuple[str, str | None]] = [
        (f"mlp.{i * step}", f"mlp.{i * step + 1}" if batch_norm else None)
        for i in range(len(hidden_dims))]
    layers.append((f"mlp.{len(hidden_dims) * step}", None))
    return layers, step


def fold_state(state: Mapping[str, np.ndarray], input_dim: int, hidden_dims: Sequence[int],
               batch_norm: bool) -> dict[str, np.ndarray]:
    """`SSIMPredictor.fold_numpy()` computed from a state dict in numpy: lets a torch file be
    scored without importing torch. {"W0": (in, out) float32, "b0": (out,), ...}."""
    out: dict[str, np.ndarray] = {}
    for i, (w, b) in enumerate(fold_state64(state, input_dim, hidden_dims, batch_norm)):
        out[f"W{i}"] = np.ascontiguousarray(w.T, dtype=np.float32)  # (in, out)
        out[f"b{i}"] = b.astype(np.float32)
    return out


def fold_state64(state: Mapping[str, np.ndarray], input_dim: int, hidden_dims: Sequence[int],
                 batch_norm: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(W (out, in), b (out,)), ...] in float64, the torch layout: standardisation and
    BatchNorm folded as `SSIMPredictor.fold_numpy` does, so a checkpoint's numpy copy can be
    checked against its torch copy without a transposed copy of every matrix."""
    layers, _ = head_layout(input_dim, hidden_dims, batch_norm)
    mean = np.asarray(state["feature_mean"], np.float64)
    std = np.asarray(state["feature_std"], np.float64)
    out = []
    with np.errstate(all="ignore"):  # a broken state gives inf/nan, which the caller refuses
        for i, (lin, bn) in enumerate(layers):
            w = np.asarray(state[f"{lin}.weight"], np.float64)  # (out, in)
            b = np.asarray(state[f"{lin}.bias"], np.float64)
            if i == 0:  # fold (x - mean) / std into the first Linear
                w = w / std
                b = b - w @ mean
            if bn is not None:  # y = gamma * (z - mu) / sqrt(var + eps) + beta
                scale = (np.asarray(state[f"{bn}.weight"], np.float64)
                         / np.sqrt(np.asarray(state[f"{bn}.running_var"], np.float64) + BN_EPS))
                w *= scale[:, None]
                b = ((b - np.asarray(state[f"{bn}.running_mean"], np.float64)) * scale
                     + np.asarray(state[f"{bn}.bias"], np.float64))
            out.append((w, b))
    return out


def row_seed(seed: int, key: str) -> int:
    """128-bit seed of one row's MC-dropout stream: sha256 of "seed:key" (any int seed)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:16], "big")
