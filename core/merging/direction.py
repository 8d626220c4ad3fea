"""The merged direction and how it becomes a model.

Every method computes a *merged direction* tau_merged (a task-vector-shaped dict) and a global
scale lambda. `apply_direction` then returns

    theta = theta_0 + lambda * tau_merged                 (no LiNeS)
    theta = theta_0 + lambda(l) (.) tau_merged            (LiNeS / any per-block curve; no extra global lambda)

following wang-kee/LiNeS. Splitting direction and scale is what makes the live loop fast:
sliders over lambda, LiNeS (alpha, beta) or the block curve only re-apply a cached direction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..lines import infer_num_blocks, key_scales, lines_curve, multitask_alpha
from .streaming import FlatWriter, StateDict, TaskVectors, as_compute, l1


@dataclass
class MergedDirection:
    """tau_merged, the global scale lambda, and ||sum_t tau_t||_1 for the LiNeS multi-task alpha.

    summed_l1 None: the vector *is* sum_t tau_t (task arithmetic without per-task coefficients), so the
    rule's ratio is 1 and alpha = 1/N exactly; no norm is computed unless asked for (`summed`)."""

    vector: dict[str, torch.Tensor]
    scale: float
    summed_l1: float | None
    num_tasks: int
    info: dict = field(default_factory=dict)
    merged_l1_value: float | None = None  # accumulated chunk by chunk exactly like summed_l1

    def merged_l1(self) -> float:
        """||tau_merged||_1 in BlockL1's blocks over the flat order (as the streamed sums were taken)."""
        if self.merged_l1_value is None:
            acc = BlockL1()
            for v in self.vector.values():
                acc.add(v)
            self.merged_l1_value = acc.total()
        return self.merged_l1_value

    def summed(self) -> float:
        """||sum_t tau_t||_1."""
        return self.merged_l1() if self.summed_l1 is None else self.summed_l1

    def auto_alpha(self) -> float:
        if self.summed_l1 is None and self.merged_l1_value is None:  # tau_merged = sum_t tau_t: ratio 1
            if not any(bool(v.any()) for v in self.vector.values()):
                raise ValueError("the merged task vector is all zeros; LiNeS alpha is undefined")
            return 1.0 / self.num_tasks
        return multitask_alpha(self.summed(), self.merged_l1(), self.num_tasks)


def split_coefficients(coefficients, n: int) -> tuple[list[float] | None, float]:
    """`coefficients` as (per-task list or None, global scale)."""
    if isinstance(coefficients, (list, tuple)):
        if len(coefficients) != n:
            raise ValueError(f"got {len(coefficients)} coefficients for {n} tasks")
        return [float(c) for c in coefficients], 1.0
    return None, float(coefficients)


def global_scale(coefficients, method: str) -> float:
    """A method whose `coefficients` is only the final global lambda: one number."""
    if isinstance(coefficients, (list, tuple)) or isinstance(coefficients, bool):
        raise ValueError(f"{method}: coefficients is the global scale lambda (one number), got {coefficients!r}")
    return float(coefficients)


class BlockL1:
    """||x||_1 of a vector streamed in pieces (in flat order), reduced in blocks of `block` values: each
    block is one float32 torch sum, as the reference's float(x.abs().sum()) over the whole vector (so the
    two agree bit for bit whenever the vector has at most `block` entries; beyond, block sums add in
    Python floats). The blocks do not depend on how the pieces are cut, so the LiNeS auto alpha of a
    merge does not change with the streaming slab width."""

    def __init__(self, block: int = 1 << 20):
        self.block, self.n, self.value = block, 0, 0.0
        self._buf: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1)
        while x.numel():
            if self._buf is None:
                self._buf = torch.empty(self.block, dtype=x.dtype, device=x.device)
            take = min(self.block - self.n, x.numel())
            self._buf[self.n : self.n + take] = x[:take]
            self.n += take
            x = x[take:]
            if self.n == self.block:
                self._flush()

    def _flush(self) -> None:
        if self.n:
            self.value += l1(self._buf[: self.n])
            self.n = 0

    def total(self) -> float:
        self._flush()
        return self.value


def keywise_direction(
    tvs: TaskVectors, merge_key: Callable[[str, list, torch.Tensor], torch.Tensor], scale: float, info=None
) -> MergedDirection:
    """The merged direction of a method that works key by key: merge_key(key, the key's N task vectors,
    their sum) for every key (TaskVectors.keywise), ||sum_t tau_t||_1 accumulated on the way. The task
    vectors are the pass's own buffers (never an input's tensors), so merge_key may overwrite them; the sum
    it must leave alone until its result is copied out.

    The outputs are allocated before any temporary: long-lived tensors allocated among the per-key
    temporaries pin glibc's heap (Iso-CTS at ViT-B/32 x 20 peaked at 3.56 model sizes of memory, 2.07
    after). A key's tensors are dropped before the next key is read: one key's N tensors at a time."""
    out, summed = FlatWriter(tvs.shapes, tvs.dtype).out, 0.0
    for key, ts, tot, norm in tvs.keywise():
        summed += norm
        out[key].copy_(merge_key(key, ts, tot))
        ts = tot = None  # the loop variables would hold them while the next key is read
    return MergedDirection(out, scale, summed, len(tvs), info or {})


def weighted(tvs: torch.Tensor, per_task: list[float] | None) -> torch.Tensor:
    """[N, width] task vectors scaled row by row (None: unchanged)."""
    if per_task is None:
        return tvs
    return tvs * torch.tensor(per_task, dtype=tvs.dtype, device=tvs.device).unsqueeze(1)


def apply_direction(
    base_sd: StateDict,
    direction: MergedDirection,
    *,
    lines: tuple[float | str, float] | None = None,
    curve: Sequence[float] | None = None,
    outside: float | None = None,
    scale: float | None = None,
    num_blocks: int | None = None,
    output_as_last_block: bool = False,
    inplace: bool = False,
) -> dict[str, torch.Tensor]:
    """theta_0 + (scaled) direction, as a full state dict in the base's dtypes.

    lines=(alpha, beta): LiNeS, alpha may be "auto" (the multi-task rule);
    curve=[s_0..s_{L-1}] with `outside`: any per-block curve. Either replaces the
    global lambda (official LiNeS applies no extra global scale). Without them,
    `scale` (default: the method's lambda) multiplies the direction.
    inplace=True reuses the direction's tensors for the output (one model less memory;
    the direction is spent).
    """
    if lines is not None and curve is not None:
        raise ValueError("give either lines=(alpha, beta) or a per-block curve, not both")
    vec = direction.vector
    if lines is not None or curve is not None:
        L = num_blocks or infer_num_blocks(vec)
        if lines is not None:
            alpha, beta = lines
            if alpha == "auto":
                alpha = direction.auto_alpha()
            curve, outside = lines_curve(float(alpha), float(beta), L), float(alpha)
        elif len(curve) != L:
            raise ValueError(f"the block curve has {len(curve)} values but the model has {L} blocks")
        if outside is None:
            outside = curve[0]
        scales = key_scales(vec.keys(), list(curve), outside, output_as_last_block=output_as_last_block)
    else:
        lam = direction.scale if scale is None else float(scale)
        scales = dict.fromkeys(vec, lam)
    # theta_0 + s * tau, as the reference computes it (LiNeS: theta_0 + 1.0 * (tau * s), the same bits)
    # key by key, so a lazy base is read one tensor at a time and never held twice
    out = {}
    for k in base_sd.keys():
        b = base_sd[k]
        v = vec.get(k)
        if v is None:
            out[k] = b
            continue
        if inplace:
            merged = v.mul_(scales[k]).add_(as_compute(b))
        else:
            merged = as_compute(b) + scales[k] * v
        out[k] = merged.to(b.dtype)
    return out
