"""Which kind of file a checkpoint is (safetensors or torch), and the weights-only torch reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.head.checks import FIX, check_description
from pipeline.head.config import HeadConfig
from pipeline.head.integrity import warn_unverified
from pipeline.head.layout import check_layout, check_values

# safetensors refuses headers above 100 MB; ours are a few KB (JSON metadata + offsets).
MAX_HEADER = 100_000_000


def sniff_format(path: Path) -> str:
    """'safetensors' | 'torch' (a torch.save zip or bare pickle) | 'empty' | 'unknown'.

    A safetensors file starts with its header length as a little-endian u64, so its first byte
    can be anything, 0x80 included (1 file in 32: the length is 8-aligned) -- that byte is a
    pickle PROTO opcode only when the file is not a valid safetensors file. So the whole header
    decides: a sane length that fits the file, followed by that many bytes of JSON object.
    """
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        first = f.read(8)
        n = int.from_bytes(first, "little") if len(first) == 8 else -1
        if 2 <= n <= min(size - 8, MAX_HEADER):
            header = f.read(n)
            if header[:1] == b"{":
                try:
                    if isinstance(json.loads(header), dict):
                        return "safetensors"
                except ValueError:  # not JSON (or not UTF-8): fall through to the magic bytes
                    pass
    # torch.save writes a zip archive; a legacy torch.save / bare pickle starts with PROTO
    # (0x80) followed by the protocol number (2..5).
    if first.startswith(b"PK\x03\x04") or (first[:1] == b"\x80" and first[1:2] in
                                            (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if 0 <= n <= MAX_HEADER:
        return "safetensors"  # damaged or truncated: safetensors says what is wrong
    return "unknown"


def read_torch_file(path: Path) -> tuple[dict[str, Any], HeadConfig, dict[str, np.ndarray],
                                         dict[str, np.ndarray]]:
    """(meta, head config, state, numpy head) of a torch.save file {"state_dict", "meta"}:
    weights_only=True only, anything that would run code is refused; checked as a safetensors
    checkpoint is, and its numpy head folded from the state dict."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unsupported protocol" notice before the refusal
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met a global / code
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "Unsupported" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that the weights-only loader rejects "
            f"({why[:200]}); loading it fully could run arbitrary code. Use a .safetensors "
            "checkpoint written by `ssimcache train`") from None
    except Exception as e:  # untrusted bytes: the zip reader and unpickler raise many types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is a torch file that cannot be read "
                              f"({first}): it may be truncated or damaged; {FIX}") from None
    if not (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict)
            and isinstance(payload.get("meta"), dict)):
        raise CheckpointError(f"{path} is a torch file but not an ssimcache checkpoint "
                              "(expected a dict with 'state_dict' and 'meta')")
    meta = payload["meta"]
    warn_unverified(path, "a torch file")
    config = check_description(meta, path, format_required=False)
    tensors = payload["state_dict"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise CheckpointError(f"checkpoint {path}: its state_dict holds entries that are not "
                              f"named tensors; {FIX}")
    check_layout({k: (tuple(v.shape), str(v.dtype).removeprefix("torch."))
                  for k, v in tensors.items()}, config, path, prefixed=False)
    state = {k: v.detach().cpu().numpy() for k, v in tensors.items()}
    return meta, config, state, check_values(state, None, config, path)
