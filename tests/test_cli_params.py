"""Numeric flags and config keys: NaN, Inf and out-of-range values are usage/config errors (B11)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pipeline.cli import cli

BIG = "99999999999999999999999"


@pytest.fixture()
def files(tmp_path):
    """Dummy inputs: every command below stops at its flags, before reading them."""
    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(b"x")
    (tmp_path / "img.png").write_bytes(b"x")
    return {"ckpt": str(ckpt), "labels": str(tmp_path / "l.csv"), "store": str(tmp_path / "s.h5"),
            "out": str(tmp_path / "o"), "img": str(tmp_path / "img.png"), "dir": tmp_path}


def _train(f):
    return ["train", "--labels", f["labels"], "--store", f["store"], "--out", f["out"]]


def _evaluate(f):
    return ["evaluate", "--labels", f["labels"], "--store", f["store"], "--checkpoint", f["ckpt"]]


def _score(f):
    return ["score", f["img"], "--checkpoint", f["ckpt"], "--store", f["store"]]


def _validate(f):
    return ["validate", "--checkpoint", f["ckpt"], "--checks", "dimensions"]


def _export(f):
    return ["export", "--checkpoint", f["ckpt"], "--format", "onnx", "--out", f["out"]]


# (command builder, extra args, option the usage error must name)
USAGE_CASES = [
    (_train, ["--lr", "nan"], "--lr"), (_train, ["--lr", "inf"], "--lr"),
    (_train, ["--lr", "-1"], "--lr"), (_train, ["--lr", "0"], "--lr"),
    (_train, ["--val-fraction", "nan"], "--val-fraction"),
    (_train, ["--test-fraction", "inf"], "--test-fraction"),
    (_train, ["--seed", BIG], "--seed"), (_train, ["--seed", "-1"], "--seed"),
    (_train, ["--weights", f"random:{BIG}"], "--weights"),
    (_train, ["--image-size", "100000"], "--image-size"),
    (_evaluate, ["--weights", f"random:{BIG}"], "--weights"),
    (_evaluate, ["--image-size", "0"], "--image-size"),
    (_score, ["--uncertainty", "99999999999"], "--uncertainty"),
    (_score, ["--uncertainty", "1001"], "--uncertainty"),
    (_score, ["--uncertainty", "1"], "--uncertainty"),
    (_score, ["--seed", BIG], "--seed"),
    (_validate, ["--weights", f"random:{BIG}"], "--weights"),
    (_validate, ["--leak-iterations", BIG], "--leak-iterations"),
    (_export, ["--image-size", "1000000000"], "--image-size"),
]


@pytest.mark.parametrize("build,extra,option", USAGE_CASES,
                         ids=[f"{b.__name__[1:]}{' '.join(e)}" for b, e, _ in USAGE_CASES])
def test_bad_numbers_are_usage_errors_naming_the_option(files, build, extra, option):
    res = CliRunner().invoke(cli, [*build(files), *extra], catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{option}'" in res.output, res.output


def test_in_range_values_still_parse(files):
    """The bounds are inclusive where documented: seed 2**64-1, uncertainty 2 and 1000."""
    from pipeline.cli.params import MAX_SEED, UNCERTAINTY

    assert MAX_SEED == 2**64 - 1 and (UNCERTAINTY.min, UNCERTAINTY.max) == (2, 1000)
    for extra in (["--seed", str(2**64 - 1)], ["--uncertainty", "1000"]):
        res = CliRunner().invoke(cli, [*_score(files), *extra], catch_exceptions=False)
        assert res.exit_code == 1 and "Error:" in res.output  # got past the flags


# (command builder, config JSON text, message) - configs/*.json go through build_config
CONFIG_CASES = [
    (_train, '{"lr": NaN}', "'lr' must be a finite number"),
    (_train, '{"weight_decay": Infinity}', "'weight_decay' must be a finite number"),
    (_train, '{"dropout": NaN}', "'dropout' must be a finite number"),
    (_train, '{"seed": 1' + "0" * 30 + "}", "does not fit in 64 bits"),
    (_train, '{"seed": -1}', "seed"),
    (_train, '{"threads": 1099511627776}', "threads"),
    (_train, '{"hidden_dims": [10000000]}', "1..1,000,000"),
    (_score, '{"uncertainty_samples": 1000000}', "uncertainty_samples"),
    (_score, '{"seed": -5}', "seed"),
    (_validate, '{"seed": ' + BIG + "}", "does not fit in 64 bits"),
    (_validate, '{"leak_iterations": 1000000000}', "leak_iterations"),
    (_validate, '{"noise_sigma": NaN}', "'noise_sigma' must be a finite number"),
]


@pytest.mark.parametrize("build,body,message", CONFIG_CASES,
                         ids=[f"{b.__name__[1:]}-{m[:20]}" for b, _, m in CONFIG_CASES])
def test_bad_config_numbers_are_errors_naming_the_key(files, build, body, message):
    config = files["dir"] / "config.json"
    config.write_text(body)
    json.loads(body)  # Python's json reads NaN/Infinity literals: the config layer must refuse
    res = CliRunner().invoke(cli, [*build(files), "--config", str(config)],
                             catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error:") and message in res.output, res.output
