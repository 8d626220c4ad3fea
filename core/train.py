"""The one training loop.

Every method that trains - the zoo's pretraining and fine-tunes, TempBalance /
Model Balancing, Weight Scope Alignment, Model Tinting, continual adapters -
runs through `train_loop`: AdamW (or Adam) over parameter groups, linear
warmup + cosine decay applied on top of each group's own `base_lr`, optional
gradient clipping, and hooks.

Hooks are how methods plug in without forking the loop:
  - `extra_loss(step) -> tensor | None`        added to the task loss (e.g. the WSA regularizer)
  - `before_step(step, optimizer) -> dict|None` may rewrite groups' `base_lr` (TempBalance) and
                                               returns values to record in the history
  - `after_step(step, optimizer) -> dict|None`  runs after the optimizer step (e.g. the zoo's
                                               pretraining clamps CLIP's logit scale there)
The learning-rate schedule is `lr_factor(step, cfg)` unless `train_loop(lr_schedule=...)` gives
another step -> factor function (the zoo uses `warmup_cosine`, see there why it exists).
Progress is reported as `progress(step, total, metrics)`; `cancel` is any
object with `is_set()` (threading.Event), checked every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class TrainConfig:
    steps: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: float = 0.1  # fraction of steps with linear warmup
    schedule: str = "cosine"  # "cosine" or "constant"
    optimizer: str = "adamw"  # "adamw" or "adam"
    grad_clip: float | None = 1.0
    seed: int = 0
    log_every: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier on base_lr at `step` (0-based): linear warmup then cosine to 0 (or constant)."""
    warm = int(cfg.warmup * cfg.steps)
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    rest = max(1, cfg.steps - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / rest)))


def warmup_cosine(step: int, steps: int, warmup: float) -> float:
    """The demo zoo's schedule: linear warmup over max(1, int(steps * warmup)) steps, then cosine to 0.

    The same curve as `lr_factor` with schedule "cosine" except that it always warms up for at least
    one step, and the cosine's argument is computed as pi * (step - w) / (steps - w) (in `lr_factor`:
    pi * ((step - w) / (steps - w))), which differs in the last bit at some steps. The zoo's built
    weights and its shipped pretrained base were made with exactly this arithmetic, so it is kept:
    switching the zoo to `lr_factor` would change its weights (and would have to change its recipe hash).
    """
    w = max(1, int(steps * warmup))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, steps - w)))


class Hook(Protocol):
    def extra_loss(self, step: int) -> torch.Tensor | None: ...

    def before_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict | None: ...

    def after_step(self, step: int, optimizer: torch.optim.Optimizer) -> dict | None: ...


def param_groups(
    named_params: Iterable[tuple[str, torch.nn.Parameter]],
    lr: float,
    *,
    weight_decay: float = 0.0,
    group_of: Callable[[str], Any] | None = None,
    lr_multipliers: Mapping[Any, float] | None = None,
    no_decay: Callable[[str, torch.Tensor], bool] | None = None,
) -> list[dict]:
    """Parameter groups keyed by `group_of(name)` (e.g. core.layers.layer_index), each with
    base_lr = lr * lr_multipliers.get(group, 1). 1-D parameters (norms, biases) and names
    matched by `no_decay` get no weight decay. Only parameters with requires_grad are kept."""
    group_of = group_of or (lambda name: None)
    no_decay = no_decay or (lambda name, p: p.ndim < 2)
    groups: dict[tuple, dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        g = group_of(name)
        decay = not no_decay(name, p)
        key = (g, decay)
        if key not in groups:
            mult = 1.0 if lr_multipliers is None else float(lr_multipliers.get(g, 1.0))
            groups[key] = {
                "params": [],
                "names": [],
                "group": g,
                "base_lr": lr * mult,
                "lr": lr * mult,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw or adam)")


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per logged step
    steps_done: int = 0
    cancelled: bool = False


def train_loop(
    groups: list[dict] | torch.optim.Optimizer,
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict]],
    batches: Iterator | Iterable,
    cfg: TrainConfig,
    *,
    hooks: Sequence[Hook] = (),
    progress: Callable[[int, int, dict], None] | None = None,
    cancel=None,
    lr_schedule: Callable[[int], float] | None = None,
) -> TrainResult:
    """Run cfg.steps optimizer steps. loss_fn(batch) -> (loss, metrics dict of floats).

    `groups` may be a ready optimizer (its groups' `lr` become their `base_lr`); then
    cfg.optimizer and cfg.lr are not used. `lr_schedule(step)` replaces `lr_factor(step, cfg)`.
    """
    opt = groups if isinstance(groups, torch.optim.Optimizer) else make_optimizer(groups, cfg)
    for g in opt.param_groups:
        g.setdefault("base_lr", g["lr"])
    params = [p for g in opt.param_groups for p in g["params"]]
    it = iter(batches)
    res = TrainResult()
    for step in range(cfg.steps):
        if cancel is not None and cancel.is_set():
            res.cancelled = True
            break
        record: dict[str, Any] = {}
        for h in hooks:
            if hasattr(h, "before_step"):
                out = h.before_step(step, opt)
                if out:
                    record.update(out)
        f = lr_factor(step, cfg) if lr_schedule is None else lr_schedule(step)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * f
        try:
            batch = next(it)
        except StopIteration:
            it = iter(batches)
            batch = next(it)
        loss, metrics = loss_fn(batch)
        total = loss
        for h in hooks:
            if hasattr(h, "extra_loss"):
                extra = h.extra_loss(step)
                if extra is not None:
                    total = total + extra
                    record["extra_loss"] = record.get("extra_loss", 0.0) + float(extra.detach())
        if not torch.isfinite(total):
            raise FloatingPointError(f"loss became {float(total.detach())} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        for h in hooks:
            if hasattr(h, "after_step"):
                out = h.after_step(step, opt)
                if out:
                    record.update(out)
        res.steps_done = step + 1
        if step % max(1, cfg.log_every) == 0 or step == cfg.steps - 1:
            row = {"step": step, "loss": float(loss.detach()), "lr_factor": f, **metrics, **record}
            res.history.append(row)
            if progress:
                progress(step + 1, cfg.steps, row)
    return res


def infinite_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> Iterator:
    """Seeded reshuffled epochs over (x, y), forever."""
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - (n % batch_size if n >= batch_size else 0), batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) == 0:
                break
            yield x[idx], y[idx]
