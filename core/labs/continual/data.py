"""A demo task's images for a continual run: train (also the prototype images), test and NTK probe."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@dataclass
class ContinualTask:
    """Preprocessed images of one task: train (also the prototype images), test and NTK probe."""

    name: str
    classnames: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        return len(self.classnames)


@functools.lru_cache(maxsize=32)
def load_task(name: str, n_train: int, n_test: int, image_size: int = 32) -> ContinualTask:
    """A demo task's train and test images, preprocessed once per process (cached)."""
    from core.models import preprocess
    from core.zoo import data as D

    xtr, ytr = D.load_split(name, "train", n=n_train)
    xte, yte = D.load_split(name, "test", n=n_test)
    return ContinualTask(
        name, list(D.get_task(name).classnames), preprocess(xtr, image_size), ytr, preprocess(xte, image_size), yte
    )
