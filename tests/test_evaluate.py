import math

import pytest
import torch
import torch.nn.functional as F

from core import data as D
from core.evaluate import Evaluator, control_accuracy, normalized_accuracy, subsample_indices
from core.models import build_model, preprocess, zero_shot_head


def test_accuracy_equals_a_slow_reference_loop(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    task = micro_zoo.tasks[0]
    ft = micro_zoo.finetuned(task)
    fast = ev.accuracy(ft)
    # reference: a fresh model with the fine-tuned visual tower, one image at a time
    model = build_model({**micro_zoo.base(), **ft})
    for name in micro_zoo.eval_tasks:
        spec = D.get_task(name)
        head = zero_shot_head(model, spec.classnames, spec.templates, cache=False)
        x, y = D.load_split(name, "test")
        idx = subsample_indices(len(y), 40, 0)
        correct = 0
        with torch.no_grad():
            for i in idx:
                f = F.normalize(model.encode_image(preprocess(x[i : i + 1])), dim=-1)
                correct += int((f @ head.T).argmax() == y[i])
        assert fast[name] == pytest.approx(correct / len(idx), abs=1e-6), name


def test_base_is_zero_shot_and_state_is_restored_between_calls(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    zs = ev.accuracy()
    ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    assert ev.accuracy() == zs
    assert ev.accuracy(micro_zoo.base()) == zs  # full CLIP state dict works too
    partial = {k: v for k, v in micro_zoo.finetuned(micro_zoo.tasks[1]).items() if "resblocks.0." in k}
    assert set(ev.accuracy(partial)) == set(micro_zoo.eval_tasks)


def test_evaluator_is_cached_and_subsample_is_seeded(micro_zoo):
    a = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    assert Evaluator.for_model_set(micro_zoo, "test", subsample=40) is a
    assert len(a.tasks[micro_zoo.tasks[0]].labels) == 40
    assert subsample_indices(100, 10, 1).tolist() == subsample_indices(100, 10, 1).tolist()
    assert subsample_indices(100, 10, 1).tolist() != subsample_indices(100, 10, 2).tolist()


def test_bf16_autocast_stays_close(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    fp32 = ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    ev.bf16 = True
    try:
        bf16 = ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    finally:
        ev.bf16 = False
    assert all(abs(fp32[t] - bf16[t]) <= 0.1 for t in fp32)


def test_normalized_and_control_accuracy():
    acc = {"a": 0.5, "b": 0.6, "c": 0.2}
    ft = {"a": 1.0, "b": 0.8, "c": 0.4}
    assert normalized_accuracy(acc, ft) == pytest.approx((0.5 + 0.75 + 0.5) / 3)
    c = control_accuracy(acc, "a", {"a": 0.3, "b": 0.6, "c": 0.4})
    assert c["control"] == pytest.approx(0.4) and c["control_normalized"] == pytest.approx(0.75)
    assert math.isnan(control_accuracy(acc, "a")["control_normalized"])
