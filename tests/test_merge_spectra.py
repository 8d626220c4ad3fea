"""The merge-spectra tables on hand-built task vectors whose singular values and subspaces are known."""

from __future__ import annotations

import math

import pytest
import torch

from core.merge_spectra import (
    effective_rank,
    interference_matrix,
    interference_profile,
    interference_table,
    matrix_keys,
    rank_table,
    singular_values_table,
)
from core.merging import merged_direction

K0 = "visual.transformer.resblocks.0.mlp.c_fc.weight"
K1 = "visual.transformer.resblocks.1.attn.out_proj.weight"


def diag(*v):
    return torch.diag(torch.tensor(v))


def tvs():
    # top-2 left/right subspaces: a = span(e1, e2), b = span(e3, e4), c = span(e1, e3)
    return {
        "a": {K0: diag(2.0, 1.0, 0.0, 0.0), K1: diag(2.0, 1.0, 0.0, 0.0), "visual.ln_post.weight": torch.ones(4)},
        "b": {K0: diag(0.0, 0.0, 2.0, 1.0), K1: diag(2.0, 1.0, 0.0, 0.0), "visual.ln_post.weight": torch.ones(4)},
        "c": {K0: diag(2.0, 0.0, 1.0, 0.0), K1: diag(2.0, 1.0, 0.0, 0.0), "visual.ln_post.weight": torch.ones(4)},
    }


def test_matrix_keys_are_the_2d_tensors():
    assert matrix_keys(tvs()) == [K0, K1]
    with pytest.raises(ValueError, match="no task vectors"):
        matrix_keys({})


def test_singular_values_of_each_task_and_of_the_merged_direction(tmp_path):
    t = tvs()
    base = {k: torch.zeros_like(v) for k, v in t["a"].items()}
    d = merged_direction(base, t, "task_arithmetic")
    df = singular_values_table(t, K0, d.vector, merged_scale=0.5)
    assert list(df["source"].unique()) == ["a", "b", "c", "merged"]
    a = df[df["source"] == "a"]
    assert a["singular_value"].tolist() == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert a["energy"].tolist() == pytest.approx([0.8, 0.2, 0.0, 0.0])
    assert a["index"].tolist() == [1, 2, 3, 4] and set(df["layer"]) == {0}
    # sum of the three = diag(4, 1, 3, 1), times 0.5
    merged = df[df["source"] == "merged"]["singular_value"].tolist()
    assert merged == pytest.approx([2.0, 1.5, 0.5, 0.5])
    df.to_csv(tmp_path / "sv.csv", index=False)
    with pytest.raises(ValueError, match="not a matrix"):
        singular_values_table(t, "visual.ln_post.weight")
    with pytest.raises(KeyError, match="no parameter 'nope'"):
        singular_values_table(t, "nope")


def test_interference_between_known_subspaces():
    table = interference_table(tvs(), sv_reduction=0.5)  # k = 2 of 4
    m = interference_matrix(table, key=K0)
    assert list(m.index) == ["a", "b", "c"] and list(m.columns) == ["a", "b", "c"]
    assert m.loc["a", "a"] == pytest.approx(1.0)
    assert m.loc["a", "b"] == pytest.approx(0.0, abs=1e-12)  # orthogonal subspaces
    assert m.loc["a", "c"] == pytest.approx(1 / math.sqrt(2))  # share e1 of two directions
    spec = interference_matrix(table, key=K0, value="spectral_u")
    assert spec.loc["a", "c"] == pytest.approx(1.0) and spec.loc["b", "c"] == pytest.approx(1.0)
    # block 1: every task has the same subspace
    assert interference_matrix(table, layer=1).to_numpy() == pytest.approx(1.0)
    prof = interference_profile(table)
    assert prof["layer"].tolist() == [0, 1]
    assert prof.loc[0, "mean"] == pytest.approx((0 + 2 / math.sqrt(2)) / 3)  # pairs ab, ac, bc (each twice)
    assert prof.loc[1, "mean"] == pytest.approx(1.0) and prof["matrices"].tolist() == [1, 1]
    with pytest.raises(ValueError, match="exactly one"):
        interference_matrix(table)
    with pytest.raises(KeyError, match="layer 7"):
        interference_matrix(table, layer=7)


def test_interference_default_k_is_one_over_the_number_of_tasks():
    table = interference_table(tvs())
    assert set(table["k"]) == {int(4 * (1 / 3))}  # = 1
    with pytest.raises(ValueError, match="sv_reduction"):
        interference_table(tvs(), sv_reduction=0)


def test_effective_rank_and_energy_kept():
    assert effective_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert effective_rank(torch.tensor([5.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(3)) == 0.0
    df = rank_table(tvs(), sv_reduction=0.25)  # k = 1
    row = df[(df["task"] == "a") & (df["key"] == K0)].iloc[0]
    assert row["k"] == 1 and row["rows"] == 4 and row["cols"] == 4
    assert row["energy_kept"] == pytest.approx(4 / 5)
    assert row["effective_rank"] == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))
    assert len(df) == 6 and df["layer"].tolist().count(0) == 3
