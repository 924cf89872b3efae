"""Tests of training: key-hash split, loss goes down, the train runner and CLI label errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ConfigError, PipelineError
from pipeline.extract import imstats, preview
from pipeline.head.checkpoint import load_checkpoint
from pipeline.train.fit import TrainConfig, split_keys, split_of, train_head
from pipeline.train.run import run_train
from store.hdf5 import FeatureStore
from store.keys import content_key


def test_split_is_deterministic_order_free_and_proportional():
    keys = [f"{i:064x}" for i in range(3000)]
    cfg = TrainConfig(val_fraction=0.2, test_fraction=0.1, seed=3)
    a = split_keys(keys, cfg)
    b = split_keys(keys[::-1], cfg)[::-1]
    assert np.array_equal(a, b)
    share = {s: float(np.mean(a == s)) for s in ("train", "val", "test")}
    assert share["val"] == pytest.approx(0.2, abs=0.03)
    assert share["test"] == pytest.approx(0.1, abs=0.03)
    other = split_keys(keys, TrainConfig(seed=4))
    assert not np.array_equal(a, other), "the seed changes the split"
    assert split_of(keys[0], 3, 0.2, 0.1) == a[0]


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        TrainConfig(val_fraction=0.7, test_fraction=0.4)
    from pipeline.config import build_config

    with pytest.raises(ConfigError, match="unknown key"):
        build_config(TrainConfig, None, {"epochz": 3})


def test_training_reduces_validation_loss(small_train_cfg):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32)).astype(np.float32)
    w = rng.normal(size=32) / 4
    y = (1 / (1 + np.exp(-(x @ w)))).astype(np.float32)
    cfg = small_train_cfg(epochs=25, patience=25)
    torch.manual_seed(0)
    from pipeline.head.mlp import SSIMPredictor

    untrained = SSIMPredictor(cfg.head_config(32)).eval()
    with torch.no_grad():
        before = float(((untrained(torch.from_numpy(x[300:]))[:, 0] - torch.from_numpy(y[300:]))
                        ** 2).mean())
    res = train_head(x[:300], y[:300], x[300:], y[300:], cfg, progress=False)
    assert res.best_val_loss < before / 3
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    assert not res.head.training
    # same seed, same weights
    again = train_head(x[:300], y[:300], x[300:], y[300:], cfg, progress=False)
    assert again.best_val_loss == res.best_val_loss


def test_early_stopping_keeps_best_epoch(small_train_cfg):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = rng.random(60).astype(np.float32)  # pure noise: val loss stops improving early
    res = train_head(x[:40], y[:40], x[40:], y[40:],
                     small_train_cfg(epochs=200, patience=5, lr=1e-2), progress=False)
    assert res.epochs_run < 200
    assert res.epochs_run - res.best_epoch == 5
    assert res.best_val_loss == min(h["val_loss"] for h in res.history)


def test_run_train_end_to_end(tmp_path, make_dataset, extract_cfg, small_train_cfg,
                              fake_backbone):
    csv = make_dataset(tmp_path, n=48)
    store = tmp_path / "f.h5"
    out = tmp_path / "head.safetensors"
    cfg = extract_cfg()
    summary = run_train(str(csv), str(store), cfg, small_train_cfg(), str(out),
                        progress=False, backbone=fake_backbone())
    assert summary["extracted"] == 48 and summary["rows"] == 48 and summary["skipped"] == []
    assert summary["train"] + summary["val"] + summary["test"] == 48
    ckpt = load_checkpoint(out)
    with FeatureStore(store, mode="r") as fs:
        assert sorted(fs.fingerprints()) == sorted(ckpt.fingerprints.values())
    assert ckpt.block_names == ["imstats", "preview"]  # the default head's blocks
    assert ckpt.head_config.input_dim == imstats.DIM + preview.DIM
    assert ckpt.bytes_config is None
    assert ckpt.meta["extract_config"]["weights"] == "random:0"
    assert ckpt.meta["split"]["counts"]["test"] == summary["test"]
    assert set(ckpt.meta["metrics"]) == {"val", "test"}
    # the noise level is learnable from the statistics (12 val rows: a loose bound)
    assert ckpt.meta["metrics"]["val"]["plcc"] > 0.3
    # a second run finds everything cached
    again = run_train(str(csv), str(store), cfg, small_train_cfg(epochs=2), str(out),
                      cached_only=True, progress=False, backbone=fake_backbone())
    assert again["extracted"] == 0
    # --cached-only lists what is missing
    make_dataset(tmp_path / "more", n=3, seed=9)
    csv2 = tmp_path / "more" / "labels.csv"
    with pytest.raises(PipelineError, match="3 labelled image.*img000.png"):
        run_train(str(csv2), str(store), cfg, small_train_cfg(), str(out), cached_only=True,
                  progress=False)


@pytest.mark.parametrize("body,needle", [
    ("path,score\nimages/img000.png,0.5\n", "labels.csv:1: missing column 'ssim'"),
    ("path,ssim\nimages/img000.png,0.5\nimages/img001.png,abc\n", "labels.csv:3: ssim value 'abc'"),
    ("path,ssim\nimages/img000.png,1.5\n", "labels.csv:2: ssim value 1.5 is outside [-1, 1]"),
    ("path,ssim\nimages/img000.png,0.5\n\nimages/gone.png,0.5\n",
     "labels.csv:4: image images/gone.png does not exist"),
])
def test_cli_label_errors_name_the_line(tmp_path, body, needle, make_dataset):
    make_dataset(tmp_path, n=2)
    (tmp_path / "labels.csv").write_text(body)
    res = CliRunner().invoke(cli, ["train", "--labels", str(tmp_path / "labels.csv"), "--store",
                                   str(tmp_path / "f.h5"), "--out", str(tmp_path / "c.st"),
                                   "--no-progress"])
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and needle in res.output


def test_labels_csv_with_utf8_bom_is_read(tmp_path, make_dataset):
    from pipeline.train.labels_csv import read_labels

    csv = make_dataset(tmp_path, n=2)
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # as Excel saves "CSV UTF-8"
    rows = read_labels(csv)
    assert [r.path.name for r in rows] == ["img000.png", "img001.png"]
    assert rows[0].family == "noisy" and rows[0].line == 2


def test_cli_train_cached_only_lists_missing(tmp_path, make_dataset):
    csv = make_dataset(tmp_path, n=3)
    res = CliRunner().invoke(cli, ["train", "--labels", str(csv), "--store", str(tmp_path / "f.h5"),
                                   "--out", str(tmp_path / "c.st"), "--cached-only",
                                   "--weights", "random:0", "--no-progress", "--json"])
    assert res.exit_code == 1
    assert "3 labelled image(s) are not in the store" in res.output
    assert "img002.png" in res.output
    # the hint fills the namespace train would use (store absent: it holds none)
    assert "the store holds no namespace" in res.output
    assert "ssimcache extract --store" in res.output and "--weights random:0" in res.output
    assert not (tmp_path / "c.st").exists()
    json.dumps(res.output)


def test_shipped_configs_hold_the_defaults():
    from pathlib import Path

    from pipeline.config import build_config, config_to_dict
    from pipeline.score import ScoreConfig

    root = Path(__file__).resolve().parents[2] / "configs"
    for cls, name in ((TrainConfig, "train.json"), (ScoreConfig, "score.json")):
        shipped = json.loads((root / name).read_text())
        assert shipped == config_to_dict(cls()), name
        assert build_config(cls, root / name) == cls()


def test_svg_bytes_head_and_leave_one_family_out(tmp_path, make_dataset, extract_cfg,
                                                small_train_cfg, fake_backbone):
    from pipeline.head.numpy_head import NumpyHead

    # svg_bytes grows with the noise, as real SVGs' sizes do
    csv = make_dataset(tmp_path, n=48, svg_bytes=True)
    out = tmp_path / "head.safetensors"
    summary = run_train(str(csv), str(tmp_path / "f.h5"), extract_cfg(),
                        small_train_cfg(features=("resnet50", "imstats")), str(out),
                        progress=False, backbone=fake_backbone(), lofo=True)
    ckpt = load_checkpoint(out)
    assert ckpt.block_names == ["resnet50", "imstats"]
    assert ckpt.bytes_config is not None and ckpt.bytes_config.output == "linear"
    assert summary["svg_bytes_head"] and "svg_bytes" in summary["metrics"]["val"]
    assert set(summary["metrics"]["val"]["svg_bytes"]["per_family"]) == {"flat", "noisy"}
    lofo = ckpt.meta["metrics"]["lofo"]
    assert set(lofo["families"]) == {"flat", "noisy"} and lofo["held_out"] == 48
    assert lofo["overall"]["n"] == 48 and "svg_bytes" in lofo["overall"]
    assert "predictions" not in lofo and len(summary["lofo_predictions"]["ssim"]) == 48
    # numpy copy of the second head = its torch copy
    head = ckpt.build_bytes_head()
    x = np.random.default_rng(0).random((4, ckpt.head_config.input_dim), dtype=np.float32)
    with torch.no_grad():
        want = head(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(NumpyHead(ckpt.bytes_numpy, output="linear")(x), want,
                               rtol=1e-4, atol=1e-4)
    # ... and it learnt the sizes: predicted log10 bytes follow the true ones
    from pipeline.train.features import read_blocks
    from pipeline.train.labels_csv import read_labels

    rows = read_labels(csv)
    xs = read_blocks(tmp_path / "f.h5", ckpt.fingerprints, [content_key(r.path) for r in rows])
    got = NumpyHead(ckpt.bytes_numpy, output="linear")(xs)
    assert np.corrcoef(got, np.log10([r.svg_bytes for r in rows]))[0, 1] > 0.8


def test_lofo_needs_two_families(tmp_path, make_dataset, extract_cfg, small_train_cfg):
    csv = make_dataset(tmp_path, n=20)
    csv.write_text(csv.read_text().replace(",noisy", ",flat"))
    with pytest.raises(PipelineError, match="at least 2 families"):
        run_train(str(csv), str(tmp_path / "f.h5"), extract_cfg(), small_train_cfg(epochs=2),
                  str(tmp_path / "h.safetensors"), progress=False, lofo=True)


def test_evaluate_prints_bytes_per_family_and_bias_per_size(tmp_path, make_dataset,
                                                            extract_cfg, small_train_cfg,
                                                            fake_backbone):
    from click.testing import CliRunner

    from pipeline.cli import cli

    csv = make_dataset(tmp_path, n=32, svg_bytes=True)
    out = tmp_path / "head.safetensors"
    run_train(str(csv), str(tmp_path / "f.h5"), extract_cfg(),
              small_train_cfg(features=("imstats",)), str(out), progress=False,
              backbone=fake_backbone())
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(csv), "--store",
                                   str(tmp_path / "f.h5"), "--checkpoint", str(out),
                                   "--cached-only", "--no-progress"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    at = lines.index(next(x for x in lines if x.startswith("all: svg bytes")))
    assert [x.split()[0] for x in lines[at + 1:at + 4]] == ["all", "flat", "noisy"]
    sizes = next(i for i, x in enumerate(lines) if x.startswith("all: by size"))
    bucket = lines[sizes + 1].split()
    assert bucket[0] == "<160" and int(bucket[1]) == 32  # make_dataset's 32-px images
    assert abs(float(bucket[2])) < 1  # the signed mean bias
