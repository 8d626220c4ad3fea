"""The Weight Scope Alignment view: two fine-tunes with and without WSA, the path between them and their merge.

`wsa_experiment` fine-tunes two models (two tasks, or two disjoint data shards of one task) without
and with WSA toward one target scope, then measures, per variant, the loss barrier on the straight
path between them (`interpolation_curve`, `barrier`) and their task-arithmetic merge, whose λ is
chosen by `core.select.choose_on_val` (average normalized accuracy on validation, reported on test).
Recorded in the run log as kind "finetune_wsa".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from core.runtime.runlog import resolve_run_log
from core.scopes import interpolate, scope_dict, scope_fusion, weight_scopes
from core.select import choose_on_val

from .config import LabConfig
from .data import evaluator
from .run import LabResult, Progress, finetune
from .terms import scope_distance, visual_target_scopes

TA_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))


def interpolation_curve(
    ev,
    tasks: Sequence[str],
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    num_points: int = 11,
) -> pd.DataFrame:
    """Loss and accuracy of θ(t) = (1 − t)θ_a + tθ_b on an even grid of t ∈ [0, 1].

    Loss: cross-entropy through the zero-shot heads, averaged over `tasks` (each task weighs the
    same); accuracy likewise. Columns t, loss, accuracy, loss_excess (loss above the straight chord
    between the ends: its max is the loss barrier) and acc_drop (accuracy below the chord).
    """
    if num_points < 2:
        raise ValueError("num_points must be >= 2 (both ends)")
    rows = []
    for t in np.linspace(0.0, 1.0, num_points):
        logits = ev.logits(interpolate(sd_a, sd_b, float(t)), tasks)
        labels = {k: ev.tasks[k].labels for k in logits}
        loss = float(np.mean([F.cross_entropy(lg, labels[k]).item() for k, lg in logits.items()]))
        acc = float(np.mean([(lg.argmax(1) == labels[k]).float().mean().item() for k, lg in logits.items()]))
        rows.append({"t": float(t), "loss": loss, "accuracy": acc})
    out = pd.DataFrame(rows)
    t = out["t"]
    out["loss_excess"] = out["loss"] - ((1 - t) * out["loss"].iloc[0] + t * out["loss"].iloc[-1])
    out["acc_drop"] = ((1 - t) * out["accuracy"].iloc[0] + t * out["accuracy"].iloc[-1]) - out["accuracy"]
    return out


def barrier(curve: pd.DataFrame) -> dict:
    """Loss barrier max_t(loss − chord) and accuracy barrier max_t(chord − accuracy) of an interpolation curve."""
    i = int(curve["loss_excess"].idxmax())
    return {
        "loss_barrier": float(curve["loss_excess"].max()),
        "t_max": float(curve["t"].iloc[i]),
        "acc_barrier": float(curve["acc_drop"].max()),
        "midpoint_accuracy": float(np.interp(0.5, curve["t"], curve["accuracy"])),
    }


def task_arithmetic_merge(
    ms,
    sds: Sequence[Mapping[str, torch.Tensor]],
    tasks: Sequence[str],
    lambdas: Sequence[float] = TA_LAMBDAS,
    *,
    sd_tasks: Sequence[str] | None = None,
) -> dict:
    """θ0 + λ Σ τ_i (`core.merging` "task_arithmetic"); λ by `core.select.choose_on_val`.

    Every λ is scored on the validation split by its average normalized accuracy over `tasks`: each
    task's accuracy divided by that of the fine-tune(s) trained on it (sd_tasks[i] is the task of
    sds[i]; default: `tasks` in order, or every state dict on the one task). The first best λ is
    evaluated on test. Returns lambda, val_accuracy (mean absolute), val_normalized, accuracy (per
    task, test), mean_accuracy and normalized_accuracy (test).
    """
    from core.merging import merge

    tasks = list(tasks)
    if sd_tasks is None:
        sd_tasks = tasks if len(tasks) == len(sds) else tasks * len(sds) if len(tasks) == 1 else None
    if sd_tasks is None or len(sd_tasks) != len(sds) or not set(sd_tasks) <= set(tasks):
        raise ValueError(f"give the task of each of the {len(sds)} state dicts (sd_tasks), within {tasks}")
    if not lambdas:
        raise ValueError("lambdas is empty")
    base_visual = {k: v for k, v in ms.base().items() if k.startswith("visual.")}
    val, test = evaluator(ms, tasks, "val"), evaluator(ms, tasks, "test")

    def own(ev) -> dict[str, float]:  # each task's accuracy of the fine-tune(s) trained on it
        per = {t: [ev.accuracy(sd, [t])[t] for sd, st in zip(sds, sd_tasks) if st == t] for t in tasks}
        return {t: float(np.mean(v)) for t, v in per.items()}

    def merged(lam: float):
        return merge(base_visual, list(sds), "task_arithmetic", coefficients=float(lam))

    sel = choose_on_val(
        list(lambdas),
        lambda lam: val.accuracy(merged(lam), tasks),
        own(val),
        evaluate_test=lambda lam: test.accuracy(merged(lam), tasks),
        finetuned_test=own(test),
    )
    if sel.index is None or sel.test is None:
        raise ValueError("no λ has a finite validation score")
    return {
        "lambda": sel.candidate,
        "val_accuracy": sel.val[sel.index]["avg_abs"],
        "val_normalized": sel.val_score,
        "accuracy": sel.test["accuracy"],
        "mean_accuracy": sel.test["avg_abs"],
        "normalized_accuracy": sel.test["avg_norm"],
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


def scope_rows(sd: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """The tensor-level `core.scopes.weight_scopes` rows of the weight matrices (ndim >= 2)."""
    t = weight_scopes(sd)
    return t[(t["level"] == "tensor") & (t["ndim"] >= 2)].reset_index(drop=True)


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
    and their task-arithmetic merge (λ from `lambdas`, chosen on validation). `common` goes to every
    LabConfig; the lr rule of both variants is `rule`. run_log: `core.runtime.runlog.resolve_run_log`'s
    meaning; recorded as kind "finetune_wsa" (the four fine-tunes as "finetune").
    """
    t0 = time.perf_counter()
    if target not in ("base", "fused"):
        raise ValueError(f"target must be 'base' or 'fused', got {target!r}")
    common = {k: v for k, v in common.items() if k not in ("method", "wsa_weight")}
    a, b = wsa_pair(tasks, method=rule, **common)
    with_method = rule + "+wsa" if rule != "uniform" else "wsa"
    eval_tasks = list(dict.fromkeys([a.task, b.task]))
    log = resolve_run_log(run_log)
    inner_log = log if log is not None else False
    results: dict[str, LabResult] = {}

    def run(label: str, cfg: LabConfig, tgt) -> None:
        r = finetune(ms, cfg, target_scopes=tgt, cancel=cancel, run_log=inner_log, progress=step_progress, watch=watch)
        results[label] = r
        if progress:
            progress(len(results), 4, f"{label}: accuracy {r.accuracy:.3f}")

    base_target = visual_target_scopes(ms)
    for side, cfg in (("A", a), ("B", b)):
        if cancel is None or not cancel.is_set():
            run(f"without WSA: {side}", cfg, base_target)
    tgt = base_target
    if target == "fused" and len(results) == 2:
        tgt = scope_fusion([scope_dict(results[f"without WSA: {s}"].state_dict) for s in "AB"])
        tgt = {k: v for k, v in tgt.items() if k in base_target}
    for side, cfg in (("A", a), ("B", b)):
        if cancel is None or not cancel.is_set():
            run(f"with WSA: {side}", dataclasses.replace(cfg, method=with_method, wsa_weight=float(weight)), tgt)

    ev = evaluator(ms, eval_tasks, "test")
    curves, rows = [], []
    scopes = {"pretrained": scope_rows({k: v for k, v in ms.base().items() if k.startswith("visual.")})}
    for variant in ("without WSA", "with WSA"):
        ra, rb = results.get(f"{variant}: A"), results.get(f"{variant}: B")
        if ra is None or rb is None or ra.cancelled or rb.cancelled:
            continue
        curve = interpolation_curve(ev, eval_tasks, ra.state_dict, rb.state_dict, num_points)
        curves.append(curve.assign(variant=variant))
        ta = task_arithmetic_merge(
            ms, [ra.state_dict, rb.state_dict], eval_tasks, lambdas, sd_tasks=[ra.config.task, rb.config.task]
        )
        rows.append(
            {
                "variant": variant,
                **barrier(curve),
                "ta_accuracy": ta["mean_accuracy"],
                "ta_lambda": ta["lambda"],
                "ta_normalized": ta["normalized_accuracy"],
                "accuracy_A": ra.accuracy,
                "accuracy_B": rb.accuracy,
                "scope_kl_A": scope_distance(ra.state_dict, tgt),
                "scope_kl_B": scope_distance(rb.state_dict, tgt),
                **{f"ta_{t}": v for t, v in ta["accuracy"].items()},
            }
        )
        for side, r in (("A", ra), ("B", rb)):
            shard = "" if a.task != b.task else f" shard {r.config.shard}"
            scopes[f"{variant}: {side} ({r.config.task}{shard})"] = scope_rows(r.state_dict)
    out = WSAResult(
        pair=(a, b),
        weight=float(weight),
        target=target,
        curves=pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        summary=pd.DataFrame(rows),
        scopes=scopes,
        results=results,
        seconds=time.perf_counter() - t0,
    )
    if log:
        config = {
            "tasks": list(tasks),
            "weight": weight,
            "target": target,
            "rule": rule,
            "pair": [a.to_dict(), b.to_dict()],
        }
        metrics = {"summary": out.summary.to_dict(orient="records"), "seconds": round(out.seconds, 1)}
        status = "cancelled" if len(results) < 4 else "ok"
        out.run_id = log.log("finetune_wsa", config, metrics, ms.fingerprint(), seed=a.seed, status=status)
    return out


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
            f"| {r.variant} | {100 * r.accuracy_A:.1f} | {100 * r.accuracy_B:.1f} | "
            f"{r.scope_kl_A:.3g}, {r.scope_kl_B:.3g} | {r.loss_barrier:.4f} | {100 * r.acc_barrier:.1f} | "
            f"{100 * r.midpoint_accuracy:.1f} | {100 * r.ta_accuracy:.1f} ({r.ta_lambda:g}) |"
        )
    return "\n".join(lines)
