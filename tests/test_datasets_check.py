"""Model-set task checks before acceptance: missing splits, a head of the wrong class count or width,
no text tower and no head - each a message naming the task and file."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from core.checkpoints import save_state_dict
from core.datasets.check import check_tasks
from core.modelset import ModelSet


def _folder(root, splits=("val", "test"), classes=("cat", "dog"), n=2):
    for s in splits:
        for c in classes:
            d = root / s / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    return root


def _set(tmp_path, tasks, base=None):
    base = base if base is not None else {"visual.proj": torch.zeros(8, 4), "token_embedding.weight": torch.zeros(5, 8)}
    save_state_dict(base, tmp_path / "base.safetensors")
    save_state_dict({"visual.proj": torch.ones(8, 4)}, tmp_path / "ft.safetensors")
    spec = {"base": "base.safetensors", "finetuned": {t: "ft.safetensors" for t in tasks}, "tasks": tasks}
    (tmp_path / "modelset.json").write_text(json.dumps(spec))
    return ModelSet.from_json(tmp_path / "modelset.json")


def test_a_good_task_is_summarised(tmp_path):
    _folder(tmp_path / "data")
    (c,) = check_tasks(_set(tmp_path, {"pets": {"data": "data"}}))
    assert c.ok and "2 classes" in c.message and "test 4" in c.message and "zero-shot head" in c.message


def test_missing_test_split_names_the_task_and_folder(tmp_path):
    _folder(tmp_path / "data", splits=("train",))
    (c,) = check_tasks(_set(tmp_path, {"pets": {"data": "data"}}))
    assert not c.ok and "'pets'" in c.message and "test" in c.message


def test_head_with_the_wrong_class_count_or_width(tmp_path):
    _folder(tmp_path / "data")
    save_state_dict({"head": torch.zeros(3, 4)}, tmp_path / "h3.safetensors")
    save_state_dict({"head": torch.zeros(2, 6)}, tmp_path / "h6.safetensors")
    ms = _set(
        tmp_path, {"a": {"data": "data", "head": "h3.safetensors"}, "b": {"data": "data", "head": "h6.safetensors"}}
    )
    a, b = check_tasks(ms)
    assert not a.ok and "3 rows but the data has 2 classes" in a.message and "h3.safetensors" in a.message
    assert not b.ok and "6-dimensional but the base embeds into 4" in b.message


def test_no_text_tower_and_no_head(tmp_path):
    _folder(tmp_path / "data")
    (c,) = check_tasks(_set(tmp_path, {"pets": {"data": "data"}}, base={"visual.proj": torch.zeros(8, 4)}))
    assert not c.ok and "no text tower" in c.message and "'pets'" in c.message
