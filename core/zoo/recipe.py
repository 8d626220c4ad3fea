"""What determines a zoo: the `Recipe`, its two hashes, and the shipped recipes (demo, styled, micro).

A recipe holds every number of a build — architecture, tasks, seed, the pretraining and the
fine-tuning hyperparameters. Its `hash()` (plus the image generator's signature, so a change of
the generator invalidates old builds) names a build: a cached zoo is reused only when the hash in
its manifest equals the current recipe's. `pretrain_hash()` covers only what the pretrained base
depends on: the shipped base (`core.zoo.shipped`) replaces pretraining only when it matches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from . import scenes, styles
from .data import DEMO_TASKS, STYLED_TASKS, STYLED_ZOO_TASKS, TASK_NAMES


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a zoo (the manifest records it; its hash names the build)."""

    kind: str
    arch: str
    tasks: tuple[str, ...]
    seed: int = 0
    # pretraining
    pretrain_steps: int = 5000
    pretrain_batch: int = 128
    pair_fraction: float = 0.5  # share of each batch made of minimal pairs
    mention_prob: float = 0.5  # chance that a caption names each attribute of its scene
    lr_visual: float = 1e-3
    lr_text: float = 2e-3
    weight_decay: float = 0.1
    warmup: float = 0.05
    aux_weight: float = 0.5
    pos_embed_scale: float = 6.0
    # fine-tuning (task arithmetic's recipe, scaled down)
    ft_steps: int = 300
    ft_batch: int = 64
    ft_lr: float = 2.5e-4
    ft_weight_decay: float = 0.1
    ft_warmup: float = 0.1
    n_train: int = 19200  # = ft_steps x ft_batch: every fine-tuning step sees fresh images (no overfitting)
    ft_seed: int = 0  # added to `seed` for the fine-tunes only (their images and batch order): same base
    workers: int = 2

    @property
    def finetune_seed(self) -> int:
        """The seed of the fine-tunes: `seed + ft_seed` (`ft_seed` varies them over one pretrained base)."""
        return self.seed + self.ft_seed

    def pretrain_part(self) -> dict:
        """The fields the pretrained base depends on (and the generator's signature)."""
        keep = (
            "arch",
            "seed",
            "pretrain_steps",
            "pretrain_batch",
            "pair_fraction",
            "lr_visual",
            "lr_text",
            "weight_decay",
            "warmup",
            "aux_weight",
            "pos_embed_scale",
        )
        part = {k: getattr(self, k) for k in keep}
        for k, v in PRETRAIN_OMITS_DEFAULT.items():  # recorded only when changed: older bases still match
            if getattr(self, k) != v:
                part[k] = getattr(self, k)
        return part | {"generator": generator_signature()}

    def pretrain_hash(self) -> str:
        return _hash(self.pretrain_part())

    def hash(self) -> str:
        """Hash of the whole recipe (without `workers`, which does not change the weights)."""
        d = dataclasses.asdict(self)
        d.pop("workers")
        for k, v in HASH_OMITS_DEFAULT.items():  # fields added later: at their default, old hashes hold
            if d[k] == v:
                d.pop(k)
        extra = {"generator": generator_signature()}
        if any(t in STYLED_TASKS for t in self.tasks):  # the style-shifted looks (core.zoo.styles)
            extra["styles"] = styles.STYLE_VERSION
        return _hash(d | extra)


# Recipe fields added after the first builds: left out of the hashes while at these defaults
# (pretraining's among them enter the pretraining hash too, when changed).
PRETRAIN_OMITS_DEFAULT = {"mention_prob": 0.5}
HASH_OMITS_DEFAULT = PRETRAIN_OMITS_DEFAULT | {"ft_seed": 0}


def generator_signature() -> dict:
    """What of the image generator (core.zoo.scenes) a zoo depends on (part of every recipe hash)."""
    return {
        "version": scenes.GENERATOR_VERSION,
        "main_object_size": list(scenes.MAIN_OBJECT_SIZE),
        "group_object_size": list(scenes.GROUP_OBJECT_SIZE),
    }


def _hash(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode()).hexdigest()[:16]


RECIPES: dict[str, Recipe] = {
    "demo": Recipe(kind="demo", arch="mergescope-zoo", tasks=DEMO_TASKS),
    # The same shipped base, style-shifted tasks and longer fine-tunes at a higher learning rate (28,800
    # images per task, each seen once): a zero-shot -> fine-tuned window of 32 points where the demo's is 10,
    # and TSV-M 1.9 points over task arithmetic (docs/methods/zoo.md, "what was tried", row L4).
    "styled": Recipe(
        kind="styled",
        arch="mergescope-zoo",
        tasks=STYLED_ZOO_TASKS,
        ft_steps=450,
        ft_lr=1e-3,
        n_train=28800,
    ),
    # Plumbing only: a few gentle pretraining steps keep the random text tower's class
    # embeddings apart (longer short runs collapse them first), then quick fine-tunes.
    "micro": Recipe(
        kind="micro",
        arch="mergescope-micro",
        tasks=("colors", "shapes", "position", "patterns"),  # the least collinear random-init heads
        pretrain_steps=30,
        pretrain_batch=32,
        lr_visual=1e-4,
        lr_text=1e-4,
        ft_steps=120,
        ft_batch=32,
        ft_lr=3e-3,
        n_train=400,
        workers=1,
    ),
}


def recipe_for(kind: str, overrides: dict | None = None) -> Recipe:
    """The recipe of zoo `kind` with `overrides` ({field: value or string}) applied and type-checked."""
    if kind not in RECIPES:
        raise ValueError(f"unknown zoo kind {kind!r}; choose from {list(RECIPES)}")
    r = RECIPES[kind]
    if overrides:
        fields = {f.name: f.type for f in dataclasses.fields(Recipe)}
        bad = [k for k in overrides if k not in fields]
        if bad:
            raise ValueError(f"unknown recipe fields {bad}; known: {sorted(fields)}")
        vals = {}
        for k, v in overrides.items():
            cur = getattr(r, k)
            try:
                vals[k] = (
                    (tuple(v.split(",")) if isinstance(v, str) else tuple(v))
                    if isinstance(cur, tuple)
                    else type(cur)(v)
                )
            except (TypeError, ValueError):
                raise ValueError(f"recipe field {k}: {v!r} is not a {type(cur).__name__}") from None
        r = dataclasses.replace(r, **vals)
    check_recipe(r)
    return r


def check_recipe(r: Recipe) -> None:
    """Raise ValueError for a recipe that cannot be built (unknown tasks, empty or too small numbers)."""
    unknown = [t for t in r.tasks if t not in TASK_NAMES]
    if unknown or not r.tasks:
        raise ValueError(f"recipe tasks {list(r.tasks)}: need one or more of {TASK_NAMES}")
    if r.ft_seed < 0:
        raise ValueError(f"recipe field ft_seed must be >= 0, got {r.ft_seed}")
    for k in ("pretrain_steps", "pretrain_batch", "ft_steps", "ft_batch", "n_train", "workers"):
        if getattr(r, k) < 1:
            raise ValueError(f"recipe field {k} must be >= 1, got {getattr(r, k)}")
    if r.n_train < r.ft_batch:
        raise ValueError(f"n_train ({r.n_train}) must be at least ft_batch ({r.ft_batch})")
