"""Diagnostics of a continual run: principal angles between task feature subspaces and the empirical NTK.

The empirical NTK K = J Jᵀ of the current PEFT parameters on a fixed probe set (test images of every
task, outputs projected on fixed random orthonormal directions of the current feature), with
intra- vs inter-task block norms and its drift across tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn


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
