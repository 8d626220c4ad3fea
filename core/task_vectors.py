"""Task vectors (tau_t = theta_t - theta_0) and their per-layer statistics.

Conventions (mlfoundations/task_vectors): a task vector covers every
floating-point entry the fine-tuned checkpoint shares with the base; integer
and boolean buffers are skipped. Statistics are returned as pandas tables, one
row per parameter or per block, so pages and the CLI draw/export the same data.

Per-block statistics are per tower (core.layers): a full CLIP task vector holds the
image and the text tower, whose blocks share indices but not depth. Every table
takes `tower` ("visual" or "text"; None = the default, the image tower or a model's
only tower) and covers that tower's parameters only; parameters of neither tower
(logit_scale) are in no table.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from .errors import NonFiniteError
from .layers import layer_index, param_kind, select_tower

StateDict = Mapping[str, torch.Tensor]


def is_float(t: torch.Tensor) -> bool:
    return torch.is_floating_point(t)


def check_finite(t: torch.Tensor, source: str, key: str, allow_nonfinite: bool = False) -> None:
    """Refuse NaN/Inf in a floating tensor read from checkpoint `source` (a task name or "base").

    One sum per tensor: a NaN or an infinity makes the sum non-finite, so a finite sum proves every
    entry finite (no full-size mask: 10x cheaper than `isfinite(t).all()`, which was most of a task
    arithmetic merge's CPU time). Only a non-finite sum (a bad entry, or finite values whose sum
    overflows) runs the exact check; the bad entries are counted only on failure. With
    allow_nonfinite=True the merge goes on and a warning names the tensor instead.
    """
    if not torch.is_floating_point(t) or t.numel() == 0 or bool(torch.isfinite(t.sum())):
        return
    if bool(torch.isfinite(t).all()):  # finite values whose sum overflowed
        return
    n_bad = int((~torch.isfinite(t)).sum())
    if not allow_nonfinite:
        raise NonFiniteError(source, key, n_bad, t.numel())
    warnings.warn(
        f"{source}: tensor {key!r} holds {n_bad} non-finite value(s) (NaN/Inf) out of {t.numel()}; "
        "merging anyway (allow_nonfinite=True), the result carries them",
        RuntimeWarning,
        stacklevel=3,
    )


def task_vector(
    base_sd: StateDict, ft_sd: StateDict, *, name: str = "fine-tuned", allow_nonfinite: bool = False
) -> dict[str, torch.Tensor]:
    """tau = ft - base over the floating-point keys of `ft_sd` (keys sorted by name).

    Keys of the fine-tuned checkpoint missing from the base raise KeyError with
    the key name; shape mismatches raise ValueError; NaN/Inf in either input raise
    `core.errors.NonFiniteError` naming the checkpoint ("base" or `name`) and the tensor
    (allow_nonfinite=True: a warning instead).
    Computed in the checkpoint's dtype, upcast to float32 when it is half precision.
    """
    out: dict[str, torch.Tensor] = {}
    for k in sorted(ft_sd.keys()):
        ft = ft_sd[k]
        if not is_float(ft):
            continue
        if k not in base_sd:
            raise KeyError(f"fine-tuned key {k!r} is not in the base checkpoint")
        b = base_sd[k]
        if b.shape != ft.shape:
            raise ValueError(f"shape mismatch for {k!r}: base {tuple(b.shape)} vs fine-tuned {tuple(ft.shape)}")
        check_finite(b, "base", k, allow_nonfinite)
        check_finite(ft, name, k, allow_nonfinite)
        out[k] = _f32(ft) - _f32(b)
    return out


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def apply_task_vector(base_sd: StateDict, tv: StateDict, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """theta = theta_0 + scale * tau on tau's keys; other base entries pass through unchanged."""
    out = dict(base_sd)
    for k, v in tv.items():
        b = base_sd[k]
        out[k] = (_f32(b) + scale * v).to(b.dtype)
    return out


def _flat(tv: StateDict, keys: list[str]) -> torch.Tensor:
    return torch.cat([tv[k].reshape(-1).float() for k in keys]) if keys else torch.zeros(0)


def parameter_table(
    base_sd: StateDict, task_vectors: Mapping[str, StateDict], near_zero: float = 1e-8, *, tower: str | None = None
) -> pd.DataFrame:
    """One row per (task, parameter of `tower`): L2 norm of tau, norm relative to the base
    weights, fraction of entries with |tau| <= near_zero, block index (within the tower) and kind."""
    rows = []
    for task, tv in task_vectors.items():
        for k in select_tower(tv, tower):
            v = tv[k].float()
            n = float(torch.linalg.vector_norm(v))
            bn = float(torch.linalg.vector_norm(base_sd[k].float()))
            rows.append(
                {
                    "task": task,
                    "name": k,
                    "layer": layer_index(k),
                    "kind": param_kind(k),
                    "numel": v.numel(),
                    "norm": n,
                    "base_norm": bn,
                    "relative_norm": n / bn if bn > 0 else np.nan,
                    "near_zero_fraction": float((v.abs() <= near_zero).float().mean()) if v.numel() else np.nan,
                }
            )
    return pd.DataFrame(rows)


def _group_label(layer) -> str:
    return "outside" if layer is None or (isinstance(layer, float) and np.isnan(layer)) else f"block {int(layer)}"


def block_table(
    base_sd: StateDict,
    task_vectors: Mapping[str, StateDict],
    *,
    tower: str | None = None,
    params: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (task, block of `tower`): norms aggregated over the block's parameters
    (sqrt of the summed squares), relative to the base block's norm.
    The tower's parameters outside the blocks form one group with layer = -1 ("outside").
    `params`: the `parameter_table` of the same arguments when the caller has it already (not recomputed)."""
    p = parameter_table(base_sd, task_vectors, tower=tower) if params is None else params
    if p.empty:
        return p
    p = p.assign(layer=p["layer"].fillna(-1).astype(int), sq=p["norm"] ** 2, bsq=p["base_norm"] ** 2)
    g = p.groupby(["task", "layer"], as_index=False).agg(sq=("sq", "sum"), bsq=("bsq", "sum"), numel=("numel", "sum"))
    g["norm"] = np.sqrt(g["sq"])
    g["relative_norm"] = g["norm"] / np.sqrt(g["bsq"]).replace(0, np.nan)
    return g.drop(columns=["sq", "bsq"])


def kind_table(
    base_sd: StateDict,
    task_vectors: Mapping[str, StateDict],
    *,
    tower: str | None = None,
    params: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (task, block of `tower`, kind): norm per parameter type (attention, mlp, norm, embedding).
    `params`: the `parameter_table` of the same arguments when the caller has it already (not recomputed)."""
    p = parameter_table(base_sd, task_vectors, tower=tower) if params is None else params
    if p.empty:
        return p
    p = p.assign(layer=p["layer"].fillna(-1).astype(int), sq=p["norm"] ** 2, bsq=p["base_norm"] ** 2)
    g = p.groupby(["task", "layer", "kind"], as_index=False).agg(sq=("sq", "sum"), bsq=("bsq", "sum"))
    g["norm"] = np.sqrt(g["sq"])
    g["relative_norm"] = g["norm"] / np.sqrt(g["bsq"]).replace(0, np.nan)
    return g.drop(columns=["sq", "bsq"])


def _keys_for(tv: StateDict, layer: int | None | str, tower: str | None) -> list[str]:
    keys = sorted(select_tower(tv, tower))
    if layer == "all":
        return keys
    return [k for k in keys if layer_index(k) == layer]


def cosine_matrix(
    task_vectors: Mapping[str, StateDict], layer: int | None | str = "all", *, tower: str | None = None
) -> pd.DataFrame:
    """Task x task cosine similarity of the flattened task vectors over one tower (all its keys,
    or one of its blocks; layer=None selects its parameters outside the blocks)."""
    names = list(task_vectors)
    if not names:
        return pd.DataFrame()
    keys = _keys_for(task_vectors[names[0]], layer, tower)
    # Gram matrix of the tasks accumulated key by key in float64: only one tensor per task is held at a time
    # (a lazily read 20-task ViT-L/14 set would not fit in memory flattened).
    gram = torch.zeros(len(names), len(names), dtype=torch.float64)
    for k in keys:
        f = torch.stack([task_vectors[t][k].reshape(-1).double() for t in names])
        gram += f @ f.T
        del f
    norms = gram.diagonal().sqrt().clamp_min(1e-30)
    cos = (gram / (norms[:, None] * norms[None, :])).numpy()
    return pd.DataFrame(cos, index=names, columns=names)


def sign_conflict_table(
    task_vectors: Mapping[str, StateDict], eps: float = 0.0, *, tower: str | None = None
) -> pd.DataFrame:
    """Per block of `tower`: fraction of entries where the tasks disagree in sign.

    An entry is in conflict when at least one task has tau > eps and another
    tau < -eps (entries that every task leaves at |tau| <= eps do not count as
    conflicts). Also the pairwise mean over task pairs of sign disagreement.
    """
    names = list(task_vectors)
    if not names:
        return pd.DataFrame()
    keys = sorted(select_tower(task_vectors[names[0]], tower))
    layers = sorted({layer_index(k) for k in keys}, key=lambda x: -1 if x is None else x)
    rows = []
    for layer in layers:
        ks = [k for k in keys if layer_index(k) == layer]
        flats = torch.stack([_flat(task_vectors[t], ks) for t in names])
        pos = (flats > eps).any(0)
        neg = (flats < -eps).any(0)
        conflict = (pos & neg).float().mean().item()
        pair = []
        s = torch.sign(flats) * (flats.abs() > eps)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                pair.append(((s[i] * s[j]) < 0).float().mean().item())
        rows.append(
            {
                "layer": -1 if layer is None else layer,
                "numel": flats.shape[1],
                "conflict_fraction": conflict,
                "pairwise_conflict": float(np.mean(pair)) if pair else 0.0,
            }
        )
    return pd.DataFrame(rows)
