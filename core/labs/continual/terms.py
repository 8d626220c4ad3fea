"""NTK-CL's terms against forgetting, beyond the expansion of `peft`: the EMA of past-task PEFT modules,
the orthogonality of current features to the past prototypes, and L2 toward the previous task's weights.

Orthogonality loss here: the mean squared norm of the projection of the normalised current feature
on the span of the past prototypes (zero exactly when orthogonal). The official code
(Programmergg/NTK-CL) sums the signed residual after a truncated-SVD projection and adds a
contrastive (mutual-information) loss against sampled past prototypes; neither is used here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .model import ContinualModel


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


class TermsHook:
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
