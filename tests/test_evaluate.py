import pytest
import torch
import torch.nn.functional as F

from core import data as D
from core.datasets.sources import subsample_indices
from core.evaluate import Evaluator
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
    assert Evaluator.for_model_set(micro_zoo, "test", subsample=40).model is a.model  # one cached model
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


def test_sessions_keep_their_own_bf16_and_subsample(micro_zoo):
    """Two browser sessions share the cached evaluator; one's bf16 toggle must not change the other's numbers."""
    ft = micro_zoo.finetuned(micro_zoo.tasks[0])
    a = Evaluator.for_model_set(micro_zoo, "test", subsample=40, bf16=False)
    fp32 = a.accuracy(ft)
    b = Evaluator.for_model_set(micro_zoo, "test", subsample=40, bf16=True)
    assert b.bf16 and not a.bf16 and b.model is a.model
    c = Evaluator.for_model_set(micro_zoo, "test", subsample=20, bf16=False)
    assert len(c.tasks[micro_zoo.tasks[0]].labels) == 20 and len(a.tasks[micro_zoo.tasks[0]].labels) == 40
    b.accuracy(ft)
    c.accuracy(micro_zoo.finetuned(micro_zoo.tasks[1]))
    assert a.accuracy(ft) == fp32  # bitwise: still fp32 on 40 images after the others ran
    assert not Evaluator.for_model_set(micro_zoo, "test", subsample=40).bf16
