"""Tests of checkpoints: round trip, strictness, fingerprints, pickles refused, torch-free read."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import CheckpointError, PipelineWarning
from pipeline.head.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from pipeline.head.config import HeadConfig
from pipeline.head.mlp import SSIMPredictor
from pipeline.head.numpy_head import NumpyHead
from pipeline.labels.definition import LABEL_DEFINITION

ROOT = Path(__file__).resolve().parents[2]
CFG = HeadConfig(input_dim=64, hidden_dims=(32, 16))
SPEC = {"backbone": "fake", "dim": 64}
FP = "a" * 64


def _head(seed: int = 0) -> SSIMPredictor:
    torch.manual_seed(seed)
    head = SSIMPredictor(CFG)
    head.set_feature_stats(np.full(64, 0.5), np.full(64, 0.25))
    head.train()
    with torch.no_grad():
        for _ in range(3):
            head(torch.rand(32, 64))
    return head.eval()


def _save(tmp_path: Path, head: SSIMPredictor | None = None) -> Path:
    return save_checkpoint(tmp_path / "head.safetensors", head or _head(), fingerprint=FP,
                           feature_spec=SPEC, extract_config={"weights": "random:0"},
                           train_config={"epochs": 3}, metrics={"val": {"mae": 0.1}})


def test_round_trip_identical_predictions(tmp_path):
    head = _head()
    path = _save(tmp_path, head)
    ckpt = load_checkpoint(path)
    rebuilt, report = ckpt.build_head()
    assert report == {"missing": [], "unexpected": []}
    x = torch.rand(10, 64)
    with torch.no_grad():
        assert torch.equal(head(x), rebuilt(x))
    got = NumpyHead(ckpt.numpy_head)(x.numpy())
    assert np.abs(got - head(x)[:, 0].detach().numpy()).max() < 1e-5
    meta = ckpt.meta
    assert meta["format"] == FORMAT and ckpt.fingerprints == {"resnet50": FP}
    assert meta["features"] == [{"block": "resnet50", "fingerprint": FP, "spec": SPEC, "dim": 64}]
    assert meta["train_config"] == {"epochs": 3}
    assert meta["metrics"]["val"]["mae"] == 0.1
    assert {"torch", "numpy", "python"} <= set(meta["versions"]) and meta["created"]
    assert meta["label"] == LABEL_DEFINITION  # the one definition, svg_bytes included
    assert ckpt.head_config == CFG
    assert [p.name for p in tmp_path.iterdir()] == ["head.safetensors"], "no temp files left"


def test_fingerprint_mismatch_names_both(tmp_path):
    ckpt = load_checkpoint(_save(tmp_path))
    ckpt.check_fingerprints({"resnet50": FP})
    with pytest.raises(CheckpointError) as e:
        ckpt.check_fingerprints({"resnet50": "b" * 64}, "store features.h5")
    assert f"resnet50: trained on {FP[:12]}, store features.h5 has {'b' * 12}" in str(e.value)
    with pytest.raises(CheckpointError, match="imstats: trained on none"):
        ckpt.check_fingerprints({"resnet50": FP, "imstats": "c" * 64})


def test_strict_and_partial_load(tmp_path):
    path = _save(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt.state["extra.weight"] = np.zeros(3, dtype=np.float32)
    del ckpt.state["mlp.0.bias"]
    with pytest.raises(CheckpointError, match="missing keys.*mlp.0.bias.*extra.weight"):
        ckpt.build_head()
    head, report = ckpt.build_head(strict=False)
    assert report == {"missing": ["mlp.0.bias"], "unexpected": ["extra.weight"]}
    ref, _ = load_checkpoint(path).build_head()
    assert torch.equal(head.mlp[0].weight, ref.mlp[0].weight)
    ckpt.state["mlp.0.weight"] = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.build_head(strict=False)


class _Evil:
    """Unpickling this would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["raw", "torch"])
def test_malicious_pickle_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    payload = {"state_dict": {}, "meta": {}, "x": _Evil(str(marker))}
    if kind == "raw":
        bad.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(bad)
    assert not marker.exists(), "the payload ran"
    if kind == "raw":  # control: the payload is live, a plain unpickle would run it
        pickle.loads(bad.read_bytes())
        assert marker.exists()


def test_weights_only_torch_checkpoint_loads(tmp_path):
    head = _head()
    meta = json.loads(json.dumps({"head_config": json.loads(CFG.to_json()),
                                  "fingerprint": FP, "feature_spec": SPEC}))
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": head.state_dict(), "meta": meta}, path)
    with pytest.warns(PipelineWarning, match="no integrity digests"):
        ckpt = load_checkpoint(path)
    x = torch.rand(4, 64)
    rebuilt, _ = ckpt.build_head()
    assert torch.equal(rebuilt(x), head(x))
    assert np.abs(NumpyHead(ckpt.numpy_head)(x.numpy()) - head(x)[:, 0].detach().numpy()
                  ).max() < 1e-5


def test_broken_files_are_checkpoint_errors(tmp_path):
    path = _save(tmp_path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")
    from safetensors.numpy import save_file

    save_file({"w": np.zeros(2, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an ssimcache"):
        load_checkpoint(tmp_path / "other.safetensors")


def test_reading_needs_no_torch(tmp_path):
    path = _save(tmp_path)
    code = ("import sys\nfrom pipeline.head.checkpoint import load_checkpoint\n"
            "from pipeline.head.numpy_head import NumpyHead\nimport numpy as np\n"
            f"c = load_checkpoint({str(path)!r})\n"
            "print(NumpyHead(c.numpy_head)(np.zeros((2, 64), np.float32)).shape)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout.split()
    assert out == ["(2,)", "False"]


def _with_header_length(src: Path, dst: Path, low_byte: int) -> int:
    """Copy a safetensors file, padding its JSON header with spaces (allowed by the format)
    so that the 8-byte little-endian header length ends in `low_byte`; returns that length."""
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = data[8:8 + n].rstrip(b" ")
    length = len(header) + (low_byte - len(header)) % 256
    dst.write_bytes(length.to_bytes(8, "little") + header.ljust(length, b" ") + data[8 + n:])
    return length


def test_every_header_length_loads(tmp_path):
    """B1: a header length whose low byte is 0x80 (1 in 32 files, the length is 8-aligned) is
    a length, not a pickle PROTO opcode."""
    head = _head()
    src = _save(tmp_path, head)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    want = NumpyHead(load_checkpoint(src).numpy_head)(x)
    for low in range(256):
        dst = tmp_path / f"h{low}.safetensors"
        assert _with_header_length(src, dst, low) % 256 == low
        ckpt = load_checkpoint(dst)
        assert np.array_equal(NumpyHead(ckpt.numpy_head)(x), want), low
        dst.unlink()


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_files_still_go_weights_only(tmp_path, zipped, monkeypatch):
    head = _head()
    meta = {"head_config": json.loads(CFG.to_json()), "fingerprint": FP, "feature_spec": SPEC}
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": head.state_dict(), "meta": meta}, path,
               _use_new_zipfile_serialization=zipped)
    assert path.read_bytes()[:4] == b"PK\x03\x04" if zipped else path.read_bytes()[:1] == b"\x80"
    seen = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k) or real(*a, **k))
    with pytest.warns(PipelineWarning, match="a torch file"):
        ckpt = load_checkpoint(path)
    assert seen and all(k.get("weights_only") is True for k in seen)
    assert ckpt.head_config == CFG
