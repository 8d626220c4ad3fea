"""Low-data splits and the lab's evaluators.

Low-data splits: a seeded, class-balanced fraction of the task's training pool (the zoo's
``n_train`` images of `core.zoo.data.load_split(task, "train")`); accuracy on the task's test split
(`core.evaluate.Evaluator`, zero-shot head). `shard` takes the next disjoint slice of the same
seeded order, so two shards of one task never share an image (the WSA view's "two data shards").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.zoo import data as D

from .config import LabConfig


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
    """A `core.evaluate.Evaluator` on `tasks`' `split` built from the model set's base (cached per process).

    Unlike `Evaluator.for_model_set` (the model set's evaluation tasks), the lab evaluates any demo
    task it fine-tuned on, also one outside the set's tasks.
    """
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
