"""One checked description of a checkpoint: metadata, head config, features, tensor layout, values.

Everything that reads a checkpoint (score, evaluate, export, validate, from_checkpoint) gets its
HeadConfig and arrays through these checks, run in `load_checkpoint` before anything is built:
the metadata is a JSON object in the expected format; the head config has the right types and
sane bounds; the feature description is well formed; the tensors are exactly the names, shapes
and dtypes that config implies; every value is finite; and the numpy copy of the head equals
the fold of the torch copy. Torch-free: cached scoring reads checkpoints without torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError, ConfigError
from pipeline.head.config import HeadConfig
from pipeline.head.numpy_head import fold_state64, head_layout

FORMAT = "ssimcache-head/1"
FIX = "restore the file from a copy or retrain the head (`ssimcache train`)"
# The numpy copy is the float64 fold of the torch copy cast to float32: identical on one
# machine, within a few float32 ulps across BLAS builds. A tolerance of 1e-5 relative to each
# element (plus 1e-6 of the array's scale, for elements that cancel to ~0) leaves margin for
# that and still catches any edit that changes a prediction.
RTOL, ATOL_SCALE = 1e-5, 1e-6
_HEX64 = re.compile(r"[0-9a-f]{64}")
# safetensors dtype codes -> numpy names (the layout is checked before tensors are loaded).
_ST_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
              "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
              "U16": "uint16", "U32": "uint32", "U64": "uint64", "BOOL": "bool"}


def dtype_name(code: str) -> str:
    """numpy name of a safetensors dtype code ('F32' -> 'float32')."""
    return _ST_DTYPES.get(code, code.lower())


def parse_meta(text: Any, path: Path) -> dict[str, Any]:
    """The metadata document: a JSON object, or a CheckpointError naming the file."""
    if not isinstance(text, str):
        raise CheckpointError(f"checkpoint {path}: its metadata is a {type(text).__name__}, "
                              f"not JSON text; {FIX}")
    try:
        meta = json.loads(text)
    except ValueError as e:  # includes pickle bytes or other binary smuggled into the header
        raise CheckpointError(f"checkpoint {path}: its metadata is not valid JSON ({e}); "
                              f"{FIX}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata is a JSON "
                              f"{type(meta).__name__}, not an object; {FIX}")
    return meta


def check_description(meta: Mapping[str, Any], path: Path, *,
                      format_required: bool = True) -> HeadConfig:
    """Check the metadata's format, head config and feature description; the HeadConfig."""
    fmt = meta.get("format")
    if fmt != FORMAT and (format_required or fmt is not None):
        raise CheckpointError(f"checkpoint {path}: metadata format {fmt!r} is not "
                              f"{FORMAT!r}, the one this ssimcache reads; {FIX}")
    config = check_head_config(meta.get("head_config"), path)
    _check_features(meta, config, path)
    _check_split(meta.get("split"), path)
    return config


def check_head_config(raw: Any, path: Path) -> HeadConfig:
    """head_config: a JSON object whose fields have the right types and sane bounds."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {path}: 'head_config' is missing or not an object "
                              f"(got {type(raw).__name__}); {FIX}")
    try:
        return HeadConfig.from_dict(raw)
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: invalid head_config ({e}); {FIX}") from None


_BLOCK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def feature_blocks(meta: Mapping[str, Any], input_dim: int) -> list[dict[str, Any]]:
    """The feature blocks the head reads, concatenated in this order: [{"block", "fingerprint",
    "spec", "dim"}]. Checkpoints from before blocks existed hold one backbone namespace
    (`fingerprint` + `feature_spec`): that is one "resnet50" block of the head's input size."""
    if "features" in meta:
        return meta["features"]
    return [{"block": "resnet50", "fingerprint": meta.get("fingerprint"),
             "spec": meta.get("feature_spec"), "dim": input_dim}]


def _check_features(meta: Mapping[str, Any], config: HeadConfig, path: Path) -> None:
    """The feature description: a non-empty list of distinct blocks, each with a sha256
    fingerprint, a spec object and a positive dim, the dims adding up to the head's input."""
    blocks = feature_blocks(meta, config.input_dim)
    if not isinstance(blocks, list) or not blocks:
        raise CheckpointError(f"checkpoint {path}: 'features' must be a non-empty list of "
                              f"blocks, got {type(blocks).__name__}; {FIX}")
    names = []
    for i, b in enumerate(blocks):
        what = f"checkpoint {path}: feature block {i}"
        if not isinstance(b, dict):
            raise CheckpointError(f"{what} is not an object; {FIX}")
        name, fp, dim = b.get("block"), b.get("fingerprint"), b.get("dim")
        if not isinstance(name, str) or not _BLOCK_NAME.fullmatch(name):
            raise CheckpointError(f"{what}: 'block' must be a short lowercase name, got "
                                  f"{name!r}; {FIX}")
        if not isinstance(fp, str) or not _HEX64.fullmatch(fp):
            raise CheckpointError(f"{what} ({name}): 'fingerprint' must be a 64-character "
                                  f"sha256 hex digest, got {fp!r}; {FIX}")
        if not isinstance(b.get("spec"), dict):
            raise CheckpointError(f"{what} ({name}): its spec ('feature_spec') is missing or "
                                  f"not an object; {FIX}")
        if not _is_int(dim) or dim < 1:
            raise CheckpointError(f"{what} ({name}): 'dim' must be a positive integer, got "
                                  f"{dim!r}; {FIX}")
        names.append(name)
    if len(set(names)) != len(names):
        raise CheckpointError(f"checkpoint {path}: feature blocks {names} repeat a block; {FIX}")
    total = sum(b["dim"] for b in blocks)
    if total != config.input_dim:
        raise CheckpointError(f"checkpoint {path}: its feature blocks {names} add up to {total} "
                              f"inputs but the head takes {config.input_dim}; {FIX}")
    _check_extract_config(meta.get("extract_config", {}), path)


def _check_extract_config(saved: Any, path: Path) -> None:
    """The recorded extractor settings must be a JSON object; their values are stage one's to
    judge (`pipeline.extract.spec.extract_config_for`, with messages naming this checkpoint),
    since the head layer does not import stage one."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path}: its extract_config is a "
                              f"{type(saved).__name__}, not an object; {FIX}")


def _check_split(split: Any, path: Path) -> None:
    """The train-time split `evaluate --split` recomputes: seed and fractions (optional)."""
    if split is None:
        return
    ok = isinstance(split, dict) and _is_int(split.get("seed"))
    for key in ("val_fraction", "test_fraction"):
        v = split.get(key) if isinstance(split, dict) else None
        ok = ok and isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1
    if not ok:
        raise CheckpointError(f"checkpoint {path}: its 'split' needs an integer seed and "
                              f"val_fraction/test_fraction in [0, 1), got {split!r}; {FIX}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
