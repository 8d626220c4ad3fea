"""Heads: file formats, the zero-shot fallback, and clear errors for a wrong class count or no text tower."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from core.checkpoints import UnsafeCheckpointError
from core.datasets.sources import TaskSource
from core.errors import ModelSetError
from core.evaluate import Evaluator
from core.heads import Head, check_head, has_text_tower, load_head, resolve_head
from core.models import build_model, zero_shot_head
from core.templates import GENERIC_TEMPLATES


class ClassificationHead(torch.nn.Linear):
    """The shape of task_vectors' pickled head modules (weights already scaled, optional bias)."""

    def __init__(self, weights):
        super().__init__(weights.shape[1], weights.shape[0])
        self.weight = torch.nn.Parameter(weights.clone())
        self.bias = torch.nn.Parameter(torch.arange(weights.shape[0]).float())


def test_head_files_in_every_supported_format(tmp_path):
    w = torch.randn(3, 8)
    save_file({"head": w}, str(tmp_path / "a.safetensors"))
    torch.save(w, tmp_path / "b.pt")
    torch.save({"weight": w, "bias": torch.ones(3)}, tmp_path / "c.pt")
    torch.save(ClassificationHead(w), tmp_path / "d.pt")
    for name in ("a.safetensors", "b.pt"):
        h = load_head(tmp_path / name)
        assert torch.equal(h.weight, w) and h.bias is None and h.source == str(tmp_path / name)
    h = load_head(tmp_path / "c.pt")
    assert torch.equal(h.weight, w) and torch.equal(h.bias, torch.ones(3))
    with pytest.raises(UnsafeCheckpointError, match="allow_pickle"):
        load_head(tmp_path / "d.pt")
    h = load_head(tmp_path / "d.pt", allow_pickle=True)
    assert torch.equal(h.weight, w) and torch.equal(h.bias, torch.arange(3).float())
    save_file({"a": torch.randn(3, 8), "b": torch.randn(2, 8)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ModelSetError, match="2-D"):
        load_head(tmp_path / "two.safetensors")
    with pytest.raises(ModelSetError, match="does not exist"):
        load_head(tmp_path / "missing.safetensors")


def test_wrong_class_count_or_width_is_a_clear_error():
    h = Head(torch.randn(4, 8), None, "heads/x.safetensors")
    with pytest.raises(ModelSetError, match="task 'x': head heads/x.safetensors has 4 classes but the data has 5"):
        check_head(h, "x", 5, 8)
    with pytest.raises(ModelSetError, match="width 8, the model embeds to 16"):
        check_head(h, "x", 4, 16)
    assert check_head(h, "x", 4, 8) is h


def _micro_sd():
    torch.manual_seed(0)
    return build_model(arch="mergescope-micro").state_dict()


def _source(n=6, classes=("a", "b"), head=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TaskSource(x, torch.arange(n) % len(classes), list(classes), ["a photo of a {c}."], head=head)


def test_base_without_text_tower_needs_a_head_and_says_which_task():
    sd = _micro_sd()
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    assert has_text_tower(sd) and not has_text_tower(visual)
    with pytest.raises(ModelSetError, match="task 'digits': the base checkpoint has no text tower"):
        Evaluator(visual, {"digits": _source()})
    head = Head(torch.randn(2, 64))
    ev = Evaluator(visual, {"digits": _source(head=head)})
    assert ev.accuracy()["digits"] >= 0 and torch.equal(ev.tasks["digits"].head, head.weight)
    with pytest.raises(ModelSetError, match="has 2 classes but the data has 3"):
        Evaluator(visual, {"t": _source(classes=("a", "b", "c"), head=head)})


def test_zero_shot_head_from_class_names_and_task_named_templates():
    model = build_model(_micro_sd())
    h = resolve_head("MNIST", model, base_has_text=True, num_classes=2, classnames=["zero", "one"])
    want = zero_shot_head(model, ["zero", "one"], ['a photo of the number: "{c}".'], cache=False)
    torch.testing.assert_close(h.weight, want)
    h2 = resolve_head("my_task", model, base_has_text=True, num_classes=2, classnames=["x", "y"])
    torch.testing.assert_close(h2.weight, zero_shot_head(model, ["x", "y"], GENERIC_TEMPLATES, cache=False))
    with pytest.raises(ModelSetError, match="no text tower"):
        resolve_head("t", model, base_has_text=False, num_classes=2, classnames=["x", "y"])
