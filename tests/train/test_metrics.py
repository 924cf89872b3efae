"""Tests of the metrics against scipy/numpy reference formulas on known arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.train.metrics import METRIC_KEYS, compute_metrics, metrics_report, rankdata

TRUE = np.array([0.95, 0.80, 0.80, 0.60, 0.99, 0.70, 0.80, 0.50, 0.90, 0.65])
PRED = np.array([0.93, 0.85, 0.78, 0.62, 0.97, 0.85, 0.85, 0.40, 0.91, 0.66])  # ties in both


def test_rankdata_average_ties():
    a = np.array([3, 1, 2, 2, 5, 3, 3, 0.5])
    assert np.array_equal(rankdata(a), stats.rankdata(a))


def test_metrics_equal_reference_formulas():
    m = compute_metrics(TRUE, PRED)
    err = PRED - TRUE
    assert m["n"] == 10
    assert m["mae"] == pytest.approx(np.mean(np.abs(err)))
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)))
    assert m["plcc"] == pytest.approx(stats.pearsonr(PRED, TRUE).statistic)
    assert m["srcc"] == pytest.approx(stats.spearmanr(PRED, TRUE).statistic)
    r2 = 1 - np.sum(err ** 2) / np.sum((TRUE - TRUE.mean()) ** 2)
    assert m["r2"] == pytest.approx(r2)
    assert m["within_0.05"] == pytest.approx(np.mean(np.abs(err) <= 0.05))
    assert m["within_0.1"] == pytest.approx(np.mean(np.abs(err) <= 0.1))
    # hand-checked: |err| = .02 .05 .02 .02 .02 .15 .05 .10 .01 .01
    assert m["within_0.05"] == pytest.approx(0.8)
    assert m["within_0.1"] == pytest.approx(0.9)


def test_undefined_values_are_none():
    m = compute_metrics([0.5, 0.5, 0.5], [0.4, 0.6, 0.5])
    assert m["r2"] is None and m["plcc"] is None and m["srcc"] is None
    assert compute_metrics([], [])["n"] == 0
    with pytest.raises(ValueError):
        compute_metrics([1, 2], [1])


def test_report_shape_and_per_family():
    fam = ["a"] * 5 + ["b"] * 4 + [None]
    rep = metrics_report(TRUE, PRED, fam)
    assert list(rep) == [*METRIC_KEYS, "per_family"]
    assert set(rep["per_family"]) == {"a", "b"}
    assert rep["per_family"]["a"] == compute_metrics(TRUE[:5], PRED[:5])
    assert rep["per_family"]["b"]["n"] == 4
    assert metrics_report(TRUE, PRED)["per_family"] == {}


def test_size_buckets_come_in_size_order_and_carry_the_bias():
    from pipeline.train.metrics import by_size

    # one image per bucket, given largest first; '<160' and '160-223' once tied in the sort
    sizes = [1024, 700, 500, 400, 300, 200, 128]
    rows = by_size(sizes, TRUE[:7], PRED[:7])
    assert list(rows) == ["<160", "160-223", "224-319", "320-447", "448-639", "640-895", "896+"]
    assert rows["<160"]["bias"] == pytest.approx(PRED[6] - TRUE[6])
    assert rows["896+"]["bias"] == pytest.approx(PRED[0] - TRUE[0])
