"""The Fine-tune lab: low-data fine-tuning with TempBalance / Model Balancing and Weight Scope Alignment.

One fine-tune follows the zoo's recipe (task arithmetic's): the visual tower is trained with
cross-entropy through the task's frozen zero-shot head, AdamW with warmup + cosine, through the
one training loop `core.train.train_loop`. The methods plug in as hooks:

- learning-rate rule: "uniform" (one lr), "tempbalance" or "model_balancing"
  (`core.tempbalance.LayerBalancer`, multipliers recomputed every `every` steps);
- Weight Scope Alignment (`ScopeAlignment`): `wsa_weight` × Σℓ KL(N(μℓ,σℓ²) ‖ N(μ̃ℓ,σ̃ℓ²)) toward a
  target scope (default: the pretrained visual tower's, `core.scopes`).

A method name is a rule, optionally with "+wsa" ("uniform", "tempbalance", "model_balancing",
"wsa" = uniform + WSA, "tempbalance+wsa", "model_balancing+wsa").

Low-data splits: a seeded, class-balanced fraction of the task's training pool (the zoo's
``n_train`` images of `core.zoo.data.load_split(task, "train")`); accuracy on the task's test split
(`core.evaluate.Evaluator`, zero-shot head). `shard` takes the next disjoint slice of the same
seeded order, so two shards of one task never share an image (the WSA view's "two data shards").

`run_grid` runs fractions × methods × seeds and `summary_table` gives mean ± std;
`wsa_experiment` fine-tunes two models with and without WSA toward one target and measures the
loss barrier on the straight path between them and their task-arithmetic merge. Every run is
recorded in the run log (`core.runs.RunLog`). `python -m core finetune` is `main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.scopes import interpolate, scope_dict, scope_fusion, weight_scopes, wsa_regularizer
from core.tempbalance import RULES, LayerBalancer, balanced_units, unit_alphas, unit_group_of
from core.train import TrainConfig, infinite_batches, param_groups, train_loop
from core.zoo import data as D

LR_RULES = ("uniform", *RULES)
METHODS = ("uniform", "tempbalance", "model_balancing", "wsa", "tempbalance+wsa", "model_balancing+wsa")
METHOD_LABELS = {
    "uniform": "uniform lr",
    "tempbalance": "TempBalance",
    "model_balancing": "Model Balancing",
    "wsa": "WSA",
    "tempbalance+wsa": "TempBalance + WSA",
    "model_balancing+wsa": "Model Balancing + WSA",
}
TA_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))

Progress = Callable[[int, int, dict], None]


# ------------------------------------------------------------------------------------ config


def parse_method(method: str) -> tuple[str, bool]:
    """(lr rule, uses WSA) of a method name such as "tempbalance+wsa"."""
    parts = method.lower().replace(" ", "").split("+")
    wsa = "wsa" in parts
    rest = [p for p in parts if p != "wsa"]
    rule = rest[0] if rest else "uniform"
    if len(rest) > 1 or rule not in LR_RULES:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return rule, wsa


@dataclass(frozen=True)
class LabConfig:
    """One fine-tune of the lab. Defaults follow the demo zoo's fine-tuning recipe, scaled down."""

    task: str
    fraction: float = 1.0  # share of the training pool used
    method: str = "uniform"  # see METHODS
    seed: int = 0  # data subset, batch order and nothing else (the init is the pretrained model)
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: float = 0.1
    grad_clip: float | None = None  # the zoo's fine-tunes do not clip
    every: int = 25  # TempBalance / Model Balancing: recompute the multipliers every K steps
    s1: float = 0.5  # TempBalance: multiplier at α_min
    s2: float = 1.5  # TempBalance: multiplier at α_max
    s: float = 1.25  # Model Balancing: scale of the sigmoid (multipliers in 10^(±s/2))
    T: float = 10.0  # noqa: N815  Model Balancing: temperature
    wsa_weight: float = 1.0  # weight of the WSA term when the method uses WSA
    n_train: int = 3000  # size of the training pool the fraction is taken of
    shard: int = 0  # disjoint slice of the seeded order (two shards of one task)
    log_every: int = 5

    @property
    def rule(self) -> str:
        return parse_method(self.method)[0]

    @property
    def uses_wsa(self) -> bool:
        return parse_method(self.method)[1] and self.wsa_weight > 0

    def validate(self) -> None:
        parse_method(self.method)
        D.get_task(self.task)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.shard < 0 or (self.shard + 1) * self.fraction > 1 + 1e-9:
            raise ValueError(f"shard {self.shard} of fraction {self.fraction} does not fit in the training pool")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def recipe_defaults(ms) -> dict:
    """lr, weight decay, warmup and training-pool size of the model set's zoo recipe (demo defaults otherwise)."""
    out = {"lr": 1e-4, "weight_decay": 0.1, "warmup": 0.1, "n_train": 3000}
    zdir = getattr(ms, "zoo_dir", None)
    if zdir is not None and (Path(zdir) / "manifest.json").exists():
        r = json.loads((Path(zdir) / "manifest.json").read_text()).get("recipe", {})
        out.update(
            lr=r.get("ft_lr", out["lr"]),
            weight_decay=r.get("ft_weight_decay", out["weight_decay"]),
            warmup=r.get("ft_warmup", out["warmup"]),
            n_train=r.get("n_train", out["n_train"]),
        )
    return out


def lab_tasks(ms) -> list[str]:
    """Tasks the lab can fine-tune on: the model set's demo tasks, else every demo task."""
    return list(getattr(ms, "eval_tasks", None) or D.TASK_NAMES)


# -------------------------------------------------------------------------------------- data


def low_data_indices(labels: torch.Tensor | np.ndarray, fraction: float, seed: int, shard: int = 0) -> np.ndarray:
    """Seeded, class-balanced subset of round(fraction·N) indices (at least 1), sorted.

    Each class's indices are shuffled with `seed`, then classes are interleaved (round robin),
    so the first k of this order hold every class as evenly as k allows; shard j takes positions
    [j·k, (j+1)·k) of the same order (disjoint from the other shards).
    """
    y = np.asarray(labels)
    n = len(y)
    k = max(1, int(round(fraction * n)))
    rng = np.random.default_rng([int(seed), 99])
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    rounds = max((len(p) for p in per_class), default=0)
    order = [p[i] for i in range(rounds) for p in per_class if i < len(p)]
    # within each round the class order is shuffled too, so small k do not favour class 0
    order = np.asarray(order, dtype=np.int64)
    c = len(per_class)
    for r in range(0, len(order), c):
        order[r : r + c] = order[r : r + c][rng.permutation(min(c, len(order) - r))]
    chosen = order[shard * k : (shard + 1) * k]
    if len(chosen) < k:
        raise ValueError(f"shard {shard} of {k} images does not fit in {n} training images")
    return np.sort(chosen)


def training_data(cfg: LabConfig, image_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The preprocessed training subset (float images, labels) of a config."""
    from core.models import preprocess

    x, y = D.load_split(cfg.task, "train", n=cfg.n_train)
    idx = torch.from_numpy(low_data_indices(y, cfg.fraction, cfg.seed, cfg.shard))
    return preprocess(x[idx], image_size), y[idx]


_EVALUATORS: dict[tuple, object] = {}


def evaluator(ms, tasks: Sequence[str], split: str = "test"):
    """A `core.evaluate.Evaluator` on `tasks`' `split` built from the model set's base (cached per process)."""
    from core.evaluate import Evaluator

    key = (str(ms.base_path), ms.fingerprint(), tuple(tasks), split)
    ev = _EVALUATORS.get(key)
    if ev is None:
        torch.set_flush_denormal(True)
        if len(_EVALUATORS) > 8:
            _EVALUATORS.clear()
        ev = Evaluator(ms.base(), {t: (*D.load_split(t, split), D.get_task(t)) for t in tasks})
        _EVALUATORS[key] = ev
    return ev


# ------------------------------------------------------------------------------------- hooks


class ScopeAlignment:
    """A `core.train` hook: WSA. extra_loss = weight × Σℓ KL(scope_ℓ ‖ target_ℓ) over the target's layers;
    every `log_every` steps it also records that sum as ``scope_kl`` (without the weight), weight 0 included."""

    def __init__(self, named_params: Sequence[tuple[str, torch.Tensor]], target: Mapping[str, tuple[float, float]], weight: float, log_every: int = 5):  # fmt: skip
        self.params = [(n, p) for n, p in named_params if n in target]
        self.target = dict(target)
        self.weight = float(weight)
        self.log_every = max(1, log_every)

    def distance(self) -> float:
        with torch.no_grad():
            return float(wsa_regularizer(self.params, self.target))

    def extra_loss(self, step: int) -> torch.Tensor | None:
        return self.weight * wsa_regularizer(self.params, self.target) if self.weight > 0 else None

    def before_step(self, step: int, optimizer) -> dict | None:
        return {"scope_kl": self.distance()} if step % self.log_every == 0 else None


# ----------------------------------------------------------------------------------- results


@dataclass
class LabResult:
    """One fine-tune: its config, test accuracy, history and the per-layer records."""

    config: LabConfig
    accuracy: float  # test accuracy on config.task
    zero_shot: float  # the pretrained model's test accuracy on config.task
    train_size: int
    history: pd.DataFrame  # step, loss, lr_factor, acc (batch), scope_kl, lr_mult_min/max, ...
    multipliers: pd.DataFrame  # step, unit, layer, alpha, multiplier (empty for uniform lr)
    alpha_before: pd.DataFrame  # unit, layer, alpha of the pretrained weights
    alpha_after: pd.DataFrame  # unit, layer, alpha of the fine-tuned weights
    scope_kl: float  # Σℓ KL(scope ‖ target) at the end
    seconds: float
    cancelled: bool = False
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # visual.* of the fine-tune
    run_id: int | None = None

    def row(self) -> dict:
        c = self.config
        return {
            "task": c.task, "fraction": c.fraction, "method": c.method, "seed": c.seed, "shard": c.shard,
            "steps": c.steps, "train_size": self.train_size, "accuracy": self.accuracy, "zero_shot": self.zero_shot,
            "scope_kl": self.scope_kl, "final_loss": float(self.history["loss"].iloc[-1]) if len(self.history) else float("nan"),
            "seconds": round(self.seconds, 2), "cancelled": self.cancelled, "run_id": self.run_id,
        }  # fmt: skip


def _run_log(run_log):
    """The RunLog to use: None for `False`, a new RunLog for None (None too when core.runs is unavailable)."""
    if run_log is False:
        return None
    if run_log is not None:
        return run_log
    try:
        from core.runtime.runlog import RunLog

        return RunLog()
    except Exception:  # the run log is optional: a missing module or an unwritable cache must not stop training
        return None


def visual_target_scopes(ms) -> dict[str, tuple[float, float]]:
    """WSA's default target: the scopes of the pretrained visual tower's weight matrices (ndim >= 2)."""
    return scope_dict({k: v for k, v in ms.base().items() if k.startswith("visual.")})


def finetune(
    ms,
    cfg: LabConfig,
    *,
    target_scopes: Mapping[str, tuple[float, float]] | None = None,
    progress: Progress | None = None,
    cancel=None,
    run_log=None,
    watch: Callable[[dict], None] | None = None,
) -> LabResult:
    """Fine-tune `ms`'s base visual tower on `cfg.task` with `cfg.method`; evaluate on the test split.

    target_scopes: WSA target (default `visual_target_scopes(ms)`); its distance is recorded for
    every method. progress(step, total, row) is `core.train`'s. run_log: a RunLog, None (the
    default log) or False (no logging); the run is recorded as kind "finetune". watch(hooks) is
    called once before training with {"balancer": LayerBalancer | None, "alignment": ScopeAlignment}
    so a live view can read the multipliers while the run goes on.
    """
    from core.models import build_model, image_size_of, zero_shot_head

    cfg.validate()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    base = ms.base()
    model = build_model(base)
    spec = D.get_task(cfg.task)
    # clone: the cached head is an inference-mode tensor, which autograd refuses to save
    head = zero_shot_head(model, spec.classnames, spec.templates).clone()
    x, y = training_data(cfg, image_size_of(model))
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("visual."))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    units = balanced_units(named)
    groups = param_groups(named, cfg.lr, weight_decay=cfg.weight_decay, group_of=unit_group_of(units))
    target = dict(target_scopes) if target_scopes is not None else visual_target_scopes(ms)
    wsa = ScopeAlignment(named, target, cfg.wsa_weight if cfg.uses_wsa else 0.0, cfg.log_every)
    hooks: list = [wsa]
    balancer = None
    if cfg.rule != "uniform":
        balancer = LayerBalancer(cfg.rule, every=cfg.every, s1=cfg.s1, s2=cfg.s2, s=cfg.s, T=cfg.T)
        hooks.append(balancer)
    alpha_before = unit_alphas(named)
    if watch:
        watch({"balancer": balancer, "alignment": wsa, "config": cfg})

    def loss_fn(batch):
        xb, yb = batch
        logits = F.normalize(model.encode_image(xb), dim=-1) @ head.T
        loss = F.cross_entropy(logits, yb)
        return loss, {"acc": float((logits.argmax(1) == yb).float().mean())}

    tcfg = TrainConfig(
        steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
        grad_clip=cfg.grad_clip, seed=cfg.seed, log_every=cfg.log_every,
    )  # fmt: skip
    log = _run_log(run_log)
    fp = ms.fingerprint()
    run_id = log.start("finetune", {"lab": cfg.to_dict(), "lr_rule": cfg.rule, "wsa": cfg.uses_wsa}, fp, seed=cfg.seed) if log else None  # fmt: skip
    try:
        model.train()
        res = train_loop(groups, loss_fn, infinite_batches(x, y, min(cfg.batch_size, len(y)), cfg.seed), tcfg,
                         hooks=hooks, progress=progress, cancel=cancel)  # fmt: skip
        model.eval()
        sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("visual.")}
        ev = evaluator(ms, [cfg.task])
        acc = ev.accuracy(sd, [cfg.task])[cfg.task]
        zs = ev.accuracy(None, [cfg.task])[cfg.task]
        result = LabResult(
            config=cfg,
            accuracy=acc,
            zero_shot=zs,
            train_size=len(y),
            history=pd.DataFrame(res.history),
            multipliers=balancer.table() if balancer else LayerBalancer().table(),
            alpha_before=alpha_before,
            alpha_after=unit_alphas(named),
            scope_kl=wsa.distance(),
            seconds=time.perf_counter() - t0,
            cancelled=res.cancelled,
            state_dict=sd,
            run_id=run_id,
        )
    except BaseException as e:  # includes Streamlit's rerun/stop: the run is then "cancelled"
        if log:
            interrupted = not isinstance(e, Exception) or type(e).__module__.startswith("streamlit")
            log.finish(run_id, {"error": f"{type(e).__name__}: {e}"}, status="cancelled" if interrupted else "error")
        raise
    if log:
        m = result.row()
        m.pop("run_id")
        m["alpha_mean_before"] = float(alpha_before["alpha"].mean())
        m["alpha_mean_after"] = float(result.alpha_after["alpha"].mean())
        log.finish(run_id, m, status="cancelled" if res.cancelled else "ok")
    return result


# -------------------------------------------------------------------------------------- grid


def grid_configs(
    task: str, fractions: Sequence[float], methods: Sequence[str], seeds: Sequence[int], **common
) -> list[LabConfig]:
    """Every (fraction, seed, method) config, fractions outermost, methods innermost (paired seeds)."""
    cfgs = [LabConfig(task=task, fraction=float(f), method=m, seed=int(s), **common) for f in fractions for s in seeds for m in methods]  # fmt: skip
    for c in cfgs:
        c.validate()
    return cfgs


def run_grid(
    ms,
    configs: Sequence[LabConfig],
    *,
    progress: Callable[[int, int, str], None] | None = None,
    on_result: Callable[[LabResult], None] | None = None,
    cancel=None,
    run_log=None,
    step_progress: Progress | None = None,
    watch: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Run configs one after another; one `LabResult.row()` per finished run (stops early on cancel).

    progress(done, total, label) after each run; on_result(result) with the full result;
    step_progress and watch go to every `finetune`.
    """
    rows = []
    log = _run_log(run_log)
    for i, cfg in enumerate(configs):
        if cancel is not None and cancel.is_set():
            break
        r = finetune(
            ms, cfg, cancel=cancel, run_log=log if log is not None else False, progress=step_progress, watch=watch
        )
        if r.cancelled:
            break
        rows.append(r.row())
        if on_result:
            on_result(r)
        if progress:
            progress(i + 1, len(configs), f"{cfg.method} f={cfg.fraction:g} seed {cfg.seed}: {r.accuracy:.3f}")
    return pd.DataFrame(rows)


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count of test accuracy per (fraction, method), plus the mean paired gain over
    uniform lr (same fraction and seed) and the mean zero-shot accuracy."""
    if results.empty:
        return pd.DataFrame(
            columns=["fraction", "method", "train_size", "mean", "std", "n", "gain_vs_uniform", "zero_shot"]
        )
    r = results.copy()
    g = r.groupby(["fraction", "method"], sort=False)
    out = g.agg(train_size=("train_size", "first"), mean=("accuracy", "mean"), std=("accuracy", "std"),
                n=("accuracy", "size"), zero_shot=("zero_shot", "mean")).reset_index()  # fmt: skip
    out["std"] = out["std"].fillna(0.0)
    uni = r[r["method"] == "uniform"].set_index(["fraction", "seed"])["accuracy"]
    gains = []
    for f, m in zip(out["fraction"], out["method"]):
        sub = r[(r["fraction"] == f) & (r["method"] == m)].set_index(["fraction", "seed"])["accuracy"]
        common = sub.index.intersection(uni.index)
        gains.append(float((sub[common] - uni[common]).mean()) if len(common) and m != "uniform" else float("nan"))
    out["gain_vs_uniform"] = gains
    order = {m: i for i, m in enumerate(METHODS)}
    out["_o"] = out["method"].map(lambda m: order.get(m, 99))
    return out.sort_values(["fraction", "_o"]).drop(columns="_o").reset_index(drop=True)


def markdown_table(summary: pd.DataFrame) -> str:
    """Accuracy (%) vs data fraction, one column per method: "mean ± std", gain over uniform lr in brackets."""
    if summary.empty:
        return "(no results)"
    methods = [m for m in METHODS if m in set(summary["method"])] + sorted(set(summary["method"]) - set(METHODS))
    head = "| fraction | train images | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for f, sub in summary.groupby("fraction", sort=True):
        by = sub.set_index("method")
        cells = []
        for m in methods:
            if m not in by.index:
                cells.append("")
                continue
            r = by.loc[m]
            cell = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
            if m != "uniform" and np.isfinite(r["gain_vs_uniform"]):
                cell += f" ({100 * r['gain_vs_uniform']:+.1f})"
            cells.append(cell)
        size = int(sub["train_size"].iloc[0])
        lines.append(f"| {f:g} | {size} | " + " | ".join(cells) + " |")
    n = int(summary["n"].max())
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± std over {n} seeds; in brackets the mean paired gain over uniform lr.")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- WSA


def interpolation_curve(ev, tasks: Sequence[str], sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor], num_points: int = 11) -> pd.DataFrame:  # fmt: skip
    """Loss and accuracy of θ(t) = (1 − t)θ_a + tθ_b on an even grid of t ∈ [0, 1].

    Loss: cross-entropy through the zero-shot heads, averaged over `tasks` (each task weighs the
    same); accuracy likewise. Columns t, loss, accuracy, loss_excess (loss above the straight chord
    between the ends: its max is the loss barrier) and acc_drop (accuracy below the chord).
    """
    if num_points < 2:
        raise ValueError("num_points must be >= 2 (both ends)")
    ts = np.linspace(0.0, 1.0, num_points)
    rows = []
    for t in ts:
        logits = ev.logits(interpolate(sd_a, sd_b, float(t)), tasks)
        loss = float(np.mean([F.cross_entropy(lg, ev.tasks[k].labels).item() for k, lg in logits.items()]))
        acc = float(np.mean([(lg.argmax(1) == ev.tasks[k].labels).float().mean().item() for k, lg in logits.items()]))
        rows.append({"t": float(t), "loss": loss, "accuracy": acc})
    out = pd.DataFrame(rows)
    out["loss_excess"] = out["loss"] - ((1 - out["t"]) * out["loss"].iloc[0] + out["t"] * out["loss"].iloc[-1])
    out["acc_drop"] = ((1 - out["t"]) * out["accuracy"].iloc[0] + out["t"] * out["accuracy"].iloc[-1]) - out["accuracy"]
    return out


def barrier(curve: pd.DataFrame) -> dict:
    """Loss barrier max_t(loss − chord) and accuracy barrier max_t(chord − accuracy) of an interpolation curve."""
    i = int(curve["loss_excess"].idxmax())
    return {"loss_barrier": float(curve["loss_excess"].max()), "t_max": float(curve["t"].iloc[i]),
            "acc_barrier": float(curve["acc_drop"].max()), "midpoint_accuracy": float(np.interp(0.5, curve["t"], curve["accuracy"]))}  # fmt: skip


def task_arithmetic_merge(ms, sds: Sequence[Mapping[str, torch.Tensor]], tasks: Sequence[str], lambdas=TA_LAMBDAS) -> dict:  # fmt: skip
    """θ0 + λ Σ τ_i (core.merging "task_arithmetic"), λ chosen on the validation split; accuracy on test."""
    from core.merging import merge

    base_visual = {k: v for k, v in ms.base().items() if k.startswith("visual.")}
    val, test = evaluator(ms, tasks, "val"), evaluator(ms, tasks, "test")
    best = (-1.0, None)
    for lam in lambdas:
        merged = merge(base_visual, list(sds), "task_arithmetic", coefficients=float(lam))
        acc = float(np.mean(list(val.accuracy(merged, tasks).values())))
        if acc > best[0]:
            best = (acc, lam)
    merged = merge(base_visual, list(sds), "task_arithmetic", coefficients=float(best[1]))
    acc = test.accuracy(merged, tasks)
    return {
        "lambda": best[1],
        "val_accuracy": best[0],
        "accuracy": acc,
        "mean_accuracy": float(np.mean(list(acc.values()))),
    }


@dataclass
class WSAResult:
    """Two fine-tunes with and without WSA toward one target; their path and their merge."""

    pair: tuple[LabConfig, LabConfig]  # the two runs without WSA (the WSA runs differ only in method)
    weight: float
    target: str
    curves: pd.DataFrame  # variant ("without WSA"/"with WSA"), t, loss, accuracy, loss_excess, acc_drop
    summary: pd.DataFrame  # one row per variant: barriers, TA accuracy, λ, per-model accuracies, scope distance
    scopes: dict[str, pd.DataFrame]  # label -> core.scopes.weight_scopes rows (tensor level, ndim >= 2)
    results: dict[str, LabResult]  # "without WSA: A", ... -> fine-tune result
    seconds: float
    run_id: int | None = None


def wsa_pair(tasks: Sequence[str], **common) -> tuple[LabConfig, LabConfig]:
    """The two fine-tunes of the WSA view: two tasks, or (one task) two disjoint data shards of it."""
    tasks = list(tasks)
    if len(tasks) == 1 or (len(tasks) == 2 and tasks[0] == tasks[1]):
        common.setdefault("fraction", 0.5)
        return LabConfig(task=tasks[0], shard=0, **common), LabConfig(task=tasks[0], shard=1, **common)
    if len(tasks) != 2:
        raise ValueError(f"the WSA view takes one task (two shards) or two tasks, got {tasks}")
    return LabConfig(task=tasks[0], **common), LabConfig(task=tasks[1], **common)


def wsa_experiment(
    ms,
    tasks: Sequence[str],
    *,
    weight: float = 1.0,
    target: str = "base",
    rule: str = "uniform",
    num_points: int = 11,
    lambdas: Sequence[float] = TA_LAMBDAS,
    progress: Callable[[int, int, str], None] | None = None,
    cancel=None,
    run_log=None,
    step_progress: Progress | None = None,
    watch: Callable[[dict], None] | None = None,
    **common,
) -> WSAResult:
    """Fine-tune the pair of `wsa_pair(tasks)` without and with WSA (`weight`) toward one target scope.

    target "base": the pretrained visual tower's scopes; "fused": `core.scopes.scope_fusion` of the
    two fine-tunes without WSA (the next stage of multi-stage merging). Then, per variant: the
    interpolation curve between the two models on the test split of their task(s), its barriers,
    and their task-arithmetic merge (λ from `lambdas`, chosen on validation). `common` goes to every LabConfig; the
    lr rule of both variants is `rule`. Recorded in the run log as kind "finetune_wsa".
    """
    t0 = time.perf_counter()
    if target not in ("base", "fused"):
        raise ValueError(f"target must be 'base' or 'fused', got {target!r}")
    common = {k: v for k, v in common.items() if k not in ("method", "wsa_weight")}
    a, b = wsa_pair(tasks, method=rule, **common)
    with_method = rule + "+wsa" if rule != "uniform" else "wsa"
    eval_tasks = list(dict.fromkeys([a.task, b.task]))
    log = _run_log(run_log)
    inner_log = log if log is not None else False
    total, done = 4, 0
    results: dict[str, LabResult] = {}

    def step(label: str, r: LabResult):
        nonlocal done
        results[label] = r
        done += 1
        if progress:
            progress(done, total, f"{label}: accuracy {r.accuracy:.3f}")

    base_target = visual_target_scopes(ms)
    for side, cfg in (("A", a), ("B", b)):
        if cancel is not None and cancel.is_set():
            break
        step(
            f"without WSA: {side}",
            finetune(
                ms,
                cfg,
                target_scopes=base_target,
                cancel=cancel,
                run_log=inner_log,
                progress=step_progress,
                watch=watch,
            ),
        )
    tgt = base_target
    if target == "fused" and len(results) == 2:
        tgt = scope_fusion([scope_dict(results[f"without WSA: {s}"].state_dict) for s in "AB"])
        tgt = {k: v for k, v in tgt.items() if k in base_target}
    for side, cfg in (("A", a), ("B", b)):
        if cancel is not None and cancel.is_set():
            break
        wcfg = dataclasses.replace(cfg, method=with_method, wsa_weight=float(weight))
        step(
            f"with WSA: {side}",
            finetune(
                ms, wcfg, target_scopes=tgt, cancel=cancel, run_log=inner_log, progress=step_progress, watch=watch
            ),
        )

    ev = evaluator(ms, eval_tasks, "test")
    curves, rows = [], []
    scopes = {"pretrained": _scope_rows({k: v for k, v in ms.base().items() if k.startswith("visual.")})}
    for variant in ("without WSA", "with WSA"):
        ra, rb = results.get(f"{variant}: A"), results.get(f"{variant}: B")
        if ra is None or rb is None or ra.cancelled or rb.cancelled:
            continue
        curve = interpolation_curve(ev, eval_tasks, ra.state_dict, rb.state_dict, num_points)
        curves.append(curve.assign(variant=variant))
        ta = task_arithmetic_merge(ms, [ra.state_dict, rb.state_dict], eval_tasks, lambdas)
        rows.append({"variant": variant, **barrier(curve), "ta_accuracy": ta["mean_accuracy"], "ta_lambda": ta["lambda"],
                     "accuracy_A": ra.accuracy, "accuracy_B": rb.accuracy, "scope_kl_A": _kl(ra.state_dict, tgt), "scope_kl_B": _kl(rb.state_dict, tgt),
                     **{f"ta_{t}": v for t, v in ta["accuracy"].items()}})  # fmt: skip
        for side, r in (("A", ra), ("B", rb)):
            scopes[f"{variant}: {side} ({r.config.task}{'' if a.task != b.task else f' shard {r.config.shard}'})"] = _scope_rows(r.state_dict)  # fmt: skip
    out = WSAResult(
        pair=(a, b), weight=float(weight), target=target,
        curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        summary=pd.DataFrame(rows), scopes=scopes, results=results, seconds=time.perf_counter() - t0,
    )  # fmt: skip
    if log:
        config = {
            "tasks": list(tasks),
            "weight": weight,
            "target": target,
            "rule": rule,
            "pair": [a.to_dict(), b.to_dict()],
        }
        metrics = {"summary": out.summary.to_dict(orient="records"), "seconds": round(out.seconds, 1)}
        out.run_id = log.log("finetune_wsa", config, metrics, ms.fingerprint(), seed=a.seed,
                             status="cancelled" if len(results) < 4 else "ok")  # fmt: skip
    return out


def _kl(sd: Mapping[str, torch.Tensor], target: Mapping[str, tuple[float, float]]) -> float:
    """Σℓ KL(scope ‖ target) of a state dict (both variants measured against the same target)."""
    with torch.no_grad():
        return float(wsa_regularizer(sd, target))


def _scope_rows(sd: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    t = weight_scopes(sd)
    return t[(t["level"] == "tensor") & (t["ndim"] >= 2)].reset_index(drop=True)


def wsa_markdown(res: WSAResult) -> str:
    """The WSA comparison as a Markdown table."""
    a, b = res.pair
    what = f"{a.task} vs {b.task}" if a.task != b.task else f"{a.task}, two disjoint shards of {a.fraction:g}"
    lines = [
        f"WSA ({what}; weight {res.weight:g}, target: {res.target} scopes, {a.steps} steps, seed {a.seed})",
        "",
        "| variant | acc A | acc B | Σ KL to target (A, B) | loss barrier | acc barrier | acc at t=0.5 | TA acc (λ) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res.summary.itertuples():
        lines.append(
            f"| {r.variant} | {100 * r.accuracy_A:.1f} | {100 * r.accuracy_B:.1f} | {r.scope_kl_A:.3g}, {r.scope_kl_B:.3g} | "
            f"{r.loss_barrier:.4f} | {100 * r.acc_barrier:.1f} | {100 * r.midpoint_accuracy:.1f} | "
            f"{100 * r.ta_accuracy:.1f} ({r.ta_lambda:g}) |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- background job


class LabJob:
    """`run_grid` or `wsa_experiment` in a background thread, for the app: the page polls it and may
    set `cancel` (honoured between steps; the current run is logged as cancelled).

    done/total/label: finished runs; rows: one `LabResult.row()` per finished grid run;
    results: the finished `LabResult`s; current: the running fine-tune's config, history rows
    and hooks (its LayerBalancer's multipliers, its ScopeAlignment); result: the grid's
    DataFrame or the WSAResult; error: the exception text if it failed.
    """

    def __init__(self, kind: str, ms, *, threads: int = 1, **kw):
        if kind not in ("grid", "wsa"):
            raise ValueError(f"kind must be 'grid' or 'wsa', got {kind!r}")
        self.kind = kind
        self.threads = threads
        self.cancel = threading.Event()
        self.done, self.total, self.label = 0, len(kw.get("configs", ())) if kind == "grid" else 4, ""
        self.rows: list[dict] = []
        self.results: list[LabResult] = []
        self.current: dict = {}
        self.result = None
        self.error: str | None = None
        self.started = time.time()
        self._thread = threading.Thread(
            target=self._run, args=(ms,), kwargs=kw, daemon=True, name=f"finetune-lab-{kind}"
        )
        self._thread.start()

    def _progress(self, done: int, total: int, label: str) -> None:
        self.done, self.total, self.label = done, total, label

    def _watch(self, hooks: dict) -> None:
        self.current = {**hooks, "history": []}

    def _step(self, step: int, total: int, row: dict) -> None:
        cur = self.current
        if cur is not None:
            cur["step"], cur["steps"] = step, total
            cur.setdefault("history", []).append(dict(row))

    def _on_result(self, r: LabResult) -> None:
        self.results.append(r)
        self.rows.append(r.row())

    def _run(self, ms, **kw) -> None:
        # One intra-op thread while the job runs (process-wide, restored after): on a loaded 2-core
        # machine two threads made a training step ~50x slower (the pool waits on a descheduled thread).
        threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        torch.set_flush_denormal(True)
        try:
            if self.kind == "grid":
                self.result = run_grid(ms, kw.pop("configs"), progress=self._progress, on_result=self._on_result,
                                       cancel=self.cancel, step_progress=self._step, watch=self._watch, **kw)  # fmt: skip
            else:
                tasks = kw.pop("tasks")
                self.result = wsa_experiment(ms, tasks, progress=self._progress, cancel=self.cancel,
                                             step_progress=self._step, watch=self._watch, **kw)  # fmt: skip
                self.results = list(self.result.results.values())
        except BaseException as e:  # shown by the page
            self.error = f"{type(e).__name__}: {e}"
        finally:
            torch.set_num_threads(threads)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


# ----------------------------------------------------------------------- lab models -> model set


def lab_dir() -> Path:
    from core.zoo import cache_dir

    return cache_dir() / "lab"


def model_name(cfg: LabConfig) -> str:
    """A readable, file-safe name for a lab fine-tune, e.g. "digits-tempbalance-f0.05-s0"."""
    shard = f"-shard{cfg.shard}" if cfg.shard else ""
    name = f"{cfg.task}-{cfg.method}-f{cfg.fraction:g}-s{cfg.seed}{shard}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def save_lab_model(result: LabResult, name: str | None = None, directory: str | Path | None = None) -> Path:
    """Write a lab fine-tune's visual tower as safetensors (metadata: its config and accuracy); returns the path."""
    from core.checkpoints import save_state_dict

    if not result.state_dict:
        raise ValueError("this result holds no weights (it was run without keeping them)")
    name = name or model_name(result.config)
    path = Path(directory) if directory is not None else lab_dir()
    path.mkdir(parents=True, exist_ok=True)
    f = path / f"{name}.safetensors"
    save_state_dict(result.state_dict, f, metadata={"task": result.config.task, "lab": result.config.to_dict(),
                                                    "test_accuracy": result.accuracy, "source": "MergeScope fine-tune lab"})  # fmt: skip
    return f


def with_lab_models(ms, models: Mapping[str, str | Path]):
    """A files-on-disk `core.spec.ModelSetRef`: the model set's base and fine-tuned files plus `models` (name -> path).

    The Merge lab then sees the lab's fine-tunes next to the set's own.
    """
    from core.spec import ModelSetRef

    ft = {t: str(p) for t, p in ms.finetuned_paths.items()}
    ft.update({n: str(p) for n, p in models.items()})
    return ModelSetRef(zoo=None, base=str(ms.base_path), finetuned=tuple(sorted(ft.items())))


# ---------------------------------------------------------------------------------------- CLI


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _grid_job(args) -> dict:
    """One grid run in a worker process: (zoo kind, cache dir, LabConfig dict, threads) -> row."""
    kind, cache, cfg, threads = args
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    from core.zoo import load_model_set

    return finetune(load_model_set(kind, cache), LabConfig(**cfg), run_log=None).row()


def _run_grid_cli(kind: str, cache, ms, configs: list[LabConfig], workers: int, threads: int) -> pd.DataFrame:
    rows, t0 = [], time.perf_counter()

    def report(i, row):
        print(f"[{i}/{len(configs)} {time.perf_counter() - t0:6.0f}s] {row['method']:<16} fraction {row['fraction']:<6g} "
              f"seed {row['seed']}  n={row['train_size']:<5} acc {row['accuracy']:.3f}  ({row['seconds']:.1f}s)",
              file=sys.stderr, flush=True)  # fmt: skip

    if workers <= 1:
        for i, cfg in enumerate(configs, start=1):
            rows.append(finetune(ms, cfg).row())
            report(i, rows[-1])
        return pd.DataFrame(rows)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(kind, cache, c.to_dict(), threads) for c in configs]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        for i, row in enumerate(pool.map(_grid_job, jobs), start=1):
            rows.append(row)
            report(i, row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m core finetune",
        description="Fine-tune lab: accuracy vs data fraction for uniform lr / TempBalance / Model Balancing "
        "(and WSA), or (--wsa) the Weight Scope Alignment merge comparison. Prints Markdown tables.",
    )
    ap.add_argument("--zoo", default="demo", help="zoo kind: demo or micro (default demo)")
    ap.add_argument(
        "--cache", default=None, help="cache directory of the zoo (default $MERGESCOPE_CACHE or ~/.cache/mergescope)"
    )
    ap.add_argument("--task", default="digits")
    ap.add_argument("--fractions", default="0.01,0.05,0.2,1.0", help="comma-separated fractions of the training pool")
    ap.add_argument(
        "--methods", default="uniform,tempbalance,model_balancing", help=f"comma-separated, from {','.join(METHODS)}"
    )
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="base learning rate (default: the zoo's fine-tuning lr)")
    ap.add_argument("--every", type=int, default=25, help="recompute TempBalance / Model Balancing every K steps")
    ap.add_argument("--s1", type=float, default=0.5)
    ap.add_argument("--s2", type=float, default=1.5)
    ap.add_argument("--s", type=float, default=1.25, help="Model Balancing scale s")
    ap.add_argument("--weight", type=float, default=1.0, help="WSA weight")
    ap.add_argument("--wsa", action="store_true", help="run the WSA merge comparison instead of the grid")
    ap.add_argument("--tasks", default="colors,shapes", help="--wsa: two tasks, or one task (two disjoint shards)")
    ap.add_argument(
        "--fraction", type=float, default=None, help="--wsa: data fraction per model (default 1, or 0.5 per shard)"
    )
    ap.add_argument("--target", default="base", choices=["base", "fused"], help="--wsa: target scopes")
    ap.add_argument("--seed", type=int, default=0, help="--wsa: seed")
    ap.add_argument("--workers", type=int, default=1, help="grid runs in parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--out", default=None, help="write the per-run results (CSV)")
    args = ap.parse_args(argv)

    from core.zoo import is_built, load_model_set, manifest

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if not is_built(args.zoo, args.cache):
        try:  # a complete zoo built with recipe overrides (`zoo build --set ...`) is usable, with a warning
            complete = manifest(args.zoo, args.cache).get("complete") is True
        except (FileNotFoundError, ValueError):
            complete = False
        if not complete:
            print(f"the {args.zoo} zoo is not built; run `python -m core zoo build{' --micro' if args.zoo == 'micro' else ''}`", file=sys.stderr)  # fmt: skip
            return 1
        print(
            f"note: the {args.zoo} zoo in the cache was built with another recipe than the current one", file=sys.stderr
        )
    ms = load_model_set(args.zoo, args.cache)
    d = recipe_defaults(ms)
    common = {"steps": args.steps, "batch_size": args.batch, "lr": args.lr or d["lr"], "weight_decay": d["weight_decay"],
              "warmup": d["warmup"], "n_train": d["n_train"], "every": args.every, "s1": args.s1, "s2": args.s2, "s": args.s}  # fmt: skip
    t0 = time.perf_counter()
    if args.wsa:
        tasks = [t for t in args.tasks.split(",") if t]
        if args.fraction is not None:
            common["fraction"] = args.fraction
        res = wsa_experiment(ms, tasks, weight=args.weight, target=args.target, seed=args.seed,
                             progress=lambda i, n, msg: print(f"[{i}/{n}] {msg}", file=sys.stderr, flush=True), **common)  # fmt: skip
        print(wsa_markdown(res))
        print(f"\n{time.perf_counter() - t0:.0f} s, run id {res.run_id}")
        if args.out:
            res.summary.to_csv(args.out, index=False)
        return 0
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        parse_method(m)
    configs = grid_configs(
        args.task, _floats(args.fractions), methods, range(args.seeds), wsa_weight=args.weight, **common
    )
    print(f"{len(configs)} fine-tunes on {args.task} ({args.zoo} zoo): {args.steps} steps x batch {args.batch}, "
          f"lr {common['lr']:g}, workers {args.workers}", file=sys.stderr, flush=True)  # fmt: skip
    results = _run_grid_cli(args.zoo, args.cache, ms, configs, args.workers, args.threads)
    if args.out:
        results.to_csv(args.out, index=False)
    print(
        f"## {args.task}: accuracy vs data fraction ({args.zoo} zoo, {args.steps} steps x batch {args.batch}, lr {common['lr']:g})\n"
    )
    print(markdown_table(summary_table(results)))
    print(f"\nzero-shot {100 * results['zero_shot'].mean():.1f}%; {math.ceil(time.perf_counter() - t0)} s on "
          f"{args.workers} worker(s) x {args.threads} thread(s), {os.cpu_count()} cpus")  # fmt: skip
    return 0
