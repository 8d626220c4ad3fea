"""The classic merge methods: weight averaging, task arithmetic, TIES, DARE, Consensus (TALL masks).

Each streams over the task vectors chunk by chunk (core.merging.streaming) and returns a
MergedDirection; TIES finds its exact global top-k threshold with a radix select
(core.merging.kselect) instead of sorting the concatenated vector.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import torch

from . import fused
from .direction import BlockL1, MergedDirection, split_coefficients, weighted
from .kselect import (
    bin_edges,
    candidate_bins,
    gather_thresholds,
    global_topk_thresholds,
    threshold_range,
    topk_rank,
    topk_thresholds,
    trim_fraction,
)
from .registry import Param, merge_method
from .streaming import FlatWriter, TaskVectors, any_true, chunk_columns


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
    w, summed, merged = FlatWriter(tvs.shapes, tvs.dtype), BlockL1(), BlockL1()
    # One sum per slab: 4x wider slabs than the default cost fewer Python steps (measured faster on 2 cores).
    # The NaN/Inf check rides on the sum over the tasks; without per-task lambdas that sum is the output.
    # Memory-bound: the next slab is read on a reader thread meanwhile (chunks(read_ahead=True)).
    for ch in tvs.chunks(size=4 * chunk_columns(len(tvs)), check="columns", read_ahead=True):
        raw_sum = torch.sum(ch.tvs, dim=0, out=w.view(ch) if per_task is None else None)
        tvs.check_columns(ch, raw_sum)
        if per_task is None:
            out = raw_sum  # the direction is the sum itself: its norm only if LiNeS asks (MergedDirection)
        else:
            summed.add(raw_sum)
            out = weighted(ch.tvs, per_task).sum(dim=0)
            merged.add(out)
        w.write(ch, out)
    if per_task is None:
        return MergedDirection(w.out, scale, None, len(tvs))
    return MergedDirection(w.out, scale, summed.total(), len(tvs), merged_l1_value=merged.total())


DEFER_BUDGET = 0.5  # model sizes of deferred TIES columns held before falling back to an exact threshold pass
# TIES tries one pass when a sample's estimate of the columns it would defer is at most this share of the budget
ONE_PASS_SHARE = 0.8


class _DeferOverflow(Exception):
    pass


def ties_direction(tvs: TaskVectors, k: float = 0.2, agg: str = "mean", per_task: list[float] | None = None):
    """TIES: trim (global top-k per task), elect (mass sign, majority fallback), disjoint mean/sum.

    Follows nik-dim/tall_masks src/utils/ties_utils.py (topk_values_mask, resolve_sign, disjoint_merge)
    bit for bit, in two streaming passes instead of a sort of the stacked [N, d] matrix:
      1. a histogram of |tau|'s high 16 bits per task (core.merging.kselect.topk_thresholds) finds the bin
         that holds each task's threshold;
      2. the merge pass decides every entry outside that bin (below: trimmed, above: kept) and defers the
         columns where some task has an entry inside its bin, keeping their N values; afterwards the in-bin values give the exact thresholds (kthvalue inside the bin) and
    the deferred columns are merged.
    With many tasks nearly every column has some task's entry in its bin (20 ViT-B/32 task vectors: the
    deferred columns outgrew DEFER_BUDGET and the merge took four passes). So a small sample first
    (`candidate_bins`) estimates the share of columns that would be deferred; when they would fill half
    the budget, pass 1 also histograms the low 16 bits of the entries in the few bins the sample says hold
    the thresholds, which gives every threshold exactly, and pass 2 defers nothing. If the sample missed a
    bin, pass 2 defers as above; if the deferred columns still outgrow the budget (quantized task vectors,
    where a bin holds many equal values) one gather pass finds the exact thresholds first.
    On the CPU in float32 the merge pass's arithmetic runs in one compiled loop per slab (core.merging.fused:
    the same sums in torch's order, so the same bits) while a reader thread fills the next slab.
    With few tasks (the plain deferring pass would hold under a quarter of the budget) the histogram pass
    is skipped: a denser sample (`threshold_range`) gives each threshold a range of bins, the one merge
    pass defers the columns with an entry in that range and counts each task's entries at or above its
    lower edge, which gives the threshold's rank inside the range. A range that missed its threshold, or
    columns that outgrow the budget, drop that pass for the two above: slower, never inexact.
    """
    if agg not in ("mean", "sum"):
        raise ValueError(f"TIES aggregation must be 'mean' or 'sum', got {agg!r}")
    if trim_fraction(k) >= 1:
        return _ties_pass(tvs, None, None, None, agg, per_task)
    if tvs.dtype == torch.float64:  # rare: exact thresholds by selection, then one merge pass
        thr = torch.tensor(global_topk_thresholds(tvs, k), dtype=tvs.dtype, device=tvs.device).unsqueeze(1)
        return _ties_pass(tvs, thr, thr, None, agg, per_task)
    rank = topk_rank(tvs, k)
    cand = candidate_bins(tvs, rank)
    if cand is not None and cand.deferred_share * len(tvs) <= DEFER_BUDGET / 2:
        cand = None  # few columns to defer: the plain histogram pass is cheaper than the low-bit one
        # Fewer still: one pass, deferring every column with an entry in the range a denser sample says
        # holds the threshold (counting the entries below it gives the threshold's rank inside it).
        one = None if tvs.allow_nonfinite else threshold_range(tvs, rank)
        if one is not None and one.deferred_share * len(tvs) <= ONE_PASS_SHARE * DEFER_BUDGET:
            try:
                return _ties_pass(
                    tvs, one.lo, one.hi, None, agg, per_task, budget=DEFER_BUDGET * tvs.numel() * 4, rank=rank
                )
            except _DeferOverflow:
                pass  # the range missed a threshold or held too much: the two passes below, exact as ever
    bins, ranks, exact = topk_thresholds(tvs, k, cand)
    if exact is not None:  # many tasks: exact thresholds from the histogram pass, nothing deferred
        thr = torch.tensor(exact, dtype=tvs.dtype, device=tvs.device).unsqueeze(1)
        return _ties_pass(tvs, thr, thr, None, agg, per_task)
    lo, hi = bin_edges(bins)
    try:
        return _ties_pass(tvs, lo, hi, ranks, agg, per_task, budget=DEFER_BUDGET * tvs.numel() * 4)
    except _DeferOverflow:
        thr = torch.tensor(gather_thresholds(tvs, bins, ranks), dtype=tvs.dtype, device=tvs.device).unsqueeze(1)
        return _ties_pass(tvs, thr, thr, None, agg, per_task)


def _mask(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool tensor as 0/1 of `dtype` (through a uint8 view: torch's bool->float conversion is 3x slower)."""
    return b.view(torch.uint8).to(dtype)


def elect(tr: torch.Tensor, agg: str):
    """Elect and merge the trimmed [N, w] slab `tr` (the reference's resolve_sign + disjoint_merge).

    Returns (merged values [w], raw elected sign [w], columns of exact cancellation, their values under a
    negative majority). The elected sign of a column is sign(sum_t tr); only where that sum is exactly 0
    does the global majority sign (known after the pass) decide. There every trimmed value is 0 (the
    result is 0 either way) except at exact cancellations: those few columns are computed under both
    signs and patched once the majority is known.

    Disjoint merge: with s = +-1 and u = tr * s, the kept entries (sign equal to the elected one) are
    those with u > 0, all of sign s: their sum is s * sum(max(u, 0)) exactly (negation is exact and the
    terms are added in the same order as the reference's masked sum), their count is sum(sign(max(u, 0))).
    """
    raw = torch.sign(tr.sum(dim=0))
    zero = raw == 0
    s = raw + _mask(zero, raw.dtype)  # 0 -> +1
    out, count = _disjoint(tr, s, agg)
    cancel = zero & (count > 0)  # a zero sum with non-zero terms: they cancel exactly
    if not any_true(cancel):
        return out, raw, None, None
    cols = cancel.nonzero().flatten()
    neg, _ = _disjoint(tr[:, cols], -torch.ones(cols.numel(), dtype=tr.dtype, device=tr.device), agg)
    return out, raw, cols, neg


def _disjoint(tr: torch.Tensor, s: torch.Tensor, agg: str) -> tuple[torch.Tensor, torch.Tensor]:
    u = tr * s.unsqueeze(0)
    u.clamp_min_(0)
    total = u.sum(dim=0).mul_(s)
    count = torch.sign(u).sum(dim=0)
    if agg == "mean":
        return total / count.clamp(min=1), count
    return total, count


class _Deferred:
    """The deferred columns of a TIES merge pass: their N task-vector values, in one [N, capacity] buffer
    grown by doubling (not one small tensor per chunk: long-lived small tensors pin the heap's freed slabs,
    which measured +1 model size of resident memory), with the chunk each batch came from. Task-major, so
    a batch is N contiguous row segments (a column-major copy of T[:, cols] was 2x slower)."""

    def __init__(self, n: int, dtype: torch.dtype):
        self.vals = torch.empty(n, 0, dtype=dtype)  # [N, m]: one column per deferred column
        self.cols = torch.empty(0, dtype=torch.int64)  # its column in its chunk
        self.size = 0
        self.batches: list[tuple[list, int, int, int]] = []  # (segments, chunk start, first column, columns)

    def add(self, segments: list, cols: torch.Tensor, T: torch.Tensor, start: int) -> int:
        """Defer columns `cols` of the [N, w] slab T, the chunk at `start` (kept on the CPU, whatever device
        T is on)."""
        m = cols.numel()
        if self.size + m > self.vals.shape[1]:
            cap = max(2 * self.vals.shape[1], self.size + m, 1024)
            vals = torch.empty(self.vals.shape[0], cap, dtype=self.vals.dtype)
            idx = torch.empty(cap, dtype=torch.int64)
            vals[:, : self.size], idx[: self.size] = self.vals[:, : self.size], self.cols[: self.size]
            self.vals, self.cols = vals, idx
        self.vals[:, self.size : self.size + m] = T.index_select(1, cols).cpu()
        self.cols[self.size : self.size + m] = cols.cpu()
        self.batches.append((segments, start, self.size, m))
        self.size += m
        return self.size * self.vals.shape[0] * self.vals.element_size()

    def __iter__(self):
        """(segments, chunk start, chunk columns, contiguous [N, m] values) per batch."""
        for segments, start, first, m in self.batches:
            yield segments, start, self.cols[first : first + m], self.vals[:, first : first + m].contiguous()


def _ties_pass(tvs, lo, hi, ranks, agg, per_task, budget: float = float("inf"), rank: int | None = None):
    """The TIES merge pass; entries with lo <= |tau| < hi are undecided (their columns deferred).

    ranks: each task's threshold rank among its entries in [lo, hi). Or rank: the threshold's rank among
    all entries (ascending |tau|), when [lo, hi) is only a sample's estimate: the pass then counts each
    task's entries >= lo and raises _DeferOverflow if some threshold is not inside its range."""
    w, summed, total = FlatWriter(tvs.shapes, tvs.dtype), BlockL1(), 0
    at_or_above = None if rank is None else torch.zeros(len(tvs), dtype=torch.int64, device=tvs.device)
    pending = []  # (segments, columns, value under a negative majority)
    deferred = _Deferred(len(tvs), tvs.dtype)
    undecided_possible = lo is not None and lo is not hi
    lo_d = hi_d = None  # the bin edges (or thresholds) on the compute device
    if lo is not None:
        lo_d = lo.to(tvs.device)
        hi_d = lo_d if hi is lo else hi.to(tvs.device)
        lo, hi = lo.cpu(), hi.cpu()  # for the deferred columns, kept on the CPU
    # 4x the default width, like task arithmetic and the histogram pass: since the masks are written as floats
    # (fewer temporaries per slab) wider slabs are faster (B/32 x 8, interleaved: 262144 columns 3.84-4.16 s,
    # 65536 4.56-4.72 s, 524288 4.26-4.34 s)
    kernel = fused.usable(tvs.device, tvs.dtype) and not tvs.allow_nonfinite
    tail = fused.torch_tail(tvs.numel())  # where the reference sums its [N, d] matrix's columns differently
    # the kernel's arithmetic is faster than the slab's reads: a reader thread fills the next slab meanwhile
    for ch in tvs.chunks(size=4 * chunk_columns(len(tvs)), check="columns", read_ahead=kernel):
        if kernel:
            r = fused.ties_slab(ch.tvs, lo_d, hi_d, per_task, agg, at_or_above, tail - ch.start, w.view(ch))
            tvs.check_columns(ch, r.colsum)
            summed.add(r.colsum)
            if r.hits is not None and deferred.add(list(ch.segments), r.hits, ch.tvs, ch.start) > budget:
                raise _DeferOverflow
            total += r.sign_total
            if r.cancel_cols is not None:
                pending.append((list(ch.segments), r.cancel_cols, r.cancel_vals))
            w.write(ch, r.out)
            continue
        T = ch.tvs  # the chunk's scratch buffer: trimmed in place
        column_sums = T.sum(dim=0)
        tvs.check_columns(ch, column_sums)  # before T changes: the NaN/Inf check rides on this sum
        summed.add(column_sums)
        dcols = None
        if lo is not None:
            # Masks as 0/1 floats written by the comparisons themselves (a bool mask converted to floats, and
            # bool counts summed in wider integer types, each cost a converting copy of the slab: TIES at
            # ViT-B/32 x 8 ~12 % faster without them); counts of at most N per column or `width` per task
            # are exact in float32.
            a = T.abs()
            ge_lo = torch.ge(a, lo_d, out=torch.empty_like(a)) if undecided_possible else None
            kept = torch.ge(a, hi_d, out=a)  # |tau| >= hi: kept for sure (|tau| is not needed any more)
            if ge_lo is not None:
                if at_or_above is not None:
                    at_or_above += ge_lo.sum(dim=1).to(torch.int64)
                hits = ge_lo.sum(dim=0).sub_(kept.sum(dim=0))  # entries with lo <= |tau| < hi, per column
                if float(hits.sum()) > 0:  # (a float sum: torch's `any` cost 40-300 us per slab here)
                    dcols = hits.nonzero().flatten()
                    if deferred.add(list(ch.segments), dcols, T, ch.start) > budget:
                        raise _DeferOverflow
                del ge_lo, hits
            T.mul_(kept)
            del a, kept
        tr = weighted(T, per_task)
        out, raw, cols, neg = elect(tr, agg)
        if dcols is not None:  # provisional values: counted when the deferred columns are merged
            total -= int(raw[dcols].sum(dtype=torch.int64))
            if cols is not None:
                keep = ~torch.isin(cols, dcols)
                cols, neg = cols[keep], neg[keep]
        total += int(raw.sum(dtype=torch.int64))
        if cols is not None and cols.numel():
            pending.append((list(ch.segments), cols, neg))
        w.write(ch, out)
    thresholds = None if lo is None else [float(x) for x in lo.flatten()]
    if at_or_above is not None:  # the rank of each threshold inside its range, from the entries below it
        d = tvs.numel()
        ranks = [rank - (d - int(c)) for c in at_or_above.cpu()]
    if deferred.size or rank is not None:
        n = len(tvs)
        thresholds = []
        for t in range(n):
            v = deferred.vals[t, : deferred.size].abs()
            v = v[(v >= lo[t]) & (v < hi[t])]
            if not 1 <= ranks[t] <= v.numel():  # the sample's range missed this task's threshold
                raise _DeferOverflow
            thresholds.append(float(torch.kthvalue(v, ranks[t]).values))
        thr = torch.tensor(thresholds, dtype=tvs.dtype).unsqueeze(1)
        for segments, start, dcols, vals in deferred:
            if kernel:  # the reference's order: columns past `tail` sum like the last of its whole matrix
                r = fused.ties_slab(vals, thr, thr, per_task, agg, None, int((dcols + start < tail).sum()))
                out, cols, neg = r.out, r.cancel_cols, r.cancel_vals
                total += r.sign_total
            else:
                tr = weighted(vals * (vals.abs() >= thr), per_task)
                out, raw, cols, neg = elect(tr, agg)
                total += int(raw.sum(dtype=torch.int64))
            if cols is not None:
                pending.append((segments, dcols[cols], neg))
            w.write_at(segments, dcols, out)
    majority = (total > 0) - (total < 0)
    if majority <= 0:  # sign 0 keeps the negative entries, exactly like -1
        for segments, cols, neg in pending:
            w.write_at(segments, cols, neg)
    # ||tau_merged||_1 (LiNeS' multi-task alpha) only when asked: MergedDirection.merged_l1, same blocks
    return w.out, summed.total(), {"thresholds": thresholds, "majority_sign": majority}


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
    return MergedDirection(vec, scale, summed, len(tvs), info)


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
    raw = BlockL1()
    for ch in tvs.chunks():
        raw.add(ch.tvs.sum(dim=0))
    d.summed_l1 = raw.total()
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
    lam = torch.tensor(lams, dtype=tvs.dtype, device=tvs.device).unsqueeze(1)
    w, summed, merged, kept = FlatWriter(tvs.shapes, tvs.dtype), BlockL1(), BlockL1(), 0
    for ch in tvs.chunks(with_finetuned=True):
        raw_sum = ch.tvs.sum(dim=0)
        summed.add(raw_sum)
        if mtl is None:
            tau_mtl = raw_sum
        else:
            tau_mtl = torch.cat([mtl[key].reshape(-1)[off : off + ln] for key, off, ln in ch.segments]).to(
                ch.tvs.device
            )
        multi = ch.base + tau_mtl
        masks = (ch.base - ch.finetuned).abs() > (multi - ch.finetuned).abs() * lam
        mask = masks.float().sum(dim=0) >= k
        kept += int(mask.sum())
        out = tau_mtl * mask
        merged.add(out)
        w.write(ch, out)
    info = {"kept_fraction": kept / max(1, tvs.numel())}
    return MergedDirection(w.out, float(coefficients), summed.total(), n, info, merged_l1_value=merged.total())
