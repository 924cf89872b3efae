"""One checked description of a checkpoint, part one: its metadata (format, head configs,
feature blocks, split). Part two, the tensors, is `pipeline.head.layout`.

Everything that reads a checkpoint (score, evaluate, export, validate, from_checkpoint) gets its
HeadConfig and arrays through these checks, run in `load_checkpoint` before anything is built:
the metadata is a JSON object in the expected format; the head config has the right types and
sane bounds; the feature description is well formed. Torch-free: cached scoring reads
checkpoints without torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import CheckpointError, ConfigError
from pipeline.head.config import HeadConfig

FORMAT = "ssimcache-head/1"
FIX = "restore the file from a copy or retrain the head (`ssimcache train`)"
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


# The optional second head: it predicts log10 of the SVG's UTF-8 bytes from the same inputs.
BYTES_TARGET = "svg_bytes"
BYTES_PREFIX = f"{BYTES_TARGET}/"


def check_bytes_head(meta: Mapping[str, Any], config: HeadConfig, path: Path
                     ) -> HeadConfig | None:
    """meta["targets"]["svg_bytes"]: the second head's config (linear output, the same
    inputs as the SSIM head), or None when the checkpoint has no second head."""
    targets = meta.get("targets")
    if targets is None:
        return None
    if not isinstance(targets, dict) or set(targets) - {BYTES_TARGET}:
        raise CheckpointError(f"checkpoint {path}: 'targets' must be an object with at most "
                              f"'{BYTES_TARGET}', got {targets!r:.80}; {FIX}")
    entry = targets.get(BYTES_TARGET)
    if entry is None:
        return None
    second = check_head_config(entry.get("head_config") if isinstance(entry, dict) else None,
                               path)
    if second.input_dim != config.input_dim or second.output != "linear":
        raise CheckpointError(f"checkpoint {path}: its {BYTES_TARGET} head must read the same "
                              f"{config.input_dim} inputs with a linear output, got input_dim "
                              f"{second.input_dim}, output {second.output!r}; {FIX}")
    return second


def split_tensors(found: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the SSIM head's entries, the svg_bytes head's entries with its prefix removed)."""
    main = {k: v for k, v in found.items() if not k.startswith(BYTES_PREFIX)}
    second = {k[len(BYTES_PREFIX):]: v for k, v in found.items() if k.startswith(BYTES_PREFIX)}
    return main, second


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
