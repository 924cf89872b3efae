"""Self-describing head checkpoints: safetensors tensors + JSON metadata, no pickle.

One `.safetensors` file holds the head's state dict (`head/<name>`), the numpy copy of the head
with standardisation and BatchNorm folded (`numpy/W0`, `numpy/b0`, ...), and in its metadata a
JSON document: format, head config, feature fingerprint + spec, extractor config, label
definition, training config, split, metrics, versions, timestamp. Reading it needs numpy and
safetensors only; torch is imported only to rebuild the torch head or to read a legacy pickle
(`torch.load(weights_only=True)` and nothing else).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import CheckpointError
from pipeline.head.config import HeadConfig
from pipeline.labels.definition import LABEL_DEFINITION

if TYPE_CHECKING:  # torch stays out of the cached scoring path
    from pipeline.head.mlp import SSIMPredictor

FORMAT = "ssimcache-head/1"

@dataclass
class Checkpoint:
    """A loaded checkpoint; `meta` is the JSON metadata, arrays are numpy."""

    path: Path
    head_config: HeadConfig
    state: dict[str, np.ndarray]
    numpy_head: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def check_fingerprint(self, store_fingerprint: str, where: str = "the store") -> None:
        """Refuse a store namespace other than the one the head was trained on."""
        if store_fingerprint != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {self.path} was trained on features with fingerprint "
                f"{self.fingerprint}, but {where} uses fingerprint {store_fingerprint}: "
                "use the extractor settings recorded in the checkpoint (the default when no "
                "--weights/--precision/--image-size/--config is given) or retrain the head")

    def build_head(self, strict: bool = True) -> tuple[SSIMPredictor, dict[str, list[str]]]:
        """The torch head in eval mode, plus {"missing": [...], "unexpected": [...]} keys.

        Strict (default): any missing or unexpected key is a CheckpointError naming them.
        Non-strict: loads what matches (shapes must agree) and reports the rest.
        """
        import torch

        from pipeline.head.mlp import SSIMPredictor

        head = SSIMPredictor(self.head_config)
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in self.state.items()}
        own = head.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if strict and (missing or unexpected):
            raise CheckpointError(
                f"checkpoint {self.path} does not match its head config: missing keys "
                f"{missing}, unexpected keys {unexpected}; load with strict=False to load the rest")
        for k in set(tensors) & set(own):
            if tensors[k].shape != own[k].shape:
                raise CheckpointError(
                    f"checkpoint {self.path}: '{k}' has shape {tuple(tensors[k].shape)}, "
                    f"the head expects {tuple(own[k].shape)}")
        head.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
        head.eval()
        return head, {"missing": missing, "unexpected": unexpected}


def versions() -> dict[str, str]:
    """Library versions recorded in checkpoints."""
    from importlib import metadata

    import torch

    try:
        own = metadata.version("ssimcache")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        own = "unknown"
    return {"ssimcache": own, "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__}


def save_checkpoint(path: str | Path, head: SSIMPredictor, *, fingerprint: str,
                    feature_spec: dict[str, Any], extract_config: dict[str, Any] | None = None,
                    train_config: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder + os.replace)."""
    from safetensors.numpy import save_file

    path = Path(path)
    head.eval()
    tensors = {f"head/{k}": v.detach().cpu().contiguous().numpy()
               for k, v in head.state_dict().items()}
    tensors.update({f"numpy/{k}": v for k, v in head.fold_numpy().items()})
    meta = {
        "format": FORMAT,
        "head_config": json.loads(head.config.to_json()),
        "fingerprint": fingerprint,
        "feature_spec": feature_spec,
        "extract_config": extract_config or {},
        "label": LABEL_DEFINITION,
        "train_config": train_config or {},
        "metrics": metrics or {},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": json.dumps(meta)})
    return path


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


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint without torch (safetensors); a pickle goes through `_load_pickle`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the file written by "
                              "`ssimcache train --out`")
    kind = sniff_format(path)
    if kind == "torch":
        return _load_pickle(path)
    if kind != "safetensors":
        what = "empty (0 bytes)" if kind == "empty" else "neither a safetensors nor a torch file"
        raise CheckpointError(f"checkpoint {path} is {what}: pass the file written by "
                              "`ssimcache train --out`, or restore it from a copy or retrain")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open API)
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e}): "
                              "it may be truncated; retrain or restore it") from None
    if header.get("format") != FORMAT or "meta" not in header:
        raise CheckpointError(f"{path} is a safetensors file but not an ssimcache head "
                              f"checkpoint (format {header.get('format')!r}, expected {FORMAT!r})")
    meta = json.loads(header["meta"])
    return _from_parts(path, meta,
                       {k[5:]: v for k, v in arrays.items() if k.startswith("head/")},
                       {k[6:]: v for k, v in arrays.items() if k.startswith("numpy/")})


def _from_parts(path: Path, meta: dict[str, Any], state: dict[str, np.ndarray],
                numpy_head: dict[str, np.ndarray]) -> Checkpoint:
    for key in ("head_config", "fingerprint", "feature_spec"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path} lacks '{key}' in its metadata: retrain it")
    try:
        config = HeadConfig.from_dict(meta["head_config"])
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} has an invalid head config: {e}") from None
    return Checkpoint(path=path, head_config=config, state=state, numpy_head=numpy_head, meta=meta)


def _load_pickle(path: Path) -> Checkpoint:
    """A torch.save file: weights_only=True only; anything that would run code is refused."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "unsupported protocol" notice before the refusal
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refused to load {path}: it is a pickle that the weights-only loader rejects "
            f"({first}); loading it fully could run arbitrary code. Use a .safetensors "
            "checkpoint written by `ssimcache train`") from None
    if not (isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict)
            and isinstance(payload.get("meta"), dict)):
        raise CheckpointError(f"{path} is a torch file but not an ssimcache checkpoint "
                              "(expected a dict with 'state_dict' and 'meta')")
    meta = payload["meta"]
    state = {k: v.detach().cpu().numpy() for k, v in payload["state_dict"].items()}
    ckpt = _from_parts(path, meta, state, {})
    head, _ = ckpt.build_head(strict=True)
    ckpt.numpy_head = head.fold_numpy()
    return ckpt
