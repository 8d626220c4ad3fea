"""The one "pick hyperparameters on val, report on test", and the accuracy summaries it uses.

Conventions (docs/methods.md, "Evaluation"): accuracies are fractions in [0, 1];
normalized accuracy of a task = acc / acc of the task's own fine-tuned model (task arithmetic's
convention, Ilharco et al. 2023), averaged over tasks; control accuracy (LiNeS single-task) = mean
accuracy on the tasks other than the target, normalized by their zero-shot accuracy.

Choosing: every candidate is scored on the validation split by its average *normalized* accuracy
(never absolute, never on test); the first of equal scores wins (the smallest value of an ascending
grid); only the chosen candidate is evaluated on test. Sweeps, the Tinting baselines, the Fine-tune
lab's task-arithmetic merge, the LiNeS page and the zoo's own measurements all call this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

C = TypeVar("C")
Accuracy = Mapping[str, float]


def mean_accuracy(acc: Accuracy) -> float:
    """Mean of the per-task accuracies (NaN when there are none)."""
    return float(np.mean(list(acc.values()))) if acc else float("nan")


def normalized_accuracy(acc: Accuracy, finetuned_acc: Accuracy) -> float:
    """Mean over the tasks of `acc` of acc[t] / finetuned_acc[t] (tasks without a positive,
    finite fine-tuned accuracy are left out; NaN when none is left)."""
    ratios = [acc[t] / finetuned_acc[t] for t in acc if _usable(finetuned_acc.get(t))]
    return float(np.mean(ratios)) if ratios else float("nan")


def summarize(acc: Accuracy, finetuned_acc: Accuracy, tasks: Sequence[str] | None = None) -> dict[str, float]:
    """{"avg_abs": mean accuracy, "avg_norm": normalized accuracy} over `tasks` (default: acc's)."""
    tasks = [t for t in (acc if tasks is None else tasks) if t in acc]
    sub = {t: acc[t] for t in tasks}
    return {"avg_abs": mean_accuracy(sub), "avg_norm": normalized_accuracy(sub, finetuned_acc)}


def control_accuracy(
    acc: Accuracy, target: str | Sequence[str], zeroshot_acc: Accuracy | None = None
) -> dict[str, float]:
    """Accuracy on the control tasks (every task in `acc` except the target(s)).

    Returns ``{"control": mean accuracy, "control_normalized": mean of acc/acc_zeroshot}``
    (the latter NaN without `zeroshot_acc`), the LiNeS single-task convention.
    """
    targets = {target} if isinstance(target, str) else set(target)
    others = [t for t in acc if t not in targets]
    if not others:
        return {"control": float("nan"), "control_normalized": float("nan")}
    control = float(np.mean([acc[t] for t in others]))
    norm = float("nan")
    if zeroshot_acc is not None:
        ratios = [acc[t] / zeroshot_acc[t] for t in others if _usable(zeroshot_acc.get(t))]
        norm = float(np.mean(ratios)) if ratios else float("nan")
    return {"control": control, "control_normalized": norm}


def _usable(x) -> bool:
    return x is not None and isinstance(x, int | float) and math.isfinite(x) and x > 0


def best_index(scores: Sequence[float]) -> int | None:
    """Index of the first largest finite score (None when no score is finite)."""
    best, idx = -math.inf, None
    for i, s in enumerate(scores):
        if s is not None and math.isfinite(s) and s > best:
            best, idx = s, i
    return idx


@dataclass
class Selection(Generic[C]):
    """The outcome of `choose_on_val`: the chosen candidate, every candidate's val scores, and the
    chosen one's test accuracy (None when no test evaluation was asked for)."""

    index: int | None
    candidate: C | None
    val: list[dict[str, Any]] = field(default_factory=list)  # per candidate: accuracy, avg_abs, avg_norm
    test: dict[str, Any] | None = None  # accuracy, avg_abs, avg_norm of the chosen candidate

    @property
    def val_score(self) -> float:
        return float("nan") if self.index is None else self.val[self.index]["avg_norm"]


def choose_on_val(
    candidates: Sequence[C],
    evaluate_val: Callable[[C], Accuracy],
    finetuned_val: Accuracy,
    *,
    evaluate_test: Callable[[C], Accuracy] | None = None,
    finetuned_test: Accuracy | None = None,
    score: str = "avg_norm",
) -> Selection[C]:
    """Score every candidate on val by its average normalized accuracy, pick the first best, and
    evaluate only that one on test.

    evaluate_val / evaluate_test: candidate -> {task: accuracy}. finetuned_val / finetuned_test:
    each task's own fine-tuned accuracy on that split (normalizes). score: "avg_norm" (default, the
    papers' criterion) or "avg_abs".
    """
    if score not in ("avg_norm", "avg_abs"):
        raise ValueError(f"score must be 'avg_norm' or 'avg_abs', got {score!r}")
    rows = []
    for c in candidates:
        acc = dict(evaluate_val(c))
        rows.append({"accuracy": acc, **summarize(acc, finetuned_val)})
    i = best_index([r[score] for r in rows])
    sel: Selection[C] = Selection(i, None if i is None else candidates[i], rows)
    if i is not None and evaluate_test is not None:
        acc = dict(evaluate_test(candidates[i]))
        sel.test = {"accuracy": acc, **summarize(acc, finetuned_test if finetuned_test is not None else {})}
    return sel
