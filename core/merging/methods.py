"""The classic merge methods: weight averaging, task arithmetic, TIES, DARE, Consensus (TALL masks).

Each streams over the task vectors chunk by chunk (core.merging.streaming) and returns a
MergedDirection; TIES finds its exact global top-k threshold with a radix select
(core.merging.kselect) instead of sorting the concatenated vector.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch

from .direction import MergedDirection, l1, split_coefficients, weighted
from .kselect import global_topk_thresholds
from .registry import Param, merge_method
from .streaming import Chunk, FlatWriter, TaskVectors


@merge_method(
    "weight_average",
    params=(),
    reference="Wortsman et al. 2022 (model soups); equals task arithmetic with lambda = 1/N",
    description="Average of the fine-tuned weights: theta_0 + (1/N) sum_t tau_t.",
)
def weight_average(tvs: TaskVectors) -> MergedDirection:
    d = task_arithmetic(tvs, 1.0)
    d.scale = 1.0 / len(tvs)
    return d


@merge_method(
    "task_arithmetic",
    params=(
        Param("coefficients", "float", 0.0, 1.5, 0.05, per_task=True, help="lambda: one global value, or one per task"),
    ),
    reference="Ilharco et al. 2023, mlfoundations/task_vectors",
    description="theta_0 + lambda * sum_t tau_t (or sum_t lambda_t tau_t).",
)
def task_arithmetic(tvs: TaskVectors, coefficients: float | Sequence[float] = 0.3) -> MergedDirection:
    per_task, scale = split_coefficients(coefficients, len(tvs))
    w, summed, merged = FlatWriter(tvs.shapes, tvs.dtype), 0.0, 0.0
    for ch in tvs.chunks():
        raw_sum = ch.tvs.sum(dim=0)
        summed += l1(raw_sum)
        if per_task is None:
            out = raw_sum
        else:
            out = weighted(ch.tvs, per_task).sum(dim=0)
            merged += l1(out)
        w.write(ch, out)
    return MergedDirection(w.out, scale, summed, len(tvs), merged_l1_value=summed if per_task is None else merged)


def ties_direction(tvs: TaskVectors, k: float = 0.2, agg: str = "mean", per_task: list[float] | None = None):
    """TIES: trim (global top-k per task), elect (mass sign, majority fallback), disjoint mean/sum."""
    if agg not in ("mean", "sum"):
        raise ValueError(f"TIES aggregation must be 'mean' or 'sum', got {agg!r}")
    thresholds = global_topk_thresholds(tvs, k)
    thr = None if thresholds is None else torch.tensor(thresholds, dtype=tvs.dtype).unsqueeze(1)

    def trimmed(ch: Chunk) -> torch.Tensor:
        t = ch.tvs if thr is None else ch.tvs * (ch.tvs.abs() >= thr)
        return weighted(t, per_task)

    # Elect and merge in one pass. The elected sign of an entry is sign(sum_t trimmed); only where that
    # sum is exactly 0 does the global majority sign (known after the pass) decide. There, every trimmed
    # value is 0 (the result is 0 either way) except at exact cancellations: those few entries are
    # computed under both signs and patched once the majority is known.
    def disjoint(tr: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        # sign is +-1 here, so "same sign as the elected one" is tr * sign > 0, and the kept entries
        # are exactly the non-zero selected ones: the reference's where/!= 0 in fewer passes
        keep = (tr * sign.unsqueeze(0)) > 0
        selected = tr * keep
        if agg == "mean":
            count = keep.sum(dim=0).float()
            return torch.sum(selected, dim=0) / torch.clamp(count, min=1)
        return torch.sum(selected, dim=0)

    w, summed, merged, total = FlatWriter(tvs.shapes, tvs.dtype), 0.0, 0.0, 0
    pending = []  # (segments, columns, value under a negative majority, value written)
    for ch in tvs.chunks():
        tr = trimmed(ch)
        summed += l1(ch.tvs.sum(dim=0))
        sign = torch.sign(tr.sum(dim=0))
        total += int(sign.sum(dtype=torch.int64))
        zero = sign == 0
        sign[zero] = 1
        out = disjoint(tr, sign)
        cols = zero.nonzero().flatten()
        if cols.numel():
            cols = cols[(tr[:, cols] != 0).any(dim=0)]
        if cols.numel():
            sub = tr[:, cols]
            pending.append(
                (list(ch.segments), cols, disjoint(sub, -torch.ones(cols.numel(), dtype=tr.dtype)), out[cols])
            )
        merged += l1(out)
        w.write(ch, out)
    majority = (total > 0) - (total < 0)
    if majority <= 0:  # sign 0 keeps the negative entries, exactly like -1
        for segments, cols, neg, pos in pending:
            w.write_at(segments, cols, neg)
            merged += float(neg.abs().sum()) - float(pos.abs().sum())
    return w.out, summed, {"thresholds": thresholds, "majority_sign": majority, "merged_l1": merged}


@merge_method(
    "ties",
    params=(
        Param("k", "float", 0.01, 1.0, 0.01, help="fraction of each task vector kept (global top-k by magnitude)"),
        Param("agg", "choice", choices=("mean", "sum"), help="disjoint mean (paper) or sum (FusionBench)"),
        Param("coefficients", "float", 0.0, 1.5, 0.05, per_task=True, help="lambda (global or per task)"),
    ),
    reference="Yadav et al. 2023; nik-dim/tall_masks src/utils/ties_utils.py; tanganke/fusion_bench ties_merging",
    description="Trim each task vector to its top-k entries, elect a sign per entry, average the agreeing entries.",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 16)),
    beta_grid=tuple(round(0.1 * i, 1) for i in range(1, 16)),
)
def ties(tvs: TaskVectors, k: float = 0.2, agg: str = "mean", coefficients: float | Sequence[float] = 1.0):
    per_task, scale = split_coefficients(coefficients, len(tvs))
    vec, summed, info = ties_direction(tvs, k, agg, per_task)
    return MergedDirection(vec, scale, summed, len(tvs), info, merged_l1_value=info["merged_l1"])


def dare_mask_seed(seed: int, task: int, key: str) -> int:
    return zlib.crc32(f"{seed}:{task}:{key}".encode())


def dare_preprocess(p: float, seed: int) -> Callable[[int, str, torch.Tensor], torch.Tensor]:
    """Drop each entry with probability p, rescale survivors by 1/(1-p). The mask of
    (task, key) depends only on (seed, task, key), so every pass sees the same one."""
    if not 0 <= p < 1:
        raise ValueError(f"DARE drop rate p must be in [0, 1), got {p}")

    def apply(task: int, key: str, v: torch.Tensor) -> torch.Tensor:
        if p == 0:
            return v
        g = torch.Generator().manual_seed(dare_mask_seed(seed, task, key))
        keep = torch.rand(v.shape, generator=g) >= p
        return v * keep / (1 - p)

    return apply


@merge_method(
    "dare",
    params=(
        Param("p", "float", 0.0, 0.99, 0.01, help="drop probability per entry"),
        Param("seed", "int", 0, 2**31 - 1, 1),
        Param("then", "choice", choices=("task_arithmetic", "ties")),
        Param("k", "float", 0.01, 1.0, 0.01, help="TIES keep fraction (then = ties)"),
        Param("coefficients", "float", 0.0, 1.5, 0.05, per_task=True),
    ),
    reference="Yu et al. 2024 (DARE, 'Language models are Super Mario')",
    description="Randomly drop task-vector entries and rescale the rest, then task arithmetic or TIES.",
)
def dare(
    tvs: TaskVectors,
    p: float = 0.5,
    seed: int = 0,
    then: str = "task_arithmetic",
    k: float = 0.2,
    coefficients: float | Sequence[float] = 0.3,
):
    if then not in ("task_arithmetic", "ties"):
        raise ValueError(f"DARE 'then' must be task_arithmetic or ties, got {then!r}")
    tvs.preprocess = dare_preprocess(p, seed)
    try:
        d = task_arithmetic(tvs, coefficients) if then == "task_arithmetic" else ties(tvs, k, "mean", coefficients)
    finally:
        tvs.preprocess = None
    # The LiNeS rule compares against the raw task vectors' sum.
    d.summed_l1 = sum(l1(ch.tvs.sum(dim=0)) for ch in tvs.chunks())
    return d


@merge_method(
    "consensus",
    params=(
        Param("k", "int", 0, 20, 1, help="keep entries used by at least k tasks (2 drops selfish and catastrophic)"),
        Param(
            "tall_lambda",
            "float",
            0.0,
            1.0,
            0.1,
            per_task=True,
            help="TALL-mask lambda_t (paper: {0.2..0.6} per task on validation)",
        ),
        Param("base_method", "choice", choices=("task_arithmetic", "ties")),
        Param("coefficients", "float", 0.0, 1.5, 0.05, help="global lambda"),
    ),
    reference="Wang et al. 2024 (TALL masks / Consensus); nik-dim/tall_masks src/utils/tallmask_utils.py",
    description="TALL masks m_t = |theta_0 - theta_t| > lambda_t |theta_MTL - theta_t|; keep entries in >= k masks.",
)
def consensus(
    tvs: TaskVectors,
    k: int = 2,
    tall_lambda: float | Sequence[float] = 0.4,
    base_method: str = "task_arithmetic",
    coefficients: float = 0.4,
):
    n = len(tvs)
    lams = list(tall_lambda) if isinstance(tall_lambda, (list, tuple)) else [float(tall_lambda)] * n
    if len(lams) != n:
        raise ValueError(f"got {len(lams)} TALL lambdas for {n} tasks")
    if base_method == "ties":
        mtl, _, _ = ties_direction(tvs, 0.2, "sum")  # the reference: TIES with k=20%, disjoint sum
    elif base_method == "task_arithmetic":
        mtl = None
    else:
        raise ValueError(f"consensus base_method must be task_arithmetic or ties, got {base_method!r}")
    lam = torch.tensor(lams, dtype=tvs.dtype).unsqueeze(1)
    w, summed, merged, kept = FlatWriter(tvs.shapes, tvs.dtype), 0.0, 0.0, 0
    for ch in tvs.chunks(with_finetuned=True):
        raw_sum = ch.tvs.sum(dim=0)
        summed += l1(raw_sum)
        if mtl is None:
            tau_mtl = raw_sum
        else:
            tau_mtl = torch.cat([mtl[key].reshape(-1)[off : off + ln] for key, off, ln in ch.segments])
        multi = ch.base + tau_mtl
        masks = (ch.base - ch.finetuned).abs() > (multi - ch.finetuned).abs() * lam
        mask = masks.float().sum(dim=0) >= k
        kept += int(mask.sum())
        out = tau_mtl * mask
        merged += l1(out)
        w.write(ch, out)
    info = {"kept_fraction": kept / max(1, tvs.numel())}
    return MergedDirection(w.out, float(coefficients), summed, n, info, merged_l1_value=merged)
