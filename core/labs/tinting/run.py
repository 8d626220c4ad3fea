"""One training run of Model Tinting or layer-wise AdaMerging: the schedule, `tint`, and resume.

Schedule (Tinting, the official ModelTinting loop): every outer step shuffles the tasks and takes
one Adam step per task on one fresh batch of that task (a new shuffled draw of `batch` images).
AdaMerging (the official EnnengYang/AdaMerging loop): every outer step draws one batch per task
and takes ONE Adam step on the sum over the tasks of the mean prediction entropy. Both run through
`core.train.train_loop` (Adam, constant lr, no weight decay, no clipping); a cancel takes effect
between outer steps only, and the state (λ, tints, Adam) is saved either way for `resume`.

The merged encoder is a `torch.func.functional_call` over parameters rebuilt from λ (differentiable
in λ, no module surgery); the N task vectors are held stacked (N x the visual encoder), which is
fine for small ViTs. Method notes: docs/methods/tinting.md.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ...runtime.paths import cache_dir
from ...runtime.runlog import resolve_run_log
from ...train import TrainConfig, param_groups, train_loop
from .config import ADAMERGING, TintConfig
from .data import (
    TaskImages,
    build,
    prediction_entropy,
    prepare_data,
    pseudo_label_agreement,
    scores,
    tint_tasks,
)
from .model import TintedMerge, entropy_loss, pseudo_label_loss

Progress = Callable[[int, int, dict], None]
RUN_KIND = "tint"


# --------------------------------------------------------------------------- the schedule
def _gen(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(":".join(map(str, parts)).encode()))


def step_batches(tasks: Sequence[str], sizes: Mapping[str, int], batch: int, seed: int, start: int = 0) -> Iterator:
    """(step, task, indices) in the official order: each step shuffles the tasks and draws one
    fresh batch per task (a new shuffled draw every time). Depends only on (seed, step), so a
    resumed run continues exactly where it stopped."""
    step = start
    while True:
        order = torch.randperm(len(tasks), generator=_gen(seed, "order", step)).tolist()
        for i in order:
            t = tasks[i]
            idx = torch.randperm(sizes[t], generator=_gen(seed, "batch", step, t))[:batch]
            yield step, t, idx
        step += 1


def step_groups(batches: Iterator, n: int) -> Iterator[list]:
    """The draws of `step_batches` grouped per outer step (n tasks): AdaMerging's one-step-per-outer-step."""
    while True:
        yield [next(batches) for _ in range(n)]


class StepBoundaryCancel:
    """Lets train_loop see a cancel only between outer steps (it asks once per optimizer step)."""

    def __init__(self, event, per_step: int):
        self.event, self.per_step, self.calls = event, per_step, 0

    def is_set(self) -> bool:
        at_boundary = self.calls % self.per_step == 0
        self.calls += 1
        return bool(at_boundary and self.event is not None and self.event.is_set())


# --------------------------------------------------------------------------- the result and its state
@dataclass
class TintResult:
    """history: one row per outer step (step, loss, kept, agreement = batch means over tasks; AdaMerging's
    loss is the mean prediction entropy); evals: one row per evaluation and task (step, task, accuracy,
    entropy = mean prediction entropy, on the test split); accuracy: the final test accuracy per task,
    each with its own tint."""

    config: TintConfig
    model: TintedMerge
    history: pd.DataFrame
    evals: pd.DataFrame
    accuracy: dict[str, float]
    steps_done: int
    cancelled: bool = False
    seconds: float = 0.0
    prepare_seconds: float = 0.0
    run_id: int | None = None
    state_path: str | None = None
    info: dict = field(default_factory=dict)

    def metrics(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "avg_abs": float(np.mean(list(self.accuracy.values()))) if self.accuracy else None,
            "steps_done": self.steps_done,
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 2),
            "prepare_seconds": round(self.prepare_seconds, 2),
            "trainable_params": self.model.num_trainable(),
            "encoder_params": self.model.num_encoder_params(),
            "state_path": self.state_path,
            "lambdas_by_block": self.model.lambda_frame("block").round(4).to_dict(),
            "history_tail": self.history.tail(1).to_dict(orient="records"),
            **self.info,
        }


def default_state_dir() -> Path:
    """Where a logged run's trainable state is saved for `resume`: <cache dir>/tinting."""
    return cache_dir() / "tinting"


def save_state(
    path: str | Path, model: TintedMerge, optimizer: torch.optim.Optimizer, steps_done: int, cfg: TintConfig
):
    """λ_raw, tints, Adam state and progress, for `resume` (torch.save; loads with weights_only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state(),
            "optimizer": optimizer.state_dict(),
            "steps_done": steps_done,
            "config": cfg.to_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"saved Tinting state {path} is gone; cannot resume (start a new run)")
    return torch.load(path, weights_only=True)


def _resumed(log, resume: int, cfg: TintConfig | None) -> tuple[TintConfig, dict]:
    """(config, saved state) of logged run `resume`; cfg.steps (when cfg is given) extends it."""
    if log is None:
        raise ValueError("resuming needs the run log (run_log=False was given)")
    prev = log.get(resume)
    if prev["kind"] != RUN_KIND:
        raise ValueError(f"run {resume} is a {prev['kind']!r} run, not a Tinting run")
    path = (prev.get("metrics") or {}).get("state_path")
    if not path:
        raise ValueError(f"run {resume} has no saved state (status {prev['status']!r})")
    saved = load_state(path)
    base_cfg = TintConfig.from_dict(prev["config"]["tint"])
    cfg = base_cfg if cfg is None else TintConfig.from_dict({**base_cfg.to_dict(), "steps": cfg.steps})
    return cfg, saved


# --------------------------------------------------------------------------- the run
def tint(
    ms,
    cfg: TintConfig | None = None,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    run_log: Any = True,
    state_dir: str | Path | None = None,
    resume: int | None = None,
    data: Mapping[str, TaskImages] | None = None,
    eval_data: Mapping[str, TaskImages] | None = None,
) -> TintResult:
    """Run Model Tinting (or layer-wise AdaMerging, cfg.method) on a model set with task data.

    progress(step, steps, row) after every outer step; row holds step, loss, kept, agreement
    and, every `cfg.eval_every` steps and at the end, "accuracy" ({task: test accuracy}). Before
    step 0 it is also called with rows holding only "stage" (what is being prepared), so a caller
    sees progress from the first second. cancel: a threading.Event, honoured between outer steps;
    the state is saved either way. run_log: a RunLog, True/None (the default log) or False (none,
    `core.runtime.runlog.resolve_run_log`); the run is logged as kind "tint" with its config, and
    its metrics name the saved state (`state_path`). resume: a run id of that log - its config is
    used (with cfg.steps when cfg is given) and training continues from its saved λ, tints and
    Adam state. data / eval_data: prepared images (`prepare_data`) to reuse.
    """
    t_start = time.perf_counter()
    torch.set_flush_denormal(True)  # per thread: a job's worker thread needs it too
    log = resolve_run_log(run_log)
    saved = None
    if resume is not None:
        cfg, saved = _resumed(log, resume, cfg)
    cfg = cfg or TintConfig()
    tasks = tint_tasks(ms, cfg.tasks)

    def stage(text: str) -> None:
        if progress:
            progress(0, cfg.steps, {"stage": text})

    stage("building the merged model")
    torch.manual_seed(cfg.seed)
    model = build(ms, cfg, tasks)
    if data is None:
        data = prepare_data(ms, tasks, cfg.data, lambda i, n: stage(f"expert pseudo-labels ({cfg.data}) {i}/{n}"))
    if eval_data is None:
        eval_data = data
        if cfg.data != "test":
            eval_data = prepare_data(ms, tasks, "test", lambda i, n: stage(f"expert pseudo-labels (test) {i}/{n}"))
    groups = param_groups(model.named_trainable(), cfg.lr, weight_decay=0.0)
    optimizer = torch.optim.Adam(groups, lr=cfg.lr)
    start = 0
    if saved is not None:
        model.load_state(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start = int(saved["steps_done"])
    prepare_seconds = time.perf_counter() - t_start

    config = {
        "tint": cfg.to_dict(),
        "model_set": getattr(ms, "name", ""),
        "tasks": tasks,
        "resumed_from": resume,
        "seed": cfg.seed,
    }
    run_id = log.start(RUN_KIND, config, ms.fingerprint(), seed=cfg.seed) if log is not None else None

    n = len(tasks)
    ada = cfg.method == ADAMERGING
    per = 1 if ada else n  # optimizer steps per outer step
    sizes = {t: len(data[t].pseudo) for t in tasks}
    rows: list[dict] = []
    history: list[dict] = []
    evals: list[dict] = []

    def evaluate(step: int) -> dict[str, float]:
        acc, ent = scores(model, eval_data)
        evals.extend({"step": step, "task": t, "accuracy": a, "entropy": ent[t]} for t, a in acc.items())
        return acc

    def tint_loss(batch):
        _, t, idx = batch
        d = data[t]
        loss, m = pseudo_label_loss(model(d.images[idx], t), d.pseudo[idx], d.conf[idx], cfg.filter)
        return loss, {"task": t, **m}

    def ada_loss(group):
        merged = model.merged_params()  # one merge per outer step, shared by every task's forward
        total, parts = 0.0, []
        for _, t, idx in group:
            d = data[t]
            loss, m = entropy_loss(model(d.images[idx], t, merged), d.pseudo[idx])
            total = total + loss
            parts.append(m)
        means = {k: float(np.mean([m[k] for m in parts])) for k in ("kept", "agreement", "entropy")}
        return total, {"task": "all", **means}

    def on_step(done: int, total: int, row: dict) -> None:
        rows.append(row)
        if done % per:
            return
        step = start + done // per
        last = rows[-per:]
        out = {
            "step": step,
            "loss": float(np.mean([r.get("entropy", r["loss"]) for r in last])),
            "kept": float(np.mean([r["kept"] for r in last])),
            "agreement": float(np.mean([r["agreement"] for r in last])),
        }
        if step % cfg.eval_every == 0 or step == cfg.steps:
            out["accuracy"] = evaluate(step)
        history.append(out)
        if progress:
            progress(step, cfg.steps, out)

    status = "ok"
    try:
        if start == 0:
            stage("evaluating step 0")
            acc0 = evaluate(0)
            if progress:
                progress(0, cfg.steps, {"step": 0, "accuracy": acc0})
        tc = TrainConfig(
            steps=max(0, cfg.steps - start) * per,
            lr=cfg.lr,
            weight_decay=0.0,
            warmup=0.0,
            schedule="constant",
            optimizer="adam",
            grad_clip=None,
            seed=cfg.seed,
            log_every=1,
        )
        batches = step_batches(tasks, sizes, cfg.batch, cfg.seed, start)
        res = train_loop(
            optimizer,
            ada_loss if ada else tint_loss,
            step_groups(batches, n) if ada else batches,
            tc,
            progress=on_step,
            cancel=StepBoundaryCancel(cancel, per) if cancel else None,
        )
        steps_done = start + res.steps_done // per
        cancelled = res.cancelled
        if cancelled:
            status = "cancelled"
        final = evaluate(steps_done) if not evals or evals[-1]["step"] != steps_done else None
        accuracy = final or {r["task"]: r["accuracy"] for r in evals if r["step"] == steps_done}
    except BaseException as e:
        if log is not None and run_id is not None:
            log.finish(run_id, {"error": f"{type(e).__name__}: {e}"}, status="error")
        raise

    state_path = None
    if log is not None and run_id is not None:
        state_path = str(Path(state_dir or default_state_dir()) / f"tint-run{run_id}.pt")
    elif state_dir is not None:
        state_path = str(Path(state_dir) / f"tint-seed{cfg.seed}.pt")
    if state_path is not None:
        save_state(state_path, model, optimizer, steps_done, cfg)
    info: dict = {"agreement": pseudo_label_agreement(model, data)}
    if ada:
        info["entropy"] = prediction_entropy(model, data)
    seconds = time.perf_counter() - t_start
    result = TintResult(
        cfg,
        model,
        pd.DataFrame(history),
        pd.DataFrame(evals),
        accuracy,
        steps_done,
        cancelled,
        seconds,
        prepare_seconds,
        run_id,
        state_path,
        info,
    )
    if log is not None and run_id is not None:
        log.finish(run_id, result.metrics(), status=status)
    return result
