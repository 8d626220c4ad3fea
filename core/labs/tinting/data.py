"""The unlabeled images a run trains on, the experts' pseudo-labels, and the per-task diagnostics.

Images come preprocessed from the cached `core.evaluate.Evaluator` tensors; each expert's
pseudo-labels and confidences are computed once per split (inference mode, under the shared
`FORWARD_LOCK`). Ground-truth labels are kept for scoring only, never for training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ...runtime.locks import FORWARD_LOCK
from .config import TintConfig
from .model import TintedMerge, expert_targets, softmax_entropy


@dataclass
class TaskImages:
    """Preprocessed images of one task with the expert's pseudo-labels (labels only for scoring)."""

    images: torch.Tensor  # (n, 3, S, S)
    pseudo: torch.Tensor  # (n,) expert hard label
    conf: torch.Tensor  # (n,) expert max softmax
    labels: torch.Tensor  # (n,) ground truth: never used for training


def evaluator(ms, split: str):
    """The model set's shared evaluator for `split` (images, labels, zero-shot heads)."""
    from ...evaluate import Evaluator

    return Evaluator.for_model_set(ms, split)


def tint_tasks(ms, tasks: Sequence[str] | None = None) -> list[str]:
    """The tasks to tint: those with a fine-tuned model and evaluation data."""
    if not getattr(ms, "eval_tasks", None):
        raise ValueError(
            f"model set {ms.name!r} has no task data; Tinting needs unlabeled images per task (use the demo zoo)"
        )
    chosen = list(tasks) if tasks else [t for t in ms.tasks if t in ms.eval_tasks]
    bad = [t for t in chosen if t not in ms.tasks or t not in ms.eval_tasks]
    if bad:
        raise ValueError(f"task(s) {bad} need both a fine-tuned model and data; this set has {ms.tasks}")
    return chosen


def prepare_data(
    ms, tasks: Sequence[str], split: str, progress: Callable[[int, int], None] | None = None
) -> dict[str, TaskImages]:
    """Images of `split` per task and the expert's pseudo-labels, computed once (inference mode).
    progress(done, total) after each task's expert pass."""
    ev = evaluator(ms, split)
    out = {}
    for i, t in enumerate(tasks):
        with FORWARD_LOCK:
            lg = ev.logits(ms.finetuned(t), [t])[t]
        label, conf = expert_targets(lg)
        d = ev.tasks[t]
        out[t] = TaskImages(d.images, label, conf, d.labels)
        if progress:
            progress(i + 1, len(tasks))
    return out


def build(ms, cfg: TintConfig, tasks: Sequence[str] | None = None) -> TintedMerge:
    """A fresh TintedMerge for the model set (zero-shot heads from the model set's tasks)."""
    tasks = tint_tasks(ms, tasks or cfg.tasks)
    ev = evaluator(ms, "test")
    heads = {t: ev.tasks[t].head for t in tasks}
    return TintedMerge(ms.base(), {t: ms.finetuned(t) for t in tasks}, heads, cfg.tint_layer, cfg.lambda_init)


@torch.inference_mode()
def task_logits(model: TintedMerge, data: Mapping[str, TaskImages], batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Every task's logits under its own encoder and head (one shared pass when the encoder is shared)."""
    merged = model.merged_params()
    out = {}
    shared = None
    if model.shared_encoder:  # one encoder for every task: one pass over all images
        x = torch.cat([d.images for d in data.values()])
        shared = torch.cat([model.features(x[i : i + batch_size], merged) for i in range(0, len(x), batch_size)])
    pos = 0
    for t, d in data.items():
        n = len(d.labels)
        if shared is not None:
            feats = shared[pos : pos + n]
            pos += n
        else:
            p = model.task_params(t, merged)
            feats = torch.cat([model.features(d.images[i : i + batch_size], p) for i in range(0, n, batch_size)])
        out[t] = model.logits_from_features(feats, t)
    return out


def evaluate_tinted(model: TintedMerge, data: Mapping[str, TaskImages], batch_size: int = 1024) -> dict[str, float]:
    """Accuracy per task, each task with its own tint (ground-truth labels of `data`)."""
    return scores(model, data, batch_size)[0]


def scores(
    model: TintedMerge, data: Mapping[str, TaskImages], batch_size: int = 1024
) -> tuple[dict[str, float], dict[str, float]]:
    """(accuracy, mean prediction entropy) per task from one pass over `data` (each task with its own tint)."""
    logits = task_logits(model, data, batch_size)
    acc = {t: float((lg.argmax(-1) == data[t].labels).float().mean()) for t, lg in logits.items()}
    return acc, {t: float(softmax_entropy(lg).mean()) for t, lg in logits.items()}


def pseudo_label_agreement(model: TintedMerge, data: Mapping[str, TaskImages]) -> dict[str, float]:
    """Fraction of each task's unlabeled images where the tinted merged model predicts the expert's label."""
    logits = task_logits(model, data)
    return {t: float((lg.argmax(-1) == data[t].pseudo).float().mean()) for t, lg in logits.items()}


def prediction_entropy(model: TintedMerge, data: Mapping[str, TaskImages]) -> dict[str, float]:
    """Mean prediction entropy (nats) per task over all of `data`'s images: AdaMerging's objective."""
    return {t: float(softmax_entropy(lg).mean()) for t, lg in task_logits(model, data).items()}
