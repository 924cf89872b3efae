"""Tests of export: ONNX and TorchScript of the head and of backbone + head match eager."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import PipelineError
from pipeline.export.formats import export
from pipeline.head.checkpoint import save_checkpoint
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor


def _ckpt(tmp_path, dim: int = 2048):
    torch.manual_seed(0)
    head = SSIMPredictor(HeadConfig(input_dim=dim, hidden_dims=(64, 32)))
    head.set_feature_stats(np.full(dim, 0.4), np.full(dim, 0.3))
    head.train()
    with torch.no_grad():
        head(torch.rand(64, dim))
    return save_checkpoint(tmp_path / "c.safetensors", head.eval(), fingerprint="f" * 64,
                           feature_spec={}, extract_config={"weights": "random:0",
                                                            "image_size": 64})


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_head_export_parity(tmp_path, fmt):
    ckpt = _ckpt(tmp_path, dim=128)
    out = tmp_path / f"head.{fmt}"
    r = export(ckpt, fmt, out)
    assert out.is_file() and r["max_abs_diff"] <= 1e-5
    assert r["input_shape"] == ["batch", 128]
    # an independent check on fresh inputs through the exported file
    x = torch.rand(5, 128)
    from pipeline.head.checkpoint import load_checkpoint

    head, _ = load_checkpoint(ckpt).build_head()
    with torch.no_grad():
        expected = head(x).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
    else:
        got = torch.jit.load(str(out))(x).detach().numpy()
    assert np.abs(got - expected).max() <= 1e-5


def test_parity_failure_writes_nothing(tmp_path):
    ckpt = _ckpt(tmp_path, dim=128)
    with pytest.raises(PipelineError, match="differs from eager"):
        export(ckpt, "onnx", tmp_path / "x.onnx", tolerance=-1.0)
    assert not (tmp_path / "x.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"], "no temp files left"


@pytest.mark.slow  # real ResNet-50 exported and checked through onnxruntime
def test_full_export_onnx_cli(tmp_path):
    """Real ResNet-50 (random:0 from the checkpoint) + head, small images."""
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "full.onnx"
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--format", "onnx",
                                   "--out", str(out), "--full", "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output)
    assert r["full"] and r["input_shape"] == ["batch", 3, 64, 64]
    assert r["max_abs_diff"] <= 1e-5 and out.stat().st_size > 50e6  # ResNet-50 weights inside


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_onnx_without_its_packages_is_a_clear_error(tmp_path, monkeypatch, module):
    ckpt = _ckpt(tmp_path, dim=8)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    out = tmp_path / "head.onnx"
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(ckpt), "--format", "onnx",
                                   "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), "an error message, not a traceback"
    assert res.output.startswith("Error:") and module in res.output
    assert "pip install onnx onnxruntime" in res.output
    assert not out.exists()
    with pytest.raises(PipelineError, match=module):
        export(ckpt, "onnx", out)
    # TorchScript needs neither
    assert export(ckpt, "torchscript", tmp_path / "head.pt")["max_abs_diff"] <= 1e-5
