import pytest
import torch

from core.layers import layer_index
from core.lines import (
    infer_num_blocks,
    key_scales,
    lines_curve,
    lines_scale,
    multitask_alpha,
    resample_curve,
    scale_by_block,
)
from tests.fixtures import full_clip

L = 4


def _tv():
    tv = {f"visual.transformer.resblocks.{i}.mlp.c_fc.weight": torch.ones(2, 2) for i in range(L)}
    tv |= {
        "visual.conv1.weight": torch.ones(2, 3, 2, 2),
        "visual.positional_embedding": torch.ones(5, 2),
        "visual.ln_post.weight": torch.ones(2),
        "visual.proj": torch.ones(2, 2),
    }
    return tv


def test_lines_curve_endpoints():
    c = lines_curve(0.2, 0.8, L)
    assert c[0] == pytest.approx(0.2) and c[-1] == pytest.approx(1.0)
    assert c[1] == pytest.approx(0.2 + 0.8 / 3)


def test_lines_scales_blocks_linearly_and_everything_outside_by_alpha():
    out = lines_scale(_tv(), alpha=0.1, beta=0.9)
    for i in range(L):
        assert torch.allclose(
            out[f"visual.transformer.resblocks.{i}.mlp.c_fc.weight"], torch.full((2, 2), 0.1 + 0.9 * i / 3)
        )
    # official LiNeS: conv1, embeddings AND output-side ln_post/proj all take alpha
    for k in ("visual.conv1.weight", "visual.positional_embedding", "visual.ln_post.weight", "visual.proj"):
        assert torch.all(out[k] == 0.1 * 1.0), k


def test_output_as_last_block_option():
    out = lines_scale(_tv(), alpha=0.1, beta=0.9, output_as_last_block=True)
    assert torch.allclose(out["visual.proj"], torch.ones(2, 2))
    assert torch.allclose(out["visual.ln_post.weight"], torch.ones(2))
    assert torch.allclose(out["visual.conv1.weight"], torch.full((2, 3, 2, 2), 0.1))


def test_beta_zero_is_uniform_scaling():
    tv = {k: torch.randn_like(v) for k, v in _tv().items()}
    out = lines_scale(tv, alpha=0.37, beta=0.0)
    for k in tv:
        assert torch.equal(out[k], tv[k] * 0.37)


def test_general_curve_and_wrong_length():
    tv = _tv()
    out = scale_by_block(tv, [0.0, 1.0, 2.0, 3.0], outside=5.0)
    assert out["visual.transformer.resblocks.2.mlp.c_fc.weight"][0, 0] == 2.0
    assert out["visual.proj"][0, 0] == 5.0
    with pytest.raises(ValueError):
        scale_by_block(tv, [1.0, 1.0], outside=1.0)


def test_multitask_alpha_rule():
    assert multitask_alpha(10.0, 10.0, 8) == 1 / 8
    assert multitask_alpha(20.0, 10.0, 4) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        multitask_alpha(1.0, 0.0, 2)


# ------------------------------------------------------------------ per tower (full CLIP)
LV, LT = full_clip.VISION_LAYERS, full_clip.TEXT_LAYERS


def _full_tv():
    base = full_clip.open_clip_full()
    return {k: v - base[k] for k, v in full_clip.fine_tuned(base, 1).items() if v.is_floating_point()}


def test_lines_scales_each_tower_by_its_own_depth():
    tv = _full_tv()
    a, b = 0.2, 0.6
    out = lines_scale(tv, a, b)
    for k, v in tv.items():
        i = layer_index(k)
        if k.startswith("visual.") and i is not None:
            want = a + b * i / (LV - 1)
        elif k.startswith("transformer.resblocks."):
            want = a + b * i / (LT - 1)  # text block i of LT, not of the image tower's LV
        else:
            want = a  # outside the blocks, either tower's, and logit_scale
        assert torch.equal(out[k], v * want), k
    # the text tower's last block takes the full alpha + beta, like the image tower's
    assert torch.allclose(
        out["transformer.resblocks.1.mlp.c_fc.weight"], tv["transformer.resblocks.1.mlp.c_fc.weight"] * 0.8
    )


def test_non_visual_keys_take_alpha_as_in_the_official_image_encoder():
    # official LiNeS edits the image encoder (ImageEncoder deletes the text transformer); the text-side
    # parameters it keeps (token/positional embeddings, ln_final, text_projection, logit_scale) take alpha
    tv = _full_tv()
    out = lines_scale(tv, 0.3, 0.7)
    for k in ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection", "logit_scale"):
        assert torch.equal(out[k], tv[k] * 0.3), k


def test_image_tower_of_a_full_dict_is_scaled_as_the_visual_only_dict():
    tv = _full_tv()
    visual = {k: v for k, v in tv.items() if k.startswith("visual.")}
    full, alone = lines_scale(tv, 0.25, 0.5), lines_scale(visual, 0.25, 0.5)
    assert all(torch.equal(full[k], alone[k]) for k in visual)
    assert infer_num_blocks(tv) == infer_num_blocks(visual) == LV
    # num_blocks is the image tower's depth; the text tower's comes from its keys
    assert all(torch.equal(v, lines_scale(tv, 0.25, 0.5, LV)[k]) for k, v in full.items())


def test_output_as_last_block_per_tower():
    tv = _full_tv()
    out = lines_scale(tv, 0.1, 0.9, output_as_last_block=True)
    for k in ("visual.proj", "visual.ln_post.weight", "ln_final.weight", "text_projection"):
        assert torch.allclose(out[k], tv[k]), k  # the last block of its own tower: alpha + beta = 1
    assert torch.equal(out["token_embedding.weight"], tv["token_embedding.weight"] * 0.1)


def test_one_curve_is_carried_to_the_text_tower_by_relative_depth():
    keys = list(_full_tv())
    visual_curve = lines_curve(0.2, 0.8, LV)
    scales = key_scales(keys, visual_curve, outside=0.2)
    text_curve = lines_curve(0.2, 0.8, LT)
    for i in range(LT):
        assert scales[f"transformer.resblocks.{i}.ln_1.weight"] == pytest.approx(text_curve[i], abs=1e-12)
    for i in range(LV):
        assert scales[f"visual.transformer.resblocks.{i}.ln_1.weight"] == visual_curve[i]
    # explicit curves per tower
    per = key_scales(keys, {"visual": [1.0] * LV, "text": [2.0, 3.0]}, outside=0.0)
    assert per["transformer.resblocks.1.ln_1.weight"] == 3.0 and per["visual.transformer.resblocks.3.ln_1.weight"] == 1
    with pytest.raises(ValueError, match="no block curve for the text tower"):
        key_scales(keys, {"visual": [1.0] * LV}, outside=0.0)
    with pytest.raises(ValueError, match="block 1"):  # a text curve shorter than the text tower
        key_scales(keys, {"visual": [1.0] * LV, "text": [1.0]}, outside=0.0)


def test_resample_curve():
    assert resample_curve([0.0, 1.0, 2.0], 3) == [0.0, 1.0, 2.0]
    assert resample_curve([0.0, 3.0], 4) == pytest.approx([0.0, 1.0, 2.0, 3.0])
    assert resample_curve([0.0, 1.0, 5.0], 2) == [0.0, 5.0]
    assert resample_curve([0.0, 1.0, 5.0], 1) == [5.0]  # a one-block tower is the last block
    assert resample_curve([0.7], 3) == [0.7, 0.7, 0.7]
    with pytest.raises(ValueError):
        resample_curve([], 2)


def test_merge_with_lines_scales_each_tower_by_its_own_depth():
    import core

    base = full_clip.open_clip_full()
    ft = full_clip.fine_tuned(base, 7)
    merged = core.merge(base, {"a": ft}, "task_arithmetic", lines=(0.3, 0.6))
    tv = core.task_vector(base, ft)
    want = lines_scale(tv, 0.3, 0.6)
    for k in tv:
        torch.testing.assert_close(merged[k] - base[k], want[k], rtol=0, atol=1e-6, msg=k)
    # text block 1 of 2 is the text tower's last block: alpha + beta, not the image curve's value at block 1
    k = "transformer.resblocks.1.mlp.c_fc.weight"
    torch.testing.assert_close(merged[k] - base[k], tv[k] * 0.9, rtol=0, atol=1e-6)
