"""The "merge spectra" view: what a merge does to the singular values and subspaces of each matrix.

Pure functions over task vectors (dicts name -> {parameter: tau}, e.g. `ModelSet.task_vectors()`) and
an optional merged direction; each returns a pandas DataFrame (one row per value, CSV-exportable):

    singular_values_table   per matrix key: the singular values of every task's tau and of the merged tau
    interference_table      per matrix key: ||U_a^T U_b|| between tasks' top-k left (and right) singular
                            subspaces, the interference TSV-M removes (Gargiulo et al. 2025)
    interference_matrix     one key's (or one block's) tasks x tasks overlap
    interference_profile    mean / max overlap between different tasks, block by block (core.layers)
    rank_table              per task and matrix: effective rank and the energy kept at a TSV sv_reduction

Matrices are the tensors TSV-M decomposes (core.merging.lowrank.is_matrix). SVDs run in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from .layers import layer_index
from .merging.lowrank import SVD_DTYPE, is_matrix, svd, svdvals, tsv_rank
from .runtime.devices import resolve_device

TaskVectorSet = Mapping[str, Mapping[str, torch.Tensor]]


def matrix_keys(task_vectors: TaskVectorSet) -> list[str]:
    """The keys every task shares that TSV-M treats as matrices, in name order."""
    if not task_vectors:
        raise ValueError("no task vectors given")
    first = next(iter(task_vectors.values()))
    return sorted(k for k, v in first.items() if is_matrix(k, v.shape))


def _matrix(task_vectors: TaskVectorSet, task: str, key: str) -> torch.Tensor:
    tv = task_vectors[task]
    if key not in tv:
        raise KeyError(f"task {task!r} has no parameter {key!r}")
    v = tv[key]
    if not is_matrix(key, v.shape):
        raise ValueError(f"{key!r} is not a matrix (shape {tuple(v.shape)}); spectra need a 2-D tensor")
    return v.to(resolve_device("auto"), SVD_DTYPE)


def _layer(key: str) -> int:
    li = layer_index(key)
    return -1 if li is None else li


def singular_values_table(
    task_vectors: TaskVectorSet, key: str, merged: Mapping[str, torch.Tensor] | None = None, merged_scale: float = 1.0
) -> pd.DataFrame:
    """Columns key, layer, source (task name or "merged"), index (1 = largest), singular_value,
    energy (sigma_i^2 / sum sigma^2). merged: a merged direction's vector (times merged_scale)."""
    sources = [(t, _matrix(task_vectors, t, key)) for t in task_vectors]
    if merged is not None:
        if key not in merged:
            raise KeyError(f"the merged direction has no parameter {key!r}")
        sources.append(("merged", merged[key].to(resolve_device("auto"), SVD_DTYPE) * float(merged_scale)))
    rows = []
    for name, m in sources:
        s = svdvals(m).cpu().numpy()
        total = float((s**2).sum())
        for i, v in enumerate(s, start=1):
            rows.append(
                {
                    "key": key,
                    "layer": _layer(key),
                    "source": name,
                    "index": i,
                    "singular_value": float(v),
                    "energy": float(v**2 / total) if total > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def _top_subspaces(m: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    u, _, vh = svd(m)
    return u[:, :k], vh[:k, :].T


def interference_table(
    task_vectors: TaskVectorSet, sv_reduction: float | None = None, keys: Iterable[str] | None = None
) -> pd.DataFrame:
    """One row per (matrix key, task a, task b): k = int(min(m, n) * sv_reduction) (None: 1/T, TSV-M's
    default), overlap_u = ||U_a^T U_b||_F / sqrt(k) (1: the same top-k left subspace, 0: orthogonal),
    spectral_u = ||U_a^T U_b||_2 (cosine of the smallest principal angle), and overlap_v / spectral_v for
    the right singular vectors. The diagonal (a = b) is 1."""
    tasks = list(task_vectors)
    frac = 1 / len(tasks) if sv_reduction is None else float(sv_reduction)
    if not 0 < frac <= 1:
        raise ValueError(f"sv_reduction must be in (0, 1] (or None for 1/T), got {sv_reduction}")
    rows = []
    for key in matrix_keys(task_vectors) if keys is None else list(keys):
        mats = [_matrix(task_vectors, t, key) for t in tasks]
        k = tsv_rank(mats[0].shape, frac)
        if k == 0:
            continue
        subs = [_top_subspaces(m, k) for m in mats]
        for a, (ua, va) in zip(tasks, subs):
            for b, (ub, vb) in zip(tasks, subs):
                cu, cv = ua.T @ ub, va.T @ vb
                rows.append(
                    {
                        "key": key,
                        "layer": _layer(key),
                        "task_a": a,
                        "task_b": b,
                        "k": k,
                        "overlap_u": float(torch.linalg.matrix_norm(cu)) / k**0.5,
                        "spectral_u": float(torch.linalg.matrix_norm(cu, ord=2)),
                        "overlap_v": float(torch.linalg.matrix_norm(cv)) / k**0.5,
                        "spectral_v": float(torch.linalg.matrix_norm(cv, ord=2)),
                    }
                )
    return pd.DataFrame(rows)


def interference_matrix(
    table: pd.DataFrame, *, key: str | None = None, layer: int | None = None, value: str = "overlap_u"
) -> pd.DataFrame:
    """tasks x tasks `value` from an interference_table, for one key or averaged over one block's keys."""
    if (key is None) == (layer is None):
        raise ValueError("give exactly one of key= or layer=")
    if value not in ("overlap_u", "spectral_u", "overlap_v", "spectral_v"):
        raise ValueError(f"value must be overlap_u, spectral_u, overlap_v or spectral_v, got {value!r}")
    sel = table[table["key"] == key] if key is not None else table[table["layer"] == layer]
    if sel.empty:
        raise KeyError(f"no interference rows for {'key ' + repr(key) if key is not None else f'layer {layer}'}")
    order = list(dict.fromkeys(sel["task_a"]))
    m = sel.pivot_table(index="task_a", columns="task_b", values=value, aggfunc="mean")
    return m.loc[order, order]


def interference_profile(table: pd.DataFrame, value: str = "overlap_u") -> pd.DataFrame:
    """Per block (layer -1: outside the blocks): mean and max of `value` over pairs of different tasks
    and the block's matrices, and the number of matrices. Sorted by depth."""
    off = table[table["task_a"] != table["task_b"]]
    if off.empty:
        return pd.DataFrame(columns=["layer", "mean", "max", "matrices"])
    g = off.groupby("layer")
    out = pd.DataFrame({"mean": g[value].mean(), "max": g[value].max(), "matrices": g["key"].nunique()})
    return out.reset_index().sort_values("layer", ignore_index=True)


def effective_rank(s: torch.Tensor) -> float:
    """exp of the entropy of the normalized singular values (Roy & Vetterli 2007); 0 for a zero matrix."""
    total = float(s.sum())
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def rank_table(task_vectors: TaskVectorSet, sv_reduction: float | None = None) -> pd.DataFrame:
    """One row per (task, matrix key): rows, cols, k = int(min(m, n) * sv_reduction) (None: 1/T),
    effective_rank, energy_kept = sum of the top-k sigma^2 / sum of all sigma^2 (what TSV-M keeps)."""
    tasks = list(task_vectors)
    frac = 1 / len(tasks) if sv_reduction is None else float(sv_reduction)
    if not 0 < frac <= 1:
        raise ValueError(f"sv_reduction must be in (0, 1] (or None for 1/T), got {sv_reduction}")
    rows = []
    for key in matrix_keys(task_vectors):
        for t in tasks:
            m = _matrix(task_vectors, t, key)
            s = svdvals(m).cpu()
            k = tsv_rank(m.shape, frac)
            e = s**2
            total = float(e.sum())
            rows.append(
                {
                    "task": t,
                    "key": key,
                    "layer": _layer(key),
                    "rows": m.shape[0],
                    "cols": m.shape[1],
                    "k": k,
                    "effective_rank": effective_rank(s),
                    "energy_kept": float(e[:k].sum()) / total if total > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)
