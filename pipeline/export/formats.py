"""Export a trained head (or backbone + head) to ONNX or TorchScript and check parity with eager."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError
from pipeline.extract.spec import extract_config_for
from pipeline.head.checkpoint import load_checkpoint

TOLERANCE = 1e-5
# torch.onnx writes the file with `onnx`; the parity check runs it with `onnxruntime`. Both are
# in the dev extra only, so they are checked before any work.
ONNX_MODULES = ("onnx", "onnxruntime")


def require_onnx_modules() -> None:
    """Raise PipelineError naming whichever of onnx / onnxruntime is not installed."""
    missing = []
    for name in ONNX_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise PipelineError(
            f"--format onnx needs the {' and '.join(missing)} package(s), not installed here; "
            "install them with: pip install onnx onnxruntime (or pip install 'ssimcache[dev]'),"
            " or export with --format torchscript"
        )


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def export(checkpoint: str | Path, fmt: Literal["onnx", "torchscript"], out: str | Path, *,
           full: bool = False, image_size: int | None = None, backbone: nn.Module | None = None,
           tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Write the export atomically and return {"path", "format", "full", "input_shape",
    "max_abs_diff"}; raises PipelineError if the export differs from eager by > tolerance.

    Head: input (B, D) raw cached features (standardisation is inside the head).
    Full: input (B, 3, S, S) images normalised as at extraction (ImageNet mean/std), fp32.
    """
    if fmt not in ("onnx", "torchscript"):
        raise PipelineError(f"export format must be 'onnx' or 'torchscript', got {fmt!r}")
    if fmt == "onnx":
        require_onnx_modules()
    out = Path(out)
    ckpt = load_checkpoint(checkpoint)
    saved = extract_config_for(ckpt.meta.get("extract_config", {}),
                               source=f"checkpoint {checkpoint}")
    gen = torch.Generator().manual_seed(0)
    if full:
        from pipeline.export.model import QualityPredictionModel, SSIMOnly

        if ckpt.block_names != ["resnet50"]:
            raise PipelineError(
                f"--full exports the backbone and head as one graph, but checkpoint "
                f"{checkpoint} reads the blocks {ckpt.block_names}: imstats and preview are "
                "computed in numpy, outside any graph. Export the head alone (drop --full) "
                "and feed it the blocks' vectors (pipeline.extract.worker.IMAGE_BLOCKS has "
                "each block's compute function)")

        model: nn.Module = SSIMOnly(QualityPredictionModel.from_checkpoint(ckpt,
                                                                           backbone=backbone))
        size = image_size or saved.image_size
        example = torch.randn(2, 3, size, size, generator=gen)
        check = torch.randn(3, 3, size, size, generator=gen)  # another batch size: dynamic axis
    else:
        model, _ = ckpt.build_head(strict=True)
        dim = ckpt.head_config.input_dim
        example = torch.randn(4, dim, generator=gen).abs()
        check = torch.randn(7, dim, generator=gen).abs()  # pooled ReLU features are >= 0
    model.eval()
    with torch.no_grad():
        expected = model(check).numpy()
    with atomic_path(out) as tmp_path:  # replaces `out` only if the parity check passes
        tmp = str(tmp_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter / jit deprecation notices
            if fmt == "onnx":
                # The TorchScript-based exporter needs no onnxscript; dynamic batch axis.
                torch.onnx.export(model, (example,), tmp, dynamo=False, input_names=["input"],
                                  output_names=["ssim"], opset_version=17,
                                  dynamic_axes={"input": {0: "batch"}, "ssim": {0: "batch"}})
                got = _run_onnx(tmp_path, check.numpy())
            else:
                with torch.no_grad():
                    traced = torch.jit.trace(model, example)
                traced.save(tmp)
                with torch.no_grad():
                    got = torch.jit.load(tmp)(check).numpy()
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise PipelineError(f"{fmt} export of {checkpoint} differs from eager by {diff:.2e} "
                                f"(> {tolerance:.0e}); not written to {out}")
    return {"path": str(out), "format": fmt, "full": full,
            "input_shape": ["batch", *check.shape[1:]], "max_abs_diff": diff}
