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

from pipeline.atomic import atomic_path, json_safe
from pipeline.errors import CheckpointError
from pipeline.head.checks import (
    BYTES_PREFIX,
    BYTES_TARGET,
    FIX,
    FORMAT,
    dtype_name,
    feature_blocks,
    parse_meta,
)
from pipeline.head.config import HeadConfig
from pipeline.head.formats import read_torch_file, sniff_format
from pipeline.head.integrity import (
    HEADER_KEY,
    make_record,
    parse_record,
    verify_meta,
    verify_tensors,
)
from pipeline.head.layout import check_head_values, check_heads
from pipeline.labels.definition import LABEL_DEFINITION

if TYPE_CHECKING:  # torch stays out of the cached scoring path
    from pipeline.head.mlp import SSIMPredictor

__all__ = ["FORMAT", "Checkpoint", "load_checkpoint", "save_checkpoint", "sniff_format",
           "versions"]


@dataclass
class Checkpoint:
    """A loaded checkpoint; `meta` is the JSON metadata, arrays are numpy."""

    path: Path
    head_config: HeadConfig
    state: dict[str, np.ndarray]
    numpy_head: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    # The second head (log10 of the SVG's bytes), when the checkpoint has one.
    bytes_config: HeadConfig | None = None
    bytes_state: dict[str, np.ndarray] = field(default_factory=dict)
    bytes_numpy: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def blocks(self) -> list[dict[str, Any]]:
        """The feature blocks the head reads, in input order: [{"block", "fingerprint",
        "spec", "dim"}] (one "resnet50" block for checkpoints from before blocks)."""
        return feature_blocks(self.meta, self.head_config.input_dim)

    @property
    def block_names(self) -> list[str]:
        return [b["block"] for b in self.blocks]

    @property
    def fingerprints(self) -> dict[str, str]:
        """{block: namespace fingerprint}, in the head's input order."""
        return {b["block"]: b["fingerprint"] for b in self.blocks}

    def check_fingerprints(self, given: dict[str, str], where: str = "the store") -> None:
        """Refuse feature namespaces other than the ones the head was trained on."""
        if given != self.fingerprints:
            mine = self.fingerprints
            differ = [b for b in dict.fromkeys([*mine, *given]) if given.get(b) != mine.get(b)]
            shown = "; ".join(f"{b}: trained on {(mine.get(b) or 'none')[:12]}, "
                              f"{where} has {(given.get(b) or 'none')[:12]}" for b in differ)
            raise CheckpointError(
                f"checkpoint {self.path} was trained on other features than {where} selects "
                f"({shown}): use the extractor settings recorded in the checkpoint (the default "
                "when no --weights/--precision/--image-size/--config is given) or retrain the "
                "head")

    def build_bytes_head(self) -> SSIMPredictor | None:
        """The torch svg_bytes head in eval mode (None when the checkpoint has none)."""
        if self.bytes_config is None:
            return None
        import torch

        from pipeline.head.mlp import SSIMPredictor

        head = SSIMPredictor(self.bytes_config)
        head.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in
                              self.bytes_state.items()})
        return head.eval()

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


def save_checkpoint(path: str | Path, head: SSIMPredictor, *,
                    features: list[dict[str, Any]] | None = None,
                    fingerprint: str | None = None, feature_spec: dict[str, Any] | None = None,
                    extract_config: dict[str, Any] | None = None,
                    train_config: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None,
                    bytes_head: SSIMPredictor | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder + os.replace).

    `bytes_head` is the optional second head (linear output: log10 of the SVG's bytes) on the
    same inputs; its tensors go under 'svg_bytes/'.

    `features` lists the blocks the head reads ([{"block", "fingerprint", "spec", "dim"}], in
    input order); `fingerprint` + `feature_spec` alone mean one "resnet50" block.

    What is written passes the same checks as a load (a head with NaN/Inf weights, e.g. from
    a diverged training run, is refused here rather than at every later use); non-finite
    numbers in the metadata (a metric of a diverged run) are written as null, as JSON has no
    NaN.
    """
    from safetensors.numpy import save_file

    path = Path(path)
    head.eval()
    tensors = {f"head/{k}": v.detach().cpu().contiguous().numpy()
               for k, v in head.state_dict().items()}
    tensors.update({f"numpy/{k}": v for k, v in head.fold_numpy().items()})
    targets = {}
    if bytes_head is not None:
        bytes_head.eval()
        tensors.update({f"{BYTES_PREFIX}head/{k}": v.detach().cpu().contiguous().numpy()
                        for k, v in bytes_head.state_dict().items()})
        tensors.update({f"{BYTES_PREFIX}numpy/{k}": v
                        for k, v in bytes_head.fold_numpy().items()})
        targets = {"targets": {BYTES_TARGET: {
            "head_config": json.loads(bytes_head.config.to_json()),
            "unit": "log10 of the UTF-8 bytes of the default-parameter VTracer SVG"}}}
    meta = {
        "format": FORMAT,
        "head_config": json.loads(head.config.to_json()),
        "features": features if features is not None else [
            {"block": "resnet50", "fingerprint": fingerprint, "spec": feature_spec,
             "dim": head.config.input_dim}],
        "extract_config": extract_config or {},
        "label": LABEL_DEFINITION,
        "train_config": train_config or {},
        "metrics": metrics or {},
        "versions": versions(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **targets,
        **(extra or {}),
    }
    meta_text = json.dumps(json_safe(meta), allow_nan=False)
    meta = json.loads(meta_text)
    try:
        check_heads(meta, {k: (v.shape, v.dtype.name) for k, v in tensors.items()}, path)
        check_head_values(tensors, meta, path)
    except CheckpointError as e:  # e.g. NaN weights from a diverged run: fail now, not later
        raise CheckpointError(str(e).replace("checkpoint", "refusing to write checkpoint", 1)
                              .replace(FIX, "the head is not usable (did training diverge? "
                                            "try a lower --lr)")) from None
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "meta": meta_text,
                                               HEADER_KEY: make_record(tensors, meta_text)})
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint (see pipeline.head.checks) without torch (safetensors); a
    torch file goes through `read_torch_file` (weights-only). Any problem is a CheckpointError
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist: pass the file written by "
                              "`ssimcache train --out`")
    try:
        kind = sniff_format(path)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} cannot be read: {e.strerror or e}") from None
    if kind == "torch":
        meta, config, state, numpy_head = read_torch_file(path)
        return Checkpoint(path=path, head_config=config, state=state, numpy_head=numpy_head,
                          meta=meta)
    if kind != "safetensors":
        what = "empty (0 bytes)" if kind == "empty" else "neither a safetensors nor a torch file"
        raise CheckpointError(f"checkpoint {path} is {what}: pass the file written by "
                              f"`ssimcache train --out`; {FIX}")
    return _load_safetensors(path)


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path} is a safetensors file but not an ssimcache head checkpoint: its "
                    f"format is {header.get('format')!r}, this ssimcache reads {FORMAT!r}")
            if "meta" not in header:
                raise CheckpointError(f"checkpoint {path} has no metadata ('meta' entry of the "
                                      f"header); {FIX}")
            # The digests first: an edited or damaged file is reported as such, not as
            # whichever check its damage happens to break.
            record = parse_record(header.get(HEADER_KEY), path)
            if record is not None:
                verify_meta(record, header["meta"], path)
            meta = parse_meta(header["meta"], path)
            # Names, shapes and dtypes from the header, before any tensor is read.
            found = {}
            for k in f.keys():  # noqa: SIM118 (safe_open API)
                sl = f.get_slice(k)
                found[k] = (tuple(sl.get_shape()), dtype_name(sl.get_dtype()))
            configs = check_heads(meta, found, path)
            arrays = {k: f.get_tensor(k) for k in found}
    except (CheckpointError, Warning):  # ours (a warning raised under -W error included)
        raise
    except Exception as e:  # safetensors raises its own error types for a bad file
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e}): "
                              f"it may be truncated; {FIX}") from None
    if record is not None:
        verify_tensors(record, arrays, path)
    (state, numpy_head), second = check_head_values(arrays, meta, path)
    return Checkpoint(path=path, head_config=configs[0], state=state, numpy_head=numpy_head,
                      meta=meta, bytes_config=configs[1], bytes_state=second[0],
                      bytes_numpy=second[1])
