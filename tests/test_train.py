import threading

import pytest
import torch

from core.layers import layer_index
from core.train import TrainConfig, infinite_batches, lr_factor, param_groups, train_loop, warmup_cosine


def test_lr_factor_warmup_then_cosine_to_zero():
    cfg = TrainConfig(steps=100, warmup=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) < 0.01
    assert lr_factor(50, TrainConfig(steps=100, warmup=0.0, schedule="constant")) == 1.0


def test_param_groups_by_block_with_multipliers_and_no_decay_for_1d():
    m = torch.nn.ModuleDict(
        {
            "transformer": torch.nn.ModuleDict(
                {"resblocks": torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])}
            )
        }
    )
    groups = param_groups(m.named_parameters(), 1e-3, weight_decay=0.1, group_of=layer_index, lr_multipliers={1: 2.0})
    by = {(g["group"], g["weight_decay"]): g for g in groups}
    assert by[(1, 0.1)]["base_lr"] == pytest.approx(2e-3)
    assert by[(0, 0.1)]["base_lr"] == pytest.approx(1e-3)
    assert by[(0, 0.0)]["names"] == ["transformer.resblocks.0.bias"]


def test_train_loop_fits_a_line_and_records_history():
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([1.0, -2.0, 0.5])
    lin = torch.nn.Linear(3, 1)

    def loss_fn(b):
        xb, yb = b
        loss = ((lin(xb).squeeze(1) - yb) ** 2).mean()
        return loss, {}

    cfg = TrainConfig(steps=200, lr=0.05, weight_decay=0.0, log_every=50)
    res = train_loop(param_groups(lin.named_parameters(), cfg.lr), loss_fn, infinite_batches(x, y, 32), cfg)
    assert res.steps_done == 200
    assert res.history[-1]["loss"] < 1e-3 < res.history[0]["loss"]


class _Hooks:
    def __init__(self, p):
        self.p, self.calls = p, 0

    def extra_loss(self, step):
        return 0.0 * self.p.sum()

    def before_step(self, step, opt):
        self.calls += 1
        for g in opt.param_groups:
            g["base_lr"] = 0.0  # a scheduler that freezes everything
        return {"hook": step}


def test_hooks_can_rewrite_group_lrs_and_add_losses():
    p = torch.nn.Parameter(torch.ones(2))
    h = _Hooks(p)
    cfg = TrainConfig(steps=5, lr=1.0, weight_decay=0.0, log_every=1, grad_clip=None)
    res = train_loop(param_groups([("w", p)], 1.0), lambda b: ((p**2).sum(), {}), iter(range(100)), cfg, hooks=[h])
    assert h.calls == 5 and torch.equal(p.detach(), torch.ones(2))
    assert res.history[-1]["hook"] == 4 and "extra_loss" in res.history[-1]


def test_cancel_stops_early_and_nan_loss_is_reported():
    p = torch.nn.Parameter(torch.ones(1))
    ev = threading.Event()
    ev.set()
    res = train_loop(
        param_groups([("w", p)], 0.1), lambda b: (p.sum(), {}), iter(range(10)), TrainConfig(steps=5), cancel=ev
    )
    assert res.cancelled and res.steps_done == 0
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_loop(
            param_groups([("w", p)], 0.1), lambda b: (p.sum() * float("nan"), {}), iter(range(10)), TrainConfig(steps=2)
        )


def test_warmup_cosine_is_the_cosine_schedule_with_at_least_one_warmup_step():
    for steps, warmup in ((300, 0.1), (120, 0.1), (5000, 0.05)):
        cfg = TrainConfig(steps=steps, warmup=warmup)
        assert all(abs(warmup_cosine(s, steps, warmup) - lr_factor(s, cfg)) < 1e-12 for s in range(steps))
    assert warmup_cosine(0, 10, 0.0) == 1.0 and warmup_cosine(1, 10, 0.0) == 1.0  # one warmup step
    assert (
        lr_factor(0, TrainConfig(steps=10, warmup=0.0)) == 1.0 and lr_factor(1, TrainConfig(steps=10, warmup=0.0)) < 1
    )


class _After:
    def __init__(self, p):
        self.p, self.steps = p, []

    def after_step(self, step, opt):
        with torch.no_grad():
            self.p.clamp_(max=0.5)  # runs after the optimizer step: the update is visible and clamped
        self.steps.append(step)
        return {"clamped": float(self.p.detach().max())}


def test_after_step_hook_and_a_custom_lr_schedule():
    p = torch.nn.Parameter(torch.ones(2))
    h = _After(p)
    factors = []
    cfg = TrainConfig(steps=4, lr=0.1, weight_decay=0.0, log_every=1, grad_clip=None)
    res = train_loop(
        param_groups([("w", p)], 0.1),
        lambda b: (-(p.sum()), {}),
        iter(range(10)),
        cfg,
        hooks=[h],
        lr_schedule=lambda s: factors.append(s) or 0.5,
    )
    assert h.steps == [0, 1, 2, 3] and factors == [0, 1, 2, 3]
    assert [r["lr_factor"] for r in res.history] == [0.5] * 4 and res.history[0]["clamped"] == 0.5
    assert torch.equal(p.detach(), torch.full((2,), 0.5))
