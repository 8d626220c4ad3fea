import importlib.util
import math
from pathlib import Path

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


# ------------------------------------------------------------------ per tower (full CLIP)
_spec = importlib.util.spec_from_file_location("full_clip", Path(__file__).parent / "fixtures" / "full_clip.py")
full_clip = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(full_clip)


@pytest.fixture(scope="module")
def full():
    """A full open_clip CLIP base, two fine-tunes moving both towers, and the visual-only views of them."""
    base = full_clip.open_clip_full()
    tvs = {t: task_vector(base, full_clip.fine_tuned(base, seed)) for t, seed in (("a", 1), ("b", 2))}
    vis_base = {k: v for k, v in base.items() if k.startswith("visual.")}
    vis_tvs = {t: {k: v for k, v in tv.items() if k.startswith("visual.")} for t, tv in tvs.items()}
    return base, tvs, vis_base, vis_tvs


def test_visual_tower_tables_of_full_dict_equal_visual_only(full):
    base, tvs, vis_base, vis_tvs = full
    for fn in (block_table, kind_table):
        got, want = fn(base, tvs), fn(vis_base, vis_tvs)
        assert got.equals(want), fn.__name__
        assert fn(base, tvs, tower="visual").equals(want)
    prof = block_table(base, tvs, tower="visual")
    assert sorted(prof["layer"].unique()) == [-1, *range(full_clip.VISION_LAYERS)]
    assert cosine_matrix(tvs).equals(cosine_matrix(vis_tvs))
    assert cosine_matrix(tvs, 0).equals(cosine_matrix(vis_tvs, 0))
    assert sign_conflict_table(tvs).equals(sign_conflict_table(vis_tvs))


def test_no_text_rows_in_visual_blocks(full):
    base, tvs, *_ = full
    p = parameter_table(base, tvs)
    assert p["name"].str.startswith("visual.").all()
    text = parameter_table(base, tvs, tower="text")
    assert not text["name"].str.startswith("visual.").any() and "logit_scale" not in set(text["name"])
    assert set(text.loc[text["layer"].notna(), "name"].str.split(".").str[:2].str.join(".")) == {
        "transformer.resblocks"
    }
    b = block_table(base, tvs, tower="text")
    assert sorted(b["layer"].unique()) == [-1, *range(full_clip.TEXT_LAYERS)]
    # the text table's block 0 is the text tower's own block 0
    sq = sum(float(v.float().norm() ** 2) for k, v in tvs["a"].items() if k.startswith("transformer.resblocks.0."))
    assert b[(b.task == "a") & (b.layer == 0)]["norm"].iloc[0] == pytest.approx(sq**0.5, rel=1e-6)
    assert sorted(sign_conflict_table(tvs, tower="text")["layer"]) == [-1, *range(full_clip.TEXT_LAYERS)]
    assert cosine_matrix(tvs, 1, tower="text").shape == (2, 2)


def test_text_tower_of_a_visual_only_model_is_a_clear_error(full):
    _, _, vis_base, vis_tvs = full
    with pytest.raises(ValueError, match="no text tower"):
        block_table(vis_base, vis_tvs, tower="text")
