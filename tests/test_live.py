"""The live loop (core.live): caching, the numbers it derives, and agreement with core called directly.

The first tests use a tiny synthetic model set and a transparent fake evaluator
(accuracy = a smooth function of the weights), so they pin the bookkeeping in
milliseconds; the last ones run the real micro zoo.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.checkpoints import save_state_dict
from core.live import (
    ALPHAS,
    LiveMerger,
    default_subsample,
    manifest_accuracies,
    single_task_spec,
    uniform_spec,
)
from core.live_report import best_alpha, comparison_table
from core.merging import merge
from core.modelset import ModelSet
from core.spec import EvalSpec, MergeSpec

L = 4


def _keys():
    ks = ["visual.conv1.weight", "visual.ln_post.weight"]
    ks += [f"visual.transformer.resblocks.{i}.mlp.c_fc.weight" for i in range(L)]
    return ks


@pytest.fixture
def toy_set(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = {k: torch.randn(3, 3, generator=g) for k in _keys()}
    base["logit_scale"] = torch.tensor(4.0)  # a non-visual key passes through
    save_state_dict(base, tmp_path / "base.safetensors")
    paths = {}
    for t in ("a", "b", "c"):
        ft = {k: v + 0.5 * torch.randn(3, 3, generator=g) for k, v in base.items() if k.startswith("visual.")}
        save_state_dict(ft, tmp_path / f"{t}.safetensors")
        paths[t] = tmp_path / f"{t}.safetensors"
    return ModelSet(
        name="toy", base_path=tmp_path / "base.safetensors", finetuned_paths=paths, eval_tasks=["a", "b", "c"]
    )


class FakeEvaluator:
    """accuracy_t(theta) = exp(-||theta - theta_t||^2 / 10): highest at the task's own fine-tune."""

    def __init__(self, ms):
        self.ms = ms
        self.calls = 0
        self.task_names = list(ms.eval_tasks)

    def accuracy(self, sd=None, tasks=None):
        self.calls += 1
        sd = self.ms.base() if sd is None else sd
        out = {}
        for t in tasks or self.task_names:
            ft = self.ms.finetuned(t)
            d = sum(float(((sd[k].float() - ft[k].float()) ** 2).sum()) for k in ft)
            out[t] = math.exp(-d / 10)
        return out


@pytest.fixture
def toy_live(toy_set):
    ev = FakeEvaluator(toy_set)
    return LiveMerger(toy_set, ev, evaluator_for=lambda es: ev), ev


def test_slider_moves_reuse_one_direction(toy_live):
    live, _ = toy_live
    for a in (1.0, 0.7, 0.3):
        live.evaluate(single_task_spec("a", a))
        live.evaluate(uniform_spec("a", a))
    assert live.stats["direction_builds"] == 1  # LiNeS alpha/beta and a scalar lambda only re-apply it


def test_repeated_spec_is_served_from_the_cache(toy_live):
    live, ev = toy_live
    live.reference_rows()
    before = ev.calls
    r1 = live.evaluate(single_task_spec("b", 0.4))
    r2 = live.evaluate(single_task_spec("b", 0.4))
    assert ev.calls == before + 1
    assert r2["cached"] and not r1["cached"]
    assert r1["accuracy"] == r2["accuracy"]


def test_state_dict_equals_core_merge(toy_live, toy_set):
    live, _ = toy_live
    base, fts = toy_set.base(), toy_set.finetuned_all()
    cases = [
        (single_task_spec("a", 0.3), dict(finetuned_sds={"a": fts["a"]}, method="task_arithmetic", lines=(0.3, 0.7))),
        (uniform_spec("c", 0.6), dict(finetuned_sds={"c": fts["c"]}, method="task_arithmetic", coefficients=0.6)),
        (
            MergeSpec.make("ties", {"k": 0.5, "coefficients": 0.8}, lines=("auto", 0.5)),
            dict(finetuned_sds=fts, method="ties", k=0.5, agg="mean", coefficients=0.8, lines=("auto", 0.5)),
        ),
        (
            MergeSpec.make("task_arithmetic", {"coefficients": [0.1, 0.2, 0.9]}),
            dict(finetuned_sds=fts, method="task_arithmetic", coefficients=[0.1, 0.2, 0.9]),
        ),
        (
            MergeSpec.make("task_arithmetic", curve=(0.1, 0.5, 0.2, 1.0), outside=0.05),
            dict(finetuned_sds=fts, method="task_arithmetic", curve=[0.1, 0.5, 0.2, 1.0], outside=0.05),
        ),
    ]
    for spec, kw in cases:
        got = live.merged_state_dict(spec)
        want = merge(base, **kw)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), (spec, k)


def test_scalar_lambda_is_the_specs_own_not_the_cached_directions(toy_live, toy_set):
    live, _ = toy_live
    live.merged_state_dict(uniform_spec("c", 0.9))  # builds and caches the direction with lambda 0.9
    got = live.merged_state_dict(uniform_spec("c", 0.2))
    want = merge(toy_set.base(), {"c": toy_set.finetuned("c")}, "task_arithmetic", coefficients=0.2)
    assert live.stats["direction_builds"] == 1
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_single_task_numbers(toy_live):
    live, _ = toy_live
    refs = live.reference_rows().set_index("task")
    r = live.evaluate(single_task_spec("a", 0.5))
    acc = r["accuracy"]
    assert r["target"] == "a" and set(r["control"]) == {"b", "c"}
    assert r["target_norm"] == pytest.approx(acc["a"] / refs.loc["a", "finetuned"])
    ctrl_norm = (acc["b"] / refs.loc["b", "zero_shot"] + acc["c"] / refs.loc["c", "zero_shot"]) / 2
    assert r["control_norm"] == pytest.approx(ctrl_norm)
    assert r["control_acc"] == pytest.approx((acc["b"] + acc["c"]) / 2)
    assert r["score"] == pytest.approx(2 * r["target_norm"] + ctrl_norm)
    # alpha = 1, beta = 0 is the fine-tuned model itself: target_norm 1.
    assert live.evaluate(single_task_spec("a", 1.0))["target_norm"] == pytest.approx(1.0, abs=1e-5)


def test_multi_task_means_are_over_the_merged_tasks(toy_live):
    live, _ = toy_live
    r = live.evaluate(MergeSpec.make("task_arithmetic", {"coefficients": 0.4}, tasks=("a", "b")))
    assert r["tasks"] == ["a", "b"] and "target" not in r
    assert r["mean"] == pytest.approx((r["accuracy"]["a"] + r["accuracy"]["b"]) / 2)
    assert r["normalized_mean"] == pytest.approx((r["normalized"]["a"] + r["normalized"]["b"]) / 2)
    assert set(r["accuracy"]) == {"a", "b", "c"}  # still evaluated on every task


def test_delta_to_task_arithmetic_is_zero_for_task_arithmetic(toy_live):
    live, _ = toy_live
    d = live.delta_to_task_arithmetic(MergeSpec.make("task_arithmetic", {"coefficients": 0.3}), coefficients=0.3)
    assert d["mean"] == 0 and all(v == 0 for v in d["accuracy"].values())
    spec = MergeSpec.make("task_arithmetic", lines=("auto", 0.5))
    d = live.delta_to_task_arithmetic(spec, coefficients=0.3)
    assert d["task_arithmetic_spec"].param_dict["coefficients"] == 0.3
    assert d["mean"] == pytest.approx(live.evaluate(spec)["mean"] - d["task_arithmetic"]["mean"])


def test_alpha_sweep_and_choice(toy_live):
    live, _ = toy_live
    seen = []
    df = live.alpha_sweep("a", progress=lambda i, n, msg: seen.append((i, n)))
    assert len(df) == 2 * len(ALPHAS) and seen[-1] == (22, 22)
    lines = df[df["kind"] == "LiNeS"]
    assert list(lines["alpha"]) == list(ALPHAS)
    assert lines["beta"].tolist() == pytest.approx([1 - a for a in ALPHAS])
    # Uniform scaling and LiNeS agree at alpha = 1 (both are the fine-tuned model).
    both = df[df["alpha"] == 1.0].set_index("kind")
    assert both.loc["LiNeS", "target_acc"] == pytest.approx(both.loc["uniform", "target_acc"], abs=1e-6)
    best = best_alpha(df)
    assert best["score"] == lines["score"].max()


def test_reference_rows_come_from_the_manifest_when_it_fits(toy_set, tmp_path):
    ev = FakeEvaluator(toy_set)
    toy_set.zoo_dir = tmp_path
    test = {
        "zero_shot": {"a": 0.1, "b": 0.2, "c": 0.3},
        "finetuned": {"a": 0.9, "b": 0.8, "c": 0.7},
        "cross": {"a": {"a": 0.9, "b": 0.15, "c": 0.25}},
    }
    (tmp_path / "manifest.json").write_text(json.dumps({"tasks": ["a", "b", "c"], "accuracy": {"test": test}}))
    live = LiveMerger(toy_set, ev, evaluator_for=lambda es: ev)
    refs = live.reference_rows()
    assert set(refs["source"]) == {"manifest"}
    assert refs.set_index("task").loc["b", "finetuned"] == 0.8
    assert live.finetuned_accuracy("a") == {"a": 0.9, "b": 0.15, "c": 0.25}
    assert ev.calls == 0
    # No val numbers in the manifest, and a subsample does not match its full split: evaluate instead.
    assert set(live.reference_rows("val")["source"]) == {"evaluated"}
    live_sub = LiveMerger(toy_set, ev, eval_spec=EvalSpec(subsample=10))
    assert set(live_sub.reference_rows()["source"]) == {"evaluated"}


def test_manifest_accuracies_reads_the_zoo_layout():
    man = {"accuracy": {"test": {"zero_shot": {"x": 0.2}, "finetuned": {"x": 0.9}}}}
    assert manifest_accuracies(man, "test") == {"zero_shot": {"x": 0.2}, "finetuned": {"x": 0.9}, "cross": {}}
    assert manifest_accuracies(man, "val") is None
    assert manifest_accuracies({}) is None


def test_comparison_table_is_long_and_normalized(toy_live):
    live, _ = toy_live
    r = live.evaluate(MergeSpec.make("task_arithmetic"))
    t = comparison_table(r, live.reference_rows(), {"task arithmetic": r["accuracy"]})
    assert set(t["model"]) == {"zero-shot", "merged", "task arithmetic", "fine-tuned"}
    assert (t[t["model"] == "fine-tuned"]["normalized"] == 1.0).all()


# --------------------------------------------------------------------------- the real micro zoo
def test_micro_zoo_live_equals_core(micro_zoo):
    from core.evaluate import Evaluator

    ev = Evaluator.for_model_set(micro_zoo, split="test")
    live = LiveMerger(micro_zoo, ev)
    target = micro_zoo.tasks[0]
    for spec, kw in [
        (single_task_spec(target, 0.2), dict(method="task_arithmetic", lines=(0.2, 0.8))),
        (uniform_spec(target, 0.5), dict(method="task_arithmetic", coefficients=0.5)),
    ]:
        r = live.evaluate(spec)
        sd = merge(micro_zoo.base(), {target: micro_zoo.finetuned(target)}, **kw)
        assert r["accuracy"] == ev.accuracy(sd)
    r = live.evaluate(MergeSpec.make("task_arithmetic", {"coefficients": 0.3}))
    assert r["accuracy"] == ev.accuracy(
        merge(micro_zoo.base(), micro_zoo.finetuned_all(), "task_arithmetic", coefficients=0.3)
    )


def test_default_subsample_is_everything_for_small_models_and_100_for_big_ones(toy_set):
    assert default_subsample(toy_set) is None
    assert default_subsample(toy_set, large_mb=0) == 100


def test_directions_are_kept_within_the_memory_budget(toy_set):
    ev = FakeEvaluator(toy_set)
    roomy = LiveMerger(toy_set, ev)
    for t in ("a", "b", "c", "a", "b", "c"):
        roomy.merged_state_dict(single_task_spec(t, 0.5))
    assert roomy.stats["direction_builds"] == 3  # every target's direction stays cached
    tight = LiveMerger(toy_set, ev, max_direction_mb=0)
    for t in ("a", "b", "a"):
        tight.merged_state_dict(single_task_spec(t, 0.5))
    assert tight.stats["direction_builds"] == 3 and len(tight._directions) == 1


def test_anytime_rounds_sharpen_and_end_exactly_at_evaluate(micro_zoo):
    """Partial results carry growing image counts and Wilson intervals that hold the final accuracy;
    the last yield equals `evaluate` exactly and is the only one cached."""
    from core.evaluate import Evaluator

    ev = Evaluator.for_model_set(micro_zoo, "test")
    live = LiveMerger(micro_zoo, evaluator_for=lambda es: ev)
    spec = single_task_spec(micro_zoo.tasks[0], 0.35)
    steps = list(live.evaluate_rounds(spec, first=4))
    assert steps[-1]["final"] and all(not s["final"] for s in steps[:-1])
    final = steps[-1]
    assert (
        final["n"] == final["total"]
        and final["accuracy"] == LiveMerger(micro_zoo, evaluator_for=lambda es: ev).evaluate(spec)["accuracy"]
    )
    for s in steps[:-1]:
        for t, (lo, hi) in s["interval"].items():
            assert 0 <= lo <= s["accuracy"][t] <= hi <= 1 and s["n"][t] < s["total"][t]
    ns = [sum(s["n"].values()) for s in steps]
    assert ns == sorted(ns) and len(set(ns)) == len(ns)  # every round adds images
    again = list(live.evaluate_rounds(spec))
    assert len(again) == 1 and again[0]["cached"] and again[0]["accuracy"] == final["accuracy"]


def test_abandoned_rounds_cache_nothing(micro_zoo):
    from core.evaluate import Evaluator

    ev = Evaluator.for_model_set(micro_zoo, "test")
    live = LiveMerger(micro_zoo, evaluator_for=lambda es: ev)
    spec = single_task_spec(micro_zoo.tasks[1], 0.45)
    first = next(iter(live.evaluate_rounds(spec, first=4)))  # a newer slider position arrives: stop iterating
    assert not first["cached"]
    assert live.stats["evaluations"] == 0 and not next(iter(live.evaluate_rounds(spec)))["cached"]


def test_a_cancel_between_batches_stops_the_evaluation_and_caches_nothing(micro_zoo):
    """The live pages pass `cancel` (a newer slider position): it is checked between batches, so the
    stale evaluation stops after the batch in flight and nothing partial is cached or logged."""
    from core.evaluate import Evaluator

    ev = Evaluator.for_model_set(micro_zoo, "test").with_settings(batch_size=8)
    live = LiveMerger(micro_zoo, evaluator_for=lambda es: ev)
    spec = single_task_spec(micro_zoo.tasks[0], 0.55)
    checks = []

    def cancel():
        checks.append(1)
        return len(checks) > 2  # the user moves the slider while the third batch is due

    steps = list(live.evaluate_rounds(spec, cancel=cancel))
    assert len(checks) == 3 and all(not s["final"] for s in steps)
    assert live.stats["evaluations"] == 0
    assert next(iter(live.evaluate_rounds(spec, first=10**6)))["final"]  # the next position runs to the end
