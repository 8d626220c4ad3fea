"""Model Tinting: the filter rule, clamping, what receives gradients, and a few steps on the micro zoo."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from core.labs.tinting.baselines import comparison_table
from core.labs.tinting.config import TintConfig
from core.labs.tinting.data import pseudo_label_agreement
from core.labs.tinting.export import export_tinted, read_tinted
from core.labs.tinting.model import (
    HEAD,
    TintedMerge,
    confidence_filter,
    keep_mask,
    layer_keys,
    pseudo_label_loss,
    tint_layer_choices,
)
from core.labs.tinting.run import step_batches, tint

TASKS = ["a", "b"]


# --------------------------------------------------------------------------- a tiny synthetic set
@pytest.fixture(scope="module")
def synthetic():
    """A random micro CLIP as the base, two 'fine-tuned' towers = base + small noise, random heads."""
    from core.models import build_model

    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in build_model(arch="mergescope-micro").state_dict().items()}
    fts = {}
    for i, t in enumerate(TASKS):
        g = torch.Generator().manual_seed(i + 1)
        fts[t] = {
            k: v + 0.02 * torch.randn(v.shape, generator=g)
            for k, v in base.items()
            if k.startswith("visual.") and v.is_floating_point()
        }
    heads = {t: F.normalize(torch.randn(3 + i, 64), dim=-1) * 100 for i, t in enumerate(TASKS)}
    return base, fts, heads


def _model(synthetic, layer=HEAD, lam=0.3):
    base, fts, heads = synthetic
    return TintedMerge(base, fts, heads, layer, lam)


# --------------------------------------------------------------------------- the filter
def test_filter_keeps_agreement_and_more_confident_expert_drops_more_confident_merged():
    expert = torch.tensor(
        [
            [4.0, 0.0, 0.0],  # agree (both class 0)
            [3.0, 0.0, 0.0],  # disagree, expert more confident -> keep
            [0.5, 0.0, 0.0],  # disagree, merged more confident -> drop
            [1.0, 0.0, 0.0],  # disagree, exactly as confident -> keep (expert >= merged)
        ]
    )
    merged = torch.tensor(
        [
            [2.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 5.0, 0.0],
            [0.0, 0.0, 1.0],
        ]
    )
    assert confidence_filter(expert, merged).tolist() == [True, True, False, True]


def test_filter_in_the_loss_drops_samples_and_off_keeps_all():
    label = torch.tensor([0, 0])
    conf = torch.tensor([0.4, 0.9])
    logits = torch.tensor([[0.0, 10.0], [0.0, 10.0]], requires_grad=True)  # merged says 1, very sure
    assert keep_mask(label, conf, logits).tolist() == [False, False]
    loss, m = pseudo_label_loss(logits, label, conf, use_filter=True)
    assert m["kept"] == 0.0 and float(loss.detach()) == 0.0
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0
    loss_off, m_off = pseudo_label_loss(logits, label, conf, use_filter=False)
    assert m_off["kept"] == 1.0 and float(loss_off.detach()) == pytest.approx(10.0, abs=1e-3)


# --------------------------------------------------------------------------- the model
def test_lambdas_are_clamped_to_unit_interval(synthetic):
    m = _model(synthetic)
    with torch.no_grad():
        m.lambdas_raw[0, 0] = -0.7
        m.lambdas_raw[1, 1] = 1.9
    lam = m.lambdas()
    assert float(lam[0, 0].detach()) == 0.0 and float(lam[1, 1].detach()) == 1.0
    k0 = m.keys[0]
    merged = m.merged_params()
    expected = m.base[k0] + 0.0 * m.tau[k0][0] + float(lam[0, 1].detach()) * m.tau[k0][1]
    torch.testing.assert_close(merged[k0], expected)


def test_lambda_one_and_zero_reproduce_finetuned_and_base(synthetic):
    base, fts, _ = synthetic
    m = _model(synthetic)
    with torch.no_grad():
        m.lambdas_raw.zero_()
        m.lambdas_raw[:, 1] = 1.0
    merged = m.visual_state_dict()
    for k in m.keys[:5]:
        torch.testing.assert_close(merged[k], fts["b"][k], rtol=0, atol=1e-6)


def test_only_lambda_and_the_chosen_layer_get_gradients_and_change(synthetic):
    m = _model(synthetic, layer="last_mlp")
    frozen_before = {n: p.detach().clone() for n, p in m.visual.named_parameters()}
    base_before = {k: v.clone() for k, v in m.base.items()}
    tau_before = {k: v.clone() for k, v in m.tau.items()}
    heads_before = {t: h.clone() for t, h in m.heads.items()}
    x = torch.randn(4, 3, 32, 32)
    loss = m(x, "a").logsumexp(-1).mean()
    loss.backward()
    assert m.lambdas_raw.grad is not None and m.lambdas_raw.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.visual.parameters())
    a = m.tint_params("a")
    assert set(a) == set(layer_keys("last_mlp", m.keys)) and all(".resblocks.2.mlp." in k for k in a)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.values())
    assert all(p.grad is None for p in m.tint_params("b").values())  # task b's tint was not used
    opt = torch.optim.Adam([p for _, p in m.named_trainable()], lr=1e-2)
    opt.step()
    for n, p in m.visual.named_parameters():
        assert torch.equal(p, frozen_before[n]), n
    assert all(torch.equal(m.base[k], base_before[k]) and torch.equal(m.tau[k], tau_before[k]) for k in m.keys)
    assert all(torch.equal(m.heads[t], heads_before[t]) for t in TASKS)
    assert not torch.equal(m.lambdas_raw, torch.full_like(m.lambdas_raw, 0.3))
    # the tinted copy of task a now differs from the merged layer; other layers are the merged ones
    merged, own = m.merged_params(), m.task_params("a", m.merged_params())
    k = next(iter(a))
    assert not torch.equal(own[k], merged[k])
    assert all(torch.equal(own[j], merged[j]) for j in m.keys if j not in a)


def test_head_tint_starts_at_zero_shot_head_and_counts_parameters(synthetic):
    m = _model(synthetic)
    w, b = m.head("b")
    torch.testing.assert_close(w.detach(), synthetic[2]["b"])
    assert torch.count_nonzero(b) == 0
    n_heads = sum(h.numel() + h.shape[0] for h in synthetic[2].values())
    assert m.num_trainable() == len(m.keys) * 2 + n_heads


def test_layer_choices_start_with_head_and_the_output_end(synthetic):
    m = _model(synthetic)
    choices = tint_layer_choices(m.keys)
    assert choices[:3] == [HEAD, "visual.ln_post", "visual.proj"] or choices[:3] == [
        HEAD,
        "visual.proj",
        "visual.ln_post",
    ]
    assert "visual.transformer.resblocks.2.mlp" in choices
    assert layer_keys("proj", m.keys) == ["visual.proj"]
    with pytest.raises(ValueError, match="no encoder parameters"):
        layer_keys("visual.nothing", m.keys)


def test_schedule_shuffles_tasks_each_step_and_is_resumable():
    it = step_batches(["a", "b", "c"], {"a": 10, "b": 20, "c": 30}, 4, seed=0)
    first = [next(it) for _ in range(9)]
    assert [s for s, _, _ in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(sorted(t for s, t, _ in first if s == k) == ["a", "b", "c"] for k in range(3))
    assert all(len(idx) == 4 and len(set(idx.tolist())) == 4 for _, _, idx in first)
    resumed = step_batches(["a", "b", "c"], {"a": 10, "b": 20, "c": 30}, 4, seed=0, start=2)
    again = [next(resumed) for _ in range(3)]
    assert [(s, t, i.tolist()) for s, t, i in again] == [(s, t, i.tolist()) for s, t, i in first[6:]]


def test_export_roundtrip(synthetic, tmp_path):
    m = _model(synthetic)
    with torch.no_grad():
        m.tint[0].add_(1.0)
    p = export_tinted(m, tmp_path / "t.safetensors", config=TintConfig(steps=3), accuracy={"a": 0.5})
    visual, tints, man = read_tinted(p)
    assert man["layer"] == HEAD and man["tasks"] == TASKS and man["config"]["steps"] == 3
    torch.testing.assert_close(tints["a"]["weight"], m.head("a")[0].detach())
    torch.testing.assert_close(visual[m.keys[0]], m.visual_state_dict()[m.keys[0]])
    json.dumps(man)


def test_comparison_table_normalizes_by_individual():
    base = {
        "individual": {"accuracy": {"a": 0.8, "b": 0.5}},
        "zero-shot": {"accuracy": {"a": 0.4, "b": 0.25}},
        "TA": {"accuracy": {"a": 0.6, "b": 0.5}, "chosen": {"lambda": 0.3}},
    }
    df = comparison_table(base, {"Tinting": {"a": 0.8, "b": 0.45}})
    assert list(df.index) == ["zero-shot", "TA", "Tinting", "individual"]
    assert df.loc["zero-shot", "avg_norm"] == pytest.approx(0.5)
    assert df.loc["TA", "avg_norm"] == pytest.approx((0.75 + 1.0) / 2)
    assert df.loc["individual", "avg_norm"] == pytest.approx(1.0)
    assert df.loc["TA", "chosen on val"] == "lambda=0.3"


# --------------------------------------------------------------------------- the micro zoo
def test_a_few_steps_on_the_micro_zoo_raise_pseudo_label_agreement(micro_zoo):
    ms = micro_zoo
    from core.labs.tinting.data import build, prepare_data, tint_tasks

    cfg = TintConfig(steps=8, batch=32, eval_every=4, seed=0)
    tasks = tint_tasks(ms)
    data = prepare_data(ms, tasks, "test")
    before = pseudo_label_agreement(build(ms, cfg), data)
    steps = []
    res = tint(ms, cfg, run_log=False, data=data, eval_data=data, progress=lambda s, n, row: steps.append(s))
    after = res.info["agreement"]
    assert steps[0] == 0 and steps[-1] == 8
    assert sum(after.values()) > sum(before.values())
    assert list(res.evals["step"].unique()) == [0, 4, 8]
    assert res.history["kept"].between(0, 1).all()


def test_cancel_stops_between_steps_and_resume_continues(micro_zoo, tmp_path):
    import threading

    from core.runtime.runlog import RunLog

    ms = micro_zoo
    log = RunLog(tmp_path / "runs.sqlite")
    ev = threading.Event()

    def stop_after_2(step, total, row):
        if step == 2:
            ev.set()

    cfg = TintConfig(steps=4, batch=16, eval_every=100, seed=1)
    res = tint(ms, cfg, run_log=log, state_dir=tmp_path, cancel=ev, progress=stop_after_2)
    assert res.cancelled and res.steps_done == 2
    row = log.get(res.run_id)
    assert row["status"] == "cancelled" and row["metrics"]["state_path"]
    res2 = tint(ms, None, run_log=log, state_dir=tmp_path, resume=res.run_id)
    assert res2.steps_done == 4 and not res2.cancelled
    assert log.get(res2.run_id)["config"]["resumed_from"] == res.run_id
    # resuming reproduces an uninterrupted run
    full = tint(ms, cfg, run_log=False)
    torch.testing.assert_close(res2.model.lambdas_raw, full.model.lambdas_raw)


# --------------------------------------------------------------------------- figures
def test_figures_show_percentages_and_lambda_in_unit_range(synthetic):
    import pandas as pd

    from core.plots.tinting import accuracy_curves, lambda_heatmap, normalized_bars, training_curves

    hist = pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "kept": [0.8, 0.9], "agreement": [0.5, 0.75]})
    fig = training_curves(hist)
    assert [t.name for t in fig.data] == ["loss", "kept", "agreement"]
    assert list(fig.data[2].y) == pytest.approx([50.0, 75.0])
    evals = pd.DataFrame({"step": [0, 0, 5, 5], "task": ["a", "b", "a", "b"], "accuracy": [0.2, 0.4, 0.6, 0.8]})
    fig = accuracy_curves(evals)
    assert [t.name for t in fig.data] == ["a", "b", "mean"]
    assert list(fig.data[2].y) == pytest.approx([30.0, 70.0])
    table = comparison_table(
        {"individual": {"accuracy": {"a": 0.8}}, "TA": {"accuracy": {"a": 0.4}}}, {"Tinting": {"a": 0.6}}
    )
    bars = normalized_bars(table).data[0]
    assert list(bars.x) == ["TA", "Tinting", "individual"] and list(bars.y) == pytest.approx([50.0, 75.0, 100.0])
    heat = lambda_heatmap(_model(synthetic).lambda_frame("block")).data[0]
    assert heat.zmin == 0 and heat.zmax == 1 and list(heat.x) == TASKS and heat.y[-1] == "outside"


# --------------------------------------------------------------------------- layer groups, config, baselines grid
def test_layer_groups_come_from_the_layer_map(synthetic):
    from core.labs.tinting.model import layer_group

    assert layer_group("visual.transformer.resblocks.7.mlp.c_fc.weight") == "visual.transformer.resblocks.7.mlp"
    assert layer_group("visual.transformer.resblocks.0.ln_1.bias") == "visual.transformer.resblocks.0.ln_1"
    assert layer_group("visual.ln_post.weight") == "visual.ln_post" and layer_group("visual.proj") == "visual.proj"
    m = _model(synthetic)
    assert layer_keys("last_attn", m.keys) and all(".resblocks.2.attn." in k for k in layer_keys("last_attn", m.keys))


def test_config_method_defaults_and_bad_method():
    assert TintConfig().lr == 1e-2 and TintConfig(method="adamerging").lr == 1e-3
    assert TintConfig(method="adamerging", lr=0.05).lr == 0.05
    assert TintConfig(method="adamerging").tint_layer is None and TintConfig().tint_layer == HEAD
    assert TintConfig.from_dict(TintConfig(method="adamerging").to_dict()).label() == "AdaMerging (layer-wise)"
    with pytest.raises(ValueError, match="method must be one of"):
        TintConfig(method="adam")


def test_baseline_grids_are_the_registry_grids_the_cli_always_used():
    from core.labs.tinting.baselines import BASELINE_GRIDS

    assert BASELINE_GRIDS["TA"] == tuple(round(0.1 * i, 1) for i in range(1, 11))
    assert BASELINE_GRIDS["TA+LiNeS"] == tuple(round(0.1 * i, 1) for i in range(1, 11))
    assert BASELINE_GRIDS["TIES"] == (0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5)


def test_comparison_table_lists_adamerging_next_to_tinting():
    base = {"individual": {"accuracy": {"a": 0.8, "b": 0.5}}, "TA": {"accuracy": {"a": 0.6, "b": 0.5}}}
    df = comparison_table(
        base, {"Tinting (head, filter on)": {"a": 0.8, "b": 0.5}, "AdaMerging (layer-wise)": {"a": 0.4, "b": 0.5}}
    )
    assert list(df.index) == ["TA", "Tinting (head, filter on)", "AdaMerging (layer-wise)", "individual"]
    assert df.loc["AdaMerging (layer-wise)", "avg_norm"] == pytest.approx((0.5 + 1.0) / 2)


# --------------------------------------------------------------------------- AdaMerging: the switch without a tint
def test_adamerging_model_has_no_tint_and_only_lambda_trains(synthetic):
    from core.labs.tinting.model import entropy_loss, softmax_entropy

    m = _model(synthetic, layer=None)
    assert len(m.tint) == 0 and not m.tinted
    assert [n for n, _ in m.named_trainable()] == ["lambdas"]
    assert m.num_trainable() == len(m.keys) * len(TASKS)
    frozen = {n: p.detach().clone() for n, p in m.visual.named_parameters()}
    heads = {t: h.clone() for t, h in m.heads.items()}
    loss, metrics = entropy_loss(m(torch.randn(4, 3, 32, 32), "b"), torch.tensor([0, 1, 2, 0]))
    assert metrics["kept"] == 1.0 and metrics["entropy"] == pytest.approx(float(loss.detach()))
    loss.backward()
    assert m.lambdas_raw.grad.abs().sum() > 0 and all(p.grad is None for p in m.visual.parameters())
    torch.optim.Adam([p for _, p in m.named_trainable()], lr=1e-3).step()
    assert all(torch.equal(p, frozen[n]) for n, p in m.visual.named_parameters())
    assert all(torch.equal(m.heads[t], heads[t]) and m.head(t)[0] is m.heads[t] for t in TASKS)
    assert m.task_params("a", m.merged_params()).keys() == set(m.keys)
    # the entropy of a uniform prediction is log C; of a one-hot-like one, ~0
    assert float(softmax_entropy(torch.zeros(1, 4))) == pytest.approx(float(torch.log(torch.tensor(4.0))))
    assert float(softmax_entropy(torch.tensor([[50.0, 0.0, 0.0]]))) < 1e-6


def test_adamerging_groups_one_optimizer_step_per_outer_step():
    from core.labs.tinting.run import step_groups

    groups = step_groups(step_batches(["a", "b", "c"], {"a": 10, "b": 20, "c": 30}, 4, seed=0), 3)
    first, second = next(groups), next(groups)
    assert {s for s, _, _ in first} == {0} and {s for s, _, _ in second} == {1}
    assert sorted(t for _, t, _ in first) == ["a", "b", "c"]


def test_adamerging_on_the_micro_zoo_lowers_entropy_and_trains_no_tint(micro_zoo):
    from core.labs.tinting.data import build, prediction_entropy, prepare_data, tint_tasks

    ms = micro_zoo
    cfg = TintConfig(method="adamerging", steps=10, batch=32, eval_every=5, seed=0)
    data = prepare_data(ms, tint_tasks(ms), "test")
    fresh = build(ms, cfg)
    before = prediction_entropy(fresh, data)
    res = tint(ms, cfg, run_log=False, data=data, eval_data=data)
    after = res.info["entropy"]
    assert sum(after.values()) < sum(before.values())
    assert len(res.model.tint) == 0 and res.model.num_trainable() == res.model.lambdas_raw.numel()
    assert not torch.equal(res.model.lambdas_raw, fresh.lambdas_raw)
    assert list(res.history["step"]) == list(range(1, 11)) and list(res.evals["step"].unique()) == [0, 5, 10]
    assert (res.history["kept"] == 1.0).all()
    entropy = res.evals.groupby("step")["entropy"].mean()  # the whole test split at steps 0, 5, 10
    assert entropy.is_monotonic_decreasing and entropy.iloc[-1] < entropy.iloc[0]


def test_job_runs_tinting_then_adamerging_and_reports_progress_before_step_one(micro_zoo):
    from core.labs.tinting.job import TintJob

    class Recording(TintJob):
        def __init__(self, *a, **kw):
            self.seen = []
            super().__init__(*a, **kw)

        def progress(self, done, total, label=""):
            self.seen.append((done, label))
            super().progress(done, total, label)

    cfgs = [TintConfig(steps=2, batch=8), TintConfig(method="adamerging", steps=2, batch=8)]
    job = Recording(micro_zoo, cfgs, threads=1, run_log=False)
    job.join(120)
    assert job.error is None and [r.config.method for r in job.results] == ["tinting", "adamerging"]
    assert job.result is job.results[-1] and job.first_progress is not None
    assert job.threads == 1 and [r["step"] for r in job.rows] == [1, 2] and job.cfg.method == "adamerging"
    first_step = next(i for i, (done, label) in enumerate(job.seen) if label == "step 1/2")
    stages = [label for _, label in job.seen[:first_step]]
    assert stages[0] == "expert pseudo-labels (test) 0/4" and "evaluating step 0" in stages
    assert all(done == 0 for done, _ in job.seen[:first_step])
