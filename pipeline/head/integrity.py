"""sha256 digests of a checkpoint's tensors and metadata: recorded when written, checked on load.

The record lives in the safetensors header beside the metadata (key `integrity`, JSON):
`{"algorithm": "sha256", "meta": HEX, "tensors": {NAME: HEX}}`. A tensor's digest covers its
name, dtype, shape and little-endian C-order bytes; the metadata digest covers the exact JSON
text stored. This detects damage and edits made without ssimcache (a flipped byte, a hand-edited
metric); it is not a signature: whoever can write the file can also recompute the digests.

Checkpoints written before digests existed carry no record: they still load, with one warning,
because every structural check (layout, finite values, the two copies of the head agreeing)
still runs on them and refusing them would orphan every trained head with no way to migrate
but retraining; only an edit of their metadata goes unnoticed.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError, PipelineWarning

ALGORITHM = "sha256"
HEADER_KEY = "integrity"
FIX = "the file was damaged or edited after it was written; restore it from a copy or retrain"


def tensor_digest(name: str, array: np.ndarray) -> str:
    """sha256 hex of (name, dtype, shape, little-endian C-order bytes)."""
    a = np.ascontiguousarray(array)
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(json.dumps([name, a.dtype.name, list(a.shape)]).encode() + b"\0")
    h.update(a.reshape(-1).view(np.uint8).data)  # (nbytes,): hashlib wants 1-d contiguous
    return h.hexdigest()


def meta_digest(text: str) -> str:
    """sha256 hex of the metadata JSON text exactly as stored."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_record(tensors: Mapping[str, np.ndarray], meta_text: str) -> str:
    """The JSON record written into the header at save."""
    return json.dumps({"algorithm": ALGORITHM, "meta": meta_digest(meta_text),
                       "tensors": {k: tensor_digest(k, v) for k, v in sorted(tensors.items())}})


def warn_unverified(path: Path, why: str) -> None:
    """One warning for a checkpoint whose bytes cannot be verified (no digests)."""
    warnings.warn(PipelineWarning(
        f"checkpoint {path} has no integrity digests ({why}): it was checked for structure "
        "and consistency only; retrain to get a checkpoint with digests"), stacklevel=3)


def parse_record(raw: Any, path: Path) -> dict[str, Any] | None:
    """The header's record, None when the file predates digests (after warning once)."""
    if raw is None:
        warn_unverified(path, "written before ssimcache recorded them")
        return None
    try:
        record = json.loads(raw)
        ok = (record["algorithm"] == ALGORITHM and isinstance(record["meta"], str)
              and isinstance(record["tensors"], dict)
              and all(isinstance(v, str) for v in record["tensors"].values()))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise CheckpointError(f"checkpoint {path}: its integrity record is not readable; {FIX}")
    return record


def verify_meta(record: Mapping[str, Any], meta_text: str, path: Path) -> None:
    """The metadata text matches its recorded digest."""
    if meta_digest(meta_text) != record["meta"]:
        raise CheckpointError(f"checkpoint {path}: its metadata (head config, features, "
                              f"metrics, ...) does not match the sha256 digest recorded when "
                              f"it was written; {FIX}")


def verify_tensors(record: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                   path: Path) -> None:
    """Every tensor matches its recorded digest, and no tensor was added or removed."""
    recorded = record["tensors"]
    if set(recorded) != set(arrays):
        extra, gone = sorted(set(arrays) - set(recorded)), sorted(set(recorded) - set(arrays))
        raise CheckpointError(f"checkpoint {path}: its tensors are not those recorded when it "
                              f"was written (added {extra[:6]}, removed {gone[:6]}); {FIX}")
    for name in sorted(arrays):
        if tensor_digest(name, arrays[name]) != recorded[name]:
            raise CheckpointError(f"checkpoint {path}: tensor '{name}' does not match the "
                                  f"sha256 digest recorded when it was written; {FIX}")
