import math

import pytest

from core.select import best_index, choose_on_val, control_accuracy, normalized_accuracy, summarize


def test_normalized_and_control_accuracy():
    acc = {"a": 0.5, "b": 0.6, "c": 0.2}
    ft = {"a": 1.0, "b": 0.8, "c": 0.4}
    assert normalized_accuracy(acc, ft) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    c = control_accuracy(acc, "a", {"a": 0.3, "b": 0.6, "c": 0.4})
    assert c["control"] == pytest.approx(0.4) and c["control_normalized"] == pytest.approx(0.75)
    assert math.isnan(control_accuracy(acc, "a")["control_normalized"])


def test_summarize_leaves_out_tasks_without_a_finetuned_reference():
    s = summarize({"a": 0.5, "b": 0.4}, {"a": 1.0, "b": float("nan")})
    assert s["avg_abs"] == pytest.approx(0.45) and s["avg_norm"] == pytest.approx(0.5)


def test_best_index_first_of_ties_and_nan():
    assert best_index([0.1, 0.3, 0.3, 0.2]) == 1
    assert best_index([float("nan"), 0.2]) == 1
    assert best_index([float("nan")]) is None


def test_choose_on_val_uses_normalized_val_and_evaluates_only_the_winner_on_test():
    ft_val = {"easy": 1.0, "hard": 0.5}
    # candidate 0 wins on absolute accuracy (0.75 vs 0.7) but 1 wins normalized (0.85 vs 0.9 ... see below)
    val = {0: {"easy": 1.0, "hard": 0.5}, 1: {"easy": 0.9, "hard": 0.5}, 2: {"easy": 0.6, "hard": 0.8}}
    tested = []

    def on_test(c):
        tested.append(c)
        return {"easy": 0.5, "hard": 0.25}

    sel = choose_on_val([0, 1, 2], val.__getitem__, ft_val, evaluate_test=on_test, finetuned_test=ft_val)
    # normalized: c0 (1 + 1)/2 = 1.0, c1 (0.9 + 1)/2 = 0.95, c2 (0.6 + 1.6)/2 = 1.1; absolute: c0 0.75 > c2 0.7
    assert sel.index == 2 and sel.candidate == 2 and tested == [2]
    assert sel.val_score == pytest.approx(1.1)
    assert sel.test["avg_norm"] == pytest.approx(0.5)
    assert choose_on_val([0, 1, 2], val.__getitem__, ft_val, score="avg_abs").index == 0
    with pytest.raises(ValueError):
        choose_on_val([0], val.__getitem__, ft_val, score="test")
