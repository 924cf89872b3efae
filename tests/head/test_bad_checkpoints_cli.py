"""Every command that reads a checkpoint refuses each crafted bad file with `Error:`, never a
traceback: score, evaluate, export --format onnx, validate --checkpoint."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from tests.head.crafted import craft, data_offset, flip_bytes, refold

ROOT = Path(__file__).resolve().parents[2]


class _Evil:
    """Unpickling this would create a marker file (a stand-in for arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite(fn):
    """A case that edits the raw bytes of a copy of the good file."""
    def make(good: Path, dst: Path) -> Path:
        dst.write_bytes(fn(good.read_bytes()))
        return dst
    return make


def _crafted(**edits):
    return lambda good, dst: craft(good, dst, **edits)


def _set_header(key, value):
    return _crafted(header=lambda h: h.__setitem__(key, value))


def _nan_weights(t):
    t["head/mlp.4.weight"] = t["head/mlp.4.weight"].copy()
    t["head/mlp.4.weight"][0, :3] = np.nan
    refold(t, {"head_config": {"input_dim": 54, "hidden_dims": [64, 32], "dropout": 0.1}})


def _flip_tensor(good: Path, dst: Path) -> Path:
    shutil.copy(good, dst)
    offset, size = data_offset(dst, "numpy/W0")
    flip_bytes(dst, offset + size // 2 - 100, 200)
    return dst


def _flip_metric(data: bytes) -> bytes:
    at = data.index(b'\\"mae\\": 0.') + len(b'\\"mae\\": 0.')
    return data[:at] + (b"1" if data[at:at + 1] != b"1" else b"2") + data[at + 1:]


def _torch_code(good: Path, dst: Path) -> Path:
    torch.save({"state_dict": {}, "meta": {}, "x": _Evil(str(dst.parent / "pwned"))}, dst)
    return dst


def _torch_tensor(good: Path, dst: Path) -> Path:
    torch.save(torch.zeros(3), dst)
    return dst


def _header_length(n: int):
    return _rewrite(lambda d: n.to_bytes(8, "little") + d[8:])


def _header_not_json(data: bytes) -> bytes:
    n = int.from_bytes(data[:8], "little")
    return data[:8] + b"!" * n + data[8 + n:]


CASES = {
    "truncated": _rewrite(lambda d: d[: len(d) // 2]),
    "zero_bytes": _rewrite(lambda d: b""),
    "seven_bytes": _rewrite(lambda d: d[:7]),
    "huge_header_length": _header_length(2**63 + 5),
    "header_longer_than_file": _header_length(10**7),
    "header_not_json": _rewrite(_header_not_json),
    "meta_not_json": _set_header("meta", "{not json"),
    "meta_not_object": _set_header("meta", "[1, 2, 3]"),
    "format_wrong": _set_header("format", "ssimcache-head/9"),
    "pickle_in_meta": _set_header("meta", pickle.dumps({"a": 1}).decode("latin-1")),
    "numpy_renamed": _crafted(tensors=lambda t: t.__setitem__("numpy/V0", t.pop("numpy/W0"))),
    "first_matrix_transposed": _crafted(tensors=lambda t: t.__setitem__(
        "numpy/W0", np.ascontiguousarray(t["numpy/W0"].T))),
    "float64": _crafted(tensors=lambda t: t.__setitem__("numpy/W1", t["numpy/W1"].astype("f8"))),
    "int32": _crafted(tensors=lambda t: t.__setitem__(
        "head/mlp.0.weight", t["head/mlp.0.weight"].astype(np.int32))),
    "nan_weights": _crafted(tensors=_nan_weights),
    "huge_hidden": _crafted(meta=lambda m: m["head_config"].update(hidden_dims=[10**8, 10**8])),
    "nan_dropout": _crafted(meta=lambda m: m["head_config"].update(dropout=math.nan)),
    "extract_unknown_key": _crafted(meta=lambda m: m["extract_config"].update(colour="x")),
    "tensor_flipped": _flip_tensor,
    "metadata_flipped": _rewrite(_flip_metric),
    "copies_disagree": _crafted(tensors=lambda t: t.__setitem__("numpy/W1", t["numpy/W1"] * 1.01)),
    "torch_pickle_with_code": _torch_code,
    "torch_plain_tensor": _torch_tensor,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_setup):
    s = trained_setup(tmp_path_factory.mktemp("badckpt"), n=24, features=("resnet50",))
    s["image"] = sorted((s["root"] / "images").glob("*.png"))[0]
    return s


def _commands(s, ckpt: Path, out: Path) -> dict[str, list[str]]:
    return {
        "score": ["score", str(s["image"]), "--checkpoint", str(ckpt), "--store", str(s["store"]),
                  "--cached-only"],
        "evaluate": ["evaluate", "--labels", str(s["csv"]), "--store", str(s["store"]),
                     "--checkpoint", str(ckpt), "--cached-only", "--no-progress"],
        "export": ["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out)],
        "validate": ["validate", "--checkpoint", str(ckpt), "--checks", "dimensions",
                     "--no-progress"],
    }


def _assert_refused(output: str, exit_code: int, path: Path) -> None:
    assert exit_code == 1, output
    errors = [ln for ln in output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and str(path) in errors[0], output
    assert "Traceback" not in output, output


@pytest.mark.filterwarnings("ignore::pipeline.errors.PipelineWarning")
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_command_refuses_the_bad_checkpoint(setup, tmp_path, case):
    path = CASES[case](setup["ckpt"], tmp_path / f"{case}.ckpt")
    for name, args in _commands(setup, path, tmp_path / "out.onnx").items():
        # catch_exceptions=False: an exception other than the CLI's own exit fails the test
        res = CliRunner().invoke(cli, args, catch_exceptions=False)
        _assert_refused(res.output, res.exit_code, path)
        assert not (tmp_path / "out.onnx").exists(), name
    assert not (tmp_path / "pwned").exists(), "a pickle payload ran"


def test_the_good_checkpoint_passes_the_same_commands(setup, tmp_path):
    """Control: the file the bad ones were made from works (validate is left out: it builds a
    real ResNet-50, tested elsewhere)."""
    for name, args in _commands(setup, setup["ckpt"], tmp_path / "out.onnx").items():
        if name != "validate":
            res = CliRunner().invoke(cli, args, catch_exceptions=False)
            assert res.exit_code == 0, (name, res.output)
    assert (tmp_path / "out.onnx").is_file()


@pytest.mark.parametrize("case", ["truncated", "huge_header_length", "nan_weights",
                                  pytest.param("torch_pickle_with_code",
                                               marks=pytest.mark.slow)])  # imports torch
def test_console_script_prints_one_error_line_and_no_traceback(setup, tmp_path, case):
    path = CASES[case](setup["ckpt"], tmp_path / f"{case}.ckpt")
    script = Path(sys.executable).parent / "ssimcache"
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "pipeline"]
    # PYTHONPATH: the script imports this checkout's pipeline, whatever the venv points at
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([*argv, *_commands(setup, path, tmp_path / "o.onnx")["score"]],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    _assert_refused(proc.stderr, proc.returncode, path)
    assert proc.stdout == ""


def test_truncated_torch_file_is_damaged_not_refused_as_code(setup, tmp_path):
    from pipeline.errors import CheckpointError
    from pipeline.head.checkpoint import load_checkpoint

    for zipped in (True, False):
        path = tmp_path / f"t{zipped}.pt"
        torch.save({"state_dict": {}, "meta": {}}, path, _use_new_zipfile_serialization=zipped)
        path.write_bytes(path.read_bytes()[:-40])
        with pytest.raises(CheckpointError, match="cannot be read .*truncated or damaged"):
            load_checkpoint(path)
