"""Tests of the validation suite: each check fails on the model broken for it, and only then."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from pipeline.validate.report import (
    load_schema,
    schema_errors,
    write_html_report,
    write_json_report,
)
from pipeline.validate.runner import LabeledFeatures, ValidateConfig, run_validation

D = 16  # feature width of the fake models
MODEL_CHECKS = ("dimensions", "gradients", "memory", "performance", "stability", "profile")
SMALL = ValidateConfig(
    checks=MODEL_CHECKS, image_size=32, feature_dim=D, batch_sizes=(1, 3), extra_sizes=(48,),
    memory_batch_sizes=(1, 4), leak_iterations=40, latency_batch_sizes=(1, 8),
    latency_repeats=3, profile_top=5, compare_heads=((32, 16), (8,)), compare_epochs=5,
    # footprint limits and latency targets are the subject of their own test only: the pytest
    # process carries other tests' allocations and the CPU is shared
    inference_rss_limit_mb=1e6, training_rss_limit_mb=1e6, target_single_ms=1e6,
    target_batch8_ms=1e6, target_head_ms=1e6, roofline_matmul_size=1024, roofline_repeats=3)
# Every check a broken model can trip (the profile is informational: healthy-model test only).
BREAKABLE = tuple(c for c in MODEL_CHECKS if c != "profile")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads; spare the shared CPU (the performance check
    still measures 1 thread vs all cores itself)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


class Extractor(nn.Module):
    """Frozen tiny CNN: (B, 3, S, S) -> (B, D)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, D)
        for p in self.parameters():
            p.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


class Head(nn.Module):
    """Trainable MLP head with BatchNorm: (B, D) -> (B, 1) in (0, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(D, 8)
        self.bn = nn.BatchNorm1d(8)
        self.l2 = nn.Linear(8, 1)

    def hidden(self, f: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.l1(f)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.l2(self.hidden(f)))


class Healthy(nn.Module):
    """The generic interface: forward(x) -> (pred (B, 1), features (B, D))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.feature_extractor = Extractor()
        self.predictor = Head()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.feature_extractor(x)
        return self.predictor(f), f


class BrokenShape(Healthy):
    """Squeezes the prediction to (B,) — a classic shape bug."""

    def forward(self, x):
        pred, f = super().forward(x)
        return pred.squeeze(1), f


class CutGradient(Healthy):
    """Detaches the hidden activations: the head's first layer never learns."""

    def forward(self, x):
        f = self.feature_extractor(x)
        h = self.predictor.hidden(f).detach()
        return torch.sigmoid(self.predictor.l2(h)), f


class Leaky(Healthy):
    """Keeps 1 MiB per call in a list that grows forever."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[torch.Tensor] = []

    def forward(self, x):
        self.history.append(torch.ones(256 * 1024))  # 1 MiB of float32, touched
        return super().forward(x)


class NaNOnFlat(Healthy):
    """Standardises each image by its own std: a constant image gives 0/0 = NaN."""

    def forward(self, x):
        x = (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)
        return super().forward(x)


class SwallowsNaN(Healthy):
    """Replaces NaN/Inf pixels by numbers: a NaN image gets a plausible score."""

    def forward(self, x):
        return super().forward(torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))


class Saturated(Healthy):
    """Huge logits: every prediction is exactly 1.0 (an untrained head on raw features)."""

    def forward(self, x):
        f = self.feature_extractor(x)
        return torch.sigmoid(1e4 + self.predictor.l2(self.predictor.hidden(f))), f


def failed(report: dict) -> set[str]:
    return {n for n, c in report["checks"].items() if c["status"] == "fail"}


def test_healthy_model_passes_and_report_matches_schema(tmp_path):
    report = run_validation(Healthy(), SMALL)
    assert failed(report) == set(), report["checks"]
    assert report["passed"] and report["counts"] == {"pass": 6, "fail": 0, "skip": 0}
    assert schema_errors(json.loads(json.dumps(report))) == []
    g = report["checks"]["gradients"]["figures"]
    assert g["trainable_layers"] == 3 and g["params_frozen"] > 0  # frozen extractor counted
    perf = report["checks"]["performance"]
    assert {r[0] for r in perf["tables"]["targets"]["rows"]} == {
        "single image (batch 1)", "batch of 8", "head alone (batch 1)"}
    # no extractor config given: the verdict is on the model as given, against the roofline
    assert "product_ms" not in perf["tables"]
    assert perf["figures"]["verdict_path"].startswith("model as given")
    assert [r[0] for r in perf["tables"]["targets_vs_roofline"]["rows"]] == [
        "single image (batch 1)", "batch of 8"]
    assert len(report["checks"]["memory"]["series"]["rss_mb"]) == SMALL.leak_iterations
    assert report["checks"]["profile"]["tables"]["top_layers"]["rows"]
    # reports are written atomically; the HTML embeds the three plots
    write_json_report(tmp_path / "r.json", report)
    write_html_report(tmp_path / "r.html", report)
    assert schema_errors(json.loads((tmp_path / "r.json").read_text())) == []
    page = (tmp_path / "r.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html", "r.json"]


class SlowUnfused(Healthy):
    """Its BatchNorm sleeps 30 ms per call: slow as given, fast once BN is folded into the conv
    (as ExtractWorker.prepare does with fuse_bn)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature_extractor.bn.register_forward_pre_hook(lambda *_: time.sleep(0.03))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_performance_verdict_is_on_the_extractor_as_configured(precision):
    """The seed targets are judged on the backbone as `extract` builds it (here: BN fused,
    channels-last, the configured precision) + the head; the model as given is information."""
    from pipeline.extract.spec import ExtractConfig

    model = SlowUnfused()
    ecfg = ExtractConfig(weights="random:0", image_size=32, threads=1, precision=precision)
    cfg = dataclasses.replace(SMALL, checks=("performance",), target_single_ms=25.0)
    report = run_validation(model, cfg, extractor=ecfg)
    perf = report["checks"]["performance"]
    assert failed(report) == set(), perf["failures"]
    fig = perf["figures"]
    assert fig["verdict_path"].startswith(f"extractor as configured: {precision}, channels_last, "
                                          "fused BN")
    assert fig["verdict_precision"] == precision
    assert fig["plain_single_image_ms"] >= 30.0 > 25.0 > fig["single_image_ms"]
    rows = perf["tables"]["product_ms"]["rows"]
    other = "fp32" if precision == "bf16" else "bf16"
    assert {(r[0].split(": ")[1].split(",")[0], r[1]) for r in rows} == {
        (precision, "verdict"), (other, "information")}
    # the model itself is untouched: BN still there, weights NCHW fp32
    conv = model.feature_extractor.conv.weight
    assert conv.dtype == torch.float32 and conv.is_contiguous()
    assert isinstance(model.feature_extractor.bn, nn.BatchNorm2d)
    # each target is also stated as a share of the machine's roofline, consistently
    roof = fig["roofline"]
    assert roof["gflop_per_image"] > 0 and min(roof["peak_gflops"].values()) > 0
    cols = perf["tables"]["targets_vs_roofline"]["columns"]
    single = dict(zip(cols, perf["tables"]["targets_vs_roofline"]["rows"][0], strict=True))
    assert single["target img/s"] == pytest.approx(1000.0 / 25.0)
    assert single["target / fp32 roofline"] == pytest.approx(
        40.0 * roof["gflop_per_image"] / roof["peak_gflops"]["fp32"], rel=1e-2, abs=1e-3)
    assert single["measured img/s"] == pytest.approx(1000.0 / fig["single_image_ms"], rel=1e-2)


def test_performance_verdict_can_fail_on_the_configured_extractor():
    from pipeline.extract.spec import ExtractConfig

    ecfg = ExtractConfig(weights="random:0", image_size=32, threads=1, fuse_bn=False)
    cfg = dataclasses.replace(SMALL, checks=("performance",), target_single_ms=25.0,
                              perf_fast_path=False)
    report = run_validation(SlowUnfused(), cfg, extractor=ecfg)  # BN unfused: still slow
    assert failed(report) == {"performance"}
    msg = report["checks"]["performance"]["failures"][0]
    assert msg.startswith("single image (batch 1)") and "BN unfused" in msg
    assert [r[1] for r in report["checks"]["performance"]["tables"]["product_ms"]["rows"]] == [
        "verdict", "verdict"]


@pytest.mark.parametrize(("model_cls", "check", "message"), [
    (BrokenShape, "dimensions", "predictions (1,) != (1, 1)"),
    (CutGradient, "gradients", "predictor.l1.weight got no gradient"),
    (Leaky, "memory", "a leak"),
    (NaNOnFlat, "stability", "zeros input gives non-finite"),
    (SwallowsNaN, "stability", "NAN input was silently scored"),
])
def test_each_broken_model_fails_exactly_its_check(model_cls, check, message):
    report = run_validation(model_cls(), dataclasses.replace(SMALL, checks=BREAKABLE))
    assert failed(report) == {check}, {n: c["failures"] for n, c in report["checks"].items()}
    assert any(message in f for f in report["checks"][check]["failures"])
    assert report["passed"] is False
    assert schema_errors(json.loads(json.dumps(report))) == []


class PredictionOnly(Healthy):
    """Breaks the interface: returns the prediction alone."""

    def forward(self, x):
        return super().forward(x)[0]


def test_interface_break_fails_every_model_check_without_crashing():
    report = run_validation(PredictionOnly(), dataclasses.replace(SMALL, checks=BREAKABLE))
    assert failed(report) == set(BREAKABLE)
    assert all("must return (prediction, features)" in c["failures"][0]
               for c in report["checks"].values())


def test_gradient_thresholds_and_performance_targets_can_fail():
    cfg = dataclasses.replace(SMALL, checks=("gradients", "performance"), explode_threshold=1e-9,
                              target_single_ms=1e-6, target_head_ms=1e-6)
    report = run_validation(Healthy(), cfg)
    assert failed(report) == {"gradients", "performance"}
    assert any("exploding" == r[2] for r in
               report["checks"]["gradients"]["tables"]["grad_norms"]["rows"])
    assert any(f.startswith("single image (batch 1)")
               for f in report["checks"]["performance"]["failures"])


def test_memory_limit_can_fail_and_fails_only_memory():
    """A healthy model over a (near-zero) inference footprint limit: memory fails, alone."""
    cfg = dataclasses.replace(SMALL, checks=BREAKABLE, inference_rss_limit_mb=1e-9)
    report = run_validation(Healthy(), cfg)
    assert failed(report) == {"memory"}, {n: c["failures"] for n, c in report["checks"].items()}
    fails = report["checks"]["memory"]["failures"]
    assert len(fails) == 1 and fails[0].startswith("inference footprint")
    assert fails[0].endswith("> 0 MiB")
    assert schema_errors(json.loads(json.dumps(report))) == []


def test_validation_leaves_model_state_and_mode_unchanged():
    model = Healthy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    run_validation(model, dataclasses.replace(SMALL, checks=("gradients", "memory")))
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats restored


def _images(tmp_path, n=4):
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = np.full((40, 40, 3), 255, np.uint8)
        img[8:32, 8:32] = rng.integers(0, 255, 3)  # a flat "logo" square
        paths.append(tmp_path / f"logo{i}.png")
        Image.fromarray(img).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return [*paths, tmp_path / "broken.png"]


def _labeled(n=120):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = (1 / (1 + np.exp(-x[:, 0]))).astype(np.float32)
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    return LabeledFeatures(x=x, y=y, keys=keys)


def test_robustness_and_comparison(tmp_path):
    cfg = dataclasses.replace(SMALL, checks=("robustness", "comparison"))
    report = run_validation(Healthy(), cfg, images=_images(tmp_path), labeled=_labeled())
    rob, comp = report["checks"]["robustness"], report["checks"]["comparison"]
    assert rob["status"] == "pass" and rob["figures"]["images"] == 4
    assert len(rob["figures"]["unreadable"]) == 1  # the broken file is a note, not a crash
    assert [r[0] for r in rob["tables"]["shifts"]["rows"]] == [
        "gaussian noise σ=12.75", "jpeg q=75", "resize x0.9", "resize x1.1"]
    assert comp["status"] == "pass"
    rows = comp["tables"]["heads"]["rows"]
    assert [r[0] for r in rows] == ["[32, 16]", "[8]"]
    assert rows[0][1] > rows[1][1]  # parameter counts differ with the hidden layers
    assert schema_errors(json.loads(json.dumps(report))) == []
    # a saturated model (every score 1.0) cannot show a shift: flagged, not passed
    saturated = run_validation(Saturated(), dataclasses.replace(cfg, checks=("robustness",)),
                               images=_images(tmp_path))
    assert any("saturated" in f for f in saturated["checks"]["robustness"]["failures"])
    # a zero shift limit makes the robustness check fail, nothing else
    strict = dataclasses.replace(cfg, robust_shift_limit=0.0, checks=("robustness",))
    assert failed(run_validation(Healthy(), strict, images=_images(tmp_path))) == {"robustness"}


def test_comparison_fails_on_non_finite_cached_vectors():
    """What the comparison can catch: cached vectors with NaN (a damaged store namespace) make
    every head's validation error non-finite; that is a failure, with no 'best' head."""
    good = _labeled()
    x = good.x.copy()
    x[::2, 3] = np.nan  # half the rows carry one NaN feature
    cfg = dataclasses.replace(SMALL, checks=("comparison",))
    report = run_validation(Healthy(), cfg,
                            labeled=LabeledFeatures(x=x, y=good.y, keys=good.keys))
    comp = report["checks"]["comparison"]
    assert comp["status"] == "fail" and report["passed"] is False
    assert len(comp["failures"]) == len(cfg.compare_heads)
    assert all("non-finite validation error" in f for f in comp["failures"])
    assert [r[-1] for r in comp["tables"]["heads"]["rows"]] == ["fail", "fail"]
    assert comp["figures"]["best_by_val_mae"] is None
    assert schema_errors(json.loads(json.dumps(report))) == []


def test_data_checks_skip_without_data():
    cfg = dataclasses.replace(SMALL, checks=("robustness", "comparison"))
    report = run_validation(Healthy(), cfg)
    assert {c["status"] for c in report["checks"].values()} == {"skip"}
    assert report["passed"]


def test_schema_rejects_malformed_reports():
    report = json.loads(json.dumps(run_validation(Healthy(), dataclasses.replace(
        SMALL, checks=("dimensions",)))))
    assert schema_errors(report) == []
    assert load_schema()["properties"]["schema_version"]["enum"] == [2]
    bad = json.loads(json.dumps(report))
    del bad["checks"]["dimensions"]["figures"]
    assert any("missing required key 'figures'" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(report))
    bad["checks"]["dimensions"]["status"] = "ok"
    assert any("not one of" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(report))
    bad["checks"]["dimensions"]["tables"]["shapes"]["rows"][0].pop()
    assert any("cells for" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(report))
    bad["passed"] = False
    assert any("passed disagrees" in e for e in schema_errors(bad))
    bad = json.loads(json.dumps(report))
    bad["checks"]["colour"] = bad["checks"]["dimensions"]
    assert schema_errors(bad)
    bad = json.loads(json.dumps(report))
    bad["counts"]["pass"] = True  # a boolean is not an integer
    assert any("expected integer" in e for e in schema_errors(bad))


def test_non_finite_figures_are_written_as_strict_json(tmp_path):
    report = run_validation(Healthy(), dataclasses.replace(SMALL, checks=("dimensions",)))
    report["checks"]["dimensions"]["series"]["x"] = [float("inf"), float("nan"), 1.0]
    path = write_json_report(tmp_path / "r.json", report)
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["checks"]["dimensions"]["series"]["x"] == ["inf", "nan", 1.0]
    assert schema_errors(data) == []


def _fake_loader(model_cls):
    def load(checkpoint, extract_config=None, overrides=None):
        from pipeline.extract.spec import ExtractConfig

        return (model_cls(), ExtractConfig(features=("resnet50",), weights="random:0",
                                           image_size=32), None, "fake")
    return load


@pytest.mark.parametrize(("model_cls", "code"), [(Healthy, 0), (CutGradient, 1)])
def test_cli_exit_code_and_reports(tmp_path, monkeypatch, model_cls, code):
    import pipeline.validate.runner as validate_mod
    from pipeline.cli import cli

    monkeypatch.setattr(validate_mod, "load_model", _fake_loader(model_cls))
    cfg = tmp_path / "validate.json"
    cfg.write_text(json.dumps({**{k: v for k, v in dataclasses.asdict(SMALL).items()
                                  if k != "checks"}}))
    args = ["validate", "--config", str(cfg), "--checks", "dimensions,gradients",
            "--no-progress", "--json", str(tmp_path / "r.json"), "--html",
            str(tmp_path / "r.html")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert ("FAILED" in result.output) == bool(code)
    data = json.loads((tmp_path / "r.json").read_text())
    assert schema_errors(data) == [] and set(data["checks"]) == {"dimensions", "gradients"}
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")
    out = CliRunner().invoke(cli, [*args[:6], "--no-progress", "--json", "-"])
    assert out.exit_code == code and json.loads(out.stdout)["passed"] is (code == 0)


def test_cli_store_and_labels_feed_robustness_and_comparison(tmp_path, monkeypatch):
    """--store --labels: labelled images drive robustness; their cached vectors the comparison."""
    import pipeline.validate.runner as validate_mod
    from pipeline.cli import cli
    from pipeline.extract.spec import ExtractConfig, feature_spec
    from store.hdf5 import FeatureStore
    from store.keys import content_key, fingerprint

    monkeypatch.setattr(validate_mod, "load_model", _fake_loader(Healthy))
    images = [tmp_path / f"img{i}.png" for i in range(30)]
    rng = np.random.default_rng(1)
    for p in images:
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(p)
    (tmp_path / "labels.csv").write_text(
        "path,ssim\n" + "".join(f"{p.name},{rng.uniform(0.3, 1):.4f}\n" for p in images))
    spec = feature_spec(ExtractConfig(weights="random:0", image_size=32))
    with FeatureStore(tmp_path / "f.h5", mode="a") as fs:
        ns = fs.namespace(fingerprint(spec), spec=spec, dim=D)
        ns.put_many([content_key(p) for p in images],
                    rng.normal(size=(len(images), D)).astype(np.float32))
    cfg = tmp_path / "validate.json"
    cfg.write_text(json.dumps({"image_size": 32, "feature_dim": D, "compare_heads": [[8]],
                               "compare_epochs": 3, "robust_max_images": 4}))
    result = CliRunner().invoke(cli, [
        "validate", "--config", str(cfg), "--checks", "robustness,comparison", "--store",
        str(tmp_path / "f.h5"), "--labels", str(tmp_path / "labels.csv"), "--cached-only",
        "--no-progress", "--json", "-"])
    assert result.exit_code == 0, result.output
    checks = json.loads(result.stdout)["checks"]
    assert checks["robustness"]["figures"]["images"] == 4
    assert sum(checks["comparison"]["figures"]["rows"].values()) == 30


def test_cli_usage_errors(tmp_path):
    from pipeline.cli import cli

    bad = CliRunner().invoke(cli, ["validate", "--checks", "dimensions,colour"])
    assert bad.exit_code == 2 and "unknown check(s) ['colour']" in bad.output
    half = CliRunner().invoke(cli, ["validate", "--store", str(tmp_path / "f.h5")])
    assert half.exit_code == 1 and "--store needs --labels" in half.output


@pytest.mark.slow
def test_real_resnet50_smoke():
    """The real model (random:0 weights) through the model checks that matter most."""
    from pipeline.export.model import QualityPredictionModel

    model = QualityPredictionModel({"weights": "random:0"})
    cfg = ValidateConfig(checks=("dimensions", "gradients"), batch_sizes=(1, 2),
                         extra_sizes=(), grad_batch=2)
    report = run_validation(model, cfg)
    assert failed(report) == set(), {n: c["failures"] for n, c in report["checks"].items()}
    g = report["checks"]["gradients"]["figures"]
    assert g["params_frozen"] > 23_000_000 and g["params_trainable"] > 2_000_000


def test_validate_a_statistics_head_checkpoint(tmp_path):
    """A checkpoint whose head reads imstats (the default) validates: the model computes the
    statistics from its input images, and the dimension check expects the head's width."""
    from pipeline.cli import cli
    from pipeline.extract import imstats
    from tests.stage_two_fixtures import trained_setup

    setup = trained_setup(tmp_path, n=24, features=("imstats",))
    cfg = tmp_path / "validate.json"
    cfg.write_text(json.dumps({"image_size": 32, "batch_sizes": [1, 3], "extra_sizes": [],
                               "robust_max_images": 4, "stability_repeats": 1}))
    res = CliRunner().invoke(cli, ["validate", "--checkpoint", str(setup["ckpt"]), "--config",
                                   str(cfg), "--checks", "dimensions,stability,robustness",
                                   "--labels", str(setup["csv"]), "--no-progress",
                                   "--json", "-"])
    assert res.exit_code in (0, 1), res.output  # a verdict, not a crash
    report = json.loads(res.stdout)
    assert report["checks"]["dimensions"]["status"] == "pass", report["checks"]["dimensions"]
    assert "imstats" in report["model"]["source"]
    assert report["model"]["params"]["total"] > 0 and imstats.DIM > 0


def test_performance_verdict_of_a_statistics_head_times_the_statistics_and_head(tmp_path):
    """An imstats head's product path is numpy statistics per image + the head (no backbone,
    no BN fusion of a numpy module): the performance check runs and says so."""
    from pipeline.cli import cli
    from tests.stage_two_fixtures import trained_setup

    setup = trained_setup(tmp_path, n=24, features=("imstats",))
    cfg = tmp_path / "validate.json"
    cfg.write_text(json.dumps({"image_size": 32, "batch_sizes": [1, 8], "extra_sizes": [],
                               "latency_repeats": 2, "roofline_matmul_size": 64,
                               "roofline_repeats": 1}))
    res = CliRunner().invoke(cli, ["validate", "--checkpoint", str(setup["ckpt"]), "--config",
                                   str(cfg), "--checks", "performance", "--no-progress",
                                   "--json", "-"])
    assert res.exit_code in (0, 1), res.output
    perf = json.loads(res.stdout)["checks"]["performance"]
    assert "error" not in json.dumps(perf["failures"]).lower(), perf["failures"]
    assert perf["figures"]["verdict_path"].startswith("blocks imstats: imstats in numpy")
    assert perf["figures"]["single_image_ms"] > 0
    # no backbone: no other precision to show beside the verdict
    assert {r[1] for r in perf["tables"]["product_ms"]["rows"]} == {"verdict"}


def test_full_export_of_a_statistics_head_is_refused_with_directions(tmp_path):
    from pipeline.cli import cli
    from tests.stage_two_fixtures import trained_setup

    setup = trained_setup(tmp_path, n=24, features=("imstats",))
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(setup["ckpt"]), "--format",
                                   "torchscript", "--full", "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 1 and "drop --full" in res.output
    res = CliRunner().invoke(cli, ["export", "--checkpoint", str(setup["ckpt"]), "--format",
                                   "torchscript", "--out", str(tmp_path / "h.pt")])
    assert res.exit_code == 0, res.output
