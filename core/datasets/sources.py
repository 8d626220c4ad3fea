"""What the evaluator evaluates, per task: uint8 pixels, labels, the rows to use, and how to get a head.

`TaskSource` is the one input form of `core.evaluate.Evaluator`. `model_set_sources` makes them for
a model set's evaluation tasks on one split: a model set JSON's task reads its image folder / CSV
(`core.datasets.readers`), caches the decoded images on disk for the model's transform
(`core.datasets.imagecache`) and takes its head file or zero-shot class names and templates; a demo
zoo task comes from the zoo's generator (`get_task(name)`, `load_split(name, split)`), in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..heads import Head, load_head
from .imagecache import CLIP_MEAN, CLIP_STD, ImageTransform, cached_images
from .readers import open_dataset

Progress = Callable[[int, int], None]


def subsample_indices(n: int, k: int | None, seed: int) -> np.ndarray:
    """Sorted seeded subsample of range(n) of size k (all when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


@dataclass
class TaskSource:
    """One task's evaluation input. `pixels`: uint8 (M, 3, S, S) — in memory or a memory-mapped cache;
    `labels`: (M,); `index`: the rows evaluated (default all); `head`: a loaded head, else a zero-shot
    head is built from `classnames` and `templates`; `mean`/`std`: per-batch normalization."""

    pixels: torch.Tensor
    labels: torch.Tensor
    classnames: Sequence[str] | None = None
    templates: Sequence | None = None
    head: Head | None = None
    index: torch.Tensor | None = None
    mean: tuple = CLIP_MEAN
    std: tuple = CLIP_STD
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    num_classes: int | None = None
    release: Callable[[], None] | None = None  # drops a memory-mapped cache's resident pages

    def __post_init__(self):
        if isinstance(self.pixels, np.ndarray):
            self.pixels = torch.from_numpy(self.pixels)
        if isinstance(self.labels, np.ndarray):
            self.labels = torch.from_numpy(self.labels)
        self.labels = self.labels.long()
        if self.index is None:
            self.index = torch.arange(len(self.labels))
        elif isinstance(self.index, np.ndarray):
            self.index = torch.from_numpy(self.index.astype(np.int64))
        if self.pixels.dtype != torch.uint8:
            raise TypeError(f"task pixels must be uint8 (N, 3, H, W), got {self.pixels.dtype}")
        if self.num_classes is None:  # the data's classes: its class names, else the head's rows
            if self.classnames is not None:
                self.num_classes = len(self.classnames)
            elif self.head is not None:
                self.num_classes = self.head.num_classes


def zoo_source(name: str, split: str, subsample: int | None, seed: int) -> TaskSource:
    """A demo zoo task (in memory; the zoo's images are 32 px, CLIP normalization)."""
    from ..zoo import data as zoo_data

    spec = zoo_data.get_task(name)
    x, y = zoo_data.load_split(name, split)
    idx = subsample_indices(len(y), subsample, seed)
    return TaskSource(x, y, spec.classnames, spec.templates, index=torch.from_numpy(idx))


def user_source(
    ms,
    name: str,
    split: str,
    transform: ImageTransform,
    subsample: int | None,
    seed: int,
    progress: Progress | None = None,
) -> TaskSource:
    """A model set JSON task: its files on `split`, decoded once into the image cache."""
    cfg = ms.task_configs[name]
    ds = open_dataset(cfg.data, name=name, classnames=list(cfg.classnames) if cfg.classnames else None, seed=0)
    files = ds.split(split)
    cached = cached_images(files.paths, transform, progress=progress, desc=f"{name}/{split}: caching images")
    rows = np.flatnonzero(cached.valid)
    idx = rows[subsample_indices(len(rows), subsample, seed)]
    head = load_head(cfg.head, allow_pickle=ms.allow_pickle) if cfg.head is not None else None
    skipped = [p for _, p, _ in cached.bad]
    notes = list(ds.notes) + ([cached.describe_bad()] if cached.bad else [])
    return TaskSource(
        torch.from_numpy(cached.pixels),
        torch.from_numpy(files.labels),
        ds.classnames,
        list(cfg.templates) if cfg.templates else None,
        head,
        torch.from_numpy(idx.astype(np.int64)),
        transform.mean,
        transform.std,
        skipped,
        notes,
        ds.num_classes,
        cached.release,
    )


def model_set_sources(
    ms,
    split: str,
    transform: ImageTransform,
    *,
    subsample: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict[str, TaskSource]:
    """A TaskSource per evaluation task of `ms` (a JSON task's data, else the demo zoo's generator)."""
    out = {}
    for name in ms.eval_tasks:
        cfg = getattr(ms, "task_configs", {}).get(name)
        if cfg is not None and cfg.data is not None:
            out[name] = user_source(ms, name, split, transform, subsample, seed, progress)
        else:
            out[name] = zoo_source(name, split, subsample, seed)
    return out
