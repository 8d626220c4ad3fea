"""Anytime accuracy: estimates that sharpen as more images are evaluated.

`stratified_order` gives a seeded evaluation order whose every prefix holds each class in
proportion; `Estimate` is a task's (correct, n, total) so far with a 95% Wilson score interval
(`wilson_interval`; Wilson 1927, "Probable inference, the law of succession, and statistical
inference"), exact once every image is seen. `core.evaluate.Evaluator.rounds` yields them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) for k successes in n trials; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A seeded order of positions whose every prefix holds each class in proportion: class c's j-th
    (shuffled) image gets the key (j + u_c) / n_c, u_c uniform, and positions are sorted by key."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keys = np.empty(len(labels))
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        perm = rng.permutation(pos)
        keys[perm] = (np.arange(len(pos)) + rng.random()) / len(pos)
    return np.argsort(keys, kind="stable")


@dataclass(frozen=True)
class Estimate:
    """Accuracy of one task so far: `correct` of `n` evaluated images out of `total`."""

    correct: int
    n: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def done(self) -> bool:
        return self.n >= self.total

    @property
    def interval(self) -> tuple[float, float]:
        """95% Wilson interval; exact (a point) once every image of the split is evaluated."""
        if self.done and self.n:
            return self.accuracy, self.accuracy
        return wilson_interval(self.correct, self.n)

    @property
    def half_width(self) -> float:
        lo, hi = self.interval
        return (hi - lo) / 2


def estimates_table(estimates: Mapping[str, Estimate]) -> list[dict]:
    """Rows {task, accuracy, correct, n, total, low, high} for display or JSON."""
    rows = []
    for t, e in estimates.items():
        lo, hi = e.interval
        rows.append(
            {"task": t, "accuracy": e.accuracy, "correct": e.correct, "n": e.n, "total": e.total, "low": lo, "high": hi}
        )
    return rows
