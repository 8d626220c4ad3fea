"""The merge-method registry.

A merge method is one function plus one decorator (mergekit's pattern): the
decorator records the method's name, its parameters (type, default, range -
the Merge lab draws one control per parameter, so a new method needs no UI
code) and the paper/code it follows.

Every method computes a *merged direction* tau_merged (a task-vector-shaped
dict) and a global scale lambda. `merge` then returns

    theta = theta_0 + lambda * tau_merged                 (no LiNeS)
    theta = theta_0 + lambda(l) (.) tau_merged            (LiNeS / any per-block curve; no extra global lambda)

following wang-kee/LiNeS. Splitting direction and scale is what makes the
live loop fast: sliders over lambda, LiNeS (alpha, beta) or the block curve
only re-apply a cached direction.

Memory: methods stream key by key over the fine-tuned checkpoints (which may
be lazy mappings over files); no method stacks N full models. TIES finds its
exact global top-k threshold with a two-pass radix select over the float bit
patterns instead of sorting the concatenated vector.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .lines import infer_num_blocks, key_scales, lines_curve, multitask_alpha

StateDict = Mapping[str, torch.Tensor]


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Param:
    """A method parameter as the UI and the CLI see it.

    kind: "float", "int", "choice" or "bool". per_task=True means the value may
    also be a list with one entry per task (e.g. task-arithmetic coefficients).
    """

    name: str
    kind: str
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: tuple = ()
    per_task: bool = False
    help: str = ""


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., MergedDirection]
    params: tuple[Param, ...]
    reference: str
    description: str
    # Grid for the global lambda when tuned on validation (METHODS.md).
    lambda_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))
    # Which LiNeS beta grid the paper uses with this method.
    beta_grid: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


METHODS: dict[str, MergeMethod] = {}


def merge_method(name: str, *, params: Sequence[Param], reference: str, description: str, **grids):
    """Register `fn(tvs: TaskVectors, **params) -> MergedDirection` under `name`."""

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"merge method {name!r} registered twice")
        METHODS[name] = MergeMethod(name, fn, tuple(params), reference, description, **grids)
        return fn

    return deco


def get_method(name: str) -> MergeMethod:
    if name not in METHODS:
        raise KeyError(f"unknown merge method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


# --------------------------------------------------------------------------- task vectors, streamed
# The reference implementations flatten every checkpoint into one vector (keys
# sorted by name), stack the N task vectors into an [N, d] matrix and reduce
# over the task axis. torch's reduction order over that axis depends on the
# column block a value falls in, so to be bit-identical we walk the same
# virtual flat vector in chunks aligned to its start: each [N, CHUNK] slab sums
# exactly like the corresponding columns of the full matrix (measured for
# N = 2..20 and d up to 3M, 1 and 2 threads), while memory stays at one slab.
CHUNK = 1 << 20


@dataclass
class Chunk:
    """Columns [start, start+width) of the virtual flat vector."""

    start: int
    segments: list[tuple[str, int, int]]  # (key, offset inside the key, length), in flat order
    tvs: torch.Tensor  # [N, width] task vectors
    base: torch.Tensor  # [width] pretrained weights
    finetuned: torch.Tensor | None = None  # [N, width], when asked for


class TaskVectors:
    """The N task vectors tau_t = theta_t - theta_0, computed on demand from
    (possibly lazy) state dicts, optionally preprocessed per (task, key) (DARE).

    Keys: the floating-point keys of the fine-tuned checkpoints, sorted by
    name (the flattening order of the reference implementations).
    """

    def __init__(self, base: StateDict, finetuned: Sequence[StateDict], names: Sequence[str] | None = None):
        if len(finetuned) == 0:
            raise ValueError("merging needs at least one fine-tuned checkpoint")
        self.base = base
        self.finetuned = list(finetuned)
        self.names = list(names) if names is not None else [f"task{i}" for i in range(len(finetuned))]
        first = self.finetuned[0]
        self.keys = sorted(k for k in first.keys() if torch.is_floating_point(first[k]))
        ref = set(self.keys)
        for name, sd in zip(self.names, self.finetuned):
            ks = {k for k in sd.keys() if torch.is_floating_point(sd[k])}
            if ks != ref:
                missing, extra = sorted(ref - ks)[:3], sorted(ks - ref)[:3]
                raise ValueError(
                    f"fine-tuned checkpoint {name!r} has different parameters from {self.names[0]!r}"
                    f" (missing {missing}, extra {extra})"
                )
        self.shapes: dict[str, torch.Size] = {}
        for k in self.keys:
            if k not in base:
                raise KeyError(f"parameter {k!r} of the fine-tuned checkpoints is not in the base checkpoint")
            self.shapes[k] = base[k].shape
        self.preprocess: Callable[[int, str, torch.Tensor], torch.Tensor] | None = None
        # Compute dtype: float32 (half-precision inputs are upcast), float64 when any input is float64,
        # so a float64 model set merges at the reference's own precision.
        k0 = self.keys[0] if self.keys else None
        wide = k0 is not None and any(sd[k0].dtype == torch.float64 for sd in (base, *self.finetuned))
        self.dtype = torch.float64 if wide else torch.float32

    def __len__(self) -> int:
        return len(self.finetuned)

    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes.values())

    def base_f(self, key: str) -> torch.Tensor:
        return _f32(self.base[key])

    def raw(self, key: str) -> list[torch.Tensor]:
        b = self.base_f(key)
        out = []
        for name, ft in zip(self.names, self.finetuned):
            f = _f32(ft[key])
            if f.shape != b.shape:
                raise ValueError(
                    f"shape mismatch for {key!r}: base {tuple(b.shape)} vs fine-tuned {name!r} {tuple(f.shape)}"
                )
            out.append(f - b)
        return out

    def get(self, key: str) -> list[torch.Tensor]:
        tvs = self.raw(key)
        if self.preprocess is not None:
            tvs = [self.preprocess(t, key, v) for t, v in enumerate(tvs)]
        return tvs

    def chunks(self, *, with_finetuned: bool = False, size: int | None = None):
        """Yield Chunks covering the flat vector in order, each `size` wide (the last may be shorter).

        The chunk's tensors are reused buffers, valid until the next chunk is requested.
        Task vectors are written straight into the [N, size] buffer (one pass per input).
        """
        size = size or CHUNK
        n_tasks = len(self)
        buf = torch.empty(n_tasks, size, dtype=self.dtype)
        bbuf = torch.empty(size, dtype=self.dtype)
        fbuf = torch.empty(n_tasks, size, dtype=self.dtype) if with_finetuned else None
        pos, start, segments = 0, 0, []

        def chunk(width):
            if width == size:
                return Chunk(start, segments, buf, bbuf, fbuf)
            # the last, partial chunk: contiguous copies so reductions see a plain [N, width] matrix
            return Chunk(
                start,
                segments,
                buf[:, :width].contiguous(),
                bbuf[:width].clone(),
                None if fbuf is None else fbuf[:, :width].contiguous(),
            )

        for key in self.keys:
            b = self.base_f(key).to(self.dtype).reshape(-1)
            fts = [_f32(sd[key]).to(self.dtype).reshape(-1) for sd in self.finetuned]
            for name, f in zip(self.names, fts):
                if f.numel() != b.numel():
                    raise ValueError(
                        f"shape mismatch for {key!r}: base {tuple(self.shapes[key])} vs fine-tuned "
                        f"{name!r} {tuple(self.finetuned[self.names.index(name)][key].shape)}"
                    )
            tvs = None
            if self.preprocess is not None:
                tvs = [
                    self.preprocess(t, key, (f - b).reshape(self.shapes[key])).reshape(-1) for t, f in enumerate(fts)
                ]
            n, off = b.numel(), 0
            while off < n:
                take = min(size - pos, n - off)
                bbuf[pos : pos + take] = b[off : off + take]
                for t in range(n_tasks):
                    if tvs is None:
                        torch.sub(fts[t][off : off + take], b[off : off + take], out=buf[t, pos : pos + take])
                    else:
                        buf[t, pos : pos + take] = tvs[t][off : off + take]
                    if fbuf is not None:
                        fbuf[t, pos : pos + take] = fts[t][off : off + take]
                segments.append((key, off, take))
                pos += take
                off += take
                if pos == size:
                    yield chunk(size)
                    start, pos, segments = start + size, 0, []
        if pos:
            yield chunk(pos)


class FlatWriter:
    """Collects per-chunk results back into tensors shaped like the parameters."""

    def __init__(self, shapes: Mapping[str, torch.Size], dtype=torch.float32):
        self.out = {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}

    def write(self, chunk: Chunk, values: torch.Tensor) -> None:
        pos = 0
        for key, off, ln in chunk.segments:
            self.out[key].view(-1)[off : off + ln] = values[pos : pos + ln]
            pos += ln

    def write_at(self, segments: list[tuple[str, int, int]], columns: torch.Tensor, values: torch.Tensor) -> None:
        """Write values at a few columns of a chunk whose segments are given (columns ascending)."""
        pos = 0
        for key, off, ln in segments:
            sel = (columns >= pos) & (columns < pos + ln)
            if sel.any():
                self.out[key].view(-1)[columns[sel] - pos + off] = values[sel]
            pos += ln


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class MergedDirection:
    """tau_merged, the global scale lambda, and ||sum_t tau_t||_1 for the LiNeS multi-task alpha."""

    vector: dict[str, torch.Tensor]
    scale: float
    summed_l1: float
    num_tasks: int
    info: dict = field(default_factory=dict)
    merged_l1_value: float | None = None  # accumulated chunk by chunk exactly like summed_l1

    def merged_l1(self) -> float:
        if self.merged_l1_value is not None:
            return self.merged_l1_value
        return float(sum(float(v.abs().sum()) for v in self.vector.values()))

    def auto_alpha(self) -> float:
        return multitask_alpha(self.summed_l1, self.merged_l1(), self.num_tasks)


def _coefficients(coefficients, n: int) -> tuple[list[float] | None, float]:
    """(per-task list or None, global scale)."""
    if isinstance(coefficients, (list, tuple)):
        if len(coefficients) != n:
            raise ValueError(f"got {len(coefficients)} coefficients for {n} tasks")
        return [float(c) for c in coefficients], 1.0
    return None, float(coefficients)


def _l1(t: torch.Tensor) -> float:
    # float32 sums over at most one chunk, accumulated in Python floats
    return float(t.abs().sum())


def _weighted(tvs: torch.Tensor, per_task: list[float] | None) -> torch.Tensor:
    if per_task is None:
        return tvs
    return tvs * torch.tensor(per_task, dtype=tvs.dtype).unsqueeze(1)


# --------------------------------------------------------------------------- methods
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
        Param(
            "coefficients",
            "float",
            0.3,
            0.0,
            1.5,
            0.05,
            per_task=True,
            help="lambda: one global value, or one per task",
        ),
    ),
    reference="Ilharco et al. 2023, mlfoundations/task_vectors",
    description="theta_0 + lambda * sum_t tau_t (or sum_t lambda_t tau_t).",
)
def task_arithmetic(tvs: TaskVectors, coefficients: float | Sequence[float] = 0.3) -> MergedDirection:
    per_task, scale = _coefficients(coefficients, len(tvs))
    w, summed, merged = FlatWriter(tvs.shapes, tvs.dtype), 0.0, 0.0
    for ch in tvs.chunks():
        raw_sum = ch.tvs.sum(dim=0)
        summed += _l1(raw_sum)
        if per_task is None:
            out = raw_sum
        else:
            out = _weighted(ch.tvs, per_task).sum(dim=0)
            merged += _l1(out)
        w.write(ch, out)
    return MergedDirection(w.out, scale, summed, len(tvs), merged_l1_value=summed if per_task is None else merged)


def _trim_fraction(k: float) -> float:
    # The references accept k in percent when > 1 (k=20 means 20%). k = 1.0 is where they part:
    # FusionBench and the original TIES code fail on it (kthvalue(0)), tall_masks reads it as 1%;
    # here it keeps every entry (no trim), which is what the Merge lab's slider end means.
    return k / 100 if k > 1 else k


def global_topk_thresholds(tvs: TaskVectors, k: float) -> list[float] | None:
    """Per task, the TIES trim threshold over the whole flattened task vector.

    Reference (nik-dim/tall_masks topk_values_mask): with d entries, the
    threshold is the (d - int(d*k))-th smallest |tau| (1-indexed) and entries
    with |tau| >= threshold are kept. Found exactly with a radix select on the
    IEEE-754 bit patterns (monotone in |x| for non-negative floats): pass 1
    histograms the high 16 bits, pass 2 gathers the one bin that holds the
    answer and selects inside it. Returns None when k >= 1 (keep everything).
    """
    frac = _trim_fraction(k)
    if frac >= 1:
        return None
    d = tvs.numel()
    rank = max(1, d - int(d * frac))  # 1-indexed rank of the threshold among ascending |tau|
    n = len(tvs)
    if tvs.dtype == torch.float64:  # rare (float64 checkpoints): an exact selection over one copy per task
        per_task: list[list[torch.Tensor]] = [[] for _ in range(n)]
        for ch in tvs.chunks():
            for t in range(n):
                per_task[t].append(ch.tvs[t].abs().clone())
        return [float(torch.kthvalue(torch.cat(c), rank).values) for c in per_task]
    nbins = 1 << 15  # high 16 bits of a non-negative float32 (sign bit 0)
    hist = torch.zeros(n, nbins, dtype=torch.int64)
    for ch in tvs.chunks():
        high = _high_bits(ch.tvs)
        for t in range(n):
            hist[t] += torch.bincount(high[t], minlength=nbins)
    cum = hist.cumsum(dim=1)
    bins, ranks = [], []
    for t in range(n):
        b = int(torch.searchsorted(cum[t], torch.tensor(rank, dtype=torch.int64)))
        before = int(cum[t, b - 1]) if b > 0 else 0
        bins.append(b)
        ranks.append(rank - before)
    want = torch.tensor(bins, dtype=torch.int16).unsqueeze(1)
    cands: list[list[torch.Tensor]] = [[] for _ in range(n)]
    for ch in tvs.chunks():
        hit = _high_bits(ch.tvs) == want
        rows = hit.any(dim=1).nonzero().flatten().tolist()
        for t in rows:
            cands[t].append(ch.tvs[t][hit[t]].abs())
    return [float(torch.kthvalue(torch.cat(cands[t]), ranks[t]).values) for t in range(n)]


def _high_bits(x: torch.Tensor) -> torch.Tensor:
    """The high 16 bits of |x| for float32 x, as int16 in [0, 2^15): monotone in |x|.

    On little-endian machines a strided int16 view of the upper halves (no shift, no abs: 3x faster
    than the int32 route, which is the fallback elsewhere).
    """
    if sys.byteorder == "little" and x.is_contiguous():
        return x.view(torch.int16)[..., 1::2] & 0x7FFF
    return ((x.view(torch.int32) >> 16) & 0x7FFF).to(torch.int16)


def ties_direction(tvs: TaskVectors, k: float = 0.2, agg: str = "mean", per_task: list[float] | None = None):
    """TIES: trim (global top-k per task), elect (mass sign, majority fallback), disjoint mean/sum."""
    if agg not in ("mean", "sum"):
        raise ValueError(f"TIES aggregation must be 'mean' or 'sum', got {agg!r}")
    thresholds = global_topk_thresholds(tvs, k)
    thr = None if thresholds is None else torch.tensor(thresholds, dtype=tvs.dtype).unsqueeze(1)

    def trimmed(ch: Chunk) -> torch.Tensor:
        t = ch.tvs if thr is None else ch.tvs * (ch.tvs.abs() >= thr)
        return _weighted(t, per_task)

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
        summed += _l1(ch.tvs.sum(dim=0))
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
        merged += _l1(out)
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
        Param("k", "float", 0.2, 0.01, 1.0, 0.01, help="fraction of each task vector kept (global top-k by magnitude)"),
        Param("agg", "choice", "mean", choices=("mean", "sum"), help="disjoint mean (paper) or sum (FusionBench)"),
        Param("coefficients", "float", 1.0, 0.0, 1.5, 0.05, per_task=True, help="lambda (global or per task)"),
    ),
    reference="Yadav et al. 2023; nik-dim/tall_masks src/utils/ties_utils.py; tanganke/fusion_bench ties_merging",
    description="Trim each task vector to its top-k entries, elect a sign per entry, average the agreeing entries.",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 16)),
    beta_grid=tuple(round(0.1 * i, 1) for i in range(1, 16)),
)
def ties(tvs: TaskVectors, k: float = 0.2, agg: str = "mean", coefficients: float | Sequence[float] = 1.0):
    per_task, scale = _coefficients(coefficients, len(tvs))
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
        Param("p", "float", 0.5, 0.0, 0.99, 0.01, help="drop probability per entry"),
        Param("seed", "int", 0, 0, 2**31 - 1, 1),
        Param("then", "choice", "task_arithmetic", choices=("task_arithmetic", "ties")),
        Param("k", "float", 0.2, 0.01, 1.0, 0.01, help="TIES keep fraction (then = ties)"),
        Param("coefficients", "float", 0.3, 0.0, 1.5, 0.05, per_task=True),
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
    d.summed_l1 = sum(_l1(ch.tvs.sum(dim=0)) for ch in tvs.chunks())
    return d


@merge_method(
    "consensus",
    params=(
        Param("k", "int", 2, 0, 20, 1, help="keep entries used by at least k tasks (2 drops selfish and catastrophic)"),
        Param(
            "tall_lambda",
            "float",
            0.4,
            0.0,
            1.0,
            0.1,
            per_task=True,
            help="TALL-mask lambda_t (paper: {0.2..0.6} per task on validation)",
        ),
        Param("base_method", "choice", "task_arithmetic", choices=("task_arithmetic", "ties")),
        Param("coefficients", "float", 0.4, 0.0, 1.5, 0.05, help="global lambda"),
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
        summed += _l1(raw_sum)
        if mtl is None:
            tau_mtl = raw_sum
        else:
            tau_mtl = torch.cat([mtl[key].reshape(-1)[off : off + ln] for key, off, ln in ch.segments])
        multi = ch.base + tau_mtl
        masks = (ch.base - ch.finetuned).abs() > (multi - ch.finetuned).abs() * lam
        mask = masks.float().sum(dim=0) >= k
        kept += int(mask.sum())
        out = tau_mtl * mask
        merged += _l1(out)
        w.write(ch, out)
    info = {"kept_fraction": kept / max(1, tvs.numel())}
    return MergedDirection(w.out, float(coefficients), summed, n, info, merged_l1_value=merged)


# --------------------------------------------------------------------------- public entry points
def _as_list(finetuned) -> tuple[list[StateDict], list[str]]:
    if isinstance(finetuned, Mapping) and finetuned and all(isinstance(v, Mapping) for v in finetuned.values()):
        return list(finetuned.values()), list(finetuned.keys())
    lst = list(finetuned)
    return lst, [f"task{i}" for i in range(len(lst))]


def merged_direction(base_sd: StateDict, finetuned_sds, method: str, **params) -> MergedDirection:
    """The method's merged direction tau_merged and its global scale (before LiNeS)."""
    m = get_method(method)
    unknown = set(params) - {p.name for p in m.params}
    if unknown:
        raise TypeError(f"merge method {method!r} has no parameter(s) {sorted(unknown)}; it takes {list(m.defaults())}")
    sds, names = _as_list(finetuned_sds)
    tvs = TaskVectors(base_sd, sds, names)
    return m.fn(tvs, **params)


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
            merged = v.mul_(scales[k]).add_(_f32(b))
        else:
            merged = _f32(b) + scales[k] * v
        out[k] = merged.to(b.dtype)
    return out


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
    **params,
) -> dict[str, torch.Tensor]:
    """Merge fine-tuned checkpoints into one state dict (see module docstring).

    finetuned_sds: a list of state dicts or a dict name -> state dict (all with
    the same floating-point keys; the base may hold more keys, which pass
    through). method: a name in METHODS; params: that method's parameters.
    """
    d = merged_direction(base_sd, finetuned_sds, method, **params)
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
