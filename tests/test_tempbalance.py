import numpy as np
import pandas as pd
import pytest
import torch

from core.lr_rules import model_balancing_multipliers, tempbalance_multipliers
from core.tempbalance import LayerBalancer, balanced_units, multipliers_for, unit_alphas, unit_group_of, unit_of
from core.train import TrainConfig, param_groups, train_loop


def _alphas(values, layers=None):
    n = len(values)
    return pd.DataFrame(
        {
            "unit": [f"u{i}.weight" for i in range(n)],
            "layer": pd.array(layers if layers is not None else list(range(n)), dtype="Int64"),
            "alpha": values,
        }
    )


def test_tempbalance_multipliers_are_linear_monotone_with_endpoints_s1_s2():
    a = _alphas([9.0, 3.0, 4.0, 2.0, 6.0, 1.0])  # first (9) and last (1) are not balanced
    m = multipliers_for(a, "tempbalance", s1=0.5, s2=1.5)
    assert m.iloc[0] == 1.0 and m.iloc[-1] == 1.0
    inner = a.iloc[1:-1].sort_values("alpha")
    vals = m[inner["unit"]].to_numpy()
    assert np.all(np.diff(vals) > 0)  # larger alpha -> larger lr
    assert vals[0] == pytest.approx(0.5) and vals[-1] == pytest.approx(1.5)  # alpha_min -> s1, alpha_max -> s2
    # alpha 3 on [2, 6]: 0.5 + 1.0 * (3 - 2) / 4
    assert m["u1.weight"] == pytest.approx(0.75)
    np.testing.assert_allclose(m.to_numpy()[1:-1], tempbalance_multipliers(a["alpha"].to_numpy()[1:-1]))


def test_equal_alphas_are_guarded_and_nan_alpha_keeps_lr():
    m = multipliers_for(_alphas([3.0, 3.0, 3.0, 3.0]), "tempbalance", skip_first_last=False)
    assert np.all(m.to_numpy() == 1.0)  # alpha_max == alpha_min: no division by zero, nothing to balance
    m = multipliers_for(_alphas([2.0, np.nan, 4.0]), "tempbalance", skip_first_last=False)
    assert m.tolist() == [0.5, 1.0, 1.5]


def test_model_balancing_averages_per_block_and_follows_the_sigmoid():
    # 2 blocks of 2 matrices + one matrix outside the blocks (layer NA) which keeps 1.0
    a = _alphas([2.0, 4.0, 5.0, 7.0, 10.0], layers=[0, 0, 1, 1, None])
    m = multipliers_for(a, "model_balancing", s=1.25, T=10.0, skip_first_last=False)
    expected = model_balancing_multipliers(np.array([3.0, 6.0]), s=1.25, T=10.0)
    assert m["u0.weight"] == m["u1.weight"] == pytest.approx(expected[0])
    assert m["u2.weight"] == m["u3.weight"] == pytest.approx(expected[1])
    assert m["u4.weight"] == 1.0
    assert expected[0] < 1 < expected[1]
    assert expected[1] == pytest.approx(10 ** (1.25 * (1 / (1 + np.exp(-15)) - 0.5)))  # d = +1.5


def test_unit_of_joins_biases_to_their_weights():
    w = {"a.attn.in_proj_weight", "a.mlp.c_fc.weight"}
    assert unit_of("a.attn.in_proj_bias", w) == "a.attn.in_proj_weight"
    assert unit_of("a.mlp.c_fc.bias", w) == "a.mlp.c_fc.weight"
    assert unit_of("a.ln_1.weight", w) is None


class _Tiny(torch.nn.Module):
    """Three residual 'blocks' of open_clip-like names plus a first and last layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Linear(8, 32)
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList()
        for i in range(3):
            blk = torch.nn.Module()
            blk.c_fc = torch.nn.Linear(32, 32)
            with torch.no_grad():  # make the blocks' spectra differ: heavier tails in deeper blocks
                u, s, v = torch.linalg.svd(blk.c_fc.weight)
                blk.c_fc.weight.copy_(u @ torch.diag(s ** (1 + 2 * i)) @ v)
            self.transformer.resblocks.append(blk)
        self.proj = torch.nn.Linear(32, 4)


def test_balancer_really_sets_the_optimizer_groups_lr():
    model = _Tiny()
    named = list(model.named_parameters())
    units = balanced_units(named)
    assert units[0] == "conv1.weight" and units[-1] == "proj.weight" and len(units) == 5
    groups = param_groups(named, 1e-2, weight_decay=0.0, group_of=unit_group_of(units))
    bal = LayerBalancer("tempbalance", every=2)
    opt = torch.optim.AdamW(groups, lr=1e-2)
    seen = []

    class Spy:
        def before_step(self, step, optimizer):  # runs after the balancer, before the lr factor
            seen.append({g["group"]: g["base_lr"] for g in optimizer.param_groups})

    cfg = TrainConfig(steps=3, lr=1e-2, warmup=0.0, schedule="constant", weight_decay=0.0, log_every=1)
    x = torch.randn(16, 8)
    train_loop(opt, lambda b: (model.proj(model.conv1(x)).pow(2).mean(), {}), iter(range(10)), cfg, hooks=[bal, Spy()])
    alphas = unit_alphas(named)
    expected = multipliers_for(alphas, "tempbalance")
    for g in opt.param_groups:  # the lr the optimizer actually used at the last step
        assert g["lr"] == pytest.approx(1e-2 * expected.get(g["group"], 1.0), rel=1e-6)
    inner = [f"transformer.resblocks.{i}.c_fc.weight" for i in range(3)]
    assert sorted(seen[0][u] for u in inner) == pytest.approx([5e-3, 1e-2 * expected[inner].median(), 1.5e-2])
    assert seen[0]["conv1.weight"] == seen[0]["proj.weight"] == 1e-2
    t = bal.table()
    assert sorted(t["step"].unique()) == [0, 2] and len(t) == 2 * len(units)  # recomputed every 2 steps


def test_balancer_model_balancing_uses_block_means():
    model = _Tiny()
    named = list(model.named_parameters())
    units = balanced_units(named)
    opt = torch.optim.AdamW(param_groups(named, 1.0, group_of=unit_group_of(units)), lr=1.0)
    bal = LayerBalancer("model_balancing", every=1, s=1.25)
    bal.before_step(0, opt)
    lrs = {g["group"]: g["base_lr"] for g in opt.param_groups}
    a = unit_alphas(named).set_index("unit")["alpha"]
    blocks = np.array([a[f"transformer.resblocks.{i}.c_fc.weight"] for i in range(3)])
    exp = model_balancing_multipliers(blocks, s=1.25)
    for i in range(3):
        assert lrs[f"transformer.resblocks.{i}.c_fc.weight"] == pytest.approx(exp[i])
    assert lrs["conv1.weight"] == lrs["proj.weight"] == 1.0


def test_in_proj_alpha_is_the_mean_of_q_k_v():
    torch.manual_seed(1)
    w = torch.randn(3 * 16, 16)
    t = unit_alphas({"visual.transformer.resblocks.0.attn.in_proj_weight": w})
    from core.spectra import alpha_hill_median, esd

    parts = [alpha_hill_median(esd(c)) for c in w.chunk(3)]
    assert t["alpha"].iloc[0] == pytest.approx(np.mean(parts))
    assert t["layer"].iloc[0] == 0
