"""`ssimcache store ...` and `ssimcache bench store` through click's test runner."""

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from store.hdf5 import FeatureStore
from store.keys import content_key, fingerprint

DIM = 8
SPEC_A = {"backbone": "fake", "size": 8}
SPEC_B = {"backbone": "fake", "size": 16}
FP_A, FP_B = fingerprint(SPEC_A), fingerprint(SPEC_B)


@pytest.fixture()
def store_path(tmp_path):
    path = tmp_path / "f.h5"
    keys = [content_key(f"k{i}".encode()) for i in range(40)]
    vecs = np.arange(40 * DIM, dtype=np.float32).reshape(40, DIM)
    with FeatureStore(path) as fs:
        fs.namespace(FP_A, SPEC_A, dim=DIM).put_many(keys, vecs)
        fs.namespace(FP_B, SPEC_B, dim=DIM, dtype="float16").put_many(keys[:5], vecs[:5])
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_info_table_and_json(store_path):
    r = run("store", "info", store_path)
    assert r.exit_code == 0, r.output
    assert FP_A[:12] in r.output and "float16" in r.output and "size=8" in r.output
    r = run("store", "info", store_path, "--json")
    rows = {d["fingerprint"]: d for d in json.loads(r.output)}
    assert rows[FP_A]["rows"] == 40 and rows[FP_B]["dtype"] == "float16"
    assert set(rows[FP_A]) == {"fingerprint", "rows", "dtype", "dim", "bytes", "spec"}


def test_verify_exit_codes(store_path):
    r = run("store", "verify", store_path, "--no-progress")
    assert r.exit_code == 0 and "OK (45 rows" in r.output
    with h5py.File(store_path, "r+", locking=False) as f:  # damage a row behind its back
        f[FP_A]["vectors"][3, 0] = 12345.0
    r = run("store", "verify", store_path, "--no-progress")
    assert r.exit_code == 1
    assert content_key(b"k3") in r.output and "checksum mismatch" in r.output
    r = run("store", "verify", store_path, "--json")
    assert r.exit_code == 1 and json.loads(r.output)["ok"] is False


def test_prune_by_prefix_then_compact(store_path):
    assert run("store", "prune", store_path).exit_code == 2  # nothing to keep given
    r = run("store", "prune", store_path, "--keep", "zzzz")
    assert r.exit_code == 2 and "matches no namespace" in r.output
    r = run("store", "prune", store_path, "--keep", FP_A[:6])
    assert r.exit_code == 0 and f"removed {FP_B}" in r.output
    with FeatureStore(store_path, "r") as fs:
        assert fs.fingerprints() == [FP_A]
    r = run("store", "compact", store_path)
    assert r.exit_code == 0 and "->" in r.output
    with FeatureStore(store_path, "r") as fs:
        assert len(fs.namespace(FP_A)) == 40 and fs.verify() == []


def test_prune_keep_current_uses_the_extract_config(tmp_path, store_path):
    pytest.importorskip("pipeline.extract.runner")
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig, feature_spec

    cfg_path = tmp_path / "extract.json"
    cfg_path.write_text(json.dumps({"weights": "random:0", "features": ["resnet50"]}))
    spec = feature_spec(build_config(ExtractConfig, cfg_path))
    with FeatureStore(store_path) as fs:
        fs.namespace(fingerprint(spec), spec, dim=DIM)
    r = run("store", "prune", store_path, "--keep-current", "--config", cfg_path, "--json")
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.output)["removed"]) == sorted([FP_A, FP_B])
    with FeatureStore(store_path, "r") as fs:
        assert fs.fingerprints() == [fingerprint(spec)]


def _real_spec(**overrides):
    from pipeline.config import build_config
    from pipeline.extract.spec import ExtractConfig, feature_spec

    return feature_spec(build_config(ExtractConfig, None, overrides))


def test_prune_keep_current_absent_removes_nothing(tmp_path, store_path):
    pytest.importorskip("pipeline.extract.runner")
    before = store_path.read_bytes()
    cfg_path = tmp_path / "extract.json"
    cfg_path.write_text(json.dumps({"weights": "imagenet"}))
    r = run("store", "prune", store_path, "--keep-current", "--config", cfg_path)
    assert r.exit_code == 1, r.output
    assert "nothing removed" in r.output and FP_A[:12] in r.output and FP_B[:12] in r.output
    assert store_path.read_bytes() == before
    with FeatureStore(store_path, "r") as fs:
        assert sorted(fs.fingerprints()) == sorted([FP_A, FP_B])


def test_prune_keep_current_takes_the_extract_flags(tmp_path, store_path, monkeypatch):
    pytest.importorskip("pipeline.extract.runner")
    spec = _real_spec(weights="random:0", image_size=32)
    with FeatureStore(store_path) as fs:
        fs.namespace(fingerprint(spec), spec, dim=DIM)
    # no configs/extract.json (a non-editable install): built-in defaults + the flags
    monkeypatch.setattr("pipeline.config.CONFIGS_DIR", tmp_path / "absent")
    r = run("store", "prune", store_path, "--keep-current", "--weights", "random:0",
            "--features", "resnet50")
    assert r.exit_code == 1 and "nothing removed" in r.output  # 224px: not this namespace
    r = run("store", "prune", store_path, "--keep-current", "--weights", "random:0",
            "--image-size", 32)  # both blocks by default: imstats is absent, nothing removed
    assert r.exit_code == 1 and "imstats" in r.output and "nothing removed" in r.output
    r = run("store", "prune", store_path, "--keep-current", "--weights", "random:0",
            "--image-size", 32, "--features", "resnet50", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(r.output)["removed"]) == sorted([FP_A, FP_B])
    r = run("store", "prune", store_path, "--keep", FP_A[:6], "--weights", "random:0")
    assert r.exit_code == 2 and "--keep-current" in r.output


def test_prune_keeps_several_fingerprints(tmp_path, store_path):
    spec_c = {"backbone": "fake", "size": 32}
    with FeatureStore(store_path) as fs:
        fs.namespace(fingerprint(spec_c), spec_c, dim=DIM)
    r = run("store", "prune", store_path, "--keep", f"{FP_A[:6]},{FP_B[:6]}", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["removed"] == [fingerprint(spec_c)]
    r = run("store", "prune", store_path, "--keep", FP_A[:6], "--keep", FP_B[:6])
    assert r.exit_code == 0 and "0 namespace(s) removed, 2 kept" in r.output


def test_info_summary_tells_namespaces_apart(tmp_path):
    pytest.importorskip("pipeline.extract.runner")
    specs = {"r0": _real_spec(weights="random:0"), "r1": _real_spec(weights="random:1"),
             "r0_32": _real_spec(weights="random:0", image_size=32),
             "r0_bf16": _real_spec(weights="random:0", precision="bf16")}
    path = tmp_path / "s.h5"
    with FeatureStore(path) as fs:
        for spec in specs.values():
            fs.namespace(fingerprint(spec), spec, dim=DIM)
    r = run("store", "info", path)
    assert r.exit_code == 0, r.output
    lines = {fp: next(ln for ln in r.output.splitlines() if ln.startswith(fingerprint(s)[:12]))
             for fp, s in specs.items()}
    summaries = {k: ln.split("  ")[-1] for k, ln in lines.items()}
    assert len(set(summaries.values())) == len(specs), summaries
    assert "weights=random:0 fp32 224px direct bilinear fuse_bn" in summaries["r0"]
    assert "32px" in summaries["r0_32"] and "bf16" in summaries["r0_bf16"]


def test_export_npz(tmp_path, store_path):
    out = tmp_path / "out" / "a.npz"
    r = run("store", "export", store_path, "--out", out)
    assert r.exit_code == 2 and "--fingerprint" in r.output  # two namespaces: must pick
    r = run("store", "export", store_path, "--fingerprint", FP_A[:8], "--out", out)
    assert r.exit_code == 0, r.output
    data = np.load(out)
    assert list(data["keys"][:2]) == [content_key(b"k0"), content_key(b"k1")]
    assert data["vectors"].shape == (40, DIM) and data["vectors"][1, 0] == DIM
    assert str(data["fingerprint"]) == FP_A and json.loads(str(data["spec"])) == SPEC_A


def test_errors_are_one_line_not_tracebacks(tmp_path):
    r = run("store", "info", tmp_path / "nope.h5")
    assert r.exit_code == 1 and r.output.startswith("Error: ") and "does not exist" in r.output
    r = run("store", "compact", tmp_path / "nope.h5")
    assert r.exit_code == 1 and not (tmp_path / "nope.h5").exists()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage" * 100)
    for cmd in ("info", "verify", "compact"):
        r = run("store", cmd, bad)
        assert r.exit_code == 1 and str(bad) in r.output and "Traceback" not in r.output


def test_bench_store_writes_json(tmp_path):
    out = tmp_path / "store.json"
    r = run("bench", "store", "--rows", 1000, "--dim", 16, "--no-progress", "--out", out)
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert [x["dtype"] for x in res["results"]] == ["float16", "float32"]
    for x in res["results"]:
        assert x["rows"] == 1000 and x["put_many_rows_per_s"] > 0 and x["get_many_10k_s"] > 0
    assert "get_many 10k" in r.output
