"""NaN/Inf inputs: every merge refuses them by default with a NonFiniteError naming the checkpoint
and the tensor (core.merging.streaming reads and checks each tensor once), an explicit
allow_nonfinite=True merges with a warning, and the live loop, sweeps and the CLI surface the
same error instead of numbers."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from test_sweeps import FakeEvaluator, synthetic_model_set  # tests/ is on sys.path

import core
import core.merging.streaming as streaming
import core.sweeps as sw
from core.checkpoints import save_state_dict
from core.cli.commands import main
from core.errors import NonFiniteError
from core.merging import METHODS, merge, merged_direction
from core.runtime.runlog import RunLog
from core.spec import MergeSpec, RunConfig

MATRIX = "visual.transformer.resblocks.1.mlp.c_fc.weight"
KEYS = {
    "visual.conv1.weight": (4, 3, 2, 2),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (12, 4),
    MATRIX: (8, 4),
    "visual.transformer.resblocks.1.ln_1.bias": (4,),
    "visual.ln_post.weight": (4,),
}


def models(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in KEYS.items()}
    base["logit_scale"] = torch.tensor(4.6)
    fts = {
        f"t{i}": {k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items() if k in KEYS}
        for i in range(n)
    }
    return base, fts


def spoil(t: torch.Tensor, value: float, n: int = 2) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[:n] = value
    return t


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["base", "t1"])
def test_every_method_refuses_nonfinite_inputs_naming_checkpoint_and_tensor(method, value, where):
    base, fts = models()
    if where == "base":
        base[MATRIX] = spoil(base[MATRIX], value)
    else:
        fts[where][MATRIX] = spoil(fts[where][MATRIX], value)
    with pytest.raises(NonFiniteError) as e:
        merge(base, fts, method)
    assert (e.value.source, e.value.key, e.value.n_bad, e.value.numel) == (where, MATRIX, 2, 32)
    assert f"{where}: tensor {MATRIX!r} holds 2 non-finite value(s)" in str(e.value)
    with pytest.raises(NonFiniteError):
        merged_direction(base, fts, method)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_opting_in_merges_with_a_warning(method):
    base, fts = models()
    fts["t0"][MATRIX] = spoil(fts["t0"][MATRIX], float("nan"), 1)
    with pytest.warns(RuntimeWarning, match=f"t0: tensor '{MATRIX}' holds 1 non-finite"):
        out = merge(base, fts, method, allow_nonfinite=True)
    assert out.keys() == base.keys()
    # the finite tensors are merged as usual; the spoiled matrix carries the NaN where the method uses it
    assert all(torch.isfinite(out[k]).all() for k in KEYS if k != MATRIX and not k.endswith("in_proj_weight"))


def test_opt_in_for_finite_inputs_changes_nothing_and_warns_nothing():
    base, fts = models()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = merge(base, fts, "ties", allow_nonfinite=True)
    b = merge(base, fts, "ties")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_base_tensors_that_only_pass_through_are_checked_too():
    base, fts = models()
    base["logit_scale"] = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteError, match="base: tensor 'logit_scale'"):
        merge(base, fts, "task_arithmetic")


def test_half_precision_inputs_are_checked():
    base, fts = models()
    fts["t2"][MATRIX] = spoil(fts["t2"][MATRIX], float("inf")).half()
    with pytest.raises(NonFiniteError, match="t2: tensor"):
        merge(base, fts, "task_arithmetic")


def test_each_tensor_is_checked_once_even_when_a_method_reads_it_several_times(monkeypatch):
    base, fts = models()
    calls = []
    real = streaming.check_finite
    monkeypatch.setattr(streaming, "check_finite", lambda t, s, k, a: calls.append((s, k)) or real(t, s, k, a))
    merge(base, fts, "ties")  # three streaming passes (two for the threshold, one to merge)
    assert sorted(calls) == sorted({(s, k) for s in ["base", *fts] for k in KEYS})


def test_task_vector_refuses_nonfinite_and_can_opt_in():
    base, fts = models(1)
    ft = dict(fts["t0"])
    ft[MATRIX] = spoil(ft[MATRIX], float("nan"), 3)
    with pytest.raises(NonFiniteError, match=f"fine-tuned: tensor '{MATRIX}' holds 3"):
        core.task_vector(base, ft)
    with pytest.raises(NonFiniteError, match="mytask: tensor"):
        core.task_vector(base, ft, name="mytask")
    bad_base = {**base, MATRIX: spoil(base[MATRIX], float("inf"))}
    with pytest.raises(NonFiniteError, match="base: tensor"):
        core.task_vector(bad_base, fts["t0"])
    with pytest.warns(RuntimeWarning, match="allow_nonfinite=True"):
        tv = core.task_vector(base, ft, allow_nonfinite=True)
    assert int(torch.isnan(tv[MATRIX]).sum()) == 3


def test_the_error_survives_pickling_to_and_from_worker_processes():
    e = pickle.loads(pickle.dumps(NonFiniteError("t1", "w", 3, 10)))
    assert (e.source, e.key, e.n_bad, e.numel) == ("t1", "w", 3, 10) and "holds 3 non-finite" in str(e)


# --------------------------------------------------------------------------- live loop, sweeps, CLI
SPOILED = "visual.transformer.resblocks.2.mlp.c_fc.weight"


@pytest.fixture
def spoiled(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(sw, "make_evaluator", FakeEvaluator)
    sw._DIRECTIONS.clear()
    ref, ms = synthetic_model_set(tmp_path)
    path = dict(ref.finetuned)["b"]
    sd = {k: v.clone() for k, v in ms.finetuned("b").items()}
    sd[SPOILED][0, 0] = float("nan")
    save_state_dict(sd, path)
    ms = ref.load()  # the set as read from the files, with the spoiled checkpoint
    ms.eval_tasks = ["a", "b"]
    sw.register_model_set(ref, ms)
    yield tmp_path, ref, ms
    sw._DIRECTIONS.clear()


def test_live_merger_raises_the_error_not_numbers(spoiled):
    from core.live import LiveMerger

    _, _, ms = spoiled

    class Ev:
        task_names = ["a", "b"]

        def accuracy(self, sd=None, tasks=None):
            return {t: 0.5 for t in tasks or ["a", "b"]}

    lm = LiveMerger(ms, Ev())
    with pytest.raises(NonFiniteError, match=f"b: tensor '{SPOILED}'"):
        lm.evaluate(MergeSpec.make("task_arithmetic"))
    with pytest.warns(RuntimeWarning):
        res = LiveMerger(ms, Ev(), allow_nonfinite=True).evaluate(MergeSpec.make("task_arithmetic"))
    assert res["accuracy"] == {"a": 0.5, "b": 0.5}


def test_a_sweep_fails_with_the_error_and_logs_it(spoiled):
    tmp, ref, ms = spoiled
    log = RunLog(tmp / "runs.sqlite")
    spec = sw.SweepSpec.make(ref, MergeSpec.make("task_arithmetic"), {"lambda": [0.1, 0.5]})
    with pytest.raises(NonFiniteError, match=f"b: tensor '{SPOILED}' holds 1 non-finite"):
        sw.run_sweep(spec, model_set=ms, run_log=log)
    runs = log.list(kind="sweep")
    assert runs.iloc[0]["status"] == "error"
    with pytest.warns(RuntimeWarning):
        res = sw.run_sweep(spec, model_set=ms, log=False, allow_nonfinite=True)
    assert len(res.frame) == 2


def test_cli_exits_1_naming_the_tensor_and_the_flag_opts_in(spoiled, capsys):
    tmp, ref, ms = spoiled
    cfg = tmp / "spec.json"
    cfg.write_text(json.dumps(RunConfig(model_set=ref, merge=MergeSpec.make("ties")).to_dict()))
    out = str(tmp / "m.safetensors")
    assert main(["merge", "--config", str(cfg), "--out", out]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: b: tensor") and SPOILED in err and "--allow-nonfinite" in err
    assert main(["eval", "--config", str(cfg), "--no-log"]) == 1
    assert SPOILED in capsys.readouterr().err
    sweep = tmp / "sweep.json"
    sweep.write_text(json.dumps(sw.SweepSpec.make(ref, MergeSpec.make("ties"), {"lambda": [0.5, 1.0]}).to_dict()))
    assert main(["sweep", "--config", str(sweep), "--processes", "0", "--no-log"]) == 1
    assert SPOILED in capsys.readouterr().err
    with pytest.warns(RuntimeWarning):
        assert main(["merge", "--config", str(cfg), "--out", out, "--allow-nonfinite"]) == 0
    with pytest.warns(RuntimeWarning):
        assert main(["sweep", "--config", str(sweep), "--processes", "0", "--no-log", "--allow-nonfinite"]) == 0
