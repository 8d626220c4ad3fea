"""Weight Scope Alignment as a `core.train` hook.

WSA (Weight Scope Alignment): extra loss = weight × Σℓ KL(N(μℓ, σℓ²) ‖ N(μ̃ℓ, σ̃ℓ²)) over the target's
weight matrices, pulling each layer's weight mean and spread toward a target scope (default: the
pretrained visual tower's, `visual_target_scopes`). The scopes and the KL are `core.scopes`'.
The learning-rate rules (TempBalance, Model Balancing) are `core.tempbalance.LayerBalancer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from core.scopes import scope_dict, wsa_regularizer


class ScopeAlignment:
    """A `core.train` hook: WSA. extra_loss = weight × Σℓ KL(scope_ℓ ‖ target_ℓ) over the target's layers;
    every `log_every` steps it also records that sum as ``scope_kl`` (without the weight), weight 0 included."""

    def __init__(
        self,
        named_params: Sequence[tuple[str, torch.Tensor]],
        target: Mapping[str, tuple[float, float]],
        weight: float,
        log_every: int = 5,
    ):
        self.params = [(n, p) for n, p in named_params if n in target]
        self.target = dict(target)
        self.weight = float(weight)
        self.log_every = max(1, log_every)

    def distance(self) -> float:
        with torch.no_grad():
            return float(wsa_regularizer(self.params, self.target))

    def extra_loss(self, step: int) -> torch.Tensor | None:
        return self.weight * wsa_regularizer(self.params, self.target) if self.weight > 0 else None

    def before_step(self, step: int, optimizer) -> dict | None:
        return {"scope_kl": self.distance()} if step % self.log_every == 0 else None


def visual_target_scopes(ms) -> dict[str, tuple[float, float]]:
    """WSA's default target: the scopes of the pretrained visual tower's weight matrices (ndim >= 2)."""
    return scope_dict({k: v for k, v in ms.base().items() if k.startswith("visual.")})


def scope_distance(sd: Mapping[str, torch.Tensor], target: Mapping[str, tuple[float, float]]) -> float:
    """Σℓ KL(scope ‖ target) of a state dict (no gradient)."""
    with torch.no_grad():
        return float(wsa_regularizer(sd, target))
