"""Content keys (sha256 of file bytes) and fingerprints (sha256 of a canonical JSON spec)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from store.errors import StoreMismatchError

_CHUNK = 1 << 20  # stream files in 1 MiB pieces: constant memory for any image size
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def content_key(path_or_bytes: str | os.PathLike | bytes | bytearray | memoryview) -> str:
    """sha256 hex of a file's bytes (streamed) or of a bytes object. Same bytes, same key."""
    h = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        h.update(path_or_bytes)
        return h.hexdigest()
    with open(Path(path_or_bytes), "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def _canonical(value: Any, where: str) -> Any:
    """Normalise a spec value so equal specs serialise to equal bytes."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise StoreMismatchError(f"fingerprint spec key {k!r} at {where} must be a string")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise StoreMismatchError(f"fingerprint spec value at {where} is not finite: {value}")
        # Integral floats hash like ints (224.0 == 224); others by repr, the shortest
        # round-tripping form, which is stable across platforms and Python versions.
        return int(value) if value.is_integer() else value
    raise StoreMismatchError(
        f"fingerprint spec value at {where} has type {type(value).__name__}; "
        "use str/int/float/bool/None/list/dict (hash fields, never a repr())")


def canonical_json(spec: dict) -> str:
    """The canonical JSON of a spec: sorted keys, no whitespace, stable floats."""
    if not isinstance(spec, dict):
        raise StoreMismatchError(f"fingerprint spec must be a dict, got {type(spec).__name__}")
    return json.dumps(_canonical(spec, "spec"), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)


def fingerprint(spec: dict) -> str:
    """sha256 hex of the canonical JSON of `spec`: everything that changes a feature vector."""
    return hashlib.sha256(canonical_json(spec).encode("ascii")).hexdigest()


def key_to_bytes(key: str) -> bytes:
    """The 32-byte digest of a 64-char lowercase hex key; malformed keys are an error."""
    if not isinstance(key, str) or not _HEX64.match(key):
        raise StoreMismatchError(
            f"store key {key!r} is not a 64-character lowercase sha256 hex digest; "
            "make keys with store.keys.content_key")
    return bytes.fromhex(key)


def key_bytes_or_none(key: object) -> bytes | None:
    """The 32-byte digest of a well-formed key, or None for a malformed one."""
    if isinstance(key, str) and _HEX64.match(key):
        return bytes.fromhex(key)
    return None


def keys_to_bytes(keys: Sequence[str]) -> list[bytes]:
    """Digests of many keys at once (one fromhex over the joined string); same checks."""
    try:
        joined = "".join(keys)
        raw = bytes.fromhex(joined)
        ok = len(joined) == 64 * len(keys) and len(raw) == 32 * len(keys) \
            and joined == joined.lower()
    except (TypeError, ValueError):
        ok = False
    if not ok:  # find the culprit and name it
        return [key_to_bytes(k) for k in keys]
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]
