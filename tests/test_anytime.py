"""Anytime estimates: Wilson intervals and class-stratified evaluation orders."""

import numpy as np
import pytest

from core.anytime import Estimate, estimates_table, stratified_order, wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert Estimate(7, 20, 20).interval == (0.35, 0.35)  # every image seen: exact


def test_stratified_order_prefixes_keep_class_proportions():
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    order = stratified_order(labels, seed=1)
    assert sorted(order.tolist()) == list(range(100))
    for k in (10, 20, 50):
        counts = np.bincount(labels[order[:k]], minlength=3)
        assert np.all(np.abs(counts - k * np.array([0.6, 0.3, 0.1])) <= 1.0), (k, counts)
    assert not np.array_equal(order, stratified_order(labels, seed=2))


def test_estimates_table_rows():
    rows = estimates_table({"a": Estimate(3, 4, 10)})
    assert rows[0]["task"] == "a" and rows[0]["accuracy"] == 0.75 and rows[0]["low"] < 0.75 < rows[0]["high"]
