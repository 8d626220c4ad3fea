import json

import pytest

from core.spec import EvalSpec, MergeSpec, ModelSetRef, RunConfig


def test_merge_spec_fills_method_defaults_and_round_trips():
    s = MergeSpec.make("ties", {"k": 0.1}, lines=("auto", 0.5))
    assert s.param_dict == {"agg": "mean", "coefficients": 1.0, "k": 0.1}
    assert MergeSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="no parameter"):
        MergeSpec.make("task_arithmetic", {"k": 3})


def test_direction_key_ignores_global_lambda_and_lines_but_key_does_not():
    a = MergeSpec.make("task_arithmetic", {"coefficients": 0.3})
    b = MergeSpec.make("task_arithmetic", {"coefficients": 0.5}, lines=(0.2, 0.4))
    assert a.direction_key() == b.direction_key()
    assert a.key() != b.key()
    c = MergeSpec.make("task_arithmetic", {"coefficients": [0.3, 0.5]})
    assert c.direction_key() != a.direction_key()  # per-task weights change the direction


def test_run_config_json_round_trip(tmp_path):
    rc = RunConfig(
        model_set=ModelSetRef(zoo=None, base="/x/base.safetensors", finetuned=(("a", "/x/a.safetensors"),)),
        merge=MergeSpec.make("consensus", {"k": 2}),
        eval=EvalSpec(split="val", subsample=50, tasks=("a",)),
    )
    p = tmp_path / "spec.json"
    p.write_text(rc.to_json())
    assert RunConfig.load(p) == rc
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        RunConfig.load(p)


def test_eval_spec_device_and_fp16_are_optional_and_leave_old_dicts_unchanged():
    old = {"split": "val", "subsample": 50, "bf16": False, "seed": 0, "tasks": None}
    assert EvalSpec.from_dict(old).to_dict() == old  # older specs and run-log entries keep their exact form
    gpu = EvalSpec(device="cuda:1", fp16=True)
    assert gpu.to_dict()["device"] == "cuda:1" and EvalSpec.from_dict(gpu.to_dict()) == gpu
    assert EvalSpec().device == "auto"
    with pytest.raises(TypeError, match="gpu"):
        EvalSpec.from_dict({"split": "val", "gpu": True})


def test_merge_spec_keys_are_stable():
    """MergeSpec.key() hashes identify runs in the log and the live cache: they must never change."""
    assert MergeSpec.make("task_arithmetic").key() == MergeSpec.from_dict({"method": "task_arithmetic"}).key()
    assert (
        MergeSpec.make("task_arithmetic", {"coefficients": 0.3}).key() == "d6e0dd10ec667392"
    )  # value before model sets
