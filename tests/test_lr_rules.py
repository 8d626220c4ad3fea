import numpy as np
import pandas as pd
import pytest

from core.lr_rules import block_mean_alphas, model_balancing_multipliers, tempbalance_multipliers


def test_tempbalance_endpoints_are_s1_and_s2():
    m = tempbalance_multipliers([3.0, 2.0, 5.0, 4.0], s1=0.5, s2=1.5)
    assert m[1] == pytest.approx(0.5)  # α_min
    assert m[2] == pytest.approx(1.5)  # α_max
    assert m[0] == pytest.approx(0.5 + 1.0 * (3 - 2) / 3)


def test_tempbalance_is_monotone_in_alpha():
    alphas = np.array([2.2, 6.0, 3.1, 4.4, 2.9])
    m = tempbalance_multipliers(alphas, s1=0.3, s2=2.0)
    order = np.argsort(alphas)
    assert np.all(np.diff(m[order]) > 0)


def test_tempbalance_equal_alphas_give_one_and_nan_is_neutral():
    assert np.allclose(tempbalance_multipliers([3.0, 3.0, 3.0]), 1.0)
    m = tempbalance_multipliers([2.0, np.nan, 4.0])
    assert m.tolist() == pytest.approx([0.5, 1.0, 1.5])


def test_tempbalance_keeps_series_index():
    s = pd.Series([2.0, 4.0], index=["a", "b"])
    m = tempbalance_multipliers(s)
    assert list(m.index) == ["a", "b"] and m["b"] == pytest.approx(1.5)


def test_model_balancing_is_one_at_the_mean_and_monotone():
    alphas = np.array([2.0, 3.0, 4.0])
    m = model_balancing_multipliers(alphas, s=1.25, T=10)
    assert m[1] == pytest.approx(1.0)
    assert m[0] < 1.0 < m[2]
    # f_b = s·(σ(T d) − ½): for d = 1, σ(10) ≈ 0.99995
    assert np.log10(m[2]) == pytest.approx(1.25 * (1 / (1 + np.exp(-10.0)) - 0.5))


def test_model_balancing_is_bounded_by_s():
    m = model_balancing_multipliers([0.0, 100.0], s=0.25)
    assert m.min() == pytest.approx(10**-0.125) and m.max() == pytest.approx(10**0.125)


def test_block_mean_alphas_drops_rows_outside_blocks():
    t = pd.DataFrame({"layer": [0, 0, 1, None], "alpha": [2.0, 4.0, 5.0, 9.0]})
    assert block_mean_alphas(t).to_dict() == {0: 3.0, 1: 5.0}
