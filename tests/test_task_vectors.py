import math

import pytest
import torch

from core.task_vectors import (
    apply_task_vector,
    block_table,
    cosine_matrix,
    kind_table,
    parameter_table,
    sign_conflict_table,
    task_vector,
)


def _base():
    return {
        "visual.conv1.weight": torch.ones(2, 3, 1, 1),
        "visual.transformer.resblocks.0.attn.in_proj_weight": torch.ones(6, 2),
        "visual.transformer.resblocks.1.mlp.c_fc.weight": torch.full((4, 2), 2.0),
        "visual.transformer.resblocks.1.ln_1.weight": torch.ones(2),
        "visual.step": torch.tensor(5, dtype=torch.int64),
    }


def test_task_vector_skips_integer_buffers_and_inverts_apply():
    base = _base()
    ft = {k: (v + 0.5 if v.is_floating_point() else v) for k, v in base.items()}
    tv = task_vector(base, ft)
    assert "visual.step" not in tv
    assert all(torch.all(v == 0.5) for v in tv.values())
    back = apply_task_vector(base, tv)
    assert all(torch.equal(back[k], ft[k]) for k in ft)


def test_task_vector_errors_name_the_key():
    base = _base()
    with pytest.raises(KeyError, match="visual.extra"):
        task_vector(base, {"visual.extra": torch.ones(1)})
    with pytest.raises(ValueError, match="visual.conv1.weight"):
        task_vector(base, {"visual.conv1.weight": torch.ones(3)})


def test_half_precision_is_upcast():
    base = {"w": torch.ones(3, dtype=torch.float16)}
    ft = {"w": torch.full((3,), 1.5, dtype=torch.float16)}
    assert task_vector(base, ft)["w"].dtype == torch.float32


def test_parameter_and_block_tables_hold_norms():
    base = _base()
    tv = {"a": task_vector(base, {k: v + 1.0 for k, v in base.items() if v.is_floating_point()})}
    p = parameter_table(base, tv)
    row = p[p.name == "visual.transformer.resblocks.1.mlp.c_fc.weight"].iloc[0]
    assert row.norm == pytest.approx(math.sqrt(8)) and row.relative_norm == pytest.approx(0.5)
    assert row.layer == 1 and row.kind == "mlp"
    b = block_table(base, tv)
    blk1 = b[(b.task == "a") & (b.layer == 1)].iloc[0]
    assert blk1.norm == pytest.approx(math.sqrt(8 + 2))  # c_fc (8 entries) + ln_1 (2 entries)
    assert set(b.layer) == {-1, 0, 1}
    k = kind_table(base, tv)
    assert set(k.kind) >= {"attention", "mlp", "norm", "embedding"}


def test_cosine_matrix_global_and_per_block():
    base = {"visual.transformer.resblocks.0.w": torch.zeros(2), "visual.transformer.resblocks.1.w": torch.zeros(2)}
    tvs = {
        "a": {
            "visual.transformer.resblocks.0.w": torch.tensor([1.0, 0.0]),
            "visual.transformer.resblocks.1.w": torch.tensor([1.0, 0.0]),
        },
        "b": {
            "visual.transformer.resblocks.0.w": torch.tensor([0.0, 1.0]),
            "visual.transformer.resblocks.1.w": torch.tensor([1.0, 0.0]),
        },
    }
    g = cosine_matrix(tvs)
    assert g.loc["a", "a"] == pytest.approx(1.0) and g.loc["a", "b"] == pytest.approx(0.5)
    assert cosine_matrix(tvs, layer=0).loc["a", "b"] == pytest.approx(0.0)
    assert cosine_matrix(tvs, layer=1).loc["a", "b"] == pytest.approx(1.0)
    del base


def test_sign_conflicts_per_block():
    tvs = {
        "a": {"visual.transformer.resblocks.0.w": torch.tensor([1.0, 1.0, 0.0, -1.0])},
        "b": {"visual.transformer.resblocks.0.w": torch.tensor([-1.0, 1.0, 0.0, -1.0])},
    }
    t = sign_conflict_table(tvs)
    row = t[t.layer == 0].iloc[0]
    assert row.conflict_fraction == pytest.approx(0.25)
    assert row.pairwise_conflict == pytest.approx(0.25)
