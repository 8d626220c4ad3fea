"""The CLI: `merge` writes exactly core.merging.merge's result; bad input gives one clear line and exit 1."""

from __future__ import annotations

import json

import pytest
import torch
from test_sweeps import KEY, PEAK, FakeEvaluator, synthetic_model_set  # tests/ is on sys.path

import core.sweeps as sw
from core.checkpoints import load_state_dict
from core.cli.commands import main
from core.merging import merge
from core.runtime.runlog import RunLog
from core.spec import MergeSpec, RunConfig
from tests.fixtures import full_clip


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(sw, "make_evaluator", FakeEvaluator)
    ref, ms = synthetic_model_set(tmp_path)
    sw.register_model_set(ref, ms)  # the CLI uses this process's set for the ref (it has eval tasks)
    return tmp_path, ref, ms


def write(path, obj):
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


@pytest.mark.parametrize(
    "merge_spec, kwargs",
    [
        (MergeSpec.make("ties", {"k": 0.3, "coefficients": 0.7}), {"k": 0.3, "coefficients": 0.7}),
        (MergeSpec.make("task_arithmetic", lines=("auto", 0.4)), {"lines": ("auto", 0.4)}),
    ],
)
def test_merge_writes_what_core_merge_returns(setup, merge_spec, kwargs):
    tmp, ref, ms = setup
    cfg = write(tmp / "spec.json", RunConfig(model_set=ref, merge=merge_spec).to_dict())
    assert main(["merge", "--config", cfg, "--out", str(tmp / "m.safetensors")]) == 0
    got = load_state_dict(tmp / "m.safetensors")
    want = merge(ms.base(), ms.finetuned_all(), merge_spec.method, **kwargs)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_eval_prints_a_table_and_logs_the_run(setup, capsys):
    tmp, ref, ms = setup
    cfg = RunConfig(model_set=ref, merge=MergeSpec.make("task_arithmetic", {"coefficients": 0.3}))
    path = write(tmp / "spec.json", cfg.to_dict())
    assert main(["eval", "--config", path, "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "average" in out and "normalized" in out
    runs = RunLog().list(kind="eval")
    assert len(runs) == 1
    m = json.loads(runs["metrics"].iloc[0])
    sd = merge(ms.base(), ms.finetuned_all(), "task_arithmetic", coefficients=0.3)
    assert m["split"] == "val"
    assert m["accuracy"]["a"] == pytest.approx(1 - abs(float(sd[KEY].mean()) - PEAK["val"]))
    assert main(["eval", "--config", path, "--json", "--no-log"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert j["split"] == "test" and set(j["accuracy"]) == {"a", "b"}
    assert len(RunLog().list(kind="eval")) == 1


def test_sweep_command_runs_the_grid_and_reports_best(setup, capsys):
    tmp, ref, ms = setup
    spec = {"model_set": ref.to_dict(), "merge": {"method": "task_arithmetic"}, "grid": {"lambda": [0.1, 0.3, 0.8]}}
    path = write(tmp / "sweep.json", spec)
    assert main(["sweep", "--config", path, "--processes", "0", "--out", str(tmp / "grid.csv")]) == 0
    out = capsys.readouterr().out
    assert "best on val: λ=0.3" in out
    assert (tmp / "grid.csv").read_text().count("\n") == 4
    assert RunLog().list(kind="sweep")["status"].tolist() == ["ok"]


def _error(capsys, argv, code=1):
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_inputs_give_clear_messages_and_nonzero_exit(setup, capsys):
    tmp, ref, ms = setup
    out = str(tmp / "m.safetensors")
    err = _error(capsys, ["merge", "--config", str(tmp / "nope.json"), "--out", out])
    assert "error:" in err and "nope.json does not exist" in err

    err = _error(capsys, ["merge", "--config", write(tmp / "bad.json", "{not json"), "--out", out])
    assert "not valid JSON" in err and "line 1" in err

    base = {"model_set": ref.to_dict()}
    err = _error(
        capsys, ["merge", "--config", write(tmp / "m1.json", {**base, "merge": {"method": "magic"}}), "--out", out]
    )
    assert "unknown merge method 'magic'" in err and "task_arithmetic" in err

    bad_param = {**base, "merge": {"method": "ties", "params": {"kk": 1}}}
    err = _error(capsys, ["merge", "--config", write(tmp / "m2.json", bad_param), "--out", out])
    assert "no parameter(s) ['kk']" in err

    bad_task = {**base, "merge": {"method": "ties", "tasks": ["a", "zebra"]}}
    err = _error(capsys, ["merge", "--config", write(tmp / "m3.json", bad_task), "--out", out])
    assert "unknown task(s) ['zebra']" in err

    bad_eval = {**base, "eval": {"split": "val", "shots": 3}}
    err = _error(capsys, ["eval", "--config", write(tmp / "e1.json", bad_eval)])
    assert "unknown field" in err and "shots" in err

    sweep_as_run = {**base, "grid": {"lambda": [0.1]}}
    err = _error(capsys, ["eval", "--config", write(tmp / "e2.json", sweep_as_run)])
    assert "use `python -m core sweep`" in err

    no_grid = {**base, "merge": {"method": "weight_average"}, "grid": {"lambda": [0.1]}}
    err = _error(capsys, ["sweep", "--config", write(tmp / "s1.json", no_grid)])
    assert "no global lambda" in err

    missing_ckpt = {
        "model_set": {
            "zoo": None,
            "base": str(tmp / "gone.safetensors"),
            "finetuned": {"a": str(tmp / "a.safetensors")},
        }
    }
    err = _error(capsys, ["merge", "--config", write(tmp / "m4.json", missing_ckpt), "--out", out])
    assert "gone.safetensors does not exist" in err

    _error(capsys, ["merge", "--out", out], code=2)  # argparse usage error
    assert "needs --zoo" in _error(capsys, ["analyze", "--what", "norms"])


def test_analyze_norms_from_files_writes_csv(setup, capsys):
    tmp, ref, ms = setup
    argv = ["analyze", "--base", ref.base, "--finetuned", *[f"{t}={p}" for t, p in ref.finetuned]]
    assert main([*argv, "--what", "norms", "--out", str(tmp / "norms.csv")]) == 0
    import pandas as pd

    df = pd.read_csv(tmp / "norms.csv")
    assert set(df["task"]) == {"a", "b"}
    assert sorted(df["layer"].unique()) == [-1, 0, 1, 2, 3]
    assert main([*argv, "--what", "scopes", "--out", str(tmp / "scopes.csv")]) == 0
    assert set(pd.read_csv(tmp / "scopes.csv")["model"]) == {"base", "a", "b"}


def test_merge_hf_names_exports_hugging_face_keys(setup):
    tmp, ref, ms = setup
    cfg = write(tmp / "spec.json", RunConfig(model_set=ref, merge=MergeSpec.make("task_arithmetic")).to_dict())
    assert main(["merge", "--config", cfg, "--out", str(tmp / "hf.safetensors"), "--hf-names"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp / "hf.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" in keys
    assert "visual_projection.weight" in keys
    # Loading maps the names back to open_clip's, with the same values.
    back = load_state_dict(tmp / "hf.safetensors")
    want = merge(ms.base(), ms.finetuned_all(), "task_arithmetic", coefficients=0.3)
    assert torch.equal(back[KEY], want[KEY])


def test_analyze_tower_selects_the_image_or_text_blocks(tmp_path, capsys):

    import pandas as pd

    from core.checkpoints import save_state_dict

    base = full_clip.open_clip_full()
    save_state_dict(base, tmp_path / "base.safetensors")
    argv = ["analyze", "--base", str(tmp_path / "base.safetensors"), "--finetuned"]
    for task, seed in (("a", 1), ("b", 2)):
        save_state_dict(full_clip.fine_tuned(base, seed), tmp_path / f"{task}.safetensors")
        argv.append(f"{task}={tmp_path / f'{task}.safetensors'}")
    layers = {}
    for tower in ("visual", "text"):
        out = tmp_path / f"{tower}.csv"
        assert main([*argv, "--what", "norms", "--tower", tower, "--out", str(out)]) == 0
        layers[tower] = sorted(pd.read_csv(out)["layer"].unique())
    assert layers == {"visual": [-1, *range(full_clip.VISION_LAYERS)], "text": [-1, *range(full_clip.TEXT_LAYERS)]}
    assert main([*argv, "--what", "norms", "--out", str(tmp_path / "default.csv")]) == 0  # default: visual
    assert pd.read_csv(tmp_path / "default.csv").equals(pd.read_csv(tmp_path / "visual.csv"))
    # a visual-only model set has no text tower to analyse
    vis = {k: v for k, v in base.items() if k.startswith("visual.")}
    save_state_dict(vis, tmp_path / "vbase.safetensors")
    save_state_dict(full_clip.fine_tuned(vis, 3), tmp_path / "va.safetensors")
    bad = ["analyze", "--base", str(tmp_path / "vbase.safetensors"), "--finetuned", f"a={tmp_path / 'va.safetensors'}"]
    assert main([*bad, "--what", "spectra", "--tower", "text"]) == 1
    assert "no text tower" in capsys.readouterr().err


def test_merge_device_option_cpu_equals_auto_and_a_missing_gpu_is_a_clear_error(setup, capsys):
    tmp, ref, ms = setup
    cfg = write(tmp / "spec.json", RunConfig(model_set=ref, merge=MergeSpec.make("ties", {"k": 0.3})).to_dict())
    assert main(["merge", "--config", cfg, "--out", str(tmp / "auto.safetensors")]) == 0
    assert main(["merge", "--config", cfg, "--out", str(tmp / "cpu.safetensors"), "--device", "cpu"]) == 0
    a, c = load_state_dict(tmp / "auto.safetensors"), load_state_dict(tmp / "cpu.safetensors")
    if not torch.cuda.is_available():  # auto is the CPU here: the same bits
        assert all(torch.equal(a[k], c[k]) for k in a)
        capsys.readouterr()
        assert main(["merge", "--config", cfg, "--out", str(tmp / "gpu.safetensors"), "--device", "cuda"]) != 0
        assert "no CUDA GPU" in capsys.readouterr().err
        assert not (tmp / "gpu.safetensors").exists()
    assert main(["merge", "--config", cfg, "--out", str(tmp / "x.safetensors"), "--device", "tpu"]) != 0
