import pytest
import torch

from core.lines import lines_curve, lines_scale, multitask_alpha, scale_by_block

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
