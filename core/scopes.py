"""Weight scopes and Weight Scope Alignment (WSA; Xu et al. 2024).

The *scope* of a layer is the (mean, standard deviation) of its weights. WSA adds to the task
loss a pull of every layer's scope toward a target scope (the pretrained model's, or a fused
one), measured as the KL divergence between the two Gaussians N(μ, σ²) and N(μ̃, σ̃²). Models
fine-tuned this way are meant to sit closer together and merge better; `interpolate` and
`loss_barrier` measure that on the straight path between two models.

Conventions: σ is the population standard deviation (divide by n, not n - 1), so per-block
aggregates and fused scopes are exact mixtures of their parts. No official code exists; the
formulas follow the paper (notes: docs/methods/finetune.md, "Weight Scope Alignment").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from core.layers import layer_index, param_kind, select_tower

Scope = tuple[float, float]  # (mu, sigma)


# ------------------------------------------------------------------ measuring scopes


def _moments(t: torch.Tensor) -> tuple[int, float, float]:
    """(numel, mean, population variance) in float64."""
    x = t.detach().reshape(-1).to(torch.float64)
    n = x.numel()
    if n == 0:
        return 0, float("nan"), float("nan")
    mean = x.mean()
    return n, float(mean), float(((x - mean) ** 2).mean())


def weight_scopes(
    state_dict: Mapping[str, torch.Tensor], *, min_ndim: int = 2, tower: str | None = None
) -> pd.DataFrame:
    """Scope of every floating-point tensor of one tower, plus one aggregate row per residual block.

    Tensor rows (level "tensor"): name, layer (`core.layers.layer_index`, <NA> outside the
    blocks), kind (`core.layers.param_kind`: attention/mlp/norm/embedding/other), ndim, mean,
    std (population), numel. Block rows (level "block", name "block {i}", kind "block") pool all
    tensors of the block with at least `min_ndim` dimensions (the weight matrices, by default)
    into the scope of their concatenated entries. `tower`: "visual" or "text" (None: the image
    tower, or a model's only tower; `core.layers.select_tower`): blocks are numbered per tower.
    """
    rows = []
    blocks: dict[int, list[tuple[int, float, float]]] = {}
    for name in select_tower(state_dict, tower):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        n, mean, var = _moments(t)
        layer = layer_index(name)
        rows.append(
            {
                "level": "tensor",
                "name": name,
                "layer": layer,
                "kind": param_kind(name),
                "ndim": t.ndim,
                "mean": mean,
                "std": math.sqrt(var) if n else float("nan"),
                "numel": n,
            }
        )
        if layer is not None and t.ndim >= min_ndim and n:
            blocks.setdefault(layer, []).append((n, mean, var))
    for layer in sorted(blocks):
        parts = np.array(blocks[layer], dtype=np.float64)
        n, means, variances = parts[:, 0], parts[:, 1], parts[:, 2]
        total = n.sum()
        mean = float((n * means).sum() / total)
        var = float((n * (variances + (means - mean) ** 2)).sum() / total)  # law of total variance
        rows.append(
            {
                "level": "block",
                "name": f"block {layer}",
                "layer": layer,
                "kind": "block",
                "ndim": min_ndim,
                "mean": mean,
                "std": math.sqrt(var),
                "numel": int(total),
            }
        )
    table = pd.DataFrame(rows, columns=["level", "name", "layer", "kind", "ndim", "mean", "std", "numel"])
    table["layer"] = table["layer"].astype("Int64")
    return table


def scope_dict(
    named_tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]], *, min_ndim: int = 2
) -> dict[str, Scope]:
    """{name: (mu, sigma)} for every floating tensor with at least `min_ndim` dims: a WSA target."""
    items = named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors
    out = {}
    for name, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.ndim >= min_ndim and t.numel():
            _, mean, var = _moments(t)
            out[name] = (mean, math.sqrt(var))
    return out


# ------------------------------------------------------------------ the regularizer


def _tensor(v) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(v, dtype=torch.get_default_dtype())


def scope_kl(mu, sigma, mu_t, sigma_t) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(μ̃, σ̃²)) = log(σ̃/σ) + (σ² + (μ - μ̃)²) / (2σ̃²) - ½, differentiable.

    Arguments are tensors or floats. Zero exactly when the scopes agree; the gradient moves σ
    toward σ̃ and μ toward μ̃.
    """
    mu, sigma, mu_t, sigma_t = (_tensor(v) for v in (mu, sigma, mu_t, sigma_t))
    return torch.log(sigma_t / sigma) + (sigma**2 + (mu - mu_t) ** 2) / (2 * sigma_t**2) - 0.5


def wsa_regularizer(
    named_params: Iterable[tuple[str, torch.Tensor]] | Mapping[str, torch.Tensor],
    target_scopes: Mapping[str, Scope],
    *,
    min_ndim: int = 2,
    strict: bool = False,
) -> torch.Tensor:
    """Σ over layers of `scope_kl(μ_ℓ, σ_ℓ, μ̃_ℓ, σ̃_ℓ)`: the WSA term to add, times a weight, to the loss.

    `named_params` is e.g. `model.named_parameters()`; each parameter with at least `min_ndim`
    dimensions (weight matrices and conv kernels by default) and an entry in `target_scopes`
    contributes, with its live mean and population std, so gradients flow into the weights.
    With `strict`, a target naming no such parameter raises. Returns a 0-dim tensor (0 if none).
    """
    items = named_params.items() if isinstance(named_params, Mapping) else named_params
    terms = []
    seen = set()
    for name, p in items:
        if p.ndim < min_ndim or name not in target_scopes:
            continue
        mu_t, sigma_t = target_scopes[name]
        flat = p.reshape(-1)
        mu = flat.mean()
        sigma = flat.std(correction=0)
        target = torch.tensor([mu_t, sigma_t], dtype=p.dtype, device=p.device)
        terms.append(scope_kl(mu, sigma, target[0], target[1]))
        seen.add(name)
    if strict:
        missing = sorted(set(target_scopes) - seen)
        if missing:
            raise KeyError(
                f"target scopes name {len(missing)} parameters not found with >= {min_ndim} dims, e.g. {missing[:3]}"
            )
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def scope_fusion(scopes: Sequence[Mapping[str, Scope]]) -> dict[str, Scope]:
    """Fuse several models' scopes into the next WSA target, layer by layer.

    μ̃ = mean of the μ; σ̃ = sqrt(mean(σ²) + mean(μ²) - μ̃²), the standard deviation of the
    equal-weight mixture of the models' weight distributions (it keeps both the spread within
    each model and the spread of their means, so fusing identical scopes returns them unchanged
    and fusing two offset models widens the target instead of shrinking it). Every scope dict
    must name the same layers.
    """
    if not scopes:
        raise ValueError("scope_fusion needs at least one scope dict")
    names = list(scopes[0])
    for i, s in enumerate(scopes[1:], start=1):
        if set(s) != set(names):
            diff = sorted(set(s) ^ set(names))
            raise KeyError(f"scope dict {i} does not name the same layers as scope dict 0 (e.g. {diff[:3]})")
    fused = {}
    for name in names:
        mus = np.array([s[name][0] for s in scopes], dtype=np.float64)
        sigmas = np.array([s[name][1] for s in scopes], dtype=np.float64)
        mu = float(mus.mean())
        var = float(np.mean(sigmas**2) + np.mean(mus**2) - mu**2)
        fused[name] = (mu, math.sqrt(max(var, 0.0)))
    return fused


# -------------------------------------------------------------- interpolation path


def interpolate(
    sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """(1 - t)·θ_a + t·θ_b over floating-point entries; other entries (integer buffers) are taken from `sd_a`.

    t = 0 returns θ_a's values and t = 1 θ_b's exactly (torch.lerp). Both state dicts must have the
    same keys and shapes.
    """
    if set(sd_a) != set(sd_b):
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise KeyError(f"state dicts differ in keys, e.g. {diff[:3]}; interpolate needs the same architecture")
    out = {}
    for name, a in sd_a.items():
        b = sd_b[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.is_floating_point():
            out[name] = torch.lerp(a, b.to(a.dtype), float(t))
        else:
            out[name] = a.clone()
    return out


def loss_barrier(
    loss_fn: Callable[[dict[str, torch.Tensor]], float],
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    *,
    num_points: int = 11,
) -> dict:
    """Loss barrier on the straight path θ(t) = (1 - t)θ_a + tθ_b, t on an even grid of `num_points`.

    barrier = max_t [L(θ(t)) - ((1 - t)L(θ_a) + tL(θ_b))], the height of the path's loss above the
    chord between its ends (0 for a convex path, > 0 when the models sit in different basins).
    Returns {"t": [...], "loss": [...], "barrier": float, "t_max": t at the barrier}.
    """
    if num_points < 2:
        raise ValueError("loss_barrier needs num_points >= 2 (both ends)")
    ts = np.linspace(0.0, 1.0, num_points)
    losses = np.array([float(loss_fn(interpolate(sd_a, sd_b, t))) for t in ts])
    excess = losses - ((1 - ts) * losses[0] + ts * losses[-1])
    i = int(np.argmax(excess))
    return {"t": ts.tolist(), "loss": losses.tolist(), "barrier": float(excess[i]), "t_max": float(ts[i])}
