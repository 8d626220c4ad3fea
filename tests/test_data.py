import hashlib

import numpy as np
import pytest
import torch

from core.zoo import data as D
from core.zoo import scenes as S


def _digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.numpy().tobytes()).hexdigest()


def test_at_least_eight_tasks_with_classes_and_templates():
    assert len(D.TASK_NAMES) >= 8
    for name in D.TASK_NAMES:
        spec = D.get_task(name)
        assert spec.name == name and spec.num_classes >= 2 and len(set(spec.classnames)) == spec.num_classes
        assert all(isinstance(p, str) and p for p in spec.prompts(spec.classnames[0]))


def test_task_generation_is_deterministic_same_seed_same_bytes():
    gen = D.generate_split  # load_split without the in-process cache
    for name in D.TASK_NAMES:
        a, ya = gen(name, "val", 0, 24)
        b, yb = gen(name, "val", 0, 24)
        assert _digest(a) == _digest(b) and torch.equal(ya, yb)
    c, _ = gen("shapes", "val", 1, 24)
    assert _digest(c) != _digest(gen("shapes", "val", 0, 24)[0])


def test_cached_split_equals_a_fresh_render():
    x, y = D.load_split("digits", "val", n=30)
    fx, fy = D.generate_split("digits", "val", 0, 30)
    assert torch.equal(x, fx) and torch.equal(y, fy)


def test_split_shapes_dtypes_and_balanced_labels():
    x, y = D.load_split("arrows", "test", n=80)
    assert x.dtype == torch.uint8 and x.shape == (80, 3, S.IMAGE_SIZE, S.IMAGE_SIZE)
    assert y.dtype == torch.int64 and np.bincount(y.numpy()).tolist() == [10] * 8


@pytest.mark.parametrize("name", D.TASK_NAMES)
def test_splits_are_disjoint(name):
    seen = {}
    for split in D.SPLITS:
        x, _ = D.load_split(name, split, n=60)
        for img in x:
            seen.setdefault(_digest(img), set()).add(split)
    assert all(len(s) == 1 for s in seen.values())


def test_bad_requests_name_the_problem():
    with pytest.raises(KeyError, match="demo tasks are"):
        D.get_task("cats")
    with pytest.raises(ValueError, match="split must be one of"):
        D.load_split("shapes", "dev")
    with pytest.raises(ValueError, match="at least one image"):
        D.generate_split("shapes", "val", 0, 0)
