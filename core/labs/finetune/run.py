"""One fine-tune of the lab, and a grid of them.

One fine-tune follows the zoo's recipe (task arithmetic's): the visual tower is trained with
cross-entropy through the task's frozen zero-shot head, AdamW with warmup + cosine, through the
one training loop `core.train.train_loop`. The methods plug in as hooks: the learning-rate rule
("uniform", or `core.tempbalance.LayerBalancer` for "tempbalance" / "model_balancing", multipliers
recomputed every `every` steps) and Weight Scope Alignment (`terms.ScopeAlignment`). Every run is
recorded in the run log (`core.runtime.runlog`, kind "finetune").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
import torch
import torch.nn.functional as F

from core.runtime.runlog import resolve_run_log
from core.tempbalance import LayerBalancer, balanced_units, unit_alphas, unit_group_of
from core.train import TrainConfig, infinite_batches, param_groups, train_loop
from core.zoo import data as D

from .config import LabConfig
from .data import evaluator, training_data
from .terms import ScopeAlignment, visual_target_scopes

Progress = Callable[[int, int, dict], None]


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
        final_loss = float(self.history["loss"].iloc[-1]) if len(self.history) else float("nan")
        return {
            "task": c.task,
            "fraction": c.fraction,
            "method": c.method,
            "seed": c.seed,
            "shard": c.shard,
            "steps": c.steps,
            "train_size": self.train_size,
            "accuracy": self.accuracy,
            "zero_shot": self.zero_shot,
            "scope_kl": self.scope_kl,
            "final_loss": final_loss,
            "seconds": round(self.seconds, 2),
            "cancelled": self.cancelled,
            "run_id": self.run_id,
        }


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
    every method. progress(step, total, row) is `core.train`'s. run_log: `resolve_run_log`'s meaning
    (a RunLog; True/None the default log; False no logging); the run is recorded as kind "finetune".
    watch(hooks) is called once before training with {"balancer": LayerBalancer | None,
    "alignment": ScopeAlignment, "config": cfg} so a live view can read the multipliers while the
    run goes on.
    """
    from core.models import build_model, image_size_of, zero_shot_head

    cfg.validate()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(ms.base())
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
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        grad_clip=cfg.grad_clip,
        seed=cfg.seed,
        log_every=cfg.log_every,
    )
    log = resolve_run_log(run_log)
    run_id = None
    if log:
        config = {"lab": cfg.to_dict(), "lr_rule": cfg.rule, "wsa": cfg.uses_wsa}
        run_id = log.start("finetune", config, ms.fingerprint(), seed=cfg.seed)
    try:
        model.train()
        batches = infinite_batches(x, y, min(cfg.batch_size, len(y)), cfg.seed)
        res = train_loop(groups, loss_fn, batches, tcfg, hooks=hooks, progress=progress, cancel=cancel)
        model.eval()
        sd = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("visual.")}
        ev = evaluator(ms, [cfg.task])
        result = LabResult(
            config=cfg,
            accuracy=ev.accuracy(sd, [cfg.task])[cfg.task],
            zero_shot=ev.accuracy(None, [cfg.task])[cfg.task],
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


def grid_configs(
    task: str, fractions: Sequence[float], methods: Sequence[str], seeds: Sequence[int], **common
) -> list[LabConfig]:
    """Every (fraction, seed, method) config, fractions outermost, methods innermost (paired seeds)."""
    cfgs = [
        LabConfig(task=task, fraction=float(f), method=m, seed=int(s), **common)
        for f in fractions
        for s in seeds
        for m in methods
    ]
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
    step_progress and watch go to every `finetune`; run_log as in `finetune` (one log for all).
    """
    rows = []
    log = resolve_run_log(run_log)
    inner = log if log is not None else False
    for i, cfg in enumerate(configs):
        if cancel is not None and cancel.is_set():
            break
        r = finetune(ms, cfg, cancel=cancel, run_log=inner, progress=step_progress, watch=watch)
        if r.cancelled:
            break
        rows.append(r.row())
        if on_result:
            on_result(r)
        if progress:
            progress(i + 1, len(configs), f"{cfg.method} f={cfg.fraction:g} seed {cfg.seed}: {r.accuracy:.3f}")
    return pd.DataFrame(rows)
