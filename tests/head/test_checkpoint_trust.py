"""Tests that a checkpoint is checked before it is trusted: description, values, digests, CLI."""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import CheckpointError, PipelineWarning
from pipeline.head.checkpoint import load_checkpoint
from pipeline.head.numpy_head import NumpyHead
from tests.head.crafted import (
    craft,
    data_offset,
    flip_bit,
    flip_bytes,
    read_parts,
    refold,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_setup):
    """A head trained on fake-backbone features: 54 -> 64 -> 32 -> 1, BatchNorm."""
    return trained_setup(tmp_path_factory.mktemp("trust"), n=24, features=("resnet50",))


def _set(where: str, key: str, value):
    """meta edit: meta[where][key] = value (where '' = top level)."""
    def edit(m):
        (m[where] if where else m)[key] = value
    return edit


def _scaled(name: str, factor: float):
    def edit(t):
        t[name] = (t[name] * factor).astype(np.float32)
    return edit


def _torch_edit(fn):
    """Edit the torch copy, then refold the numpy copy so the two agree."""
    def edit(t):
        fn(t)
        refold(t, {"head_config": {"input_dim": 54, "hidden_dims": [64, 32], "dropout": 0.1}})
    return edit


def _nan_at(name: str):
    def edit(t):
        t[name] = t[name].copy()
        t[name].reshape(-1)[3] = np.nan
    return edit


# (id, craft kwargs, regex the CheckpointError must match)
DESCRIPTION_CASES = [
    ("header_format", {"header": _set("", "format", "other/2")},
     r"format is 'other/2', this ssimcache reads 'ssimcache-head/1'"),
    ("meta_missing", {"header": lambda h: h.pop("meta")}, r"no metadata"),
    ("meta_not_json", {"header": _set("", "meta", "{not json")}, r"not valid JSON"),
    ("meta_pickle", {"header": _set("", "meta", pickle.dumps({"a": 1}).decode("latin-1"))},
     r"not valid JSON"),
    ("meta_array", {"header": _set("", "meta", "[1, 2]")}, r"JSON list, not an object"),
    ("meta_format", {"meta": _set("", "format", "ssimcache-head/0")},
     r"metadata format 'ssimcache-head/0' is not 'ssimcache-head/1'"),
    ("head_config_missing", {"meta": lambda m: m.pop("head_config")}, r"'head_config' is miss"),
    ("input_dim_str", {"meta": _set("head_config", "input_dim", "54")}, r"integers"),
    ("input_dim_bool", {"meta": _set("head_config", "input_dim", True)}, r"integers"),
    ("hidden_float", {"meta": _set("head_config", "hidden_dims", [64.0, 32])}, r"integers"),
    ("hidden_huge", {"meta": _set("head_config", "hidden_dims", [10**9, 32])},
     r"1\.\.1,000,000"),
    ("too_many_params", {"meta": lambda m: m["head_config"].update(
        input_dim=1_000_000, hidden_dims=[1_000_000])}, r"parameters, more than"),
    ("dropout_nan", {"meta": _set("head_config", "dropout", math.nan)}, r"dropout"),
    ("batch_norm_str", {"meta": _set("head_config", "batch_norm", "yes")}, r"batch_norm"),
    ("head_unknown_key", {"meta": _set("head_config", "depth", 3)}, r"unknown key.*depth"),
    ("fingerprint_bad", {"meta": lambda m: m["features"][0].update(fingerprint=5)},
     r"'fingerprint' must be"),
    ("feature_spec_bad", {"meta": lambda m: m["features"][0].update(spec="x")},
     r"'feature_spec'"),
    ("features_empty", {"meta": _set("", "features", [])}, r"non-empty list"),
    ("features_dim_sum", {"meta": lambda m: m["features"][0].update(dim=53)},
     r"add up to 53 inputs but the head takes 54"),
    ("features_repeat", {"meta": lambda m: m["features"].append(dict(m["features"][0]))},
     r"repeat a block"),
    ("split_broken", {"meta": _set("split", "seed", "zero")}, r"its 'split' needs"),
    ("split_nan", {"meta": _set("split", "val_fraction", math.nan)}, r"its 'split' needs"),
    ("numpy_renamed", {"tensors": lambda t: t.__setitem__("numpy/X0", t.pop("numpy/W0"))},
     r"missing \['numpy/W0'\], unexpected \['numpy/X0'\]"),
    ("extra_tensor", {"tensors": lambda t: t.__setitem__("head/evil", np.zeros(2, np.float32))},
     r"unexpected \['head/evil'\]"),
    ("numpy_transposed", {"tensors": lambda t: t.__setitem__(
        "numpy/W0", np.ascontiguousarray(t["numpy/W0"].T))},
     r"'numpy/W0' is float32 \(64, 54\), its head_config implies float32 \(54, 64\)"),
    ("torch_transposed", {"tensors": lambda t: t.__setitem__(
        "head/mlp.0.weight", np.ascontiguousarray(t["head/mlp.0.weight"].T))},
     r"'head/mlp.0.weight' is float32 \(54, 64\)"),
    ("float64", {"tensors": lambda t: t.__setitem__("numpy/W1", t["numpy/W1"].astype("f8"))},
     r"'numpy/W1' is float64"),
    ("int32", {"tensors": lambda t: t.__setitem__(
        "head/mlp.4.weight", t["head/mlp.4.weight"].astype(np.int32))}, r"is int32"),
    ("nan_torch_and_numpy", {"tensors": _torch_edit(_nan_at("head/mlp.4.weight"))},
     r"'head/mlp.4.weight' holds 1 NaN/Inf"),
    ("inf_numpy", {"tensors": lambda t: t.__setitem__(
        "numpy/b2", np.full(1, np.inf, np.float32))}, r"'numpy/b2' holds 1 NaN/Inf"),
    ("feature_std_zero", {"tensors": lambda t: t["head/feature_std"].__setitem__(0, 0.0)},
     r"'feature_std' has values <= 0"),
    ("bn_var_negative", {"tensors": lambda t: t.__setitem__(
        "head/mlp.5.running_var", -np.abs(t["head/mlp.5.running_var"]) - 1)},
     r"folding its weights gives NaN/Inf"),
    ("copies_disagree", {"tensors": _scaled("numpy/W1", 1.01)}, r"two copies of the head "
     r"disagree: numpy/W1"),
    ("bit_flip_numpy", {"tensors": lambda t: t.__setitem__(
        "numpy/W0", flip_bit(t["numpy/W0"], 500, 27))}, r"disagree: numpy/W0"),
    ("bit_flip_torch", {"tensors": lambda t: t.__setitem__(
        "head/mlp.4.weight", flip_bit(t["head/mlp.4.weight"], 77, 20))}, r"disagree: numpy/W1"),
]


@pytest.mark.parametrize("case", DESCRIPTION_CASES, ids=[c[0] for c in DESCRIPTION_CASES])
def test_description_checked_before_use(setup, tmp_path, case):
    name, edits, pattern = case
    path = craft(setup["ckpt"], tmp_path / f"{name}.safetensors", **edits)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert re.search(pattern, msg), msg
    assert str(path) in msg
    assert "command line" not in msg
    # a message must not contradict itself ("format 'X', expected 'X'")
    assert not re.search(r"'([^']+)'.{0,40}(expected|reads) '\1'", msg), msg


EXTRACT_CONFIG_CASES = [
    ("extract_unknown_key", {"meta": _set("extract_config", "colour", "x")},
     r"its extract_config\): unknown key.*colour"),
    ("extract_nan", {"meta": _set("extract_config", "mean", [math.nan, 0.4, 0.4])},
     r"its extract_config\).*finite"),
    ("image_size_huge", {"meta": _set("extract_config", "image_size", 10**6)},
     r"image_size 1000000 is above 4096"),
    ("weights_seed_huge", {"meta": _set("extract_config", "weights", "random:" + "9" * 30)},
     r"seed above"),
]


@pytest.mark.parametrize("case", EXTRACT_CONFIG_CASES, ids=[c[0] for c in EXTRACT_CONFIG_CASES])
def test_recorded_extractor_settings_are_checked_naming_the_checkpoint(setup, tmp_path, case):
    """The head layer checks the metadata's shape; stage one judges the extractor settings
    (the head does not import stage one), and every consumer asks it before any work."""
    from pipeline.extract.spec import extract_config_for
    from pipeline.score import Scorer

    name, edits, pattern = case
    path = craft(setup["ckpt"], tmp_path / f"{name}.safetensors", **edits)
    ckpt = load_checkpoint(path)  # well-formed metadata: loads
    for call in (lambda: extract_config_for(ckpt.meta["extract_config"],
                                            source=f"checkpoint {path}"),
                 lambda: Scorer(setup["store"], path)):
        with pytest.raises(CheckpointError) as e:
            call()
        msg = str(e.value)
        assert re.search(pattern, msg) and str(path) in msg, msg
        assert "command line" not in msg


def test_untouched_file_loads_and_predicts_as_saved(setup, tmp_path):
    same = craft(setup["ckpt"], tmp_path / "copy.safetensors")
    a, b = load_checkpoint(setup["ckpt"]), load_checkpoint(same)
    x = np.random.default_rng(1).random((5, 54), dtype=np.float32)
    assert np.array_equal(NumpyHead(a.numpy_head)(x), NumpyHead(b.numpy_head)(x))
    assert json.dumps(a.meta) == json.dumps(b.meta)


# -- 13.1 integrity digests -----------------------------------------------------------------

def test_written_checkpoint_records_a_digest_of_every_tensor_and_the_metadata(setup):
    tensors, header = read_parts(setup["ckpt"])
    record = json.loads(header["integrity"])
    assert record["algorithm"] == "sha256" and re.fullmatch(r"[0-9a-f]{64}", record["meta"])
    assert set(record["tensors"]) == set(tensors)


@pytest.mark.parametrize("name", ["head/mlp.0.weight", "numpy/W0", "head/feature_mean"])
def test_flipped_tensor_bytes_are_refused(setup, tmp_path, name):
    path = tmp_path / "flipped.safetensors"
    shutil.copy(setup["ckpt"], path)
    offset, size = data_offset(path, name)
    count = min(200, size // 2)
    flip_bytes(path, offset + (size - count) // 2, count)  # the middle of the tensor
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and f"tensor '{name}'" in msg and "sha256" in msg
    assert "restore" in msg and "retrain" in msg


def test_flipped_metric_digit_is_refused(setup, tmp_path):
    path = tmp_path / "metric.safetensors"
    raw = bytearray(setup["ckpt"].read_bytes())
    at = raw.index(b'\\"mae\\": 0.') + len(b'\\"mae\\": 0.')  # meta is JSON inside JSON
    raw[at] = ord("9") if raw[at] != ord("9") else ord("1")  # one digit, same length
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"its metadata .* does not match the sha256"):
        load_checkpoint(path)


def test_consistently_scaled_weights_are_refused_by_the_digest(setup, tmp_path):
    """Both copies scaled by 1e30 agree with each other (every image would score 0.000000):
    only the digest can tell."""
    def scale(t):
        for k in ("head/mlp.8.weight", "numpy/W2"):
            t[k] = (t[k] * np.float32(1e30)).astype(np.float32)
    path = craft(setup["ckpt"], tmp_path / "scaled.safetensors", tensors=scale, resign=False)
    with pytest.raises(CheckpointError, match=r"tensor 'head/mlp.8.weight' does not match"):
        load_checkpoint(path)


def test_damaged_integrity_record_is_refused(setup, tmp_path):
    path = craft(setup["ckpt"], tmp_path / "rec.safetensors", resign=False,
                 header=lambda h: h.__setitem__("integrity", "{oops"))
    with pytest.raises(CheckpointError, match="integrity record is not readable"):
        load_checkpoint(path)


def test_checkpoint_without_digests_loads_with_one_warning(setup, tmp_path):
    """Files written before digests existed: still checked (layout, values, agreement), loaded,
    and a warning says their bytes could not be verified."""
    path = craft(setup["ckpt"], tmp_path / "old.safetensors", resign=False,
                 header=lambda h: h.pop("integrity"))
    with pytest.warns(PipelineWarning, match="no integrity digests"):
        ckpt = load_checkpoint(path)
    assert ckpt.head_config == load_checkpoint(setup["ckpt"]).head_config
    res = CliRunner().invoke(cli, ["score", str(setup["root"] / "images" / "img000.png"),
                                   "--checkpoint", str(path), "--store", str(setup["store"]),
                                   "--cached-only", "--format", "csv"])
    assert res.exit_code == 0, res.output
    warned = [ln for ln in res.stderr.splitlines() if "no integrity digests" in ln]
    assert len(warned) == 1 and warned[0].startswith("warning: checkpoint ")
    # ...but still checked: a damaged copy without digests is refused all the same
    bad = craft(path, tmp_path / "old_bad.safetensors", resign=False,
                tensors=_scaled("numpy/W1", 1.01))
    with pytest.warns(PipelineWarning), pytest.raises(CheckpointError, match="disagree"):
        load_checkpoint(bad)
