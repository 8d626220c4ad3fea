"""Classification heads of a model set's tasks: from a file, or zero-shot from the base's text tower.

Order (one rule, `resolve_head`): a task's ``head`` file if given; else a zero-shot head built by
`core.models.zero_shot_head` from the base's text tower (open_clip or HF CLIP names; HF checkpoints
are translated to open_clip's on load) with the task's class names and templates (default: the
well-known dataset's templates by task name, `core.templates`). A base without a text tower and no
head file is an error naming the task; so is a head whose class count or width does not fit.

Head files: a [classes, embed_dim] tensor in safetensors (key "head", "weight" or the only 2-D
tensor; an optional "bias"), a weights-only torch file holding such a tensor or dict, or — with
``allow_pickle`` — a pickled head module such as task_vectors' ``ClassificationHead``
(mlfoundations/task_vectors, src/modeling.py: logits = normalize(features) @ weight.T + bias, the
weight already scaled by the logit scale). Logits here follow the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import CheckpointError, load_state_dict
from .errors import ModelSetError


@dataclass
class Head:
    """weight (C, D) float32 and optional bias (C,); `source` says where it came from."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    source: str = ""

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device) -> Head:
        b = None if self.bias is None else self.bias.to(device)
        return Head(self.weight.to(device), b, self.source)


TEXT_TOWER_KEYS = ("token_embedding.weight", "text_model.embeddings.token_embedding.weight")


def has_text_tower(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a CLIP state dict holds a text tower (open_clip or HF names)."""
    return any(k in state_dict for k in TEXT_TOWER_KEYS)


def _pick(sd: Mapping[str, torch.Tensor], path: Path) -> Head:
    for k in ("head", "weight", "classification_head.weight", "head.weight"):
        if k in sd and sd[k].ndim == 2:
            bias = sd.get(k.replace("weight", "bias")) if k.endswith("weight") else sd.get("bias")
            return Head(sd[k].float(), None if bias is None else bias.float().reshape(-1), str(path))
    mats = [k for k, v in sd.items() if v.ndim == 2]
    if len(mats) == 1:
        return Head(sd[mats[0]].float(), None, str(path))
    raise ModelSetError(f"head file {path}: expected a 2-D [classes, embed_dim] tensor 'head'; found {list(sd)[:6]}")


def load_head(path: str | Path, *, allow_pickle: bool = False) -> Head:
    """A head from a file (see the module docstring for the formats)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelSetError(f"head file {path} does not exist")
    try:
        sd = load_state_dict(path, allow_pickle=allow_pickle)
    except CheckpointError as e:
        if "holds a Tensor" not in str(e):
            raise
        t = torch.load(path, map_location="cpu", weights_only=True)
        sd = {"head": t}
    return _pick(sd, path)


def check_head(head: Head, task: str, num_classes: int, embed_dim: int) -> Head:
    """`head` if it fits the data's class count and the model's embedding width, else a clear error."""
    c, d = head.weight.shape
    if c != num_classes:
        raise ModelSetError(f"task {task!r}: head {head.source or ''} has {c} classes but the data has {num_classes}")
    if d != embed_dim:
        raise ModelSetError(f"task {task!r}: head {head.source or ''} has width {d}, the model embeds to {embed_dim}")
    if head.bias is not None and head.bias.numel() != c:
        raise ModelSetError(f"task {task!r}: head bias has {head.bias.numel()} entries for {c} classes")
    return head


def resolve_head(
    task: str,
    model,
    *,
    base_has_text: bool,
    num_classes: int,
    head_path: str | Path | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    allow_pickle: bool = False,
) -> Head:
    """The head of one task: the file when given, else zero-shot from `model`'s text tower."""
    from .models import zero_shot_head
    from .templates import templates_for

    embed_dim = int(model.visual.output_dim)
    if head_path is not None:
        return check_head(load_head(head_path, allow_pickle=allow_pickle), task, num_classes, embed_dim)
    if not base_has_text:
        raise ModelSetError(
            f"task {task!r}: the base checkpoint has no text tower, so no zero-shot head can be built; "
            f'give the task a "head" file ([classes, embed_dim] tensor)'
        )
    if classnames is None:
        raise ModelSetError(f"task {task!r}: no class names to build a zero-shot head from; give classnames or a head")
    if len(classnames) != num_classes:
        raise ModelSetError(f"task {task!r}: need {num_classes} class names to build a zero-shot head")
    tmpl = list(templates) if templates else templates_for(task)
    w = zero_shot_head(model, list(classnames), tmpl)
    return Head(w, None, f"zero-shot ({len(tmpl)} templates)")
