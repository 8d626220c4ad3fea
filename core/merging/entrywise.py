"""Merges that decide entry by entry: Model Breadcrumbs, MagMax, PCB-merging.

Breadcrumbs and MagMax walk the task vectors one key at a time; PCB needs per-task quantiles over
the whole flattened task vector and streams it chunk by chunk (core.merging.streaming) with exact
k-th value selection (core.merging.kselect) instead of sorting the concatenated model.
Every method is a MergedDirection whose global scale is `coefficients`.
"""

from __future__ import annotations

import torch

from . import streaming
from .direction import BlockL1, MergedDirection, global_scale, keywise_direction
from .kselect import kth_smallest
from .registry import Param, merge_method
from .streaming import FlatWriter, TaskVectors


# --------------------------------------------------------------------------- Model Breadcrumbs
def breadcrumbs_mask(tau: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """tau with, per row along the last dim (c entries), its int(c*gamma) largest |tau| zeroed, then only
    the int(c*density) largest |tau| of what is left kept. 0-d tensors are returned unchanged."""
    if tau.dim() == 0:
        return tau
    c = tau.shape[-1]
    out = tau
    k_remove = int(c * gamma)
    if k_remove > 0:
        idx = torch.topk(out.abs(), k_remove, dim=-1).indices
        out = out.scatter(-1, idx, 0.0)
    k_keep = int(c * density)
    keep = torch.zeros_like(out)
    if k_keep > 0:
        keep.scatter_(-1, torch.topk(out.abs(), k_keep, dim=-1).indices, 1.0)
    return keep * out


@merge_method(
    "breadcrumbs",
    params=(
        Param("density", "float", 0.0, 1.0, 0.01, help="share of each row kept (after removing the outliers)"),
        Param("gamma", "float", 0.0, 1.0, 0.01, help="share of each row's largest |tau| removed first"),
        Param("coefficients", "float", 0.0, 1.5, 0.05, help="global lambda"),
    ),
    reference="Davari & Belilovsky 2024 (Model Breadcrumbs); rezazzr/breadcrumbs src/task_vectors.py "
    "TaskVectorMiddleKeep (remove_first=True)",
    description="Per row: drop the largest |tau| outliers, keep the next largest, sum the masked task vectors.",
)
def breadcrumbs(tvs: TaskVectors, density: float = 0.2, gamma: float = 0.1, coefficients: float = 0.4):
    """Model Breadcrumbs, following rezazzr/breadcrumbs `TaskVectorMiddleKeep` (remove first).

    Per task vector and tensor, row by row along the last dim (a 1-D tensor is one row, a conv kernel's
    rows run along its last dim, 0-d tensors stay whole): zero the int(c*gamma) largest |tau|, then keep
    the int(c*density) largest of the rest; theta = theta_0 + lambda * sum_t masked tau_t (the official
    `sum(task_vectors).apply_to(scaling_coef=alpha)`). mergekit's breadcrumbs masks whole tensors
    instead (one quantile over all entries of a tensor); this follows the authors' code.
    """
    for name, v in (("density", density), ("gamma", gamma)):
        if not 0 <= float(v) <= 1:
            raise ValueError(f"breadcrumbs: {name} must be in [0, 1], got {v}")
    scale = global_scale(coefficients, "breadcrumbs")

    def merge_key(key, ts, tot):
        acc = breadcrumbs_mask(ts[0], float(density), float(gamma))
        for t in ts[1:]:
            acc = acc + breadcrumbs_mask(t, float(density), float(gamma))
        return acc

    return keywise_direction(tvs, merge_key, scale, {"density": density, "gamma": gamma})


# --------------------------------------------------------------------------- MagMax
@merge_method(
    "magmax",
    params=(Param("coefficients", "float", 0.0, 1.5, 0.05, help="global lambda"),),
    reference="Marczak et al. 2024 (MagMax); danielm1405/magmax src/merging/task_vectors.py merge_max_abs",
    description="Each entry takes the task vector with the largest magnitude there.",
)
def magmax(tvs: TaskVectors, coefficients: float = 0.5) -> MergedDirection:
    """MagMax, following danielm1405/magmax `merge_max_abs`: per entry, the tau_t of largest |tau_t|;
    a tie goes to the later task (the official `where(|current| >= |best|, current, best)`), over every
    floating-point key; theta = theta_0 + lambda * tau_max (official lambda 0.5)."""
    scale = global_scale(coefficients, "magmax")

    def merge_key(key, ts, tot):
        best = ts[0]
        for t in ts[1:]:
            best = torch.where(t.abs() >= best.abs(), t, best)
        return best

    return keywise_direction(tvs, merge_key, scale)


# --------------------------------------------------------------------------- PCB-merging
PCB_CLAMP = 0.0001  # |tau| clamped to its 0.01% / 99.99% values (official PCB_merge)


def min_max(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(x - lo) / (hi - lo) per row; a row with hi == lo (where the official code divides 0 by 0) gives 0."""
    span = hi - lo
    return torch.where(span > 0, (x - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(x))


@merge_method(
    "pcb",
    params=(
        Param("pcb_ratio", "float", 0.01, 1.0, 0.01, help="share of entries kept per task (by balancing score)"),
        Param("coefficients", "float", 0.0, 2.0, 0.05, help="global lambda"),
    ),
    reference="Du et al. 2024 (PCB-merging); duguodong7/pcb-merging pcb-merging.py PCB_merge",
    description="Intra- and inter-task balancing scores; drop low scores per task, score-weighted average.",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 21)),
)
def pcb(tvs: TaskVectors, pcb_ratio: float = 0.1, coefficients: float = 1.2) -> MergedDirection:
    """PCB-merging, following duguodong7/pcb-merging `PCB_merge` on the whole flattened task vectors
    (T tasks, d entries, per task t):

      a_t = clamp(|tau_t|, q_lo, q_hi), q the sorted |tau_t| at int(d*0.0001) and int(d*(1-0.0001)-1)
      intra_t = exp(T * ((a_t - q_lo) / (q_hi - q_lo))^2)
      inter_t = tanh(tau_t * sum_s tau_s)                     (raw tau, official `act`)
      b_t = intra_t * inter_t;  c = the sorted b_t at int(d*(1-pcb_ratio))
      scale_t = (max(b_t, c) - c) / (max b_t - c)             (entries at or below c get 0)
      tau = sum_t sign(tau_t) a_t scale_t / max(sum_t scale_t, 1e-12)

    theta = theta_0 + lambda * tau (the official per-task lams, uniform; their scripts use 1.2).
    The quantiles are exact k-th values found by a streamed radix select (five streaming passes).
    """
    r = float(pcb_ratio)
    if not 0 < r <= 1:
        raise ValueError(f"pcb: pcb_ratio must be in (0, 1], got {pcb_ratio}")
    scale = global_scale(coefficients, "pcb")
    n, d = len(tvs), tvs.numel()
    if d == 0:
        return MergedDirection({}, scale, 0.0, n)
    lo_i, hi_i = int(d * PCB_CLAMP), int(d * (1 - PCB_CLAMP) - 1)
    size = max(1, streaming.chunk_columns(n) // 4)  # PCB holds a dozen [T, width] temporaries per chunk
    q = kth_smallest(lambda: (ch.tvs.abs() for ch in tvs.chunks(size=size)), [[lo_i + 1, hi_i + 1]] * n)
    lo = torch.tensor([v[0] for v in q], dtype=tvs.dtype, device=tvs.device).unsqueeze(1)
    hi = torch.tensor([v[1] for v in q], dtype=tvs.dtype, device=tvs.device).unsqueeze(1)

    def balance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clamped tau, balancing score b) of one [T, w] chunk."""
        a = torch.clamp(x.abs(), lo, hi)
        intra = torch.exp(n * min_max(a, lo, hi) ** 2)
        inter = torch.tanh(x * x.sum(dim=0))
        return torch.sign(x) * a, intra * inter

    top = torch.full((n,), -float("inf"), dtype=tvs.dtype, device=tvs.device)

    def scores():
        for ch in tvs.chunks(size=size):
            b = balance(ch.tvs)[1]
            torch.maximum(top, b.max(dim=1).values, out=top)
            yield b

    c_i = int(d * (1 - r))
    cut = torch.tensor(
        [v[0] for v in kth_smallest(scores, [[c_i + 1]] * n)], dtype=tvs.dtype, device=tvs.device
    ).unsqueeze(1)
    w, summed, merged, kept = FlatWriter(tvs.shapes, tvs.dtype), BlockL1(), BlockL1(), 0
    for ch in tvs.chunks(size=size):
        clamped, b = balance(ch.tvs)
        sc = min_max(torch.maximum(b, cut), cut, top.unsqueeze(1))
        kept += int((sc > 0).sum())
        out = (clamped * sc).sum(dim=0) / torch.clamp(sc.sum(dim=0), min=1e-12)
        summed.add(ch.tvs.sum(dim=0))
        merged.add(out)
        w.write(ch, out)
    info = {"pcb_ratio": r, "kept_fraction": kept / (n * d)}
    return MergedDirection(w.out, scale, summed.total(), n, info, merged_l1_value=merged.total())
