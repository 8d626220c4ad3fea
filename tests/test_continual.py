"""Continual lab (NTK-CL): exact start from the backbone, a frozen backbone, the baseline is plain
sequential adapter tuning, the terms, the NTK against a slow reference, the accuracy-matrix bookkeeping."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.labs.continual import compare as continual_compare
from core.labs.continual.cli import main as cli_main
from core.labs.continual.config import TERMS, ContinualConfig
from core.labs.continual.data import load_task
from core.labs.continual.diagnostics import (
    angle_matrix,
    block_summary,
    empirical_ntk,
    kernel_distance,
    ntk_blocks,
    principal_angles,
)
from core.labs.continual.metrics import (
    average_accuracy,
    average_forgetting,
    continual_loop,
    final_column,
    forgetting,
    incremental_correct,
)
from core.labs.continual.model import ContinualModel, CosineHead
from core.labs.continual.result import ContinualResult, load_logged, runs_table
from core.labs.continual.run import run_continual
from core.labs.continual.terms import ema_update, l2_to_previous, orthogonality_loss, prototype_basis, update_ratios
from core.train import TrainConfig, infinite_batches, param_groups, train_loop


@pytest.fixture(autouse=True)
def _own_run_log(monkeypatch, tmp_path):
    """run_continual logs by default (run_log=None): each test gets its own run log."""
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))


TINY = dict(tasks=("digits", "arrows"), steps=3, batch=8, n_train=24, n_test=16, ntk_samples=2, ntk_outputs=2)


@pytest.fixture(scope="module")
def visual():
    """A random micro CLIP's visual tower (the backbone for everything but the zoo tests)."""
    from core.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return build_model(arch="mergescope-micro").visual


@pytest.fixture(scope="module")
def micro_set(request):
    try:
        return request.getfixturevalue("micro_zoo")  # tests/conftest.py, when it is there
    except pytest.FixtureLookupError:
        pass
    from core.zoo import is_built, load_model_set

    if not is_built("micro"):
        pytest.skip("micro zoo not built (python -m core zoo build --micro)")
    return load_model_set("micro")


def _images(n=4, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- the backbone
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_at_init_the_adapted_model_is_the_backbone_bit_for_bit(visual, lora_rank):
    model = ContinualModel(copy.deepcopy(visual), ContinualConfig(lora_rank=lora_rank))
    x = _images()
    with torch.no_grad():
        ref = visual(x)
        assert torch.equal(model.backbone.encode(x, model.current, "channel"), ref)
        assert torch.equal(model.backbone.encode(x, None), ref)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_backbone_stays_bit_identical_after_training_with_every_term(visual):
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    cfg = ContinualConfig(**TINY, lora_rank=2)
    res = run_continual(visual, cfg)
    trained = res.model.backbone.visual.state_dict()
    assert before.keys() == trained.keys()
    assert all(torch.equal(before[k], trained[k]) for k in before)  # the copy inside the run
    assert all(torch.equal(before[k], v) for k, v in visual.state_dict().items())  # the caller's tower
    # ... while the PEFT modules did train, and the EMA holds the first task's adapters.
    assert any(a.up.weight.abs().sum() > 0 for a in res.model.current.adapters)
    assert any(lo.b_q.abs().sum() > 0 for lo in res.model.current.lora)
    assert any(a.up.weight.abs().sum() > 0 for a in res.model.ema.adapters)


# --------------------------------------------------------------------------- the baseline
def test_all_terms_off_is_plain_sequential_adapter_tuning(visual):
    """The reference: adapters carried from task to task, each trained with cross-entropy through a
    fresh cosine head with the one training loop; class means as prototypes."""
    cfg = ContinualConfig(**TINY).with_terms([])
    res = run_continual(visual, cfg)

    torch.manual_seed(cfg.seed)
    ref = ContinualModel(copy.deepcopy(visual), cfg)  # same seeded adapter init
    enc = ref.backbone
    adapters = ref.current.adapters
    protos = []
    for j, name in enumerate(cfg.tasks):
        d = load_task(name, cfg.n_train, cfg.n_test)
        head = CosineHead(enc.out_dim, d.n_classes, cfg.head_scale, torch.Generator().manual_seed(cfg.seed * 1000 + j))

        def loss_fn(batch, head=head):
            x, y = batch
            return F.cross_entropy(head(enc.encode(x, ref.current)), y), {}

        named = [(f"current.{n}", p) for n, p in ref.current.named_parameters()] + [
            (f"head.{n}", p) for n, p in head.named_parameters()
        ]
        tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, weight_decay=0.0, warmup=cfg.warmup, seed=cfg.seed)
        train_loop(
            param_groups(named, cfg.lr),
            loss_fn,
            infinite_batches(d.x_train, d.y_train, cfg.batch, seed=cfg.seed * 1000 + j),
            tc,
        )
        with torch.no_grad():
            f = enc.encode(d.x_train, ref.current)
            protos.append(torch.stack([f[d.y_train == c].mean(0) for c in range(d.n_classes)]))
    for a, b in zip(adapters, res.model.current.adapters):
        assert torch.equal(a.up.weight, b.up.weight) and torch.equal(a.down.weight, b.down.weight)
    assert torch.allclose(torch.cat(protos), res.model.prototypes[:, 0], atol=1e-6)


# --------------------------------------------------------------------------- the terms
def test_orthogonality_loss_is_zero_off_the_prototype_span_and_positive_inside():
    protos = torch.zeros(3, 8)
    protos[0, 0], protos[1, 1], protos[2, :2] = 2.0, 1.0, 1.0  # span = first two axes
    basis = prototype_basis(protos)
    assert basis.shape == (8, 2)
    off = torch.randn(5, 8)
    off[:, :2] = 0
    assert orthogonality_loss(off, basis).item() == pytest.approx(0.0, abs=1e-12)
    inside = torch.randn(5, 8)
    inside[:, 2:] = 0
    assert orthogonality_loss(inside, basis).item() == pytest.approx(1.0)
    mixed = torch.tensor([[1.0, 0, 1.0, 0, 0, 0, 0, 0]])
    assert orthogonality_loss(mixed, basis).item() == pytest.approx(0.5)
    assert orthogonality_loss(mixed, prototype_basis(torch.zeros(0, 8))).item() == 0.0


def test_ema_is_the_running_mean_of_the_end_of_task_modules():
    ema, cur = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ends = [torch.randn(2, 3) for _ in range(4)]
    for t, w in enumerate(ends):
        with torch.no_grad():
            cur.weight.copy_(w)
        ema_update(ema, cur, t)
        assert torch.allclose(ema.weight, torch.stack(ends[: t + 1]).mean(0), atol=1e-6)
    assert update_ratios(0) == (0.0, 1.0) and update_ratios(2) == pytest.approx((2 / 3, 1 / 3))


def test_l2_pulls_only_weight_matrices_toward_the_previous_task():
    cur = {"a.weight": torch.ones(2, 2), "a.bias": torch.ones(2), "lora.0.b_q": torch.ones(1)}
    prev = {"a.weight": torch.zeros(2, 2), "a.bias": torch.zeros(2), "lora.0.b_q": torch.zeros(1)}
    assert l2_to_previous(cur, prev).item() == 5.0  # 4 weight entries + 1 LoRA factor, biases free


# --------------------------------------------------------------------------- the NTK
def test_ntk_equals_j_jt_from_a_slow_reference(visual):
    cfg = ContinualConfig(expansion=True, bottleneck=2, n_prompts=1)
    model = ContinualModel(copy.deepcopy(visual), cfg)
    with torch.no_grad():  # leave the zero init so every parameter has a non-trivial gradient
        for p in model.trainable().values():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    x = _images(3)
    proj = torch.linalg.qr(torch.randn(model.backbone.out_dim, 2, generator=torch.Generator().manual_seed(1)))[0]
    params = model.trainable()
    fast = empirical_ntk(model, params, x, proj, chunk=2)

    rows = []  # slow: one autograd.grad per (sample, output)
    for a in range(len(x)):
        out = model(x[a : a + 1])[0] @ proj
        for o in range(out.shape[0]):
            g = torch.autograd.grad(out[o], list(params.values()), retain_graph=True, allow_unused=True)
            rows.append(
                torch.cat(
                    [(gi if gi is not None else torch.zeros_like(p)).flatten() for gi, p in zip(g, params.values())]
                )
            )
    jac = torch.stack(rows).view(len(x), 2, -1)
    slow = torch.einsum("akp,bkp->ab", jac, jac)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6 * slow.abs().max().item())
    assert fast.shape == (3, 3) and torch.allclose(fast, fast.T, atol=1e-6 * fast.abs().max().item())


def test_ntk_blocks_and_kernel_distance():
    k = torch.tensor([[4.0, 1, 0], [1, 4, 0], [0, 0, 9]])
    blocks = ntk_blocks(k, [2, 1])
    assert blocks[0, 0] == pytest.approx(np.sqrt((16 + 1 + 1 + 16) / 4))
    assert blocks[0, 1] == 0 and blocks[1, 1] == 9
    assert block_summary(blocks)["inter"] == 0
    assert kernel_distance(k, 3 * k) == pytest.approx(0.0, abs=1e-12)


def test_principal_angles_see_orthogonal_and_shared_subspaces():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20, 2, generator=g) @ torch.eye(6)[:2]  # spans axes 0, 1
    b = torch.randn(20, 2, generator=g) @ torch.eye(6)[2:4]
    c = torch.randn(20, 2, generator=g) @ torch.eye(6)[:2]
    assert principal_angles(a, b, 2) == pytest.approx([90, 90])
    assert principal_angles(a, c, 2) == pytest.approx([0, 0], abs=1e-5)
    m = angle_matrix([a, b, None], 2)
    assert m[0, 1] == pytest.approx(90) and m[0, 0] == 0 and np.isnan(m[2, 0])


# --------------------------------------------------------------------------- bookkeeping
def test_accuracy_matrix_bookkeeping_on_a_scripted_run():
    script = {(0, 0): 0.9, (0, 1): 0.7, (1, 1): 0.8, (0, 2): 0.5, (1, 2): 0.8, (2, 2): 0.6}
    calls = []
    acc = continual_loop(
        3, lambda j: calls.append(("train", j)) or True, lambda i, j: script[i, j], lambda j: calls.append(("stage", j))
    )
    assert calls == [("train", 0), ("stage", 0), ("train", 1), ("stage", 1), ("train", 2), ("stage", 2)]
    assert acc[0, 1] == 0.7 and np.isnan(acc[1, 0]) and np.isnan(acc[2, 1])
    assert average_accuracy(acc) == pytest.approx((0.5 + 0.8 + 0.6) / 3)
    assert forgetting(acc)[:2] == pytest.approx([0.4, 0.0]) and np.isnan(forgetting(acc)[2])
    assert average_forgetting(acc) == pytest.approx(0.2)
    # A run stopped after the second task reports what it finished.
    cut = continual_loop(3, lambda j: j < 2, lambda i, j: script[i, j])
    assert final_column(cut) == 1 and np.isnan(cut[:, 2]).all()
    assert average_accuracy(cut) == pytest.approx(0.75) and average_forgetting(cut) == pytest.approx(0.2)


def test_class_incremental_must_find_the_task_task_incremental_need_not():
    logits = torch.tensor([[0.9, 0.1, 0.95, 0.0], [0.1, 0.8, 0.2, 0.3]])  # classes 0-1: task 0, 2-3: task 1
    labels = torch.tensor([0, 1])  # both samples belong to task 0
    assert incremental_correct(logits, labels, 0, 2, "task").tolist() == [True, True]
    assert incremental_correct(logits, labels, 0, 2, "class").tolist() == [False, True]


def test_config_terms_and_round_trip():
    cfg = ContinualConfig().with_terms(["ortho"])
    assert cfg.terms == ("ortho",) and cfg.label() == "+ortho"
    assert ContinualConfig().with_terms([]).label().startswith("baseline")
    assert ContinualConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown terms"):
        cfg.with_terms(["bogus"])
    with pytest.raises(ValueError, match="setting"):
        ContinualConfig(setting="domain")


# --------------------------------------------------------------------------- the micro zoo, the CLI, the log
def test_a_micro_zoo_run_is_logged_and_rebuilt_from_the_log(micro_set, tmp_path):
    from core.runtime.runlog import RunLog

    log = RunLog(tmp_path / "runs.sqlite")
    cfg = ContinualConfig(**{**TINY, "tasks": ("colors", "shapes")}, setting="task")
    stages = []
    res = run_continual(micro_set, cfg, run_log=log, progress=lambda s, d, n: stages.append((s, d, n)))
    assert stages[-1] == ("done", 6, 6) and res.run_id is not None
    assert np.isfinite(res.acc[np.triu_indices(2)]).all() and np.isnan(res.acc[1, 0])
    assert [r["after"] for r in res.ntk] == ["init", "colors", "shapes"]
    assert {"ce_channel", "ce_patch", "ce_mixed", "ortho", "l2"} <= set(res.history.columns)
    assert res.history.loc[res.history["stage"] == 0, "l2"].isna().all()  # nothing to hold on to yet
    assert (res.history.loc[res.history["stage"] == 1, "ortho"] > 0).all()
    again = load_logged(res.run_id, log)
    assert np.array_equal(np.nan_to_num(again.acc, nan=-1), np.nan_to_num(res.acc, nan=-1))
    assert again.config == cfg and again.average_forgetting() == pytest.approx(res.average_forgetting())
    table = runs_table(log)
    assert table.loc[0, "id"] == res.run_id and table.loc[0, "label"] == "all terms"


def test_cli_compare_prints_a_markdown_table(micro_set, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(continual_compare, "VARIANTS", {"baseline": (), "all terms": TERMS})
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    cache = getattr(micro_set, "zoo_dir", None)
    argv = [
        "--zoo",
        "micro",
        "--tasks",
        "digits,arrows",
        "--steps",
        "2",
        "--n-train",
        "16",
        "--ntk-samples",
        "0",
        "--compare",
        "--seeds",
        "0",
    ]
    if cache is not None:
        argv += ["--cache", str(cache.parent)]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "| variant | avg accuracy | avg forgetting | wall time / run |" in out
    assert "| baseline |" in out and "| all terms |" in out


def test_cancel_stops_between_steps_and_keeps_finished_tasks(visual):
    import threading

    cancel = threading.Event()
    cfg = dataclasses.replace(ContinualConfig(**TINY), tasks=("digits", "arrows", "letters"))
    res = run_continual(visual, cfg, cancel=cancel, on_stage=lambda j, acc: cancel.set() if j == 0 else None)
    assert res.cancelled and final_column(res.acc) == 0 and len(res.ntk) == 2


# --------------------------------------------------------------------------- figures
def test_figures_show_the_matrices_in_percent_and_one_trace_per_run():
    from core.plots import continual as P

    acc = np.array([[0.9, 0.7], [np.nan, 0.8]])
    res = ContinualResult(config=ContinualConfig(tasks=("a", "b")), acc=acc, angles=[np.array([[0, 80.0], [80.0, 0]])])
    fig = P.accuracy_heatmap(res.acc_frame())
    assert fig.data[0].z[0][1] == pytest.approx(70) and np.isnan(fig.data[0].z[1][0])
    assert list(fig.data[0].x) == ["after a", "after b"]
    bars = P.forgetting_bars({"base": res.forgetting(), "all": res.forgetting() / 2})
    assert [t.name for t in bars.data] == ["base", "all"] and bars.data[0].y[0] == pytest.approx(20)
    assert P.angle_heatmap(res.angle_frame()).data[0].z[0][1] == 80
    summary = pd.DataFrame(
        {"avg_acc_mean": [0.5], "avg_acc_std": [0.1], "avg_forgetting_mean": [0.2], "avg_forgetting_std": [0.0]},
        index=["x"],
    )
    assert P.summary_bars(summary).data[1].y[0] == pytest.approx(20)
