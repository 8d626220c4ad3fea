"""What one fine-tune of the lab is: its method name (a learning-rate rule, optionally + WSA) and its settings.

A method name is a rule, optionally with "+wsa" ("uniform", "tempbalance", "model_balancing",
"wsa" = uniform + WSA, "tempbalance+wsa", "model_balancing+wsa"). Defaults follow the demo zoo's
fine-tuning recipe (task arithmetic's: AdamW, warmup + cosine), scaled down; `recipe_defaults`
reads the model set's own recipe.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from core.tempbalance import RULES
from core.zoo import data as D

LR_RULES = ("uniform", *RULES)
METHODS = ("uniform", "tempbalance", "model_balancing", "wsa", "tempbalance+wsa", "model_balancing+wsa")
METHOD_LABELS = {
    "uniform": "uniform lr",
    "tempbalance": "TempBalance",
    "model_balancing": "Model Balancing",
    "wsa": "WSA",
    "tempbalance+wsa": "TempBalance + WSA",
    "model_balancing+wsa": "Model Balancing + WSA",
}


def parse_method(method: str) -> tuple[str, bool]:
    """(lr rule, uses WSA) of a method name such as "tempbalance+wsa"."""
    parts = method.lower().replace(" ", "").split("+")
    wsa = "wsa" in parts
    rest = [p for p in parts if p != "wsa"]
    rule = rest[0] if rest else "uniform"
    if len(rest) > 1 or rule not in LR_RULES:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return rule, wsa


@dataclass(frozen=True)
class LabConfig:
    """One fine-tune of the lab. Defaults follow the demo zoo's fine-tuning recipe, scaled down."""

    task: str
    fraction: float = 1.0  # share of the training pool used
    method: str = "uniform"  # see METHODS
    seed: int = 0  # data subset, batch order and nothing else (the init is the pretrained model)
    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup: float = 0.1
    grad_clip: float | None = None  # the zoo's fine-tunes do not clip
    every: int = 25  # TempBalance / Model Balancing: recompute the multipliers every K steps
    s1: float = 0.5  # TempBalance: multiplier at α_min
    s2: float = 1.5  # TempBalance: multiplier at α_max
    s: float = 1.25  # Model Balancing: scale of the sigmoid (multipliers in 10^(±s/2))
    T: float = 10.0  # noqa: N815  Model Balancing: temperature
    wsa_weight: float = 1.0  # weight of the WSA term when the method uses WSA
    n_train: int = 3000  # size of the training pool the fraction is taken of
    shard: int = 0  # disjoint slice of the seeded order (two shards of one task)
    log_every: int = 5

    @property
    def rule(self) -> str:
        return parse_method(self.method)[0]

    @property
    def uses_wsa(self) -> bool:
        return parse_method(self.method)[1] and self.wsa_weight > 0

    def validate(self) -> None:
        parse_method(self.method)
        D.get_task(self.task)
        if not 0 < self.fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if self.shard < 0 or (self.shard + 1) * self.fraction > 1 + 1e-9:
            raise ValueError(f"shard {self.shard} of fraction {self.fraction} does not fit in the training pool")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def recipe_defaults(ms) -> dict:
    """lr, weight decay, warmup and training-pool size of the model set's zoo recipe (demo defaults otherwise)."""
    out = {"lr": 1e-4, "weight_decay": 0.1, "warmup": 0.1, "n_train": 3000}
    zdir = getattr(ms, "zoo_dir", None)
    if zdir is not None and (Path(zdir) / "manifest.json").exists():
        r = json.loads((Path(zdir) / "manifest.json").read_text()).get("recipe", {})
        out.update(
            lr=r.get("ft_lr", out["lr"]),
            weight_decay=r.get("ft_weight_decay", out["weight_decay"]),
            warmup=r.get("ft_warmup", out["warmup"]),
            n_train=r.get("n_train", out["n_train"]),
        )
    return out


def lab_tasks(ms) -> list[str]:
    """Tasks the lab can fine-tune on: the model set's demo tasks, else every demo task."""
    return list(getattr(ms, "eval_tasks", None) or D.TASK_NAMES)
