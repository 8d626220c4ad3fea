"""The continual model: frozen backbone + current PEFT set (+ EMA set, fusion), the class prototypes,
and the training head.

The classifier is a prototype cosine classifier: after each task the means of its classes' features
become their prototypes and old prototypes are never updated. Test logits add the cosine per
section, weighted `ema_weight` (past) and `current_weight` (current), as the official
`forward_reweight` (gamma 0.3, alpha 0.1). Training head: a cosine classifier over the current
task's classes (learnable weights and scale, as the official proxy_fc).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ContinualConfig
from .peft import Fusion, PEFTBackbone, PEFTSet
from .terms import prototype_basis


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
