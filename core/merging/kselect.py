"""Exact k-th value selection over streamed task vectors, without sorting a whole model.

TIES trims each task vector at a global top-k threshold: the exact k-th smallest |tau| over the
whole flattened task vector. A radix select on the IEEE-754 bit patterns (monotone in |x| for
non-negative floats) finds it in one streaming pass when a small sample predicts the bin that holds it
(`topk_thresholds`: the pass histograms the high 16 bits of every entry and the low 16 bits of the entries
in the predicted bins), else in two: pass 1 histograms the high 16 bits, pass 2 gathers the one bin that
holds the answer and selects inside it. `kth_smallest` is the same idea
for any streamed [N, d] matrix of signed values (PCB's quantiles).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from . import fused
from .streaming import TaskVectors, chunk_columns


def trim_fraction(k: float) -> float:
    """TIES keep fraction. The references accept k in percent when > 1 (k=20 means 20%). k = 1.0 is
    where they part: FusionBench and the original TIES code fail on it (kthvalue(0)), tall_masks reads
    it as 1%; here it keeps every entry (no trim), which is what the Merge lab's slider end means."""
    return k / 100 if k > 1 else k


def high_bits(x: torch.Tensor) -> torch.Tensor:
    """The high 16 bits of |x| for float32 x, as int16 in [0, 2^15): monotone in |x|.

    On little-endian machines a strided int16 view of the upper halves (no shift, no abs: 3x faster
    than the int32 route, which is the fallback elsewhere).
    """
    if sys.byteorder == "little" and x.is_contiguous():
        return x.view(torch.int16)[..., 1::2] & 0x7FFF
    return ((x.view(torch.int32) >> 16) & 0x7FFF).to(torch.int16)


def topk_rank(tvs: TaskVectors, k: float) -> int | None:
    """1-indexed rank of the TIES threshold among ascending |tau| (None: keep everything)."""
    frac = trim_fraction(k)
    if frac >= 1:
        return None
    d = tvs.numel()
    return max(1, d - int(d * frac))


SAMPLE_EVERY = 512  # the sample that predicts each task's threshold bin: ~1 entry in 512 (tvs.sample) ...
SAMPLE_MIN = 1 << 16  # ... but at least this many entries per task (smaller models: denser, or whole)
FINE_MAX_BINS = 8  # at most this many candidate bins per task get a histogram of their low 16 bits
FINE_FLUSH = 1 << 22  # low-bit keys buffered before one bincount into the fine histogram


@dataclass
class Candidates:
    """Per task, the bins a sample says hold its threshold: bins first .. first + width - 1 (width a power
    of two), and the share of the sample's columns with some task's entry in that task's estimated bin
    (what TIES would defer without exact thresholds)."""

    first: torch.Tensor  # [N] int64
    width: torch.Tensor  # [N] int64
    deferred_share: float


def candidate_bins(tvs: TaskVectors, rank: int) -> Candidates | None:
    """The high-16-bit bins most likely to hold each task's rank-th smallest |tau|, from a sample of about
    1 entry in SAMPLE_EVERY, and at least SAMPLE_MIN entries (`TaskVectors.sample`): the bins between the
    sample's quantiles at q -+ 5 standard errors (q = rank / d), at most FINE_MAX_BINS around the
    estimate, rounded up to a power of two. None when there is nothing to sample from (preprocessed or
    float64 task vectors, tiny models): the caller then finds the threshold without candidates."""
    sampled = _sample_bins(tvs, rank, SAMPLE_EVERY, (-5, 0, 5))
    if sampled is None:
        return None
    s, (lo, mid, hi) = sampled
    half = FINE_MAX_BINS // 2
    lo = torch.maximum(lo, mid - half)
    hi = torch.minimum(hi, lo + FINE_MAX_BINS - 1)
    width = hi - lo + 1
    width = 2 ** torch.ceil(torch.log2(width.double())).to(torch.int64)  # power of two: one AND selects
    share = float((high_bits(s.contiguous()).to(torch.int64) == mid.unsqueeze(1)).any(dim=0).double().mean())
    return Candidates(lo, width, share)


def _sample_bins(tvs: TaskVectors, rank: int, every: int, zs: Sequence[float]):
    """(|sample| [N, m], [the bins of its quantiles at q + z se for z in zs]) per task, q = rank / d, from
    about one entry in `every` (at least SAMPLE_MIN per task); None when there is nothing to sample from
    (preprocessed or float64 task vectors, tiny models)."""
    if tvs.preprocess is not None or tvs.dtype != torch.float32:
        return None
    s = tvs.sample(max(1, min(every, tvs.numel() // SAMPLE_MIN))).abs()
    m = s.shape[1]
    if m < 64:
        return None
    s = torch.nan_to_num(s, nan=float("inf"))  # refused later by the merge pass anyway
    q = rank / tvs.numel()
    se = (q * (1 - q) / m) ** 0.5

    def kth(frac):
        i = min(m, max(1, round(frac * m)))
        return high_bits(s.kthvalue(i, dim=1).values.contiguous()).to(torch.int64)

    return s, [kth(q + z * se) for z in zs]


RANGE_EVERY = 64  # the denser sample of `threshold_range` (measured on 8 ViT-B/32 task vectors: ranges of 2-3 bins)


@dataclass
class ThresholdRange:
    """Per task, a range of |tau| a sample says holds its threshold: lo <= threshold < hi ([N, 1] float32
    bin edges), and the share of the sample's columns with some task's entry in its range."""

    lo: torch.Tensor
    hi: torch.Tensor
    deferred_share: float


def threshold_range(tvs: TaskVectors, rank: int, every: int = RANGE_EVERY) -> ThresholdRange | None:
    """The high-16-bit bins between a sample's quantiles at q -+ 5 standard errors (`_sample_bins`, one
    entry in `every`), as value edges: TIES's one-pass merge decides every entry outside [lo, hi) and
    defers the columns with an entry inside (core.merging.methods.ties_direction). A range that misses
    the threshold costs a pass, never exactness. On 8 ViT-B/32-shaped task vectors (1 entry in 64, 1.4M
    per task): 2-3 bins per task, 4.4 % of the columns deferred, 0.094 s for the sample (measured)."""
    sampled = _sample_bins(tvs, rank, every, (-5, 5))
    if sampled is None:
        return None
    s, (lo, hi) = sampled
    hb = high_bits(s.contiguous()).to(torch.int64)
    share = float(((hb >= lo.unsqueeze(1)) & (hb <= hi.unsqueeze(1))).any(dim=0).double().mean())
    return ThresholdRange(bin_edges(lo.tolist())[0], bin_edges(hi.tolist())[1], share)


def topk_thresholds(
    tvs: TaskVectors, k: float, candidates: Candidates | None | str = "sample"
) -> tuple[list[int], list[int], list[float] | None] | None:
    """One pass over the task vectors toward each task's TIES threshold (float32 task vectors).

    Returns (bins, ranks, thresholds): per task the high-16-bit bin of |tau| that holds the threshold and
    the threshold's rank inside that bin, from a histogram of the high 16 bits of every entry; and, when
    candidate bins are given ("sample": taken by `candidate_bins` first) and hold each task's bin, the
    exact thresholds themselves: the pass also histograms the low 16 bits of the entries that fall in the
    candidate bins, and a float32's 32 bits are then known. thresholds is None without candidates or when
    some task's bin was not among them (the caller finishes from bins and ranks: `gather_thresholds`, or
    TIES's deferred columns); the whole result is None when k keeps everything. Exact either way: the
    sample only decides which entries' low bits are counted. The low-bit histogram costs about as much
    as the high one (a selection over every entry), so TIES asks for it only when deferring would cost
    more."""
    rank = topk_rank(tvs, k)
    if rank is None:
        return None
    n = len(tvs)
    nbins = 1 << 15  # high 16 bits of a non-negative float32 (sign bit 0)
    dev = tvs.device
    hist = torch.zeros(n, nbins, dtype=torch.int64, device=dev)
    cand = candidate_bins(tvs, rank) if candidates == "sample" else candidates
    if cand is not None:
        first, width = cand.first, cand.width
        first16 = first.to(torch.int16).to(dev).unsqueeze(1)
        outside = (~(width - 1)).to(torch.int16).to(dev).unsqueeze(1)  # bits that are 0 for 0 <= rel < width
        offset = (torch.cumsum(width, 0) - width).to(dev)  # each task's first fine bin, in units of 2^16
        fine = torch.zeros(int(width.sum()) << 16, dtype=torch.int64, device=dev)
        pending, held = [], 0
    # On the CPU in float32 one compiled loop per slab counts both histograms (core.merging.fused, GIL
    # released) while a reader thread fills the next slab; elsewhere torch's bincounts.
    kernel = fused.usable(tvs.device, tvs.dtype)
    kcand = None if cand is None else (first, width, offset.cpu())
    # 4x wider slabs than the merge pass: a bincount per task and slab, so fewer, larger ones (measured
    # 2.05 vs 2.8 s for 8 ViT-B/32 task vectors)
    for ch in tvs.chunks(size=4 * chunk_columns(n), read_ahead=kernel):
        if kernel:
            fused.histogram_slab(ch.tvs, hist, kcand, None if cand is None else fine)
            continue
        high = high_bits(ch.tvs)
        for t in range(n):
            hist[t] += torch.bincount(high[t], minlength=nbins)
        if cand is None:
            continue
        rel = high - first16  # the entry's bin relative to its task's first candidate
        idx = (rel & outside).eq_(0).view(-1).nonzero().squeeze(1)
        if idx.numel():
            task = idx // ch.tvs.shape[1]
            low = ch.tvs.view(torch.int32).view(-1)[idx] & 0xFFFF  # the low 16 bits of |tau| (sign is high)
            pending.append(((offset[task] + rel.view(-1)[idx]) << 16) | low)
            held += idx.numel()
            if held >= FINE_FLUSH:
                fine += torch.bincount(torch.cat(pending), minlength=fine.numel())
                pending, held = [], 0
    cum = hist.cpu().cumsum(dim=1)
    bins, ranks = [], []
    for t in range(n):
        b = int(torch.searchsorted(cum[t], torch.tensor(rank, dtype=torch.int64)))
        bins.append(b)
        ranks.append(rank - (int(cum[t, b - 1]) if b > 0 else 0))
    if cand is None:
        return bins, ranks, None
    if pending:
        fine += torch.bincount(torch.cat(pending), minlength=fine.numel())
    fine = fine.cpu()
    thresholds = []
    for t in range(n):
        j = bins[t] - int(first[t])
        if not 0 <= j < int(width[t]):
            return bins, ranks, None  # the sample missed this task's bin
        seg = fine[(int(offset[t]) + j) << 16 : (int(offset[t]) + j + 1) << 16]
        low = int(torch.searchsorted(seg.cumsum(0), torch.tensor(ranks[t], dtype=torch.int64)))
        bits = torch.tensor([(bins[t] << 16) | low], dtype=torch.int32)
        thresholds.append(float(bits.view(torch.float32)))
    return bins, ranks, thresholds


def bin_edges(bins: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """([N, 1] lowest |tau| of each bin, [N, 1] lowest |tau| of the next bin) as float32: for finite
    non-negative floats the bit order is the value order, so "in bin b" is lo <= |tau| < hi."""
    b = torch.tensor(bins, dtype=torch.int64)
    lo = (b << 16).to(torch.int32).view(torch.float32).unsqueeze(1)
    hi = ((b + 1) << 16).to(torch.int32).view(torch.float32).unsqueeze(1)  # bin 0x7F80 is +inf: no finite value above
    return lo, hi


def global_topk_thresholds(tvs: TaskVectors, k: float) -> list[float] | None:
    """Per task, the TIES trim threshold over the whole flattened task vector.

    Reference (nik-dim/tall_masks topk_values_mask): with d entries, the
    threshold is the (d - int(d*k))-th smallest |tau| (1-indexed) and entries
    with |tau| >= threshold are kept. Returns None when k >= 1 (keep everything).
    Two streaming passes (histogram, then the candidates of one bin); TIES itself needs only the
    histogram pass (core.merging.methods.ties_direction decides the in-bin entries after its merge pass).
    """
    rank = topk_rank(tvs, k)
    if rank is None:
        return None
    n = len(tvs)
    if tvs.dtype == torch.float64:  # rare (float64 checkpoints): an exact selection over one copy per task
        per_task: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for ch in tvs.chunks():
            for t in range(n):
                per_task[t].append(ch.tvs[t].abs().cpu())
        return [float(torch.kthvalue(torch.cat(c), rank).values) for c in per_task]
    bins, ranks, thresholds = topk_thresholds(tvs, k)
    return thresholds if thresholds is not None else gather_thresholds(tvs, bins, ranks)


def gather_thresholds(tvs: TaskVectors, bins: list[int], ranks: list[int]) -> list[float]:
    """Pass 2 of the exact threshold: gather each task's values in its bin, select the rank inside it."""
    n = len(tvs)
    want = torch.tensor(bins, dtype=torch.int16, device=tvs.device).unsqueeze(1)
    cands: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for ch in tvs.chunks():
        hit = high_bits(ch.tvs) == want
        rows = hit.any(dim=1).nonzero().flatten().tolist()
        for t in rows:
            cands[t].append(ch.tvs[t][hit[t]].abs().cpu())
    return [float(torch.kthvalue(torch.cat(cands[t]), ranks[t]).values) for t in range(n)]


def order_key_high(x: torch.Tensor) -> torch.Tensor:
    """For float32 x: a bin in [0, 2^16) from the high 16 bits of an order-preserving integer key
    (x < y implies bin(x) <= bin(y)); negatives have every bit but the sign flipped."""
    bits = x.view(torch.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return ((key >> 16) + 32768).to(torch.int64)


def kth_smallest(batches: Callable[[], Iterable[torch.Tensor]], ranks: Sequence[Sequence[int]]) -> list[list[float]]:
    """Exact k-th smallest values per row of a streamed [N, d] matrix, without holding it.

    batches(): a fresh iterator of [N, w] column blocks (called twice for float32: a histogram
    pass and a gather pass); ranks[t]: 1-indexed ranks wanted in row t. Returns the values,
    exactly what `row.sort().values[rank - 1]` gives for finite rows. Radix select on an
    order-preserving integer key of the float32 bits (signed values allowed); float64 blocks
    are gathered per row instead (float64 model sets are rare and small).
    """
    it = iter(batches())
    first = next(it, None)
    if first is None:
        raise ValueError("kth_smallest over an empty matrix")
    n = first.shape[0]
    if len(ranks) != n:
        raise ValueError(f"got ranks for {len(ranks)} rows of a {n}-row matrix")
    if first.dtype != torch.float32:
        rows: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for blk in itertools.chain([first], it):  # one block at a time
            for t in range(n):
                rows[t].append(blk[t].to("cpu", copy=True))
        cat = [torch.cat(r) for r in rows]
        return [[float(torch.kthvalue(cat[t], int(r)).values) for r in ranks[t]] for t in range(n)]
    nbins = 1 << 16
    hist = torch.zeros(n, nbins, dtype=torch.int64, device=first.device)
    d = 0
    for blk in itertools.chain([first], it):  # one block at a time
        high = order_key_high(blk.contiguous())
        d += blk.shape[1]
        for t in range(n):
            hist[t] += torch.bincount(high[t], minlength=nbins)
    cum = hist.cpu().cumsum(dim=1)
    want: list[list[tuple[int, int]]] = []  # per row: (bin, rank inside the bin)
    for t in range(n):
        row = []
        for r in ranks[t]:
            if not 1 <= int(r) <= d:
                raise ValueError(f"rank {r} out of range 1..{d}")
            b = int(torch.searchsorted(cum[t], torch.tensor(int(r), dtype=torch.int64)))
            row.append((b, int(r) - (int(cum[t, b - 1]) if b > 0 else 0)))
        want.append(row)
    bins = [sorted({b for b, _ in row}) for row in want]
    cands: dict[tuple[int, int], list[torch.Tensor]] = {(t, b): [] for t in range(n) for b in bins[t]}
    for blk in batches():
        blk = blk.contiguous()
        high = order_key_high(blk)
        for t in range(n):
            for b in bins[t]:
                hit = high[t] == b
                if bool(hit.any()):
                    cands[(t, b)].append(blk[t][hit].cpu())
    return [[float(torch.kthvalue(torch.cat(cands[(t, b)]), k).values) for b, k in want[t]] for t in range(n)]
