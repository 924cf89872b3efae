"""Tests of `evaluate`: metrics of a trained checkpoint, JSON/HTML reports, splits, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.head.checkpoint import load_checkpoint
from pipeline.train.evaluate import evaluate, write_reports
from pipeline.train.features import read_blocks
from pipeline.train.labels_csv import read_labels
from pipeline.train.metrics import compute_metrics
from store.keys import content_key

KEYS = ["n", "mae", "rmse", "plcc", "srcc", "r2", "within_0.05", "within_0.1"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, trained_setup):
    return trained_setup(tmp_path_factory.mktemp("eval"))


def test_evaluate_matches_torch_head(setup):
    ev = evaluate(setup["csv"], setup["store"], setup["ckpt"], cached_only=True, progress=False)
    rows = read_labels(setup["csv"])
    ckpt = load_checkpoint(setup["ckpt"])
    x = read_blocks(setup["store"], ckpt.fingerprints, [content_key(r.path) for r in rows])
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
    assert list(report) == [*KEYS, "per_family", "per_size"]  # no svg_bytes labels here
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


def test_other_extractor_settings_refused_naming_both(setup, extract_cfg):
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(setup["csv"]), "--store",
                                   str(setup["store"]), "--checkpoint", str(setup["ckpt"]),
                                   "--image-size", "64", "--no-progress"])
    assert res.exit_code == 1
    from pipeline.extract.spec import feature_spec
    from store.keys import fingerprint

    fp = load_checkpoint(setup["ckpt"]).fingerprints["resnet50"]
    other = fingerprint(feature_spec(extract_cfg(image_size=64)))
    out = " ".join(res.output.split())
    assert f"resnet50: {fp[:12]} vs {other[:12]}" in out


def test_missing_images_extracted_with_checkpoint_settings(setup, tmp_path, make_dataset,
                                                           fake_backbone):
    csv = make_dataset(tmp_path, n=4, seed=5)
    ev = evaluate(csv, setup["store"], setup["ckpt"], progress=False, backbone=fake_backbone())
    assert ev.context["extracted"] == 4 and ev.report["n"] == 4
    with pytest.raises(Exception, match="not in the store"):
        evaluate(make_dataset(tmp_path / "b", n=2, seed=6), setup["store"], setup["ckpt"],
                 cached_only=True, progress=False)


def _eval_cli(setup, *extra: str):
    return CliRunner().invoke(cli, ["evaluate", "--labels", str(setup["csv"]), "--store",
                                    str(setup["store"]), "--checkpoint", str(setup["ckpt"]),
                                    "--no-progress", *extra])


def test_cli_reports_unreadable_images_on_stderr(setup, tmp_path, monkeypatch, make_dataset,
                                                 fake_backbone):
    import functools

    import pipeline.train.evaluate as ev_mod

    csv = make_dataset(tmp_path, n=3, seed=7)
    for name in ("broken0.png", "broken1.png"):
        (tmp_path / "images" / name).write_bytes(b"not a png")
    csv.write_text(csv.read_text() + "images/broken0.png,0.5,flat\nimages/broken1.png,0.5,flat\n")
    # the CLI extracts with the checkpoint's settings; the tiny backbone stands in for ResNet-50
    monkeypatch.setattr(ev_mod, "evaluate",
                        functools.partial(ev_mod.evaluate, backbone=fake_backbone()))
    args = ["evaluate", "--labels", str(csv), "--store", str(setup["store"]), "--checkpoint",
            str(setup["ckpt"]), "--no-progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "n 3, skipped 2 unreadable" in res.stdout
    assert "skipped " + str(tmp_path / "images" / "broken0.png") in res.stderr
    assert "broken1.png" in res.stderr and "broken" not in res.stdout.split("\n", 1)[1]
    res = CliRunner().invoke(cli, [*args, "--json", "-"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is the JSON and nothing else
    assert list(report) == [*KEYS, "per_family", "per_size"] and report["n"] == 3
    assert "broken0.png" in res.stderr


@pytest.mark.parametrize("body,needle", [
    (None, "does not exist"), ("{not json", "is not valid JSON"),
    ('{"no_such_key": 1}', "unknown key"),
])
def test_cli_bad_extract_config_is_an_error_not_a_traceback(setup, tmp_path, body, needle):
    path = tmp_path / "extract.json"
    if body is not None:
        path.write_text(body)
    res = _eval_cli(setup, "--extract-config", str(path), "--cached-only")
    assert res.exit_code == 1, res.output
    assert "Error:" in res.output and needle in res.output and str(path) in res.output
    assert isinstance(res.exception, SystemExit)  # the CLI's Error:, not a raised exception


def test_cached_only_names_both_fingerprints_and_the_extract_flags(setup, tmp_path):
    from store.hdf5 import FeatureStore

    other = tmp_path / "other.h5"
    with FeatureStore(other, mode="a") as fs:
        fs.namespace("e" * 64, spec={"x": 1}, dim=54).put_many(["0" * 64], np.zeros((1, 54)))
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(setup["csv"]), "--store",
                                   str(other), "--checkpoint", str(setup["ckpt"]),
                                   "--cached-only", "--no-progress"])
    assert res.exit_code == 1
    out = " ".join(res.output.split())  # click may wrap nothing, but be safe
    fps = load_checkpoint(setup["ckpt"]).fingerprints
    assert all(f"{b} {fp[:12]}" in out for b, fp in fps.items()) and "e" * 12 in out
    assert f"ssimcache extract --store {other} --weights random:0 --precision fp32 " \
           "--image-size 32" in out


def _no_nan(text: str):
    """Parse strict JSON: NaN / Infinity literals are an error."""
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def test_nonfinite_predictions_never_reach_the_json_and_html(setup, tmp_path, make_dataset):
    """A labelled image whose cached vector overflows the head (prediction NaN): left out of
    the metrics and said so; --json stays valid JSON (no NaN), --html is written."""
    import shutil

    from store.hdf5 import FeatureStore

    store = tmp_path / "features.h5"
    shutil.copy(setup["store"], store)
    csv = tmp_path / "labels.csv"
    images = setup["csv"].parent / "images"
    make_dataset(tmp_path / "x", n=1, seed=31)
    bad = tmp_path / "x" / "images" / "img000.png"
    rows = [*sorted(images.glob("*.png"))[:6], bad]
    csv.write_text("path,ssim,family\n" + "".join(f"{p},0.5,fam\n" for p in rows))
    vec = np.full((1, 54), 3e38, dtype=np.float32)
    vec[0, ::2] *= -1
    fps = load_checkpoint(setup["ckpt"]).fingerprints
    with FeatureStore(store, mode="a") as fs:
        fs.namespace(fps["resnet50"]).put_many([content_key(bad)], vec)
        stats = fs.namespace(fps["imstats"])
        stats.put_many([content_key(bad)], np.zeros((1, stats.dim)))
    out_html = tmp_path / "r.html"
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(csv), "--store", str(store),
                                   "--checkpoint", str(setup["ckpt"]), "--cached-only",
                                   "--no-progress", "--json", "-", "--html", str(out_html)])
    assert res.exit_code == 0, res.output
    report = _no_nan(res.stdout)
    assert report["n"] == 6 and report["mae"] is not None
    assert report["per_family"]["fam"]["n"] == 6
    assert any("1 of 7" in w and "not finite" in w for w in report["warnings"])
    assert str(bad) in res.stderr and "RuntimeWarning" not in res.stderr
    assert out_html.is_file() and "not finite" in out_html.read_text()
    res = CliRunner().invoke(cli, ["evaluate", "--labels", str(csv), "--store", str(store),
                                   "--checkpoint", str(setup["ckpt"]), "--cached-only",
                                   "--no-progress", "--json", str(tmp_path / "m.json")])
    assert res.exit_code == 0 and "1 not finite" in res.stdout
    assert _no_nan((tmp_path / "m.json").read_text())["n"] == 6


def test_reports_write_null_for_nonfinite_metrics_and_plot_only_finite_points(tmp_path):
    from pipeline.train.evaluate import Evaluation

    y_true = np.array([0.9, 0.8, 0.7], np.float32)
    y_pred = np.array([0.85, np.nan, np.inf], np.float32)
    report = {"n": 3, "mae": float("nan"), "rmse": float("inf"), "plcc": None, "srcc": 0.5,
              "r2": None, "within_0.05": 0.3, "within_0.1": 0.3, "per_family": {}}
    ev = Evaluation(report, y_true, y_pred, [None] * 3, {"checkpoint": "c"})
    written = write_reports(ev, tmp_path / "m.json", tmp_path / "r.html")
    data = _no_nan(written[0].read_text())
    assert data["mae"] is None and data["rmse"] is None and data["srcc"] == 0.5
    assert "<img" in written[1].read_text()
