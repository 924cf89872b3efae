"""Tests of `evaluate`: metrics of a trained checkpoint, JSON/HTML reports, splits, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import cli
from pipeline.evaluate import evaluate, write_reports
from pipeline.features import read_vectors
from pipeline.labels_csv import read_labels
from pipeline.metrics import compute_metrics
from store.keys import content_key
from tests.stage_two_fixtures import TinyBackbone, extract_cfg, make_dataset, trained_setup

KEYS = ["n", "mae", "rmse", "plcc", "srcc", "r2", "within_0.05", "within_0.1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return trained_setup(tmp_path_factory.mktemp("eval"))


def test_evaluate_matches_torch_head(setup):
    ev = evaluate(setup["csv"], setup["store"], setup["ckpt"], cached_only=True, progress=False)
    rows = read_labels(setup["csv"])
    ckpt = load_checkpoint(setup["ckpt"])
    x = read_vectors(setup["store"], ckpt.fingerprint, [content_key(r.path) for r in rows])
    head, _ = ckpt.build_head()
    with torch.no_grad():
        expected = head(torch.from_numpy(x))[:, 0].numpy()
    assert np.abs(ev.y_pred - expected).max() < 1e-5
    assert ev.report["n"] == len(rows)
    assert set(ev.report["per_family"]) == {"flat", "noisy"}
    assert ev.report["mae"] == pytest.approx(compute_metrics(ev.y_true, expected)["mae"],
                                             abs=1e-6)


def test_cli_writes_json_and_html(setup, tmp_path):
    out_json, out_html = tmp_path / "m.json", tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(setup["csv"]), "--store",
                                   str(setup["store"]), "--checkpoint", str(setup["ckpt"]),
                                   "--json", str(out_json), "--html", str(out_html),
                                   "--cached-only", "--no-progress"])
    assert res.exit_code == 0, res.output
    report = json.loads(out_json.read_text())
    assert list(report) == [*KEYS, "per_family"]
    assert all(list(m) == KEYS for m in report["per_family"].values())
    page = out_html.read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table" in page
    assert "plcc" in res.output


def test_split_test_only(setup):
    ckpt = load_checkpoint(setup["ckpt"])
    ev = evaluate(setup["csv"], setup["store"], setup["ckpt"], split="test", cached_only=True,
                  progress=False)
    assert ev.report["n"] == ckpt.meta["split"]["counts"]["test"]
    written = write_reports(ev, setup["root"] / "t.json")
    assert json.loads(written[0].read_text())["n"] == ev.report["n"]


def test_other_extractor_settings_refused_naming_both(setup):
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(setup["csv"]), "--store",
                                   str(setup["store"]), "--checkpoint", str(setup["ckpt"]),
                                   "--image-size", "64", "--no-progress"])
    assert res.exit_code == 1
    from pipeline.extract import feature_spec
    from store.keys import fingerprint

    fp = load_checkpoint(setup["ckpt"]).fingerprint
    other = fingerprint(feature_spec(extract_cfg(image_size=64)))
    assert fp in res.output and other in res.output


def test_missing_images_extracted_with_checkpoint_settings(setup, tmp_path):
    csv = make_dataset(tmp_path, n=4, seed=5)
    ev = evaluate(csv, setup["store"], setup["ckpt"], progress=False, backbone=TinyBackbone())
    assert ev.context["extracted"] == 4 and ev.report["n"] == 4
    with pytest.raises(Exception, match="not in the store"):
        evaluate(make_dataset(tmp_path / "b", n=2, seed=6), setup["store"], setup["ckpt"],
                 cached_only=True, progress=False)
