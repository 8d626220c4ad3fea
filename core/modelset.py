"""A model set: one pretrained base plus named fine-tuned checkpoints.

State dicts are loaded lazily and kept once (`functools.cache` per instance);
task vectors are derived on demand and cached too, so pages, sweeps and the
CLI never load the same checkpoint twice within a process.

Fine-tuned checkpoints may hold only part of the base (the zoo's fine-tunes
hold the visual tower, ``visual.*``): merges act on the fine-tuned keys and the
rest of the base passes through unchanged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoints import ValidationReport, load_state_dict, validate_model_set


@dataclass
class ModelSet:
    name: str
    base_path: Path
    finetuned_paths: dict[str, Path]
    # Zoo task names when the set comes with its own evaluation tasks (core.zoo.data), else empty.
    eval_tasks: list[str] = field(default_factory=list)
    zoo_dir: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tasks(self) -> list[str]:
        return list(self.finetuned_paths)

    def base(self) -> dict[str, torch.Tensor]:
        if "base" not in self._cache:
            self._cache["base"] = load_state_dict(self.base_path)
        return self._cache["base"]

    def finetuned(self, task: str) -> dict[str, torch.Tensor]:
        if task not in self.finetuned_paths:
            raise KeyError(f"no fine-tuned checkpoint for task {task!r}; this set has {self.tasks}")
        key = ("ft", task)
        if key not in self._cache:
            self._cache[key] = load_state_dict(self.finetuned_paths[task])
        return self._cache[key]

    def finetuned_all(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: self.finetuned(t) for t in self.tasks}

    def task_vector(self, task: str) -> dict[str, torch.Tensor]:
        from .task_vectors import task_vector

        key = ("tv", task)
        if key not in self._cache:
            self._cache[key] = task_vector(self.base(), self.finetuned(task))
        return self._cache[key]

    def task_vectors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {t: self.task_vector(t) for t in self.tasks}

    def validate(self, *, check_finite: bool = True, progress=None) -> ValidationReport:
        """`core.checkpoints.validate_model_set` over this set's files (headers, then a streamed NaN/Inf check)."""
        return validate_model_set(self.base_path, self.finetuned_paths, check_finite=check_finite, progress=progress)

    def fingerprint(self) -> str:
        """Short hash of the files (path, size, mtime): identifies the set in the run log."""
        h = hashlib.sha256()
        for p in [self.base_path, *self.finetuned_paths.values()]:
            p = Path(p)
            st = p.stat() if p.exists() else None
            h.update(json.dumps([str(p), st.st_size if st else 0, st.st_mtime_ns if st else 0]).encode())
        return h.hexdigest()[:16]
