"""One evaluation path for every model: accuracy per task with its zero-shot head.

`Evaluator` holds what does not change between evaluations — the model built
once from the base, the preprocessed images of every task (one concatenated
tensor), the zero-shot heads — and `accuracy(state_dict)` copies a (merged or
fine-tuned) visual tower into the model in place and runs one forward pass
over all requested tasks under `torch.inference_mode` (bf16 autocast optional).

Shared evaluators (`for_model_set`) are cached per (model set, split, subsample, seed) and never
changed by a caller: per-session settings such as bf16 live on a light view (`with_settings`) that
shares the model, the images and the heads, so one browser session's bf16 toggle cannot change
another session's numbers. The accuracy summaries (normalized, control) live in `core.select`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .models import build_model, image_features, image_size_of, load_visual, preprocess, zero_shot_head
from .zoo import data as data_mod


@dataclass
class TaskData:
    """Preprocessed evaluation tensors of one task."""

    images: torch.Tensor  # float32 (N, 3, S, S), normalized
    labels: torch.Tensor  # int64 (N,)
    head: torch.Tensor  # (C, D) zero-shot head, rows x exp(logit_scale)


def subsample_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted seeded subsample of range(n) of size k (all when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


class Evaluator:
    """Accuracy of visual state dicts on a fixed set of tasks.

    Build with `for_model_set` (demo zoo tasks, cached per zoo/split/subsample)
    or directly from a base state dict and `{task: (uint8 images, labels, TaskSpec)}`.
    """

    _CACHE: dict[tuple, Evaluator] = {}

    def __init__(
        self,
        base_state_dict: Mapping[str, torch.Tensor],
        tasks: Mapping[str, tuple[torch.Tensor, torch.Tensor, data_mod.TaskSpec]],
        *,
        bf16: bool = False,
        batch_size: int = 1024,
        arch: str | dict | None = None,
    ):
        self.model = build_model(base_state_dict, arch)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base_visual = {
            k: v.detach().clone() for k, v in self.model.state_dict().items() if k.startswith("visual.")
        }
        size = image_size_of(self.model)
        self.tasks: dict[str, TaskData] = {}
        for name, (images, labels, spec) in tasks.items():
            head = zero_shot_head(self.model, spec.classnames, spec.templates)
            self.tasks[name] = TaskData(preprocess(images, size), labels.long(), head)
        self.bf16 = bf16
        self.batch_size = batch_size
        self._stacked: dict[tuple[str, ...], torch.Tensor] = {}
        # Shared by every view of this evaluator: which weights are in the (shared) model now.
        self._model_state: dict[str, object] = {"loaded": None}

    def with_settings(self, *, bf16: bool | None = None, batch_size: int | None = None) -> Evaluator:
        """A view with its own settings sharing this evaluator's model, images and heads (cheap)."""
        view = copy.copy(self)
        if bf16 is not None:
            view.bf16 = bool(bf16)
        if batch_size is not None:
            view.batch_size = int(batch_size)
        return view

    @classmethod
    def evict(cls, ev: Evaluator) -> None:
        """Drop the cached evaluator `ev` shares its model with (frees its images and model)."""
        for k, v in list(cls._CACHE.items()):
            if v.model is ev.model:
                del cls._CACHE[k]

    @classmethod
    def clear_cache(cls) -> None:
        cls._CACHE.clear()

    # -- construction -------------------------------------------------------
    @classmethod
    def for_model_set(
        cls,
        ms,
        split: str = "test",
        subsample: int | None = None,
        bf16: bool = False,
        seed: int = 0,
    ) -> Evaluator:
        """Evaluator on a model set's demo tasks (``ms.eval_tasks``) for one split.

        Cached by (zoo dir or base path, split, subsample, seed): the model, the
        preprocessed tensors and the heads are built once per process. `subsample`
        takes a seeded subset of each task's split (sorted indices). The returned object is a
        view with its own `bf16` (the cached one is never modified).
        """
        torch.set_flush_denormal(True)
        key = (str(ms.zoo_dir or ms.base_path), ms.fingerprint(), tuple(ms.eval_tasks), split, subsample, seed)
        ev = cls._CACHE.get(key)
        if ev is None:
            if not ms.eval_tasks:
                raise ValueError(f"model set {ms.name!r} has no evaluation tasks (eval_tasks is empty)")
            tasks = {}
            for name in ms.eval_tasks:
                x, y = data_mod.load_split(name, split)
                idx = torch.from_numpy(subsample_indices(len(y), subsample, seed))
                tasks[name] = (x[idx], y[idx], data_mod.get_task(name))
            ev = cls(ms.base(), tasks)
            cls._CACHE[key] = ev
        return ev.with_settings(bf16=bf16)

    # -- core ---------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def heads(self) -> dict[str, torch.Tensor]:
        return {t: d.head for t, d in self.tasks.items()}

    def load(self, state_dict: Mapping[str, torch.Tensor] | None) -> None:
        """Put base visual weights overlaid with `state_dict`'s ``visual.*`` entries into the model."""
        if state_dict is None:
            if self._model_state["loaded"] != "base":
                load_visual(self.model, self.base_visual)
                self._model_state["loaded"] = "base"
            return
        n_visual = sum(k.startswith("visual.") for k in state_dict)
        if n_visual < len(self.base_visual):  # partial dict: the rest comes from the base
            load_visual(self.model, self.base_visual)
        if n_visual:
            load_visual(self.model, state_dict)
        self._model_state["loaded"] = id(state_dict)

    def _images(self, tasks: Sequence[str]) -> torch.Tensor:
        key = tuple(tasks)
        if key not in self._stacked:
            if len(self._stacked) > 16:
                self._stacked.clear()
            self._stacked[key] = torch.cat([self.tasks[t].images for t in tasks])
        return self._stacked[key]

    def features(
        self, state_dict: Mapping[str, torch.Tensor] | None = None, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """L2-normalized image features per task (N_t, D) for a visual state dict (None = the base)."""
        tasks = self._check(tasks)
        self.load(state_dict)
        feats = image_features(self.model, self._images(tasks), self.batch_size, self.bf16)
        out, i = {}, 0
        for t in tasks:
            n = len(self.tasks[t].labels)
            out[t] = feats[i : i + n]
            i += n
        return out

    def logits(
        self, state_dict: Mapping[str, torch.Tensor] | None = None, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Zero-shot-head logits per task (N_t, C_t)."""
        return {t: f @ self.tasks[t].head.T for t, f in self.features(state_dict, tasks).items()}

    def accuracy(
        self, state_dict: Mapping[str, torch.Tensor] | None = None, tasks: Iterable[str] | None = None
    ) -> dict[str, float]:
        """Accuracy in [0, 1] per task of the model whose visual tower is `state_dict` (None = base, i.e. zero-shot)."""
        return {
            t: float((lg.argmax(1) == self.tasks[t].labels).float().mean())
            for t, lg in self.logits(state_dict, tasks).items()
        }

    def timed_accuracy(self, state_dict=None, tasks=None) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        acc = self.accuracy(state_dict, tasks)
        return acc, time.perf_counter() - t0

    def _check(self, tasks: Iterable[str] | None) -> list[str]:
        tasks = list(self.tasks) if tasks is None else list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise KeyError(f"tasks {unknown} are not in this evaluator (it has {list(self.tasks)})")
        return tasks
