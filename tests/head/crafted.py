"""Crafted checkpoints for the trust tests: a good file rewritten with one thing broken."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor

Tensors = dict[str, np.ndarray]


def read_parts(path: Path) -> tuple[Tensors, dict[str, str]]:
    """(tensors, header metadata) of a safetensors file."""
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def refold(tensors: Tensors, meta: dict[str, Any]) -> None:
    """Recompute the numpy copy from the (edited) torch copy, as save_checkpoint would, so that
    both copies agree and only the edit under test is wrong."""
    head = SSIMPredictor(HeadConfig.from_dict(meta["head_config"]))
    head.load_state_dict({k[5:]: torch.from_numpy(v.copy()) for k, v in tensors.items()
                          if k.startswith("head/")})
    tensors.update({f"numpy/{k}": v for k, v in head.eval().fold_numpy().items()})


def craft(good: Path, dst: Path, *, tensors: Callable[[Tensors], Any] | None = None,
          meta: Callable[[dict[str, Any]], Any] | None = None,
          header: Callable[[dict[str, str]], Any] | None = None, resign: bool = True) -> Path:
    """Copy `good` to `dst` after `tensors(t)`, `meta(m)`, `header(h)` edit the parts in
    place. With `resign`, the integrity record (when the file has one) is recomputed, so that
    the check under test -- not the digest -- is what refuses the file."""
    t, h = read_parts(good)
    if meta is not None:
        m = json.loads(h["meta"])
        meta(m)
        h["meta"] = json.dumps(m)
    if tensors is not None:
        tensors(t)
    if header is not None:
        header(h)
    if resign and "integrity" in h:
        from pipeline.head.integrity import make_record

        h["integrity"] = make_record(t, h.get("meta", ""))
    save_file(t, str(dst), metadata=h)
    return dst


def flip_bit(a: np.ndarray, index: int, bit: int) -> np.ndarray:
    """A copy of float32 `a` with one bit of one element flipped (as on a bad disk)."""
    out = np.array(a, dtype=np.float32)
    flat = out.reshape(-1).view(np.uint32)
    flat[index] ^= np.uint32(1 << bit)
    return out


def flip_bytes(path: Path, offset: int, count: int) -> None:
    """Invert `count` bytes of a file in place, starting at `offset`."""
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def data_offset(path: Path, name: str) -> tuple[int, int]:
    """(absolute byte offset, byte length) of tensor `name`'s data in a safetensors file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, end - begin
