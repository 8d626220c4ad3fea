"""What one continual run is: the task sequence, the setting, which NTK-CL terms are on, and the settings.

Adapter size and scale, prompt count and the test-time section weights are the official defaults
(Programmergg/NTK-CL); learning rate, steps and the loss weights are this CPU scale's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

TERMS = ("expansion", "ortho", "l2")
SETTINGS = ("class", "task")
# Default order: tasks whose images differ in kind (digits, letters, arrows, groups, shapes), so
# class-incremental learning is well posed (colours/position share their images with every kind).
DEFAULT_TASKS = ("digits", "letters", "arrows", "counts", "shapes")


@dataclass(frozen=True)
class ContinualConfig:
    """One continual run. Adapter size and scale, prompt count and the test-time section weights are
    the official defaults; learning rate, steps and the loss weights are this CPU scale's (the official
    loss terms are not on the same scale: a signed-sum orthogonality term, SGD over epochs)."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    setting: str = "class"  # "class": one classifier over all seen classes; "task": the task's own classes
    expansion: bool = True
    ortho: bool = True
    l2: bool = True
    ortho_weight: float = 1.0
    l2_weight: float = 0.1
    steps: int = 60  # optimizer steps per task
    batch: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup: float = 0.1
    bottleneck: int = 16  # adapter width (official ffn_num)
    adapter_scale: float = 0.1  # official ffn_scalar
    lora_rank: int = 0  # 0: no LoRA on attention
    lora_alpha: float = 1.0
    n_prompts: int = 4  # prompt tokens of the patch path
    ema_weight: float = 0.3  # test-time weight of the past (EMA) section (official gamma)
    current_weight: float = 0.1  # test-time weight of the current section (official alpha)
    head_scale: float = 10.0  # initial scale of the training cosine head (learnable)
    ortho_rank: int = 0  # basis size of the past-prototype span; 0 = all prototypes
    n_train: int = 500  # training images per task (also the prototype images)
    n_test: int = 250  # test images per task
    ntk_samples: int = 32  # probe images per task for the NTK
    ntk_outputs: int = 4  # random orthonormal output directions of the NTK
    subspace_rank: int = 8  # dimension of each task's feature subspace (principal angles)
    seed: int = 0

    def __post_init__(self):
        if self.setting not in SETTINGS:
            raise ValueError(f"setting must be one of {SETTINGS}, got {self.setting!r}")
        if not self.tasks:
            raise ValueError("a continual run needs at least one task")
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be distinct, got {list(self.tasks)}")

    @property
    def terms(self) -> tuple[str, ...]:
        return tuple(t for t in TERMS if getattr(self, t))

    def with_terms(self, terms: Sequence[str]) -> ContinualConfig:
        unknown = [t for t in terms if t not in TERMS]
        if unknown:
            raise ValueError(f"unknown terms {unknown}; choose from {TERMS} (or none)")
        return dataclasses.replace(self, **{t: t in terms for t in TERMS})

    def label(self) -> str:
        t = self.terms
        return (
            "baseline (sequential adapters)" if not t else ("all terms" if len(t) == len(TERMS) else "+" + "+".join(t))
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["terms"] = list(self.terms)
        return d

    @staticmethod
    def from_dict(d: Mapping) -> ContinualConfig:
        names = {f.name for f in dataclasses.fields(ContinualConfig)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["tasks"] = tuple(kw.get("tasks", DEFAULT_TASKS))
        return ContinualConfig(**kw)
