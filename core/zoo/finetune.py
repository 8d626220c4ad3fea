"""Fine-tuning one zoo task, task arithmetic's recipe scaled down.

Only the visual tower trains; the text tower and the task's zero-shot head (the class-prompt
embeddings, rows scaled by exp(logit_scale)) stay frozen, so the fine-tuned checkpoint holds
``visual.*`` only and every fine-tune shares the base's head. AdamW (weight decay on every visual
parameter), linear warmup then cosine (`core.train.warmup_cosine`); batches are seeded reshuffled
epochs (`core.train.infinite_batches`) over `n_train` training images, by default one fresh image
per step and slot (n_train = ft_steps x ft_batch). The loop is `core.train.train_loop`.

Follows `finetune()` in mlfoundations/task_vectors (src/finetune.py): frozen classification head
built as in its `build_classification_head` (src/heads.py), AdamW, warmup + cosine, cross-entropy
on the visual encoder's normalized features. Two differences, both kept since the zoo's first
builds: no gradient clipping (task arithmetic clips the norm at 1.0), and a fixed step count
instead of epochs.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_state_dict, save_state_dict
from ..models import build_model, preprocess
from ..train import TrainConfig, infinite_batches, train_loop, warmup_cosine
from .data import TASK_NAMES, load_split
from .recipe import Recipe


def task_seed(recipe: Recipe, task: str) -> int:
    """The torch seed of a task's fine-tune (it seeds the model's (unused) random init before loading)."""
    seed = recipe.finetune_seed
    return seed * 1000 + TASK_NAMES.index(task) if task in TASK_NAMES else seed


def finetune(
    base_sd: dict, task: str, head: torch.Tensor, recipe: Recipe, cancel=None, on_step=None
) -> tuple[dict[str, torch.Tensor], dict]:
    """Fine-tune the visual tower of `base_sd` on `task` through the frozen `head`; returns (visual state dict, stats).

    Deterministic for a recipe and a thread count. Raises `core.errors.Cancelled` when `cancel` is set.
    `on_step(done)` is called after every optimizer step (the build's progress bar counts steps).
    """
    from ..errors import Cancelled

    t0 = time.perf_counter()
    torch.manual_seed(task_seed(recipe, task))
    model = build_model(base_sd)
    x, y = load_split(task, "train", seed=recipe.finetune_seed, n=recipe.n_train)
    xp = preprocess(x)
    params = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    groups = [{"params": params, "lr": recipe.ft_lr, "weight_decay": recipe.ft_weight_decay}]
    cfg = TrainConfig(
        steps=recipe.ft_steps,
        lr=recipe.ft_lr,
        weight_decay=recipe.ft_weight_decay,
        warmup=recipe.ft_warmup,
        optimizer="adamw",
        grad_clip=None,
        seed=recipe.finetune_seed + 17,
        log_every=1,
    )
    model.train()

    def loss_fn(batch) -> tuple[torch.Tensor, dict]:
        xb, yb = batch
        feats = F.normalize(model.encode_image(xb), dim=-1)
        return F.cross_entropy(feats @ head.T, yb), {}

    res = train_loop(
        groups,
        loss_fn,
        infinite_batches(xp, y, recipe.ft_batch, seed=cfg.seed),
        cfg,
        cancel=cancel,
        lr_schedule=functools.partial(warmup_cosine, steps=recipe.ft_steps, warmup=recipe.ft_warmup),
        progress=None if on_step is None else (lambda step, total, row: on_step(step)),
    )
    if res.cancelled:
        raise Cancelled(f"fine-tuning {task} cancelled after {res.steps_done} of {recipe.ft_steps} steps")
    model.eval()
    losses = [row["loss"] for row in res.history]
    sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("visual.")}
    return sd, {
        "seconds": round(time.perf_counter() - t0, 1),
        "loss_first_20": float(np.mean(losses[:20])),
        "loss_last_20": float(np.mean(losses[-20:])),
    }


_STEPS = None  # a worker's shared step counter (multiprocessing.Value), set by `init_worker`


def init_worker(steps) -> None:
    """Pool initializer: every worker adds its optimizer steps to the shared counter `steps`."""
    global _STEPS
    _STEPS = steps


def _count_step(_done: int) -> None:
    with _STEPS.get_lock():
        _STEPS.value += 1


def finetune_job(args: tuple) -> tuple[str, dict]:
    """One fine-tune in a worker process: (base path, task, head, recipe, out path) -> (task, stats)."""
    base_path, task, head, recipe, out_path = args
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    on_step = None if _STEPS is None else _count_step
    sd, stats = finetune(load_state_dict(Path(base_path)), task, head, recipe, on_step=on_step)
    save_state_dict(sd, Path(out_path), metadata={"task": task})
    return task, stats
