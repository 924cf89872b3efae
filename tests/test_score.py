"""Tests of scoring: numpy Scorer == torch head, LRU, refusals, CLI formats, no torch imported."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import CheckpointError, PipelineError
from pipeline.head.checkpoint import load_checkpoint
from pipeline.score import ScoreConfig, Scorer
from pipeline.train.features import read_blocks
from store.hdf5 import FeatureStore
from store.keys import content_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_setup):
    s = trained_setup(tmp_path_factory.mktemp("score"), n=24)
    s["images"] = sorted((s["root"] / "images").glob("*.png"))
    s["keys"] = [content_key(p) for p in s["images"]]
    return s


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_numpy_scorer_equals_torch_head(setup):
    ckpt = load_checkpoint(setup["ckpt"])
    head, _ = ckpt.build_head()
    x = read_blocks(setup["store"], ckpt.fingerprints, setup["keys"])
    with torch.no_grad():
        expected = head(torch.from_numpy(x))[:, 0].numpy()
    with Scorer(setup["store"], setup["ckpt"]) as sc:
        got = sc.score_keys(setup["keys"])
        assert got.dtype == np.float32 and got.shape == (24,)
        assert np.abs(got - expected).max() < 1e-5
        # input order, duplicates, and LRU hits give the same numbers
        order = [setup["keys"][3], setup["keys"][0], setup["keys"][3]]
        assert np.array_equal(sc.score_keys(order), got[[3, 0, 3]])
        assert sc.score_key(setup["keys"][5]) == pytest.approx(float(got[5]))
        paths = sc.score_paths(setup["images"][:4], cached_only=True)
        assert np.array_equal(paths, got[:4])


def test_lru_bounded(setup):
    with Scorer(setup["store"], setup["ckpt"], ScoreConfig(cache_items=5)) as sc:
        first = sc.score_keys(setup["keys"])
        assert len(sc._scores) == 5
        assert all(k in sc._scores for k in setup["keys"][-5:])  # the most recent five
        assert setup["keys"][0] not in sc._scores
        assert np.allclose(sc.score_keys(setup["keys"]), first, atol=1e-6)  # BLAS batch sizes


def test_unknown_key_and_foreign_store_refused(setup, tmp_path):
    with Scorer(setup["store"], setup["ckpt"]) as sc:
        with pytest.raises(PipelineError, match="1 key.*" + "f" * 64):
            sc.score_keys([setup["keys"][0], "f" * 64])
    other = tmp_path / "other.h5"
    with FeatureStore(other, mode="a") as fs:
        fs.namespace("e" * 64, spec={"x": 1}, dim=54).put_many(["0" * 64], np.zeros((1, 54)))
    fp = load_checkpoint(setup["ckpt"]).fingerprints["resnet50"][:12]
    with Scorer(other, setup["ckpt"]) as sc, pytest.raises(CheckpointError) as e:
        sc.score_keys(["0" * 64])
    assert fp in str(e.value) and "e" * 12 in str(e.value)  # what is wanted, what is held


def test_uncached_images_are_extracted_then_scored(setup, tmp_path, make_dataset,
                                                   fake_backbone):
    make_dataset(tmp_path, n=3, seed=11)
    new = sorted((tmp_path / "images").glob("*.png"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with Scorer(setup["store"], setup["ckpt"], backbone=fake_backbone()) as sc:
        with pytest.raises(PipelineError, match="drop --cached-only"):
            sc.score_paths(new, cached_only=True)
        gone = tmp_path / "gone.png"
        got = sc.score_paths([new[0], broken, new[1], new[2], gone])
        assert np.isnan(got[1]) and np.isnan(got[4])
        assert np.all((got[[0, 2, 3]] > 0) & (got[[0, 2, 3]] < 1))
        assert sorted(p for p, _ in sc.failures) == sorted([str(broken), str(gone)])
    with Scorer(setup["store"], setup["ckpt"]) as sc:  # now cached
        assert np.array_equal(sc.score_paths(new, cached_only=True), got[[0, 2, 3]])


def test_cli_csv_json_and_uncertainty(setup):
    imgs = [str(p) for p in setup["images"][:3]][::-1]
    base = ["score", *imgs, "--checkpoint", str(setup["ckpt"]), "--store", str(setup["store"]),
            "--cached-only"]
    res = _cli(*base, "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    assert list(rows[0]) == ["path", "key", "predicted_ssim", "predicted_svg_bytes"]
    assert all(r["predicted_svg_bytes"] == "" for r in rows)  # this head has no bytes head
    assert [r["path"] for r in rows] == imgs
    assert rows[0]["key"] == content_key(imgs[0])
    res = _cli(*base, "--format", "json", "--uncertainty", "8")
    data = json.loads(res.output)
    assert list(data[0]) == ["path", "key", "predicted_ssim", "predicted_svg_bytes", "mean",
                             "std", "low", "high"]
    assert all(d["std"] > 0 and d["low"] <= d["mean"] <= d["high"] for d in data)
    again = json.loads(_cli(*base, "--format", "json", "--uncertainty", "8").output)
    assert again == data, "seeded MC dropout is reproducible"
    res = _cli(*base, "--format", "csv", "--uncertainty", "4")
    assert res.output.splitlines()[0] == \
        "path,key,predicted_ssim,predicted_svg_bytes,mean,std,low,high"
    table = _cli(*base)
    assert table.exit_code == 0 and "predicted_ssim" in table.output
    table = _cli(*base, "--uncertainty", "4")
    assert table.exit_code == 0 and "mc_mean" in table.output.splitlines()[0]


def test_cli_repeated_input_keeps_one_row_per_input(setup):
    a, b = (str(p) for p in setup["images"][:2])
    folder = str(setup["images"][0].parent)
    res = _cli("score", a, b, a, folder, "--checkpoint", str(setup["ckpt"]), "--store",
               str(setup["store"]), "--cached-only", "--format", "csv")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO(res.output)))
    # the folder expands in place, after the three files, and still holds a and b
    assert [r["path"] for r in rows[:3]] == [a, b, a]
    assert len(rows) == 3 + len(setup["images"])
    assert rows[0]["predicted_ssim"] == rows[2]["predicted_ssim"]
    assert rows[0]["key"] == rows[2]["key"] == content_key(a)


def test_uncertainty_of_a_key_does_not_depend_on_the_batch(setup):
    keys = setup["keys"]
    with Scorer(setup["store"], setup["ckpt"], ScoreConfig(batch_size=5)) as sc:
        alone = sc.uncertainty([keys[7]], samples=12)
        batch = sc.uncertainty(keys[::-1], samples=12)  # key 7 in another chunk and position
        pos = keys[::-1].index(keys[7])
        for name in ("mean", "std", "low", "high"):
            assert alone[name][0] == batch[name][pos], name
        assert np.array_equal(sc.uncertainty(keys, samples=12)["std"], batch["std"][::-1])
        # the seed still matters
        assert sc.uncertainty([keys[7]], samples=12, seed=1)["std"][0] != alone["std"][0]


def test_cli_cached_only_lists_uncached(setup, tmp_path, make_dataset):
    make_dataset(tmp_path, n=1, seed=12)
    img = tmp_path / "images" / "img000.png"
    res = _cli("score", str(img), "--checkpoint", str(setup["ckpt"]), "--store",
               str(setup["store"]), "--cached-only")
    assert res.exit_code == 1 and str(img) in res.output
    fps = load_checkpoint(setup["ckpt"]).fingerprints
    out = " ".join(res.output.split())
    assert all(f"{b} {fp[:12]}" in out for b, fp in fps.items()) and "the store holds" in out


def test_cached_score_never_imports_torch(setup):
    code = ("import sys\nfrom pipeline.cli import cli\n"
            "try:\n    cli.main(args=sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('rc', e.code, file=sys.stderr)\n"
            "print('torch', 'torch' in sys.modules, file=sys.stderr)\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "score", str(setup["images"][0]), "--checkpoint",
         str(setup["ckpt"]), "--store", str(setup["store"]), "--format", "csv"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "rc 0" in proc.stderr, proc.stderr
    assert "torch False" in proc.stderr
    assert proc.stdout.startswith("path,key,predicted_ssim")


def test_new_image_for_a_torch_free_head_never_imports_torch(tmp_path, trained_setup,
                                                            make_dataset):
    """A head on imstats,preview (the default blocks) extracts a new image's blocks and
    scores it without loading torch (importing torch costs ~3 s of a fresh process here)."""
    s = trained_setup(tmp_path / "set", n=16, features=("imstats", "preview"))
    make_dataset(tmp_path / "new", n=1, seed=31)
    img = tmp_path / "new" / "images" / "img000.png"
    code = ("import sys\nfrom pipeline.cli import cli\n"
            "try:\n    cli.main(args=sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('rc', e.code, file=sys.stderr)\n"
            "print('torch', 'torch' in sys.modules, file=sys.stderr)\n")

    def score(ckpt, store):
        return subprocess.run(
            [sys.executable, "-c", code, "score", str(img), "--checkpoint", str(ckpt),
             "--store", str(store), "--format", "csv", "--no-progress"],
            capture_output=True, text=True, cwd=ROOT, timeout=300)

    proc = score(s["ckpt"], s["store"])
    assert "rc 0" in proc.stderr and "torch False" in proc.stderr, proc.stderr
    row = proc.stdout.splitlines()[1].split(",")
    assert row[0] == str(img) and 0 < float(row[2]) < 1  # (no bytes head: no svg_bytes)
    with FeatureStore(s["store"], mode="r") as fs:  # the new image's blocks were stored
        fps = load_checkpoint(s["ckpt"]).fingerprints
        assert all(fs.namespace(fp).get(content_key(img)) is not None for fp in fps.values())


@pytest.mark.slow  # a benchmark, fresh processes included
def test_bench_runs_small(tmp_path):
    from pipeline.bench.score import format_table, run_bench

    r = run_bench(n_keys=300, single=20, repeats=1, workdir=tmp_path)
    assert r["fresh_process"]["torch_imported"] is False
    assert r["bulk"]["finite"] and r["bulk"]["keys"] == 300
    assert r["single_key"]["score_lru_hit"]["calls"] == 20
    assert "fresh `ssimcache score`" in format_table(r)


def _store_with_extreme_vector(setup, tmp_path, make_dataset):
    """A copy of the store plus one new image whose (finite, storable) vector of +-3e38
    overflows the head: its prediction is NaN."""
    import shutil

    store = tmp_path / "features.h5"
    shutil.copy(setup["store"], store)
    make_dataset(tmp_path, n=1, seed=21)
    img = tmp_path / "images" / "img000.png"
    vec = np.full((1, 54), 3e38, dtype=np.float32)
    vec[0, ::2] *= -1
    fps = load_checkpoint(setup["ckpt"]).fingerprints
    with FeatureStore(store, mode="a") as fs:
        fs.namespace(fps["resnet50"]).put_many([content_key(img)], vec)
        fs.namespace(fps["imstats"]).put_many([content_key(img)],
                                              np.zeros((1, fs.namespace(fps["imstats"]).dim)))
    return store, img


def test_nonfinite_prediction_is_a_failure_row_with_a_reason(setup, tmp_path, make_dataset):
    store, bad = _store_with_extreme_vector(setup, tmp_path, make_dataset)
    good = str(setup["images"][0])
    base = ["score", good, str(bad), "--checkpoint", str(setup["ckpt"]), "--store", str(store),
            "--cached-only"]
    res = _cli(*base, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)  # strict JSON: no NaN
    assert rows[0]["predicted_ssim"] is not None and rows[1]["predicted_ssim"] is None
    assert f"failed {bad}: predicted SSIM is not finite" in res.stderr
    assert "warning: 1 of 2 input(s) failed" in res.stderr and "--strict" in res.stderr
    assert "RuntimeWarning" not in res.stderr  # overflow inside the head is not noise
    res = _cli(*base, "--strict")
    assert res.exit_code == 1 and "failed" in res.stdout and "Traceback" not in res.output
    res = _cli(*base, "--uncertainty", "3", "--format", "csv")
    assert res.exit_code == 0 and res.stdout.splitlines()[2].startswith(f"{bad},")
    with Scorer(store, setup["ckpt"]) as sc:
        got = sc.score_paths([good, bad], cached_only=True)
        assert np.isnan(got[1]) and [p for p, _ in sc.failures] == [str(bad)]


def test_strict_fails_on_unreadable_images(setup, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    good = str(setup["images"][0])
    res = _cli("score", good, str(tmp_path / "gone.png"), "--checkpoint", str(setup["ckpt"]),
               "--store", str(setup["store"]), "--cached-only", "--strict")
    assert res.exit_code == 1 and "file not found" in res.stderr


def test_score_prints_predicted_svg_bytes_from_the_second_head(tmp_path, make_dataset,
                                                               extract_cfg, small_train_cfg):
    """A head trained on labels with svg_bytes: score's csv/json carry a positive integer size,
    the same the numpy bytes head gives for the cached vector."""
    from pipeline.head.numpy_head import NumpyHead
    from pipeline.train.run import run_train

    csv_path = make_dataset(tmp_path, n=30, svg_bytes=True)
    ckpt_path = tmp_path / "h.safetensors"
    run_train(str(csv_path), str(tmp_path / "f.h5"), extract_cfg(), small_train_cfg(epochs=10),
              str(ckpt_path), progress=False)
    img = sorted((tmp_path / "images").glob("*.png"))[0]
    res = _cli("score", str(img), "--checkpoint", str(ckpt_path), "--store",
               str(tmp_path / "f.h5"), "--cached-only", "--format", "json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    ckpt = load_checkpoint(ckpt_path)
    x = read_blocks(tmp_path / "f.h5", ckpt.fingerprints, [content_key(img)])
    want = 10 ** float(NumpyHead(ckpt.bytes_numpy, output="linear")(x)[0])
    assert isinstance(row["predicted_svg_bytes"], int) and row["predicted_svg_bytes"] > 0
    assert row["predicted_svg_bytes"] == round(want)
