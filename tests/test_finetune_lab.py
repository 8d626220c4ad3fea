from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from core.labs.finetune.compare import markdown_table, summary_table
from core.labs.finetune.config import LabConfig, parse_method
from core.labs.finetune.data import low_data_indices
from core.labs.finetune.export import save_lab_model, with_lab_models
from core.labs.finetune.run import finetune
from core.labs.finetune.terms import ScopeAlignment
from core.labs.finetune.wsa import barrier, interpolation_curve, wsa_experiment, wsa_markdown
from core.scopes import scope_dict, scope_fusion


def test_methods_parse_into_a_rule_and_wsa():
    assert parse_method("uniform") == ("uniform", False)
    assert parse_method("wsa") == ("uniform", True)
    assert parse_method("TempBalance+WSA") == ("tempbalance", True)
    assert parse_method("model_balancing") == ("model_balancing", False)
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("adamw")
    assert not LabConfig(task="digits", method="wsa", wsa_weight=0.0).uses_wsa


def test_low_data_split_is_seeded_class_balanced_and_shards_are_disjoint():
    y = np.arange(3000) % 10
    a = low_data_indices(y, 0.01, seed=0)
    assert len(a) == 30 and np.array_equal(a, low_data_indices(y, 0.01, seed=0))
    assert np.bincount(y[a], minlength=10).tolist() == [3] * 10  # 30 images: 3 per class
    assert not np.array_equal(a, low_data_indices(y, 0.01, seed=1))
    assert len(low_data_indices(y, 0.005, seed=0)) == 15  # 0.5%: 15 images, at most 2 per class
    assert np.bincount(y[low_data_indices(y, 0.005, seed=0)], minlength=10).max() == 2
    s0, s1 = low_data_indices(y, 0.5, 3, shard=0), low_data_indices(y, 0.5, 3, shard=1)
    assert len(s0) == len(s1) == 1500 and not set(s0) & set(s1)
    assert len(low_data_indices(y, 1.0, 0)) == 3000


def test_wsa_hook_is_zero_at_the_target_and_its_gradient_pulls_the_scope_toward_it():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 16) * 2.0 + 0.5)  # scope (≈0.5, ≈2)
    target = {"w": (0.0, 1.0)}
    hook = ScopeAlignment([("w", w)], target, weight=3.0)
    at_target = ScopeAlignment([("w", w)], scope_dict({"w": w.detach()}), weight=3.0)
    assert at_target.extra_loss(0).item() == pytest.approx(0.0, abs=1e-6)
    loss = hook.extra_loss(0)
    assert loss.item() == pytest.approx(3.0 * hook.distance(), rel=1e-6) and loss.item() > 0
    loss.backward()
    w0 = w.detach()
    w2 = w0 - 0.05 * w.grad  # one gradient step moves the mean toward 0 and the spread toward 1
    assert abs(w2.mean().item()) < abs(w0.mean().item())
    assert abs(w2.std(correction=0).item() - 1.0) < abs(w0.std(correction=0).item() - 1.0)
    assert hook.before_step(0, None) == {"scope_kl": pytest.approx(hook.distance())}
    assert ScopeAlignment([("w", w)], target, weight=0.0).extra_loss(0) is None


def test_scope_fusion_is_mean_of_means_and_pooled_std():
    fused = scope_fusion([{"l": (0.0, 1.0)}, {"l": (2.0, 3.0)}])["l"]
    assert fused[0] == pytest.approx(1.0)
    assert fused[1] == pytest.approx(np.sqrt((1 + 9) / 2 + (0 + 4) / 2 - 1.0))  # mixture std


class _LinearEvaluator:
    """A stand-in for core.evaluate.Evaluator: logits = x @ W.T for the state dict's 'visual.w'."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 5, generator=g)
        self.tasks = {"t": SimpleNamespace(labels=torch.randint(0, 3, (64,), generator=g))}

    def logits(self, sd, tasks):
        return {"t": self.x @ sd["visual.w"].T}


def test_barrier_curve_ends_equal_the_endpoints_loss_and_accuracy():
    ev = _LinearEvaluator()
    a, b = {"visual.w": torch.randn(3, 5)}, {"visual.w": torch.randn(3, 5)}
    curve = interpolation_curve(ev, ["t"], a, b, num_points=5)
    assert curve["t"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    for t, sd in ((0, a), (-1, b)):
        lg = ev.logits(sd, ["t"])["t"]
        assert curve["loss"].iloc[t] == pytest.approx(float(F.cross_entropy(lg, ev.tasks["t"].labels)))
        assert curve["accuracy"].iloc[t] == pytest.approx(float((lg.argmax(1) == ev.tasks["t"].labels).float().mean()))
        assert curve["loss_excess"].iloc[t] == pytest.approx(0.0, abs=1e-9)
    mid = {"visual.w": 0.5 * (a["visual.w"] + b["visual.w"])}
    chord = 0.5 * (curve["loss"].iloc[0] + curve["loss"].iloc[-1])
    lg = ev.logits(mid, ["t"])["t"]
    assert curve["loss_excess"].iloc[2] == pytest.approx(float(F.cross_entropy(lg, ev.tasks["t"].labels)) - chord)
    assert barrier(curve)["loss_barrier"] == pytest.approx(curve["loss_excess"].max())


def test_summary_table_reports_mean_std_and_paired_gain():
    rows = [
        {"fraction": f, "method": m, "seed": s, "accuracy": acc, "train_size": int(f * 100), "zero_shot": 0.2}
        for f, base in ((0.1, 0.5), (1.0, 0.8))
        for s, noise in ((0, 0.0), (1, 0.1))
        for m, acc in (("uniform", base + noise), ("tempbalance", base + noise + 0.05))
    ]
    summary = summary_table(pd.DataFrame(rows))
    tb = summary[(summary["method"] == "tempbalance") & (summary["fraction"] == 0.1)].iloc[0]
    assert tb["mean"] == pytest.approx(0.6) and tb["std"] == pytest.approx(np.std([0.55, 0.65], ddof=1))
    assert tb["gain_vs_uniform"] == pytest.approx(0.05) and tb["n"] == 2
    md = markdown_table(summary)
    assert "| 0.1 | 10 | 55.0 ± 7.1 | 60.0 ± 7.1 (+5.0) |" in md


# ------------------------------------------------------------------------------ on the micro zoo


@pytest.fixture
def lab(micro_zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "cache"))
    return micro_zoo


def test_finetune_records_multipliers_alpha_and_the_run(lab):
    from core.evaluate import Evaluator
    from core.runtime.runlog import RunLog

    task = lab.eval_tasks[0]
    cfg = LabConfig(task=task, fraction=0.1, method="tempbalance", steps=4, every=2, batch_size=8, lr=1e-3, n_train=400)
    r = finetune(lab, cfg)
    assert r.train_size == 40 and len(r.history) >= 1 and not r.cancelled
    assert sorted(r.multipliers["step"].unique()) == [0, 2]
    inner = r.multipliers[r.multipliers["step"] == 0]["multiplier"].to_numpy()[1:-1]
    assert inner.min() == pytest.approx(0.5) and inner.max() == pytest.approx(1.5)
    assert list(r.alpha_before["unit"]) == list(r.alpha_after["unit"])
    assert all(k.startswith("visual.") for k in r.state_dict)
    assert r.accuracy == pytest.approx(Evaluator.for_model_set(lab, "test").accuracy(r.state_dict, [task])[task])
    run = RunLog().get(r.run_id)
    assert run["kind"] == "finetune" and run["status"] == "ok" and run["config"]["lab"]["method"] == "tempbalance"
    # into the model set: saved as safetensors, registered next to the zoo's own fine-tunes
    path = save_lab_model(r)
    ref = with_lab_models(lab, {"lab-model": path})
    ms2 = ref.load()
    assert set(ms2.tasks) == set(lab.tasks) | {"lab-model"}
    assert torch.equal(ms2.finetuned("lab-model")["visual.proj"], r.state_dict["visual.proj"])


def test_wsa_experiment_compares_barrier_and_merge_with_and_without(lab):
    a, b = lab.eval_tasks[:2]
    res = wsa_experiment(
        lab,
        [a, b],
        weight=10.0,
        steps=3,
        batch_size=8,
        lr=1e-3,
        n_train=400,
        fraction=0.1,
        num_points=3,
        lambdas=(0.5,),
    )
    assert list(res.summary["variant"]) == ["without WSA", "with WSA"]
    assert set(res.curves["t"]) == {0.0, 0.5, 1.0}
    with_wsa = res.results["with WSA: A"]
    assert with_wsa.config.method == "wsa" and with_wsa.config.wsa_weight == 10.0
    assert {"pretrained", f"with WSA: B ({b})"} <= set(res.scopes)
    assert "| with WSA |" in wsa_markdown(res)


def test_cli_prints_the_accuracy_table(lab, capsys):
    from core.__main__ import main

    cache = str(lab.zoo_dir.parent)
    task = lab.eval_tasks[0]
    argv = ["finetune", "--zoo", "micro", "--cache", cache, "--task", task, "--fractions", "0.1"]
    argv += ["--methods", "uniform,model_balancing", "--seeds", "1", "--steps", "2", "--batch", "8"]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0 and "| fraction | train images | uniform lr | Model Balancing |" in out


def test_task_arithmetic_merge_picks_lambda_by_normalized_val_accuracy(monkeypatch):
    """λ = 1.0 has the higher mean absolute val accuracy, λ = 0.5 the higher normalized one: the
    selector (core.select.choose_on_val) must pick 0.5, and report it on test."""
    from core.labs.finetune import wsa

    # accuracy of task A reads the merged weight's first entry, task B's the second
    table = {"A": {0.5: 0.9, 1.0: 1.0}, "B": {0.5: 0.2, 1.0: 0.15}}
    own = {"A": 1.0, "B": 0.2}  # each fine-tune on its own task (its entry is 1.0; the other is 0)

    class FakeEvaluator:
        def __init__(self, split):
            self.split = split

        def accuracy(self, sd, tasks):
            w = sd["visual.w"]
            out = {}
            for t in tasks:
                v = round(float(w[0 if t == "A" else 1]), 2)
                out[t] = own[t] if (float(w[0]), float(w[1])) in ((1.0, 0.0), (0.0, 1.0)) else table[t][v]
            return out

    monkeypatch.setattr(wsa, "evaluator", lambda ms, tasks, split="test": FakeEvaluator(split))
    ms = SimpleNamespace(base=lambda: {"visual.w": torch.zeros(2)})
    sds = [{"visual.w": torch.tensor([1.0, 0.0])}, {"visual.w": torch.tensor([0.0, 1.0])}]
    out = wsa.task_arithmetic_merge(ms, sds, ["A", "B"], lambdas=(0.5, 1.0))
    assert out["lambda"] == 0.5
    assert out["val_normalized"] == pytest.approx((0.9 / 1.0 + 0.2 / 0.2) / 2)
    assert out["mean_accuracy"] == pytest.approx(0.55) and out["accuracy"] == {"A": 0.9, "B": 0.2}
    with pytest.raises(ValueError, match="sd_tasks"):
        wsa.task_arithmetic_merge(ms, sds, ["A", "B", "C"])
