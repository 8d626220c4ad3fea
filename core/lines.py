"""LiNeS: layer-increasing network scaling of a task vector (Wang et al., ICLR 2025).

Official semantics (wang-kee/LiNeS, src/eval/eval.py, LiNeS_scaling):
block i = 0..L-1 is scaled by alpha + beta * i / (L - 1); every parameter of a
block takes its block's scale (LayerNorms and biases too); **every parameter
outside the blocks takes alpha** - conv1, class/positional embeddings, ln_pre,
and also ln_post and proj at the output end. `output_as_last_block=True` is an
option (not the paper's) that gives output-side parameters the last block's
scale instead.

Towers: depth is per tower (core.layers). The official code only edits the image
encoder - its ImageEncoder (src/models/modeling.py) deletes open_clip's text
``transformer`` unless keep_lang=True, so its task vectors hold no text blocks, and
the text-side parameters left (token_embedding, positional_embedding, ln_final,
text_projection, logit_scale) match no ``.{i}.`` and take alpha. Here a full CLIP
task vector is scaled tower by tower: block i of a tower of depth L_t gets
alpha + beta * i / (L_t - 1); every parameter outside the blocks (either tower's, and
shared ones like logit_scale) takes alpha. For the image tower this is exactly the
official result; a visual-only task vector is scaled bit for bit as before.

Blocks are found with core.layers (container patterns, never a bare ".{i}.").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from .layers import TOWERS, default_tower, in_tower, is_output_param, layer_index, tower_depths, tower_of, towers
from .layers import num_blocks as count_blocks

Curve = Sequence[float]


def lines_curve(alpha: float, beta: float, num_blocks: int) -> list[float]:
    """Per-block scales alpha + beta * i/(L-1), i = 0..L-1 (L = 1 gives [alpha + beta])."""
    if num_blocks < 1:
        raise ValueError("num_blocks must be >= 1")
    if num_blocks == 1:
        return [alpha + beta]
    return [alpha + beta * (i / (num_blocks - 1)) for i in range(num_blocks)]


def resample_curve(curve: Curve, num_blocks: int) -> list[float]:
    """A per-block curve carried to a tower of another depth, by relative depth.

    Block i of `num_blocks` takes the curve's value at relative depth i/(num_blocks-1), linearly
    interpolated, so the first and last blocks keep the curve's ends and a LiNeS line
    alpha + beta*i/(L-1) becomes alpha + beta*i/(num_blocks-1). Same depth: the curve itself.
    """
    values = [float(x) for x in curve]
    if not values:
        raise ValueError("the block curve is empty")
    if num_blocks < 1:
        raise ValueError("num_blocks must be >= 1")
    n = len(values)
    if n == num_blocks:
        return values
    if n == 1:
        return values * num_blocks
    if num_blocks == 1:
        return [values[-1]]
    out = []
    for i in range(num_blocks):
        x = i * (n - 1) / (num_blocks - 1)
        j = min(int(x), n - 2)
        f = x - j
        out.append(values[j] + f * (values[j + 1] - values[j]))
    return out


def tower_curves(keys: Iterable[str], block_scales: Curve | Mapping[str, Curve]) -> dict[str, list[float]]:
    """{tower: per-block curve} for every tower of `keys` that has blocks.

    `block_scales` is either one curve, for the image tower (or a model's only tower; other
    towers get it by relative depth, `resample_curve`), or {tower: curve}.
    """
    keys = list(keys)
    depths = tower_depths(keys)
    if isinstance(block_scales, Mapping):
        unknown = set(block_scales) - set(TOWERS)
        if unknown:
            raise ValueError(f"block curves for unknown tower(s) {sorted(unknown)}; towers are {list(TOWERS)}")
        missing = [t for t in depths if t not in block_scales]
        if missing:
            raise ValueError(f"no block curve for the {', '.join(missing)} tower (the model has {depths})")
        return {t: [float(x) for x in block_scales[t]] for t in depths}
    primary = default_tower(keys)
    curves = {primary: [float(x) for x in block_scales]}
    for t, n in depths.items():
        if t != primary:
            curves[t] = resample_curve(block_scales, n)
    return curves


def scale_by_block(
    task_vector: Mapping[str, torch.Tensor],
    block_scales: Curve | Mapping[str, Curve],
    outside: float,
    *,
    output_as_last_block: bool = False,
) -> dict[str, torch.Tensor]:
    """The general form: scale block i of each tower by its curve, everything outside by `outside`.

    LiNeS is the linear special case; the Merge lab's curve editor passes any curve.
    `block_scales`: one curve (image tower; other towers by relative depth) or {tower: curve}.
    """
    scales = key_scales(task_vector.keys(), block_scales, outside, output_as_last_block=output_as_last_block)
    return {k: v * scales[k] for k, v in task_vector.items()}


def key_scales(
    keys, block_scales: Curve | Mapping[str, Curve], outside: float, *, output_as_last_block: bool = False
) -> dict[str, float]:
    """The scale each parameter takes under per-block curves (see scale_by_block).

    A block index beyond its tower's curve raises ValueError (a curve for the wrong model).
    """
    keys = list(keys)
    curves = tower_curves(keys, block_scales)
    single = not towers(keys)  # an unnamed single stack: its curve is the "visual" one
    out = {}
    for k in keys:
        tower = TOWERS[0] if single else tower_of(k)
        curve = curves.get(tower) if tower is not None else None
        i = layer_index(k, len(curve)) if curve else None
        if i is not None:
            out[k] = curve[i]
        elif output_as_last_block and curve and is_output_param(k):
            out[k] = curve[-1]
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
    """Scale a task vector with LiNeS, each tower by its own depth.

    `num_blocks` is the depth of the image tower (or of a model's only tower); it defaults to
    the number of blocks found in the keys. A text tower's depth is always read from its keys.
    """
    keys = list(task_vector_sd.keys())
    primary = default_tower(keys)
    depths = tower_depths(keys)
    if num_blocks is None:
        num_blocks = depths.get(primary, 0)
    if num_blocks == 0:
        raise ValueError("no residual blocks found in the task vector's keys; pass num_blocks or check the names")
    depths[primary] = num_blocks
    curves = {t: lines_curve(alpha, beta, n) for t, n in depths.items()}
    return scale_by_block(task_vector_sd, curves, alpha, output_as_last_block=output_as_last_block)


def infer_num_blocks(sd: Mapping[str, torch.Tensor]) -> int:
    """Depth of the image tower (or of a model's only tower): the length of a LiNeS curve for `sd`."""
    keys = list(sd.keys())
    return count_blocks(in_tower(keys, default_tower(keys)))


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
