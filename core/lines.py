"""LiNeS: layer-increasing network scaling of a task vector (Wang et al., ICLR 2025).

Official semantics (wang-kee/LiNeS, src/eval/eval.py, LiNeS_scaling):
block i = 0..L-1 is scaled by alpha + beta * i / (L - 1); every parameter of a
block takes its block's scale (LayerNorms and biases too); **every parameter
outside the blocks takes alpha** - conv1, class/positional embeddings, ln_pre,
and also ln_post and proj at the output end. `output_as_last_block=True` is an
option (not the paper's) that gives output-side parameters the last block's
scale instead.

Blocks are found with core.layers (container patterns, never a bare ".{i}.").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .layers import is_output_param, layer_index
from .layers import num_blocks as count_blocks


def lines_curve(alpha: float, beta: float, num_blocks: int) -> list[float]:
    """Per-block scales alpha + beta * i/(L-1), i = 0..L-1 (L = 1 gives [alpha + beta])."""
    if num_blocks < 1:
        raise ValueError("num_blocks must be >= 1")
    if num_blocks == 1:
        return [alpha + beta]
    return [alpha + beta * (i / (num_blocks - 1)) for i in range(num_blocks)]


def scale_by_block(
    task_vector: Mapping[str, torch.Tensor],
    block_scales: Sequence[float],
    outside: float,
    *,
    output_as_last_block: bool = False,
) -> dict[str, torch.Tensor]:
    """The general form: scale block i by block_scales[i], everything outside by `outside`.

    LiNeS is the linear special case; the Merge lab's curve editor passes any curve.
    """
    scales = key_scales(task_vector.keys(), block_scales, outside, output_as_last_block=output_as_last_block)
    return {k: v * scales[k] for k, v in task_vector.items()}


def key_scales(
    keys, block_scales: Sequence[float], outside: float, *, output_as_last_block: bool = False
) -> dict[str, float]:
    """The scale each parameter takes under a per-block curve (see scale_by_block)."""
    L = len(block_scales)
    out = {}
    for k in keys:
        i = layer_index(k, L)
        if i is not None:
            out[k] = block_scales[i]
        elif output_as_last_block and is_output_param(k):
            out[k] = block_scales[-1]
        else:
            out[k] = outside
    return out


def lines_scale(
    task_vector_sd: Mapping[str, torch.Tensor],
    alpha: float,
    beta: float,
    num_blocks: int | None = None,
    *,
    output_as_last_block: bool = False,
) -> dict[str, torch.Tensor]:
    """Scale a task vector with LiNeS. `num_blocks` defaults to the number of
    blocks found in the keys' own tower (the visual tower for CLIP keys)."""
    if num_blocks is None:
        num_blocks = infer_num_blocks(task_vector_sd)
    if num_blocks == 0:
        raise ValueError("no residual blocks found in the task vector's keys; pass num_blocks or check the names")
    curve = lines_curve(alpha, beta, num_blocks)
    return scale_by_block(task_vector_sd, curve, alpha, output_as_last_block=output_as_last_block)


def infer_num_blocks(sd: Mapping[str, torch.Tensor]) -> int:
    """Blocks of the tower the keys belong to: the visual tower when visual.* keys exist."""
    keys = list(sd.keys())
    if any(k.startswith("visual.") for k in keys):
        return count_blocks(keys, prefix="visual.")
    return count_blocks(keys)


def l1_norm(sd: Mapping[str, torch.Tensor]) -> float:
    """L1 norm of the full flattened vector, accumulated in float64."""
    return float(sum(v.double().abs().sum() for v in sd.values()))


def multitask_alpha(summed_l1: float, merged_l1: float, num_tasks: int) -> float:
    """The multi-task rule: alpha = (||sum_t tau_t||_1 / ||tau_merged||_1) / N.

    For task arithmetic (tau_merged = sum_t tau_t) this is exactly 1/N.
    """
    if merged_l1 == 0:
        raise ValueError("the merged task vector is all zeros; LiNeS alpha is undefined")
    return (summed_l1 / merged_l1) / num_tasks
