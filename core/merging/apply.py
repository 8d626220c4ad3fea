"""The public entry points: a method's merged direction from checkpoints, and the merged model."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..task_vectors import check_finite
from .direction import MergedDirection, apply_direction
from .registry import get_method
from .streaming import StateDict, TaskVectors


def as_named_list(finetuned) -> tuple[list[StateDict], list[str]]:
    """A list of state dicts (named task0, task1, ...) or a dict name -> state dict, as (dicts, names)."""
    if isinstance(finetuned, Mapping) and finetuned and all(isinstance(v, Mapping) for v in finetuned.values()):
        return list(finetuned.values()), list(finetuned.keys())
    lst = list(finetuned)
    return lst, [f"task{i}" for i in range(len(lst))]


def merged_direction(
    base_sd: StateDict,
    finetuned_sds,
    method: str,
    *,
    allow_nonfinite: bool = False,
    device: str | torch.device | None = "auto",
    **params,
) -> MergedDirection:
    """The method's merged direction tau_merged and its global scale (before LiNeS).

    NaN/Inf in any input tensor (the base, including the floating tensors that only pass through,
    or a fine-tuned checkpoint) raise `core.errors.NonFiniteError` naming the checkpoint ("base" or
    the task) and the tensor; allow_nonfinite=True merges anyway with a warning.
    device: where the method computes ("auto": CUDA when torch sees a GPU, else the CPU; "cpu" or
    "cuda[:i]" to force one; core.runtime.devices.resolve_device). Inputs stream from the CPU one slab
    or one key at a time; the direction is returned on the CPU.
    """
    m = get_method(method)
    unknown = set(params) - {p.name for p in m.params}
    if unknown:
        raise TypeError(f"merge method {method!r} has no parameter(s) {sorted(unknown)}; it takes {list(m.defaults())}")
    sds, names = as_named_list(finetuned_sds)
    tvs = TaskVectors(base_sd, sds, names, allow_nonfinite=allow_nonfinite, device=device)
    for k in base_sd.keys():  # the base's other tensors go into the merged model unchanged
        if k not in tvs.shapes:
            t = base_sd[k]
            if torch.is_floating_point(t):
                check_finite(t, "base", k, allow_nonfinite)
    d = m.fn(tvs, **params)
    if any(v.device.type != "cpu" for v in d.vector.values()):  # key-wise methods computed on a GPU
        d.vector = {k: v.cpu() for k, v in d.vector.items()}
    return d


def merge(
    base_sd: StateDict,
    finetuned_sds,
    method: str,
    *,
    lines=None,
    curve=None,
    outside=None,
    num_blocks: int | None = None,
    output_as_last_block: bool = False,
    allow_nonfinite: bool = False,
    device: str | torch.device | None = "auto",
    **params,
) -> dict[str, torch.Tensor]:
    """Merge fine-tuned checkpoints into one state dict: theta_0 + lambda * tau_merged, or with LiNeS /
    a block curve (core.merging.direction).

    finetuned_sds: a list of state dicts or a dict name -> state dict (all with
    the same floating-point keys; the base may hold more keys, which pass
    through). method: a name in METHODS; params: that method's parameters.
    Non-finite inputs raise NonFiniteError unless allow_nonfinite=True. device: see `merged_direction`.
    """
    d = merged_direction(base_sd, finetuned_sds, method, allow_nonfinite=allow_nonfinite, device=device, **params)
    return apply_direction(
        base_sd,
        d,
        lines=lines,
        curve=curve,
        outside=outside,
        num_blocks=num_blocks,
        output_as_last_block=output_as_last_block,
        inplace=True,
    )
