"""Continual learning with adapters on a frozen backbone, seen through the NTK (NTK-CL).

    python -m core continual --zoo demo --tasks digits,letters,arrows,counts,shapes \
        --setting class --terms expansion,ortho,l2 --steps 60 --seeds 0,1,2 [--compare]

"Parameter-Efficient Fine-Tuning for Continual Learning: A Neural Tangent Kernel
Perspective" (official code: Programmergg/NTK-CL) argues that forgetting in PEFT
continual learning is governed by the training sample size, the task-level
orthogonality of features and regularisation, and answers each with one term:

  expansion  several PEFT paths per sample: an adapter parallel to each block's MLP
             ("channel" path) and a per-block prompt generator ("patch" path), each a
             separate pass through the frozen backbone, plus their fusion; the
             classification loss is applied to all three features, so each sample
             counts several times.
  ortho      an EMA of past-task PEFT modules (a running mean of the end-of-task
             modules, the official `update_ratios`) gives every feature a frozen
             "past" section next to the current one, and an orthogonality loss pushes
             the current section off the span of the past classes' prototypes.
  l2         L2 of the current PEFT weights toward the previous task's.

All three off is plain sequential fine-tuning of the adapters (the baseline). The
classifier is a prototype cosine classifier: after each task the means of its
classes' features become their prototypes and old prototypes are never updated.
Test logits add the cosine per section, weighted `ema_weight` (past) and
`current_weight` (current), as the official `forward_reweight` (gamma 0.3, alpha 0.1).

CPU-scale choices, and where this differs from the official code (each deliberate):
  - The adapter reads the MLP's input (after ln_2) and is added to its output:
    mlp(x) + 0.1 * up(relu(down(x))), `up` zero-initialised, so at initialisation the
    model IS the backbone, bit for bit. No dropout in the adapter.
  - The prompt generator's token mixer starts random (the official one starts at zero,
    which with its zero LayerNorm never receives a gradient and leaves constant prompts);
    its LayerNorm starts at zero, so prompts start as zero tokens.
  - The official AttentionFusion attends over a single token, so its softmax is 1 and it
    reduces to c + 0.1 p + 0.5 V(c); that is what `Fusion` computes (one V shared by the
    sections; no dropout).
  - Orthogonality loss: the mean squared norm of the projection of the normalised current
    feature on the span of the past prototypes (zero exactly when orthogonal). The official
    code sums the signed residual after a truncated-SVD projection and adds a contrastive
    (mutual-information) loss against sampled past prototypes; neither is used here.
  - Training head: a cosine classifier over the current task's classes (learnable
    weights and scale, as the official proxy_fc), AdamW with warmup + cosine through
    core.train.train_loop, a fixed number of steps per task instead of epochs.
  - Optional LoRA on the attention's query and value projections (rank `lora_rank`, off by
    default), merged into the frozen in_proj weight on the fly (zero `B`, so exact at init).

Diagnostics: the accuracy matrix A[i, j] (task i after training task j; NaN for i > j),
average accuracy (last column), forgetting; principal angles between task feature
subspaces; the empirical NTK K = J Jᵀ of the current PEFT parameters on a fixed probe
set (`ntk_samples` test images per task, outputs projected on `ntk_outputs` fixed random
orthonormal directions of the current feature), with intra- vs inter-task block norms and
its drift across tasks.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .train import TrainConfig, infinite_batches, param_groups, train_loop

TERMS = ("expansion", "ortho", "l2")
SETTINGS = ("class", "task")
# Default order: tasks whose images differ in kind (digits, letters, arrows, groups, shapes), so
# class-incremental learning is well posed (colours/position share their images with every kind).
DEFAULT_TASKS = ("digits", "letters", "arrows", "counts", "shapes")

Progress = Callable[[str, int, int], None]


# --------------------------------------------------------------------------- configuration
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


# --------------------------------------------------------------------------- PEFT modules
class Adapter(nn.Module):
    """Bottleneck adapter parallel to an MLP: scale * up(relu(down(x))); `up` starts at zero."""

    def __init__(self, width: int, bottleneck: int, scale: float = 0.1):
        super().__init__()
        self.scale = scale
        self.down = nn.Linear(width, bottleneck)  # torch's default init: kaiming-uniform(a=sqrt(5)), as official
        self.up = nn.Linear(bottleneck, width)
        with torch.no_grad():
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(x))) * self.scale


class LoRA(nn.Module):
    """Low-rank update of an attention block's query and value projections (`B` starts at zero)."""

    def __init__(self, width: int, rank: int, alpha: float = 1.0):
        super().__init__()
        self.scale = alpha / rank
        self.a_q = nn.Parameter(torch.empty(rank, width))
        self.a_v = nn.Parameter(torch.empty(rank, width))
        self.b_q = nn.Parameter(torch.zeros(width, rank))
        self.b_v = nn.Parameter(torch.zeros(width, rank))
        nn.init.kaiming_uniform_(self.a_q, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.a_v, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """(3W, W) update of the packed in_proj weight [q; k; v] (k untouched)."""
        z = torch.zeros(self.b_q.shape[0], self.a_q.shape[1], dtype=self.a_q.dtype)
        return torch.cat([self.b_q @ self.a_q, z, self.b_v @ self.a_v]) * self.scale


class PatchPrompt(nn.Module):
    """Per-block prompt generator: `n_prompts` tokens mixed from the block's tokens, LayerNorm'd
    (the norm starts at zero, so the prompts start as zero tokens)."""

    def __init__(self, n_tokens: int, n_prompts: int, width: int):
        super().__init__()
        self.mix = nn.Linear(n_tokens, n_prompts)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        with torch.no_grad():
            self.norm.weight.zero_()
            self.norm.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, W) -> (B, P, W)
        return self.norm(self.mix(x.transpose(1, 2)).transpose(1, 2))


class Fusion(nn.Module):
    """Fuses the channel and patch features of each section: c + 0.1 p + 0.5 V(c)
    (the official single-token AttentionFusion, whose softmax is identically 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.value = nn.Linear(dim, dim)

    def forward(self, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return c + 0.1 * p + 0.5 * self.value(c)


class PEFTSet(nn.Module):
    """One copy of the per-block PEFT modules: adapters (+ LoRA) for the channel path,
    prompt generators for the patch path (with expansion)."""

    def __init__(self, width: int, n_blocks: int, n_tokens: int, cfg: ContinualConfig):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(width, cfg.bottleneck, cfg.adapter_scale) for _ in range(n_blocks))
        self.lora = (
            nn.ModuleList(LoRA(width, cfg.lora_rank, cfg.lora_alpha) for _ in range(n_blocks))
            if cfg.lora_rank
            else None
        )
        self.prompts = (
            nn.ModuleList(PatchPrompt(n_tokens, cfg.n_prompts, width) for _ in range(n_blocks))
            if cfg.expansion
            else None
        )


def visual_tower(source) -> nn.Module:
    """The open_clip visual tower of a ModelSet (its base), a CLIP model or the tower itself."""
    if hasattr(source, "transformer") and hasattr(source, "conv1"):
        return source
    if hasattr(source, "visual"):
        return source.visual
    if hasattr(source, "base") and hasattr(source, "fingerprint"):
        from .models import build_model

        return build_model(source.base()).visual
    raise TypeError(f"expected a ModelSet, an open_clip CLIP or its visual tower, got {type(source).__name__}")


class PEFTBackbone(nn.Module):
    """A frozen open_clip VisionTransformer whose blocks consult the *active* PEFT modules.

    Forward hooks add the active adapter to each block's MLP output; a pre-hook on each
    block inserts/refreshes prompt tokens after the class token; LoRA (when active) runs the
    attention with in_proj + delta. Nothing is active outside `encode`, so `self.visual(x)`
    is the untouched backbone. The backbone's parameters never require grad.
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError(
                "PEFTBackbone needs an open_clip VisionTransformer with batch_first blocks (open_clip >= 2.24)"
            )
        self.visual = visual.eval().requires_grad_(False)
        self._active: dict = {}  # a plain dict: modules put here are not registered as children
        blocks = visual.transformer.resblocks
        self.n_blocks = len(blocks)
        self.width = visual.conv1.out_channels
        self.n_tokens = int(visual.positional_embedding.shape[0])
        self.out_dim = int(visual.output_dim)
        for i, blk in enumerate(blocks):
            blk.mlp.register_forward_hook(functools.partial(self._mlp_hook, i))
            blk.register_forward_pre_hook(functools.partial(self._prompt_hook, i), with_kwargs=True)
            blk.attention = functools.partial(self._attention, i, blk, blk.attention)

    def train(self, mode: bool = True):  # the backbone stays in eval mode
        return self

    def encode(self, x: torch.Tensor, peft: PEFTSet | None, path: str = "channel") -> torch.Tensor:
        """Image features (B, out_dim) with `peft`'s modules of `path` ("channel" or "patch") active."""
        if peft is None:
            active = {}
        elif path == "channel":
            active = {"adapters": peft.adapters, "lora": peft.lora}
        elif path == "patch":
            active = {"prompts": peft.prompts}
        else:
            raise ValueError(f"unknown path {path!r} (channel or patch)")
        self._active = active
        try:
            return self.visual(x)
        finally:
            self._active = {}

    # -- hooks
    def _mlp_hook(self, i, module, inputs, output):
        adapters = self._active.get("adapters")
        return None if adapters is None else output + adapters[i](inputs[0])

    def _prompt_hook(self, i, block, args, kwargs):
        prompts = self._active.get("prompts")
        if prompts is None:
            return None
        x = args[0]
        p = prompts[i].mix.out_features
        residual = None
        if x.shape[1] == self.n_tokens + p:  # prompts of the previous block: take them out
            residual = x[:, 1 : 1 + p]
            x = torch.cat([x[:, :1], x[:, 1 + p :]], dim=1)
        new = prompts[i](x)
        if residual is not None:
            new = new + 0.1 * residual
        return (torch.cat([x[:, :1], new, x[:, 1:]], dim=1), *args[1:]), kwargs

    def _attention(self, i, block, original, q_x, k_x=None, v_x=None, attn_mask=None):
        lora = self._active.get("lora")
        if lora is None:
            return original(q_x=q_x, k_x=k_x, v_x=v_x, attn_mask=attn_mask)
        mha = block.attn
        x = q_x.transpose(0, 1)
        out, _ = F.multi_head_attention_forward(
            x, x, x, mha.embed_dim, mha.num_heads, mha.in_proj_weight + lora[i].delta(), mha.in_proj_bias,
            None, None, False, 0.0, mha.out_proj.weight, mha.out_proj.bias,
            training=False, need_weights=False, attn_mask=attn_mask,
        )  # fmt: skip
        return out.transpose(0, 1)


# --------------------------------------------------------------------------- the terms
def update_ratios(task_index: int) -> tuple[float, float]:
    """(weight of the EMA, weight of the current module) after task `task_index` (0-based).

    The official recursion (cur = 1/(t+1), pre = cur / previous cur) is t/(t+1) and
    1/(t+1): the EMA is the running mean of the end-of-task modules; after task 0 it is a copy.
    """
    return task_index / (task_index + 1), 1.0 / (task_index + 1)


@torch.no_grad()
def ema_update(ema: nn.Module, current: nn.Module, task_index: int) -> None:
    pre, cur = update_ratios(task_index)
    src = dict(current.named_parameters())
    for name, p in ema.named_parameters():
        p.mul_(pre).add_(src[name], alpha=cur)


def prototype_basis(prototypes: torch.Tensor, rank: int = 0) -> torch.Tensor:
    """Orthonormal basis (D, k) of the span of the L2-normalised prototypes (C, D): the top-k
    left singular vectors (k = rank, or all numerically non-zero directions when rank is 0)."""
    if prototypes.numel() == 0:
        return prototypes.new_zeros(prototypes.shape[-1], 0)
    u, s, _ = torch.linalg.svd(F.normalize(prototypes.detach(), dim=-1).T, full_matrices=False)
    k = int((s > s.max() * 1e-6).sum())
    if rank:
        k = min(k, rank)
    return u[:, :k]


def orthogonality_loss(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ‖Uᵀ f̂‖², the squared norm of the normalised feature's projection on
    the span U of the past prototypes: 0 when the features are orthogonal to it, up to 1 inside it."""
    if basis.shape[1] == 0:
        return features.new_zeros(())
    return (F.normalize(features, dim=-1) @ basis).pow(2).sum(-1).mean()


def l2_to_previous(current: Mapping[str, torch.Tensor], previous: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Σ ‖θ − θ_prev‖² over the weight matrices (names containing "weight"; LoRA factors too), as official."""
    terms = [
        (p - previous[n]).pow(2).sum()
        for n, p in current.items()
        if n in previous and ("weight" in n or ".a_" in n or ".b_" in n)
    ]
    return torch.stack(terms).sum() if terms else torch.zeros(())


# --------------------------------------------------------------------------- the model
class ContinualModel(nn.Module):
    """Frozen backbone + current PEFT set (+ EMA set, fusion), the prototypes and the terms."""

    def __init__(self, visual: nn.Module, cfg: ContinualConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = PEFTBackbone(visual)
        b = self.backbone
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        self.current = PEFTSet(b.width, b.n_blocks, b.n_tokens, cfg)
        self.fusion = Fusion(b.out_dim) if cfg.expansion else None
        # The official "pre_" lists are built fresh (zero up-projections: the pretrained features)
        # and become the running mean of the end-of-task modules.
        self.ema = PEFTSet(b.width, b.n_blocks, b.n_tokens, cfg).requires_grad_(False) if cfg.ortho else None
        torch.random.set_rng_state(gen_state)
        self.previous: dict[str, torch.Tensor] = {}
        self.prototypes = torch.zeros(0, self.n_sections, b.out_dim)  # raw class means, (C, S, D)
        self.basis = torch.zeros(b.out_dim, 0)  # span of past prototypes (current section)

    @property
    def n_sections(self) -> int:
        return 2 if self.cfg.ortho else 1

    @property
    def paths(self) -> tuple[str, ...]:
        return ("channel", "patch") if self.cfg.expansion else ("channel",)

    @property
    def feature_key(self) -> str:
        return "mixed" if self.cfg.expansion else "channel"

    def trainable(self) -> dict[str, nn.Parameter]:
        """The PEFT parameters trained on each task (current set and fusion), by name."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def section_weights(self) -> torch.Tensor:
        w = [self.cfg.ema_weight] * (self.n_sections - 1) + [self.cfg.current_weight]
        return torch.tensor(w)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{path: (B, S, D)} with sections [EMA (no grad), current]; "mixed" with expansion."""
        out = {}
        for path in self.paths:
            secs = []
            if self.ema is not None:
                with torch.no_grad():
                    secs.append(self.backbone.encode(x, self.ema, path))
            secs.append(self.backbone.encode(x, self.current, path))
            out[path] = torch.stack(secs, dim=1)
        if self.fusion is not None:
            out["mixed"] = self.fusion(out["channel"], out["patch"])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The current section of the classifier feature (B, D): the NTK's function."""
        f = {}
        f["channel"] = self.backbone.encode(x, self.current, "channel")
        if self.fusion is None:
            return f["channel"]
        return self.fusion(f["channel"], self.backbone.encode(x, self.current, "patch"))

    def embed(self, sections: torch.Tensor) -> torch.Tensor:
        """(B, S, D) -> (B, S*D): each section L2-normalised and scaled by √weight, so that
        embed(f) · embed(p) = Σ_s w_s cos(f_s, p_s), the official reweighted cosine."""
        w = self.section_weights().sqrt().view(1, -1, 1)
        return (F.normalize(sections, dim=-1) * w).flatten(1)

    @torch.no_grad()
    def classifier_features(self, x: torch.Tensor, batch: int = 250) -> torch.Tensor:
        """Raw classifier features (N, S, D) of preprocessed images."""
        outs = [self.features(x[i : i + batch])[self.feature_key] for i in range(0, len(x), batch)]
        return torch.cat(outs) if outs else torch.zeros(0, self.n_sections, self.backbone.out_dim)

    @torch.no_grad()
    def add_prototypes(self, features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> None:
        """Append the class means (n_classes, S, D) of a task's features; old prototypes stay."""
        means = torch.stack([features[labels == c].mean(0) for c in range(n_classes)])
        self.prototypes = torch.cat([self.prototypes, means])
        self.basis = prototype_basis(self.prototypes[:, -1], self.cfg.ortho_rank)


class CosineHead(nn.Module):
    """Training head over the current task's classes: scale · cos(feature, w_c), all learnable."""

    def __init__(self, dim: int, n_classes: int, scale: float, generator: torch.Generator):
        super().__init__()
        stdv = 1.0 / math.sqrt(dim)
        self.weight = nn.Parameter(torch.rand(n_classes, dim, generator=generator) * 2 * stdv - stdv)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _Terms:
    """The terms as a train_loop hook: `measure` (called by the loss function with the batch's
    current-section features) computes the orthogonality loss and L2 toward the previous task's
    PEFT weights and returns their values for the history; `extra_loss` adds them, weighted."""

    def __init__(self, model: ContinualModel):
        self.model = model
        self._extra: torch.Tensor | None = None

    def measure(self, feature: torch.Tensor) -> dict[str, float]:
        m, cfg = self.model, self.model.cfg
        self._extra, values = None, {}
        if cfg.ortho and m.basis.shape[1]:
            o = orthogonality_loss(feature, m.basis)
            values["ortho"] = float(o.detach())
            self._extra = cfg.ortho_weight * o
        if cfg.l2 and m.previous:
            r = l2_to_previous(m.trainable(), m.previous)
            values["l2"] = float(r.detach())
            self._extra = cfg.l2_weight * r if self._extra is None else self._extra + cfg.l2_weight * r
        return values

    def extra_loss(self, step: int) -> torch.Tensor | None:
        out, self._extra = self._extra, None
        return out


# --------------------------------------------------------------------------- data
@dataclass
class TaskData:
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
def load_task(name: str, n_train: int, n_test: int, image_size: int = 32) -> TaskData:
    """A demo task's train and test images, preprocessed once per process (cached)."""
    from .models import preprocess
    from .zoo import data as D

    xtr, ytr = D.load_split(name, "train", n=n_train)
    xte, yte = D.load_split(name, "test", n=n_test)
    return TaskData(
        name, list(D.get_task(name).classnames), preprocess(xtr, image_size), ytr, preprocess(xte, image_size), yte
    )


# --------------------------------------------------------------------------- bookkeeping
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


# --------------------------------------------------------------------------- diagnostics
def principal_angles(a: torch.Tensor, b: torch.Tensor, rank: int) -> np.ndarray:
    """Principal angles (degrees, ascending) between the top-`rank` right singular subspaces of
    feature matrices a (n_a, D) and b (n_b, D)."""
    ua = torch.linalg.svd(a.double(), full_matrices=False)[2][:rank].T
    ub = torch.linalg.svd(b.double(), full_matrices=False)[2][:rank].T
    cos = torch.linalg.svdvals(ua.T @ ub).clamp(-1, 1)
    return np.degrees(np.arccos(cos.numpy()))


def angle_matrix(features: Sequence[torch.Tensor | None], rank: int) -> np.ndarray:
    """(T, T) mean principal angle between task feature subspaces (NaN where a task is missing)."""
    n = len(features)
    out = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if features[i] is not None and features[j] is not None:
                out[i, j] = 0.0 if i == j else float(principal_angles(features[i], features[j], rank).mean())
    return out


def empirical_ntk(
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    x: torch.Tensor,
    proj: torch.Tensor | None = None,
    chunk: int = 32,
) -> torch.Tensor:
    """Empirical NTK (N, N): K[a, b] = Σ_o ⟨∂f_o(x_a)/∂θ, ∂f_o(x_b)/∂θ⟩ = (J Jᵀ)[a, b].

    f(x) = model(x) (B, D) projected on `proj` (D, k) if given; θ = `params` (names of
    model.named_parameters(); the others are held fixed). Per-sample Jacobians by
    torch.func (vmap over jacrev of functional_call), `chunk` samples at a time.
    """
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in params.items()}

    def f(p, xi):
        out = functional_call(model, p, (xi.unsqueeze(0),))[0]
        return out @ proj if proj is not None else out

    from torch.nn.attention import SDPBackend, sdpa_kernel

    jac = vmap(jacrev(f), in_dims=(None, 0))
    rows = []
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # fused attention kernels have no batching rule:
    try:  # use the composite (math) attention, which vmap batches
        with sdpa_kernel(SDPBackend.MATH):
            for i in range(0, len(x), chunk):
                j = jac(params, x[i : i + chunk])
                rows.append(torch.cat([t.reshape(t.shape[0], -1) for t in j.values()], dim=1))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    jmat = torch.cat(rows)
    return jmat @ jmat.T


def ntk_blocks(kernel: torch.Tensor, sizes: Sequence[int]) -> np.ndarray:
    """(T, T) RMS entry of each task-by-task block of the kernel (intra-task on the diagonal)."""
    edges = np.cumsum([0, *sizes])
    k = kernel.double()
    out = np.zeros((len(sizes), len(sizes)))
    for a in range(len(sizes)):
        for b in range(len(sizes)):
            blk = k[edges[a] : edges[a + 1], edges[b] : edges[b + 1]]
            out[a, b] = float(blk.pow(2).mean().sqrt())
    return out


def kernel_distance(k1: torch.Tensor, k2: torch.Tensor) -> float:
    """1 − ⟨K1, K2⟩_F / (‖K1‖ ‖K2‖): 0 for kernels equal up to scale (Fort et al. 2020)."""
    a, b = k1.double().flatten(), k2.double().flatten()
    den = float(a.norm() * b.norm())
    return float("nan") if den == 0 else 1.0 - float(a @ b) / den


def block_summary(blocks: np.ndarray) -> dict[str, float]:
    n = blocks.shape[0]
    intra = float(np.mean(np.diag(blocks)))
    inter = float(blocks[~np.eye(n, dtype=bool)].mean()) if n > 1 else float("nan")
    return {"intra": intra, "inter": inter, "inter_intra": inter / intra if intra else float("nan")}


# --------------------------------------------------------------------------- result
@dataclass
class ContinualResult:
    config: ContinualConfig
    acc: np.ndarray  # (T, T) A[i, j]
    ntk: list[dict] = field(default_factory=list)  # per stage: stage, blocks (T, T), intra, inter, ...
    angles: list[np.ndarray] = field(default_factory=list)  # per stage: (T, T) mean principal angle
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: float = 0.0
    cancelled: bool = False
    run_id: int | None = None
    timings: dict = field(default_factory=dict)
    model: ContinualModel | None = field(default=None, repr=False)  # the trained model (not logged)

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def average_accuracy(self) -> float:
        return average_accuracy(self.acc)

    def average_forgetting(self) -> float:
        return average_forgetting(self.acc)

    def forgetting(self) -> pd.Series:
        return pd.Series(forgetting(self.acc), index=self.tasks, name="forgetting")

    def acc_frame(self) -> pd.DataFrame:
        """A[i, j] as a DataFrame: rows = evaluated task, columns = after training task."""
        return pd.DataFrame(self.acc, index=self.tasks, columns=[f"after {t}" for t in self.tasks])

    def angle_frame(self, stage: int = -1) -> pd.DataFrame:
        a = self.angles[stage] if self.angles else np.full((len(self.tasks),) * 2, np.nan)
        return pd.DataFrame(a, index=self.tasks, columns=self.tasks)

    def ntk_frame(self) -> pd.DataFrame:
        """One row per stage ("init", then each task): intra, inter, inter/intra, drift."""
        return pd.DataFrame([{k: v for k, v in r.items() if k != "blocks"} for r in self.ntk])

    def ntk_blocks(self, stage: int = -1) -> pd.DataFrame:
        b = self.ntk[stage]["blocks"] if self.ntk else np.full((len(self.tasks),) * 2, np.nan)
        return pd.DataFrame(b, index=self.tasks, columns=self.tasks)

    def angle_summary(self) -> pd.DataFrame:
        """Mean inter-task principal angle per stage (over the seen tasks)."""
        rows = []
        for j, a in enumerate(self.angles):
            seen = a[: j + 1, : j + 1]
            off = seen[~np.eye(j + 1, dtype=bool)]
            rows.append(
                {"stage": j, "after": self.tasks[j], "mean_angle": float(off.mean()) if off.size else float("nan")}
            )
        return pd.DataFrame(rows)

    def metrics(self) -> dict:
        """JSON-able summary for the run log (everything the page redraws)."""

        def clean(a):
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]

        return {
            "avg_acc": self.average_accuracy(),
            "avg_forgetting": self.average_forgetting(),
            "acc": clean(self.acc),
            "forgetting": {t: (None if not np.isfinite(v) else float(v)) for t, v in self.forgetting().items()},
            "ntk": [{**{k: v for k, v in r.items() if k != "blocks"}, "blocks": clean(r["blocks"])} for r in self.ntk],
            "angles": [clean(a) for a in self.angles],
            "seconds": self.seconds,
            "timings": self.timings,
            "cancelled": self.cancelled,
        }

    @staticmethod
    def from_log(config: Mapping, metrics: Mapping, run_id: int | None = None) -> ContinualResult:
        """Rebuild a (history-less) result from a run-log row's config and metrics."""

        def arr(a):
            return np.array([[np.nan if v is None else v for v in row] for row in a], dtype=float)

        ntk = [{**r, "blocks": arr(r["blocks"])} for r in metrics.get("ntk", [])]
        return ContinualResult(
            config=ContinualConfig.from_dict(config),
            acc=arr(metrics["acc"]),
            ntk=ntk,
            angles=[arr(a) for a in metrics.get("angles", [])],
            seconds=float(metrics.get("seconds", 0.0)),
            cancelled=bool(metrics.get("cancelled", False)),
            run_id=run_id,
            timings=dict(metrics.get("timings", {})),
        )


# --------------------------------------------------------------------------- the run
def _set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
    torch.set_flush_denormal(True)


_VISUALS: dict[str, nn.Module] = {}


def _visual_for(source) -> nn.Module:
    """The source's visual tower (a ModelSet's is built once per process and reused)."""
    if hasattr(source, "fingerprint") and hasattr(source, "base"):
        key = source.fingerprint()
        if key not in _VISUALS:
            _VISUALS[key] = visual_tower(source)
        return _VISUALS[key]
    return visual_tower(source)


def run_continual(
    source,
    cfg: ContinualConfig,
    *,
    progress: Progress | None = None,
    cancel=None,
    run_log=None,
    on_stage: Callable[[int, np.ndarray], None] | None = None,
) -> ContinualResult:
    """Train `cfg.tasks` in sequence with adapters on the frozen visual tower of `source` (a
    ModelSet, an open_clip CLIP or its visual tower; it is copied, never modified).

    progress(stage_text, steps_done, total_steps); cancel: threading.Event (checked every
    step; the result holds the finished stages). run_log: a core.runs.RunLog, True for the
    default one, None/False for none; the run is logged as kind "continual".
    """
    t_start = time.perf_counter()
    visual = copy.deepcopy(_visual_for(source))
    size = visual.image_size
    size = int(size[0] if isinstance(size, tuple | list) else size)
    model = ContinualModel(visual, cfg)
    data = [load_task(t, cfg.n_train, cfg.n_test, size) for t in cfg.tasks]
    offsets = np.cumsum([0] + [d.n_classes for d in data])
    n_tasks, total = len(data), len(data) * cfg.steps
    timings = {"train": 0.0, "eval": 0.0, "ntk": 0.0}
    history: list[dict] = []

    log, run_id = _start_log(run_log, source, cfg)
    # The NTK probe: the first images of each task's test split, outputs on fixed directions.
    probe = torch.cat([d.x_test[: cfg.ntk_samples] for d in data])
    probe_sizes = [min(cfg.ntk_samples, len(d.x_test)) for d in data]
    g = torch.Generator().manual_seed(0)
    proj = torch.linalg.qr(torch.randn(visual.output_dim, cfg.ntk_outputs, generator=g))[0]
    kernels: list[torch.Tensor] = []
    ntk_rows: list[dict] = []
    angles: list[np.ndarray] = []
    stage_features: dict[int, torch.Tensor] = {}

    def ntk_stage(stage: int, name: str) -> None:
        if not cfg.ntk_samples:
            return
        t0 = time.perf_counter()
        k = empirical_ntk(model, model.trainable(), probe, proj)
        timings["ntk"] += time.perf_counter() - t0
        blocks = ntk_blocks(k, probe_sizes)
        row = {"stage": stage, "after": name, **block_summary(blocks), "blocks": blocks,
               "trace": float(k.diagonal().mean()),
               "drift_init": kernel_distance(kernels[0], k) if kernels else 0.0,
               "drift_prev": kernel_distance(kernels[-1], k) if kernels else 0.0}  # fmt: skip
        kernels.append(k)
        ntk_rows.append(row)

    def train(j: int) -> bool:
        if cancel is not None and cancel.is_set():
            return False
        t0 = time.perf_counter()
        d = data[j]
        stage = f"task {j + 1}/{n_tasks} · {d.name}"
        if progress:
            progress(stage, j * cfg.steps, total)
        head = CosineHead(model.n_sections * visual.output_dim, d.n_classes, cfg.head_scale,
                          torch.Generator().manual_seed(cfg.seed * 1000 + j))  # fmt: skip
        terms = _Terms(model)

        def loss_fn(batch):
            x, y = batch
            feats = model.features(x)
            losses = {p: F.cross_entropy(head(feats[p].flatten(1)), y) for p in feats}
            values = terms.measure(feats[model.feature_key][:, -1])
            return sum(losses.values()), {**{f"ce_{p}": float(v.detach()) for p, v in losses.items()}, **values}

        named = list(model.trainable().items()) + [(f"head.{n}", p) for n, p in head.named_parameters()]
        tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup=cfg.warmup,
                         seed=cfg.seed, log_every=max(1, cfg.steps // 20))  # fmt: skip
        res = train_loop(
            param_groups(named, cfg.lr, weight_decay=cfg.weight_decay),
            loss_fn,
            infinite_batches(d.x_train, d.y_train, cfg.batch, seed=cfg.seed * 1000 + j),
            tc,
            hooks=[terms],
            progress=(lambda s, n, row: progress(stage, j * cfg.steps + s, total)) if progress else None,
            cancel=cancel,
        )
        history.extend({"task": d.name, "stage": j, **row} for row in res.history)
        if res.cancelled:
            return False
        # End of task: EMA (not after the last task, as official), prototypes, previous weights.
        if model.ema is not None and j < n_tasks - 1:
            ema_update(model.ema, model.current, j)
        model.add_prototypes(model.classifier_features(d.x_train), d.y_train, d.n_classes)
        if cfg.l2:
            model.previous = {n: p.detach().clone() for n, p in model.trainable().items()}
        timings["train"] += time.perf_counter() - t0
        return True

    protos_embedded: dict[int, torch.Tensor] = {}

    def evaluate(i: int, j: int) -> float:
        t0 = time.perf_counter()
        d = data[i]
        if j not in protos_embedded:
            protos_embedded.clear()
            protos_embedded[j] = model.embed(model.prototypes)
        feats = model.classifier_features(d.x_test)
        emb = model.embed(feats)
        stage_features[i] = emb
        correct = incremental_correct(
            emb @ protos_embedded[j].T, d.y_test, int(offsets[i]), int(offsets[i + 1]), cfg.setting
        )
        timings["eval"] += time.perf_counter() - t0
        return float(correct.float().mean())

    def after_stage(j: int) -> None:
        angles.append(
            angle_matrix([stage_features.get(i) if i <= j else None for i in range(n_tasks)], cfg.subspace_rank)
        )
        ntk_stage(j, cfg.tasks[j])
        if on_stage is not None:
            on_stage(j, acc_so_far())

    acc_box: dict = {}

    def acc_so_far() -> np.ndarray:
        return acc_box.get("acc", np.full((n_tasks, n_tasks), np.nan))

    def evaluate_and_record(i: int, j: int) -> float:
        a = evaluate(i, j)
        acc_box.setdefault("acc", np.full((n_tasks, n_tasks), np.nan))[i, j] = a
        return a

    status = "ok"
    try:
        ntk_stage(-1, "init")
        acc = continual_loop(n_tasks, train, evaluate_and_record, after_stage)
    except BaseException:
        status = "error"
        if log is not None and run_id is not None:
            log.finish(run_id, {"error": True}, status="error")
        raise
    cancelled = cancel is not None and cancel.is_set() and final_column(acc) < n_tasks - 1
    if progress:
        progress(
            "done" if not cancelled else "cancelled",
            total if not cancelled else max(0, final_column(acc) + 1) * cfg.steps,
            total,
        )
    result = ContinualResult(
        config=cfg, acc=acc, ntk=ntk_rows, angles=angles, history=pd.DataFrame(history),
        seconds=time.perf_counter() - t_start, cancelled=cancelled, timings=timings,
    )  # fmt: skip
    result.model = model
    if log is not None and run_id is not None:
        status = "cancelled" if cancelled else status
        log.finish(run_id, result.metrics(), status=status)
        result.run_id = run_id
    return result


def _start_log(run_log, source, cfg: ContinualConfig):
    if not run_log:
        return None, None
    try:
        from .runtime.runlog import RunLog
    except ImportError:  # the run log is optional
        return None, None
    log = RunLog() if run_log is True else run_log
    fp = source.fingerprint() if hasattr(source, "fingerprint") else None
    config = {**cfg.to_dict(), "model_set": getattr(source, "name", type(source).__name__)}
    return log, log.start("continual", config, model_set_fingerprint=fp, seed=cfg.seed)


def runs_table(log=None, limit: int = 200) -> pd.DataFrame:
    """Logged continual runs, one row each: id, label, setting, tasks, steps, seed, average
    accuracy and forgetting, seconds, status (newest first)."""
    import json

    from .runtime.runlog import RunLog

    df = (log or RunLog()).list(kind="continual", limit=limit)
    rows = []
    for r in df.itertuples():
        c = json.loads(r.config) if r.config else {}
        m = json.loads(r.metrics) if r.metrics else {}
        if "acc" not in m:
            continue
        cfg = ContinualConfig.from_dict(c)
        rows.append({"id": int(r.id), "label": cfg.label(), "setting": cfg.setting, "tasks": ",".join(cfg.tasks),
                     "steps": cfg.steps, "seed": cfg.seed, "avg_acc": m.get("avg_acc"),
                     "avg_forgetting": m.get("avg_forgetting"), "seconds": m.get("seconds"), "status": r.status})  # fmt: skip
    return pd.DataFrame(
        rows,
        columns=["id", "label", "setting", "tasks", "steps", "seed", "avg_acc", "avg_forgetting", "seconds", "status"],
    )


def load_logged(run_id: int, log=None) -> ContinualResult:
    from .runtime.runlog import RunLog

    r = (log or RunLog()).get(run_id)
    return ContinualResult.from_log(r["config"], r["metrics"], run_id=run_id)


# --------------------------------------------------------------------------- background job (the page)
class ContinualJob:
    """`run_continual` in a background thread: the page polls `stage`, `done`, `total` and
    `acc` (filled after each task) and sets `cancel` to stop it."""

    def __init__(self, source, cfg: ContinualConfig, **kw):
        self.cfg = cfg
        self.cancel = threading.Event()
        self.stage, self.done, self.total = "starting", 0, len(cfg.tasks) * cfg.steps
        self.acc = np.full((len(cfg.tasks),) * 2, np.nan)
        self.result: ContinualResult | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, args=(source, cfg), kwargs=kw, daemon=True, name="continual")
        self._thread.start()

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total

    def _on_stage(self, j: int, acc: np.ndarray) -> None:
        self.acc = acc.copy()

    def _run(self, source, cfg, **kw) -> None:
        try:
            self.result = run_continual(
                source, cfg, progress=self._progress, cancel=self.cancel, on_stage=self._on_stage, **kw
            )
        except BaseException as e:  # shown by the page
            self.error = f"{type(e).__name__}: {e}"

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


# --------------------------------------------------------------------------- comparison + CLI
VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "+expansion": ("expansion",),
    "+ortho (EMA + orthogonality)": ("ortho",),
    "+l2": ("l2",),
    "all terms": TERMS,
}


def compare(
    source,
    cfg: ContinualConfig,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Mapping[str, Sequence[str]] = VARIANTS,
    *,
    run_log=None,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every variant (a set of terms) x seed. Returns (per-run rows, summary with mean ± std
    of average accuracy and forgetting and the mean wall time per run)."""
    rows = []
    for name, terms in variants.items():
        for s in seeds:
            c = dataclasses.replace(cfg.with_terms(terms), seed=int(s))
            r = run_continual(source, c, run_log=run_log)
            rows.append({"variant": name, "seed": s, "avg_acc": r.average_accuracy(), "avg_forgetting": r.average_forgetting(),
                         "seconds": r.seconds, "run_id": r.run_id})  # fmt: skip
            if progress:
                progress(
                    f"{name} seed {s}: acc {rows[-1]['avg_acc']:.3f} forgetting {rows[-1]['avg_forgetting']:.3f} ({r.seconds:.0f} s)"
                )
    runs = pd.DataFrame(rows)
    g = runs.groupby("variant", sort=False)
    summary = pd.DataFrame({
        "avg_acc_mean": g["avg_acc"].mean(), "avg_acc_std": g["avg_acc"].std(ddof=0),
        "avg_forgetting_mean": g["avg_forgetting"].mean(), "avg_forgetting_std": g["avg_forgetting"].std(ddof=0),
        "seconds": g["seconds"].mean(), "seeds": g["seed"].count(),
    })  # fmt: skip
    return runs, summary


def markdown_table(summary: pd.DataFrame) -> str:
    lines = ["| variant | avg accuracy | avg forgetting | wall time / run |", "|---|---|---|---|"]
    for name, r in summary.iterrows():
        lines.append(
            f"| {name} | {r.avg_acc_mean:.3f} ± {r.avg_acc_std:.3f} | {r.avg_forgetting_mean:.3f} ± {r.avg_forgetting_std:.3f} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = ContinualConfig()
    p = argparse.ArgumentParser(
        prog="python -m core continual",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--zoo", default="demo", help="zoo kind whose pretrained visual encoder is the backbone (demo, micro)"
    )
    p.add_argument("--cache", default=None, help="zoo cache dir (default $MERGESCOPE_CACHE or ~/.cache/mergescope)")
    p.add_argument(
        "--base",
        default=None,
        help="any open_clip CLIP checkpoint whose visual tower is the backbone (instead of --zoo)",
    )
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated demo tasks, in training order")
    p.add_argument("--setting", choices=SETTINGS, default=d.setting, help="class- or task-incremental")
    p.add_argument("--terms", default=",".join(TERMS), help="comma-separated subset of expansion,ortho,l2 or 'none'")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per task")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--ortho-weight", type=float, default=d.ortho_weight)
    p.add_argument("--l2-weight", type=float, default=d.l2_weight)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--ntk-samples", type=int, default=d.ntk_samples)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument(
        "--compare", action="store_true", help="baseline, each term alone and all terms; prints a Markdown table"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-log", action="store_true", help="do not write the run log")
    return p


def _cli_source(args):
    """The backbone's source: a checkpoint (--base) or a built zoo (--zoo, --cache); None after an error message."""
    if args.base:
        from .checkpoints import load_state_dict
        from .models import build_model

        model = build_model(load_state_dict(args.base))
        model.name = args.base
        return model
    from .zoo import is_built, load_model_set, manifest

    try:
        complete = manifest(args.zoo, args.cache).get("complete") is True
    except (FileNotFoundError, ValueError):
        complete = False
    if not complete:
        hint = " --micro" if args.zoo == "micro" else ""
        print(f"the {args.zoo} zoo is not built; run `python -m core zoo build{hint}`", file=sys.stderr)
        return None
    if not is_built(args.zoo, args.cache):
        print(
            f"note: the {args.zoo} zoo in the cache was built with an older recipe; using it as it is", file=sys.stderr
        )
    return load_model_set(args.zoo, args.cache)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _set_threads(args.threads)
    source = _cli_source(args)
    if source is None:
        return 2
    terms = [] if args.terms.strip() in ("", "none") else [t.strip() for t in args.terms.split(",") if t.strip()]
    try:
        cfg = ContinualConfig(
            tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()), setting=args.setting, steps=args.steps,
            batch=args.batch, lr=args.lr, ortho_weight=args.ortho_weight, l2_weight=args.l2_weight,
            lora_rank=args.lora_rank, n_train=args.n_train, n_test=args.n_test, ntk_samples=args.ntk_samples,
        ).with_terms(terms)  # fmt: skip
        from .zoo import data as D

        for t in cfg.tasks:
            D.get_task(t)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    log = None if args.no_log else True
    where = args.base or f"the {args.zoo} zoo"
    print(
        f"continual on {where}: {', '.join(cfg.tasks)} ({cfg.setting}-incremental), {cfg.steps} steps/task, seeds {seeds}"
    )
    if args.compare:
        t0 = time.perf_counter()
        runs, summary = compare(source, cfg, seeds, run_log=log, progress=print)
        print()
        print(markdown_table(summary))
        print(f"\n{len(runs)} runs in {time.perf_counter() - t0:.0f} s")
        return 0
    for s in seeds:
        r = run_continual(source, dataclasses.replace(cfg, seed=s), run_log=log, progress=None)
        print(f"\n{cfg.label()}, seed {s}: average accuracy {r.average_accuracy():.3f}, average forgetting "
              f"{r.average_forgetting():.3f}, {r.seconds:.0f} s (train {r.timings['train']:.0f} s, eval "
              f"{r.timings['eval']:.0f} s, NTK {r.timings['ntk']:.0f} s)" + (f", run {r.run_id}" if r.run_id else ""))  # fmt: skip
        print(r.acc_frame().to_string(float_format=lambda v: f"{v:.3f}", na_rep="·"))
    return 0
