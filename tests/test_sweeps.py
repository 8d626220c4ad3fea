"""Sweeps: the grid is scored on val, the best val point is the one reported on test.

A tiny synthetic model set (4 blocks, 2 tasks, files on disk) and a fake evaluator whose
accuracy peaks at a different lambda on val and on test, so choosing on the wrong split shows.
"""

from __future__ import annotations

import threading

import pytest
import torch

import core.sweeps as sw
from core.checkpoints import save_state_dict
from core.merging import merge
from core.runtime.executors import LocalExecutor
from core.runtime.runlog import RunLog
from core.spec import EvalSpec, MergeSpec, ModelSetRef

L = 4
KEY = f"visual.transformer.resblocks.{L - 1}.mlp.c_fc.weight"
PEAK = {"val": 0.06, "test": 0.16}  # merged mean of KEY where accuracy peaks: lambda 0.3 (val), 0.8 (test)


def synthetic_model_set(tmp_path, tasks=("a", "b")):
    base = {f"visual.transformer.resblocks.{i}.mlp.c_fc.weight": torch.zeros(4, 4) for i in range(L)}
    base["visual.proj"] = torch.zeros(4, 2)
    save_state_dict(base, tmp_path / "base.safetensors")
    paths = {}
    for j, t in enumerate(tasks):
        noise = torch.Generator().manual_seed(j)
        sd = {k: v + 0.1 + 0.01 * torch.randn(v.shape, generator=noise) for k, v in base.items()}
        paths[t] = str(tmp_path / f"{t}.safetensors")
        save_state_dict(sd, paths[t])
    ref = ModelSetRef(zoo=None, base=str(tmp_path / "base.safetensors"), finetuned=tuple(sorted(paths.items())))
    ms = ref.load()
    ms.eval_tasks = list(tasks)
    return ref, ms


class FakeEvaluator:
    """accuracy = 1 - |mean(KEY) - PEAK[split]| (minus 0.01 per task index); records every call."""

    calls: list = []

    def __init__(self, ms, es: EvalSpec):
        self.split = es.split

    def accuracy(self, sd, tasks=None):
        FakeEvaluator.calls.append((self.split, tuple(tasks), sd is None))
        s = 0.0 if sd is None else float(sd[KEY].mean())
        return {t: 1 - abs(s - PEAK[self.split]) - 0.01 * i for i, t in enumerate(tasks)}


@pytest.fixture
def synth(tmp_path, monkeypatch):
    FakeEvaluator.calls = []
    monkeypatch.setattr(sw, "make_evaluator", FakeEvaluator)
    ref, ms = synthetic_model_set(tmp_path)
    return ref, ms, RunLog(tmp_path / "runs.sqlite")


def test_best_lambda_is_chosen_on_val_and_evaluated_on_test(synth):
    ref, ms, log = synth
    spec = sw.SweepSpec.make(
        ref, MergeSpec.make("task_arithmetic"), {"lambda": sw.default_grid("task_arithmetic", False)["lambda"]}
    )
    res = sw.run_sweep(spec, model_set=ms, run_log=log)
    assert list(res.frame["lambda"]) == [round(0.1 * i, 1) for i in range(1, 11)]
    assert res.best["lambda"] == 0.3  # the val peak; test would have picked 0.8
    assert res.best["avg_norm"] == res.frame["avg_norm"].max()
    # Grid points ran on val only; the one merged evaluation on test is the best point.
    merged_calls = [c for c in FakeEvaluator.calls if not c[2] and c[1] == ("a", "b")]
    assert [c[0] for c in merged_calls] == ["val"] * 10 + ["test"]
    sd = merge(ms.base(), ms.finetuned_all(), "task_arithmetic", coefficients=0.3)
    expected = 1 - abs(float(sd[KEY].mean()) - PEAK["test"])
    assert res.test["split"] == "test"
    assert res.test["accuracy"]["a"] == pytest.approx(expected)
    # Normalized = acc / fine-tuned acc on the same split.
    ft_a = res.refs_test.set_index("task").loc["a", "finetuned"]
    assert res.test["avg_norm"] == pytest.approx(
        (
            res.test["accuracy"]["a"] / ft_a
            + res.test["accuracy"]["b"] / res.refs_test.set_index("task").loc["b", "finetuned"]
        )
        / 2
    )


def test_sweep_is_logged_with_its_spec_and_results(synth):
    ref, ms, log = synth
    spec = sw.SweepSpec.make(ref, MergeSpec.make("ties", {"k": 0.5}), {"lambda": [0.2, 0.4]})
    res = sw.run_sweep(spec, model_set=ms, run_log=log)
    run = log.get(res.run_id)
    assert (run["kind"], run["status"], run["model_set"]) == ("sweep", "ok", ms.fingerprint())
    assert sw.SweepSpec.from_dict(run["config"]) == spec
    assert run["metrics"]["best"]["lambda"] == res.best["lambda"]
    assert run["metrics"]["test"]["avg_norm"] == pytest.approx(res.test["avg_norm"])
    assert len(run["metrics"]["grid"]) == 2


def test_lines_grid_uses_auto_alpha_and_every_beta(synth):
    ref, ms, log = synth
    spec = sw.SweepSpec.make(ref, MergeSpec.make("task_arithmetic"), {"alpha": ["auto", 0.2], "beta": [0.1, 0.5]})
    res = sw.run_sweep(spec, model_set=ms, log=False)
    assert len(res.frame) == 4
    auto = res.frame[res.frame["alpha_auto"]]
    assert auto["alpha"].tolist() == pytest.approx([0.5, 0.5])  # task arithmetic: alpha = 1/N
    # The last block gets alpha + beta: the merged value the fake evaluator sees.
    row = res.frame[(res.frame["alpha"] == 0.2) & (res.frame["beta"] == 0.5)].iloc[0]
    sd = merge(ms.base(), ms.finetuned_all(), "task_arithmetic", lines=(0.2, 0.5))
    assert row["a"] == pytest.approx(1 - abs(float(sd[KEY].mean()) - PEAK["val"]))


def test_direction_is_computed_once_per_direction_key(synth, monkeypatch):
    ref, ms, log = synth
    import core.merging

    calls = []
    real = core.merging.merged_direction
    monkeypatch.setattr(core.merging, "merged_direction", lambda *a, **k: calls.append(1) or real(*a, **k))
    sw._DIRECTIONS.clear()
    spec = sw.SweepSpec.make(ref, MergeSpec.make("task_arithmetic"), {"lambda": [0.1, 0.5, 0.9]})
    sw.run_sweep(spec, model_set=ms, log=False)
    assert len(calls) == 1


def test_cancel_stops_the_grid_and_skips_test(synth):
    ref, ms, log = synth
    cancel = threading.Event()

    def progress(done, total):
        if done >= 5:  # references (3 jobs) + 2 grid points
            cancel.set()

    spec = sw.SweepSpec.make(ref, MergeSpec.make("task_arithmetic"), {"lambda": [0.1 * i for i in range(1, 11)]})
    res = sw.run_sweep(spec, model_set=ms, run_log=log, progress=progress, cancel=cancel)
    assert res.cancelled
    assert len(res.frame) == 2
    assert res.test == {}
    assert not any(c[0] == "test" for c in FakeEvaluator.calls)
    assert log.get(res.run_id)["status"] == "cancelled"


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"lambda": []}, "at least one value"),
        ({"alpha": [0.1]}, "keys 'alpha' and 'beta'"),
        ({"lambda": ["x"]}, "must be numbers"),
    ],
)
def test_bad_grids_say_what_is_wrong(grid, message):
    with pytest.raises(ValueError, match=message):
        sw.SweepSpec.make(ModelSetRef(zoo="micro"), MergeSpec.make("task_arithmetic"), grid)


def test_lambda_grid_needs_a_method_with_lambda():
    with pytest.raises(ValueError, match="no global lambda"):
        sw.SweepSpec.make(ModelSetRef(zoo="micro"), MergeSpec.make("weight_average"), {"lambda": [0.1]})


def test_spec_json_round_trip_forces_val_for_the_grid():
    d = {
        "model_set": {"zoo": "micro"},
        "merge": {"method": "consensus", "params": {"k": 2}},
        "eval": {"split": "test", "subsample": 50},
        "grid": {"alpha": ["auto"], "beta": [0.1, 0.2]},
    }
    spec = sw.SweepSpec.from_dict(d)
    assert spec.eval.split == "val" and spec.eval.subsample == 50
    assert sw.SweepSpec.from_dict(spec.to_dict()) == spec
    assert [p.lines for p in spec.points()] == [("auto", 0.1), ("auto", 0.2)]


def test_micro_zoo_in_worker_processes_matches_in_process(micro_zoo, tmp_path, monkeypatch):
    """Workers re-load the zoo from its ModelSetRef and give the in-process numbers."""
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # where ModelSetRef(zoo=...) looks
    ref = ModelSetRef(zoo="micro")
    spec = sw.SweepSpec.make(
        ref, MergeSpec.make("task_arithmetic"), {"lambda": [0.2, 0.6]}, EvalSpec(subsample=30), test_subsample=30
    )
    serial = sw.run_sweep(spec, model_set=micro_zoo, log=False)
    with LocalExecutor(processes=1) as ex:  # one spawned worker: the point is the re-load, not speed
        pooled = sw.run_sweep(spec, executor=ex, run_log=RunLog(tmp_path / "r.sqlite"))
    cols = ["lambda", *serial.tasks, "avg_abs", "avg_norm"]
    assert pooled.frame[cols].equals(serial.frame[cols])
    assert pooled.test == serial.test


def test_sweep_figures_mark_the_best_point():
    import pandas as pd

    from core.plots.sweeps import sweep_figure

    lam = pd.DataFrame(
        {"lambda": [0.1, 0.2, 0.3], "avg_norm": [0.5, 0.7, 0.6], "avg_abs": [0.4, 0.5, 0.45], "a": [0.4, 0.5, 0.45]}
    )
    fig = sweep_figure(lam, best=lam.iloc[1].to_dict(), test={"avg_norm": 0.66, "avg_abs": 0.5}, tasks=["a"])
    star = fig.data[-1]
    assert (star.x[0], star.y[0]) == (0.2, 70.0) and "test: 66.0% norm" in star.hovertext[0]
    (note,) = fig.layout.annotations
    assert (note.x, note.y) == (0.2, 70.0) and note.text == "λ=0.2<br>test: 66.0% norm, 50.0% abs"
    assert note.ay > 0 and note.yanchor == "top"  # below the star, the curve's top: never cut off by the plot's top
    # At an end of the grid the callout points inwards (a centred label lost its first letters at λ = 0.1).
    first = sweep_figure(lam, best=lam.iloc[0].to_dict(), test={"avg_norm": 0.6, "avg_abs": 0.4}).layout.annotations[0]
    last = sweep_figure(lam, best=lam.iloc[2].to_dict()).layout.annotations[0]
    assert (first.ax > 0, first.xanchor) == (True, "left") and (last.ax < 0, last.xanchor) == (True, "right")

    grid = pd.DataFrame(
        [{"alpha": a, "beta": b, "avg_norm": a + b, "avg_abs": a} for a in (0.1, 0.2) for b in (0.5, 1.0)]
    )
    heat = sweep_figure(grid, best=grid.iloc[3].to_dict())
    assert heat.data[0].type == "heatmap" and heat.data[0].z.shape == (2, 2)
    assert (heat.data[-1].x[0], heat.data[-1].y[0]) == ("1", "0.2")
    one_alpha = grid[grid["alpha"] == 0.1]
    line = sweep_figure(one_alpha, best=one_alpha.iloc[1].to_dict())
    assert line.data[0].type == "scatter"  # alpha = auto: a line over beta
    assert line.layout.annotations[0].text == "β=1" and line.layout.annotations[0].ax < 0


def test_lines_sweep_after_a_lambda_sweep_reuses_the_direction_and_gets_auto_alpha(synth):
    ref, ms, log = synth
    sw.run_sweep(sw.SweepSpec.make(ref, MergeSpec.make("ties"), {"lambda": [0.5]}), model_set=ms, log=False)
    res = sw.run_sweep(
        sw.SweepSpec.make(ref, MergeSpec.make("ties"), {"alpha": ["auto"], "beta": [0.5]}), model_set=ms, log=False
    )
    d = sw._direction(ref.to_dict(), ms, MergeSpec.make("ties"))["direction"]
    assert res.frame["alpha"].iloc[0] == pytest.approx(d.auto_alpha())


def test_micro_zoo_sweep_on_a_local_ray_matches_the_process_pool(micro_zoo, tmp_path, monkeypatch):
    """The distributed engine: a local Ray started by the test gives exactly the process pool's numbers."""
    ray = pytest.importorskip("ray", reason="ray is in requirements-dev.txt; install it")
    from core.runtime.executors import RayExecutor

    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # Ray workers get it at init
    ref = ModelSetRef(zoo="micro")
    spec = sw.SweepSpec.make(
        ref, MergeSpec.make("task_arithmetic"), {"lambda": [0.3, 0.5]}, EvalSpec(subsample=30), test_subsample=30
    )
    with LocalExecutor(processes=1) as ex:
        pooled = sw.run_sweep(spec, executor=ex, log=False)
    try:
        on_ray = sw.run_sweep(spec, executor=RayExecutor("local"), log=False)
    finally:
        ray.shutdown()
    cols = ["lambda", *pooled.tasks, "avg_abs", "avg_norm"]
    assert on_ray.frame[cols].equals(pooled.frame[cols])
    assert on_ray.test == pooled.test and "Ray" in on_ray.executor


def test_parse_values_reads_commas_and_semicolons_and_names_a_bad_part():
    assert sw.parse_values("0.1, 0.2;0.3,, ", "λ values") == [0.1, 0.2, 0.3]
    assert sw.parse_values("auto, 0.5", "α values", allow_auto=True) == ["auto", 0.5]
    with pytest.raises(ValueError, match=r"λ values: 'auto' is not a number; separate"):
        sw.parse_values("auto", "λ values")
    with pytest.raises(ValueError, match=r"β values: '0\.1 0\.2' is not a number or \"auto\""):
        sw.parse_values("0.1 0.2", "β values", allow_auto=True)
