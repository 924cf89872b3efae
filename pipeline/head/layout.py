"""One checked description of a checkpoint, part two: its tensors. Names, shapes and dtypes
are exactly those the head configs imply (read from the header before any tensor is loaded),
every value is finite, and each head's numpy copy equals the fold of its torch copy."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.head.checks import (
    BYTES_PREFIX,
    BYTES_TARGET,
    FIX,
    check_bytes_head,
    check_description,
    check_head_config,
    split_tensors,
)
from pipeline.head.config import HeadConfig
from pipeline.head.numpy_head import fold_state64, head_layout

# The numpy copy is the float64 fold of the torch copy cast to float32: identical on one
# machine, within a few float32 ulps across BLAS builds. A tolerance of 1e-5 relative to each
# element (plus 1e-6 of the array's scale, for elements that cancel to ~0) leaves margin for
# that and still catches any edit that changes a prediction.
RTOL, ATOL_SCALE = 1e-5, 1e-6


def expected_layout(config: HeadConfig) -> tuple[dict[str, tuple[tuple[int, ...], str]],
                                                 dict[str, tuple[tuple[int, ...], str]]]:
    """({state name: (shape, dtype)}, {numpy name: (shape, dtype)}) that `config` implies."""
    state: dict[str, tuple[tuple[int, ...], str]] = {
        "feature_mean": ((config.input_dim,), "float32"),
        "feature_std": ((config.input_dim,), "float32")}
    folded: dict[str, tuple[tuple[int, ...], str]] = {}
    layers, _ = head_layout(config.input_dim, config.hidden_dims, config.batch_norm)
    widths = [config.input_dim, *config.hidden_dims, 1]
    for i, (lin, bn) in enumerate(layers):
        n_in, n_out = widths[i], widths[i + 1]
        state[f"{lin}.weight"] = ((n_out, n_in), "float32")  # torch Linear: (out, in)
        state[f"{lin}.bias"] = ((n_out,), "float32")
        if bn is not None:
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"{bn}.{name}"] = ((n_out,), "float32")
            state[f"{bn}.num_batches_tracked"] = ((), "int64")
        folded[f"W{i}"] = ((n_in, n_out), "float32")  # numpy head: x @ W, (in, out)
        folded[f"b{i}"] = ((n_out,), "float32")
    return state, folded


def check_layout(found: Mapping[str, tuple[tuple[int, ...], str]], config: HeadConfig,
                 path: Path, *, prefixed: bool = True) -> None:
    """Tensor names, shapes and dtypes are exactly those `config` implies (checked from the
    header, before any tensor is read). `prefixed`: names are 'head/...' and 'numpy/...' (a
    safetensors checkpoint); otherwise a bare torch state dict."""
    state, folded = expected_layout(config)
    want = ({**{f"head/{k}": v for k, v in state.items()},
             **{f"numpy/{k}": v for k, v in folded.items()}} if prefixed else state)
    missing, unexpected = sorted(set(want) - set(found)), sorted(set(found) - set(want))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: its tensors do not match its head_config (input_dim "
            f"{config.input_dim}, hidden_dims {list(config.hidden_dims)}, batch_norm "
            f"{config.batch_norm}): missing {missing[:6]}, unexpected {unexpected[:6]}; {FIX}")
    for name, (shape, dtype) in want.items():
        got_shape, got_dtype = found[name]
        if tuple(got_shape) != shape or got_dtype != dtype:
            raise CheckpointError(
                f"checkpoint {path}: tensor '{name}' is {got_dtype} {tuple(got_shape)}, its "
                f"head_config implies {dtype} {shape}; {FIX}")


def check_values(state: Mapping[str, np.ndarray], numpy_head: Mapping[str, np.ndarray] | None,
                 config: HeadConfig, path: Path) -> dict[str, np.ndarray]:
    """All weights finite, standardisation and BatchNorm variances usable, and the numpy copy
    equal to the fold of the torch copy (a flipped bit in one copy would otherwise make
    `score`/`evaluate` and `export` disagree silently). Returns the numpy head (the recomputed
    fold when the file has no numpy copy)."""
    arrays = {**{f"head/{k}": v for k, v in state.items()},
              **{f"numpy/{k}": v for k, v in (numpy_head or {}).items()}}
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.size(a) - np.isfinite(a).sum())
            raise CheckpointError(f"checkpoint {path}: tensor '{name}' holds {bad} NaN/Inf "
                                  f"value(s), so every prediction would be garbage; {FIX}")
    if not (state["feature_std"] > 0).all():
        raise CheckpointError(f"checkpoint {path}: 'feature_std' has values <= 0 (inputs are "
                              f"divided by it); {FIX}")
    ref = fold_state64(state, config.input_dim, config.hidden_dims, config.batch_norm)
    for i, (w, b) in enumerate(ref):
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise CheckpointError(f"checkpoint {path}: folding its weights gives NaN/Inf in "
                                  f"layer {i} (a BatchNorm running_var below 0?); {FIX}")
    if numpy_head is None:
        return {k: v for i, (w, b) in enumerate(ref)
                for k, v in ((f"W{i}", np.ascontiguousarray(w.T, dtype=np.float32)),
                             (f"b{i}", b.astype(np.float32)))}
    for i, (w, b) in enumerate(ref):
        for name, want, got in ((f"W{i}", w.T, numpy_head[f"W{i}"]),
                                (f"b{i}", b, numpy_head[f"b{i}"])):
            _compare(name, want, got, path)
    return dict(numpy_head)


def _compare(name: str, want: np.ndarray, got: np.ndarray, path: Path) -> None:
    """|got - want| <= RTOL |want| + ATOL_SCALE max|want| elementwise; `want` (float64) may be
    a transposed view, so rows go in tiles (a whole strided pass costs ~3x more)."""
    scale = float(np.abs(want).max()) if want.size else 0.0
    bad, worst = 0, 0.0
    tile = 32
    for start in range(0, max(len(got), 1), tile):
        ref = want[start:start + tile]  # (tile, out)
        diff = got[start:start + tile] - ref
        np.abs(diff, out=diff)
        tol = np.abs(ref)
        tol *= RTOL
        tol += ATOL_SCALE * scale
        over = diff > tol  # both finite (checked before), so NaN cannot hide here
        if over.any():
            bad += int(over.sum())
            worst = max(worst, float(diff.max()))
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: its two copies of the head disagree: numpy/{name} differs "
            f"from the fold of the torch tensors in {bad} value(s) (max {worst:.3g}, scale "
            f"{scale:.3g}); one copy is damaged, so score/evaluate and export would not "
            f"agree; {FIX}")


def check_heads(meta: dict[str, Any], found: dict[str, Any], path: Path
                 ) -> tuple[HeadConfig, HeadConfig | None]:
    """The metadata and the tensor layout of both heads (from names, shapes and dtypes only)."""
    config = check_description(meta, path)
    second = check_bytes_head(meta, config, path)
    main, rest = split_tensors(found)
    check_layout(main, config, path)
    if second is not None or rest:
        if second is None:
            raise CheckpointError(f"checkpoint {path}: it holds '{BYTES_PREFIX}' tensors but "
                                  f"its metadata describes no {BYTES_TARGET} head; {FIX}")
        check_layout(rest, second, path)
    return config, second


def check_head_values(arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path
                  ) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """((state, numpy copy) of the SSIM head, the same of the svg_bytes head or ({}, {}))."""
    config = check_head_config(meta["head_config"], path)
    second = check_bytes_head(meta, config, path)
    out = []
    for part, cfg in zip(split_tensors(arrays), (config, second), strict=True):
        if cfg is None:
            out.append(({}, {}))
            continue
        state = {k[5:]: v for k, v in part.items() if k.startswith("head/")}
        out.append((state, check_values(state, {k[6:]: v for k, v in part.items()
                                                if k.startswith("numpy/")}, cfg, path)))
    return out[0], out[1]
