"""The accuracy matrix and what it summarises: average accuracy and forgetting.

A[i, j] = accuracy on task i after training task j (NaN for i > j and for stages not reached).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def continual_loop(
    n_tasks: int,
    train: Callable[[int], bool],
    evaluate: Callable[[int, int], float],
    after_stage: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Train tasks 0..T-1 in sequence; after task j evaluate every seen task i <= j.

    Returns A (T, T): A[i, j] = accuracy on task i after training task j, NaN for i > j (and for
    stages not reached when `train` returns False, e.g. cancelled).
    """
    acc = np.full((n_tasks, n_tasks), np.nan)
    for j in range(n_tasks):
        if not train(j):
            break
        for i in range(j + 1):
            acc[i, j] = evaluate(i, j)
        if after_stage is not None:
            after_stage(j)
    return acc


def incremental_correct(logits: torch.Tensor, labels: torch.Tensor, lo: int, hi: int, setting: str) -> torch.Tensor:
    """Which samples of one task are right. logits (N, C_seen) over every class seen so far (classes
    of task i are columns lo:hi, labels local to the task). "class": argmax over all seen classes
    must be the sample's global class; "task": argmax over the task's own classes."""
    if setting == "task":
        return logits[:, lo:hi].argmax(1) == labels
    return logits.argmax(1) == labels + lo


def final_column(acc: np.ndarray) -> int:
    """Index of the last completed stage (-1 when none)."""
    done = [j for j in range(acc.shape[1]) if not np.isnan(acc[0, j])]
    return done[-1] if done else -1


def average_accuracy(acc: np.ndarray) -> float:
    """Mean accuracy over the seen tasks after the last completed task."""
    j = final_column(acc)
    return float(np.mean(acc[: j + 1, j])) if j >= 0 else float("nan")


def forgetting(acc: np.ndarray) -> np.ndarray:
    """Per task i (seen before the last stage J): max_{i <= j < J} A[i, j] − A[i, J]; NaN otherwise."""
    last = final_column(acc)
    out = np.full(acc.shape[0], np.nan)
    for i in range(max(last, 0)):
        out[i] = np.max(acc[i, i:last]) - acc[i, last]
    return out


def average_forgetting(acc: np.ndarray) -> float:
    f = forgetting(acc)
    return float(np.nanmean(f)) if np.isfinite(f).any() else float("nan")
