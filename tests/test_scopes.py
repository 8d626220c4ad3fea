"""Weight scopes and the WSA regularizer: hand numbers, signs of gradients, interpolation ends."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core.scopes import (
    interpolate,
    loss_barrier,
    scope_dict,
    scope_fusion,
    scope_kl,
    weight_scopes,
    wsa_regularizer,
)
from tests.fixtures import full_clip


def test_scope_kl_is_zero_at_target_and_positive_elsewhere():
    assert scope_kl(0.1, 0.5, 0.1, 0.5).item() == pytest.approx(0.0, abs=1e-7)
    for mu, sigma in [(0.2, 0.5), (0.1, 0.4), (0.1, 0.7), (-1.0, 2.0)]:
        assert scope_kl(mu, sigma, 0.1, 0.5).item() > 0
    # hand value: log(2/1) + (1 + 1)/(2·4) - 1/2
    assert scope_kl(1.0, 1.0, 0.0, 2.0).item() == pytest.approx(math.log(2) + 0.25 - 0.5)


def test_scope_kl_gradient_pulls_toward_target():
    for mu0, sigma0 in [(0.3, 0.2), (-0.3, 0.9)]:
        mu = torch.tensor(mu0, requires_grad=True)
        sigma = torch.tensor(sigma0, requires_grad=True)
        scope_kl(mu, sigma, torch.tensor(0.0), torch.tensor(0.5)).backward()
        # gradient descent moves each toward the target: the gradient has the sign of (value - target)
        assert np.sign(mu.grad.item()) == np.sign(mu0 - 0.0)
        assert np.sign(sigma.grad.item()) == np.sign(sigma0 - 0.5)


def test_wsa_regularizer_sums_layers_and_trains_scopes_toward_target():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 30), torch.nn.Linear(30, 10))
    target = {name: (0.05, 0.02) for name, p in model.named_parameters() if p.ndim >= 2}
    reg = wsa_regularizer(model.named_parameters(), target)
    expected = sum(
        scope_kl(p.mean(), p.std(correction=0), 0.05, 0.02) for n, p in model.named_parameters() if n in target
    )
    assert reg.item() == pytest.approx(expected.item(), rel=1e-6)
    w = model[0].weight
    before = (abs(w.mean().item() - 0.05), abs(w.std(correction=0).item() - 0.02), reg.item())
    for _ in range(10):  # plain gradient descent (torch.optim's first import costs seconds)
        model.zero_grad()
        wsa_regularizer(model.named_parameters(), target).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= 1e-2 * p.grad
    after = (abs(w.mean().item() - 0.05), abs(w.std(correction=0).item() - 0.02))
    assert after[0] < before[0] and after[1] < before[1]  # both the mean and the spread move toward the target
    assert wsa_regularizer(model.named_parameters(), target).item() < before[2]
    assert wsa_regularizer(model.named_parameters(), {}).item() == 0.0
    with pytest.raises(KeyError, match="not found"):
        wsa_regularizer(model.named_parameters(), {"nope.weight": (0.0, 1.0)}, strict=True)


def test_scope_fusion_on_hand_numbers():
    a = {"w": (0.0, 1.0)}
    b = {"w": (2.0, 1.0)}
    fused = scope_fusion([a, b])
    # mixture of N(0,1) and N(2,1): mean 1, variance 1 + ((0-1)² + (2-1)²)/2 = 2
    assert fused["w"][0] == pytest.approx(1.0)
    assert fused["w"][1] == pytest.approx(math.sqrt(2.0))
    assert scope_fusion([a, a])["w"] == pytest.approx((0.0, 1.0))
    with pytest.raises(KeyError, match="same layers"):
        scope_fusion([a, {"v": (0.0, 1.0)}])


def test_fused_scope_equals_scope_of_pooled_weights():
    g = torch.Generator().manual_seed(1)
    sds = [{"w": torch.randn(40, 50, generator=g) * s + m} for s, m in [(0.5, 0.1), (1.5, -0.3), (1.0, 0.0)]]
    fused = scope_fusion([scope_dict(sd) for sd in sds])
    pooled = torch.cat([sd["w"].reshape(-1) for sd in sds]).double()
    assert fused["w"][0] == pytest.approx(pooled.mean().item())
    assert fused["w"][1] == pytest.approx(pooled.std(correction=0).item())


def test_weight_scopes_rows_and_block_aggregate():
    g = torch.Generator().manual_seed(2)
    sd = {
        "visual.transformer.resblocks.0.mlp.c_fc.weight": torch.randn(8, 4, generator=g),
        "visual.transformer.resblocks.0.attn.out_proj.weight": torch.randn(4, 4, generator=g) + 1.0,
        "visual.transformer.resblocks.0.ln_1.weight": torch.ones(4),
        "visual.conv1.weight": torch.randn(4, 3, 2, 2, generator=g),
        "step": torch.tensor(3),
    }
    table = weight_scopes(sd)
    tensors = table[table["level"] == "tensor"]
    assert list(tensors["name"]) == [k for k in sd if k != "step"]
    row = tensors[tensors["name"] == "visual.transformer.resblocks.0.ln_1.weight"].iloc[0]
    assert row["mean"] == 1.0 and row["std"] == 0.0 and row["numel"] == 4 and row["kind"] == "norm"
    assert tensors[tensors["name"] == "visual.conv1.weight"]["layer"].iloc[0] is pd.NA
    block = table[table["level"] == "block"].iloc[0]
    pooled = torch.cat([sd[k].reshape(-1) for k in list(sd)[:2]]).double()
    assert block["name"] == "block 0" and block["numel"] == 48
    assert block["mean"] == pytest.approx(pooled.mean().item())
    assert block["std"] == pytest.approx(pooled.std(correction=0).item())


def test_interpolate_endpoints_and_midpoint():
    g = torch.Generator().manual_seed(3)
    a = {"w": torch.randn(5, 5, generator=g), "n": torch.tensor([1, 2])}
    b = {"w": torch.randn(5, 5, generator=g), "n": torch.tensor([7, 8])}
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    torch.testing.assert_close(interpolate(a, b, 0.5)["w"], (a["w"] + b["w"]) / 2)
    assert torch.equal(interpolate(a, b, 0.7)["n"], a["n"])  # integer entries come from the first model
    with pytest.raises(KeyError, match="differ in keys"):
        interpolate(a, {"w": b["w"]}, 0.5)


def test_loss_barrier_of_a_bump_and_of_a_line():
    a, b = {"w": torch.tensor([0.0])}, {"w": torch.tensor([1.0])}
    bump = loss_barrier(lambda sd: float(sd["w"][0] * (1 - sd["w"][0])), a, b, num_points=5)
    assert bump["barrier"] == pytest.approx(0.25) and bump["t_max"] == 0.5
    line = loss_barrier(lambda sd: float(3 * sd["w"][0]), a, b)
    assert line["barrier"] == pytest.approx(0.0, abs=1e-6)  # float32 lerp


def test_weight_scopes_blocks_are_per_tower():
    sd = full_clip.open_clip_full()
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    pd.testing.assert_frame_equal(weight_scopes(sd), weight_scopes(visual))  # no text tensor pooled into a block
    text = weight_scopes(sd, tower="text")
    blocks = text[text["level"] == "block"]
    assert list(blocks["layer"]) == list(range(full_clip.TEXT_LAYERS))
    assert not text["name"].str.startswith("visual.").any()
