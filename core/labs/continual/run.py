"""One continual run: tasks in sequence with adapters on a frozen backbone, seen through the NTK (NTK-CL).

"Parameter-Efficient Fine-Tuning for Continual Learning: A Neural Tangent Kernel Perspective"
(official code: Programmergg/NTK-CL) argues that forgetting in PEFT continual learning is governed
by the training sample size, the task-level orthogonality of features and regularisation, and
answers each with one term:

  expansion  several PEFT paths per sample: an adapter parallel to each block's MLP ("channel"
             path) and a per-block prompt generator ("patch" path), each a separate pass through
             the frozen backbone, plus their fusion; the classification loss is applied to all
             three features, so each sample counts several times (`peft`).
  ortho      an EMA of past-task PEFT modules (a running mean of the end-of-task modules, the
             official `update_ratios`) gives every feature a frozen "past" section next to the
             current one, and an orthogonality loss pushes the current section off the span of
             the past classes' prototypes (`terms`).
  l2         L2 of the current PEFT weights toward the previous task's (`terms`).

All three off is plain sequential fine-tuning of the adapters (the baseline). Training: AdamW with
warmup + cosine through `core.train.train_loop`, a fixed number of steps per task instead of
epochs. After each task: the accuracy matrix column (`metrics`), the principal angles between task
feature subspaces and the empirical NTK on a fixed probe set (`diagnostics`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.runtime.runlog import resolve_run_log
from core.train import TrainConfig, infinite_batches, param_groups, train_loop

from .config import ContinualConfig
from .data import load_task
from .diagnostics import angle_matrix, block_summary, empirical_ntk, kernel_distance, ntk_blocks
from .metrics import continual_loop, final_column, incremental_correct
from .model import ContinualModel, CosineHead
from .peft import visual_tower
from .result import ContinualResult
from .terms import TermsHook, ema_update

Progress = Callable[[str, int, int], None]

_VISUALS: dict[str, nn.Module] = {}


def visual_for(source) -> nn.Module:
    """The source's visual tower (a ModelSet's is built once per process and reused; never modified)."""
    if hasattr(source, "fingerprint") and hasattr(source, "base"):
        key = source.fingerprint()
        if key not in _VISUALS:
            _VISUALS[key] = visual_tower(source)
        return _VISUALS[key]
    return visual_tower(source)


def _start_log(run_log, source, cfg: ContinualConfig):
    log = resolve_run_log(run_log)
    if log is None:
        return None, None
    fp = source.fingerprint() if hasattr(source, "fingerprint") else None
    config = {**cfg.to_dict(), "model_set": getattr(source, "name", type(source).__name__)}
    return log, log.start("continual", config, model_set_fingerprint=fp, seed=cfg.seed)


def run_continual(
    source,
    cfg: ContinualConfig,
    *,
    progress: Progress | None = None,
    cancel=None,
    run_log=None,
    on_stage: Callable[[int, np.ndarray], None] | None = None,
) -> ContinualResult:
    """Train `cfg.tasks` in sequence with adapters on the frozen visual tower of `source` (a
    ModelSet, an open_clip CLIP or its visual tower; it is copied, never modified).

    progress(stage_text, steps_done, total_steps): "preparing ..." at once, then every step;
    cancel: threading.Event (checked every step; the result holds the finished stages).
    run_log: `core.runtime.runlog.resolve_run_log`'s meaning (a RunLog; True/None the default log;
    False no logging); the run is logged as kind "continual". on_stage(j, acc) after each task.
    """
    t_start = time.perf_counter()
    n_tasks, total = len(cfg.tasks), len(cfg.tasks) * cfg.steps
    if progress:
        progress("preparing the backbone and the data", 0, total)
    visual = copy.deepcopy(visual_for(source))
    size = visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    model = ContinualModel(visual, cfg)
    data = [load_task(t, cfg.n_train, cfg.n_test, size) for t in cfg.tasks]
    offsets = np.cumsum([0] + [d.n_classes for d in data])
    timings = {"train": 0.0, "eval": 0.0, "ntk": 0.0}
    history: list[dict] = []

    log, run_id = _start_log(run_log, source, cfg)
    # The NTK probe: the first images of each task's test split, outputs on fixed directions.
    probe = torch.cat([d.x_test[: cfg.ntk_samples] for d in data])
    probe_sizes = [min(cfg.ntk_samples, len(d.x_test)) for d in data]
    g = torch.Generator().manual_seed(0)
    proj = torch.linalg.qr(torch.randn(visual.output_dim, cfg.ntk_outputs, generator=g))[0]
    kernels: list[torch.Tensor] = []
    ntk_rows: list[dict] = []
    angles: list[np.ndarray] = []
    stage_features: dict[int, torch.Tensor] = {}

    def ntk_stage(stage: int, name: str) -> None:
        if not cfg.ntk_samples:
            return
        t0 = time.perf_counter()
        k = empirical_ntk(model, model.trainable(), probe, proj)
        timings["ntk"] += time.perf_counter() - t0
        blocks = ntk_blocks(k, probe_sizes)
        row = {
            "stage": stage,
            "after": name,
            **block_summary(blocks),
            "blocks": blocks,
            "trace": float(k.diagonal().mean()),
            "drift_init": kernel_distance(kernels[0], k) if kernels else 0.0,
            "drift_prev": kernel_distance(kernels[-1], k) if kernels else 0.0,
        }
        kernels.append(k)
        ntk_rows.append(row)

    def train(j: int) -> bool:
        if cancel is not None and cancel.is_set():
            return False
        t0 = time.perf_counter()
        d = data[j]
        stage = f"task {j + 1}/{n_tasks} · {d.name}"
        if progress:
            progress(stage, j * cfg.steps, total)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + j)
        head = CosineHead(model.n_sections * visual.output_dim, d.n_classes, cfg.head_scale, generator)
        terms = TermsHook(model)

        def loss_fn(batch):
            x, y = batch
            feats = model.features(x)
            losses = {p: F.cross_entropy(head(feats[p].flatten(1)), y) for p in feats}
            values = terms.measure(feats[model.feature_key][:, -1])
            return sum(losses.values()), {**{f"ce_{p}": float(v.detach()) for p, v in losses.items()}, **values}

        named = list(model.trainable().items()) + [(f"head.{n}", p) for n, p in head.named_parameters()]
        tc = TrainConfig(
            steps=cfg.steps,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup=cfg.warmup,
            seed=cfg.seed,
            log_every=max(1, cfg.steps // 20),
        )
        res = train_loop(
            param_groups(named, cfg.lr, weight_decay=cfg.weight_decay),
            loss_fn,
            infinite_batches(d.x_train, d.y_train, cfg.batch, seed=cfg.seed * 1000 + j),
            tc,
            hooks=[terms],
            progress=(lambda s, n, row: progress(stage, j * cfg.steps + s, total)) if progress else None,
            cancel=cancel,
        )
        history.extend({"task": d.name, "stage": j, **row} for row in res.history)
        if res.cancelled:
            return False
        # End of task: EMA (not after the last task, as official), prototypes, previous weights.
        if model.ema is not None and j < n_tasks - 1:
            ema_update(model.ema, model.current, j)
        model.add_prototypes(model.classifier_features(d.x_train), d.y_train, d.n_classes)
        if cfg.l2:
            model.previous = {n: p.detach().clone() for n, p in model.trainable().items()}
        timings["train"] += time.perf_counter() - t0
        return True

    protos_embedded: dict[int, torch.Tensor] = {}
    acc_box: dict = {}

    def evaluate(i: int, j: int) -> float:
        t0 = time.perf_counter()
        d = data[i]
        if j not in protos_embedded:
            protos_embedded.clear()
            protos_embedded[j] = model.embed(model.prototypes)
        emb = model.embed(model.classifier_features(d.x_test))
        stage_features[i] = emb
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        correct = incremental_correct(emb @ protos_embedded[j].T, d.y_test, lo, hi, cfg.setting)
        timings["eval"] += time.perf_counter() - t0
        a = float(correct.float().mean())
        acc_box.setdefault("acc", np.full((n_tasks, n_tasks), np.nan))[i, j] = a
        return a

    def after_stage(j: int) -> None:
        features = [stage_features.get(i) if i <= j else None for i in range(n_tasks)]
        angles.append(angle_matrix(features, cfg.subspace_rank))
        ntk_stage(j, cfg.tasks[j])
        if on_stage is not None:
            on_stage(j, acc_box.get("acc", np.full((n_tasks, n_tasks), np.nan)))

    try:
        if progress and cfg.ntk_samples:
            progress("the NTK at initialisation", 0, total)
        ntk_stage(-1, "init")
        acc = continual_loop(n_tasks, train, evaluate, after_stage)
    except BaseException:
        if log is not None and run_id is not None:
            log.finish(run_id, {"error": True}, status="error")
        raise
    cancelled = cancel is not None and cancel.is_set() and final_column(acc) < n_tasks - 1
    if progress:
        done = total if not cancelled else max(0, final_column(acc) + 1) * cfg.steps
        progress("done" if not cancelled else "cancelled", done, total)
    result = ContinualResult(
        config=cfg,
        acc=acc,
        ntk=ntk_rows,
        angles=angles,
        history=pd.DataFrame(history),
        seconds=time.perf_counter() - t_start,
        cancelled=cancelled,
        timings=timings,
    )
    result.model = model
    if log is not None and run_id is not None:
        log.finish(run_id, result.metrics(), status="cancelled" if cancelled else "ok")
        result.run_id = run_id
    return result
