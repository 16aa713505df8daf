"""The report's arithmetic against hand-computed values."""

from __future__ import annotations

import math

import pytest

from aenode.evaluate.metrics import Case, calibration, confusion, kappa, split, summarise, wilson


def test_wilson_interval():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_kappa_unweighted_and_linear():
    assert kappa([[20, 5], [10, 15]]) == pytest.approx(0.4)
    m = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert kappa(m, "linear") == pytest.approx(5 / 7)
    assert kappa(m) == pytest.approx((0.75 - 0.3125) / (1 - 0.3125))
    assert kappa([[3, 0], [0, 2]]) == 1.0
    assert math.isnan(kappa([[0, 0], [0, 0]]))


def test_ece_and_reliability_bins():
    cases = [Case("a", "x", "x", {"x": 0.9, "y": 0.1}), Case("b", "x", "x", {"x": 0.9, "y": 0.1}),
             Case("c", "x", "x", {"x": 0.6, "y": 0.4}), Case("d", "y", "x", {"x": 0.6, "y": 0.4})]
    ece, bins = calibration(cases)
    assert ece == pytest.approx(0.1)
    assert [b["n"] for b in bins] == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]


def test_summary_per_class_and_split():
    classes = ["typical", "negative"]
    cases = [Case("1", "typical", "typical", {"typical": 0.8, "negative": 0.2}, scanner_model="A", slice_thickness_mm=1.0),
             Case("2", "typical", "negative", {"typical": 0.4, "negative": 0.6}, scanner_model="A", slice_thickness_mm=2.5),
             Case("3", "negative", "negative", {"typical": 0.1, "negative": 0.9}, scanner_model="B",
                  slice_thickness_mm=2.5, out_of_domain=True),
             Case("4", "negative", None, {})]
    s = summarise(cases, classes)
    assert s["n"] == 3 and s["not_scored"] == 1
    assert s["confusion"] == confusion(["typical", "typical", "negative"], ["typical", "negative", "negative"], classes)
    assert s["confusion"] == [[1, 1], [0, 1]]
    assert s["accuracy"] == pytest.approx(2 / 3)
    typical = s["per_class"]["typical"]
    assert typical["sensitivity"] == 0.5 and typical["specificity"] == 1.0
    assert typical["sensitivity_ci95"] == pytest.approx(list(wilson(1, 2)))
    assert s["out_of_domain_rate"] == 0.25
    by = split(cases, classes)
    assert by["scanner_model"]["A"]["n"] == 2 and by["scanner_model"]["B"]["accuracy"] == 1.0
    assert set(by["slice_thickness"]) == {"<= 1.5 mm", "1.5-3 mm", "unknown"}
