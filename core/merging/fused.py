"""TIES's merge arithmetic on a CPU slab in one compiled loop (numba), bit-identical to the torch pass.

The torch pass (core.merging.methods._ties_pass) runs about 15 whole-slab ops per [N, width] slab (sums,
|tau|, comparisons, masks, products, clamps, signs): memory-bound on two cores, 2.5 s of arithmetic at
ViT-B/32 x 8 for inputs that take 0.9 s to read. The kernel (core.merging.ties_kernel.ties_slab) reads a slab
once, in blocks of 256 columns whose trimmed values stay in L1, branch-free so LLVM vectorizes it (2.5-3.1 ms
per 8 x 262144 slab against 6.9-16.6 ms for the torch ops: bench/ties_slab.py), and releases the GIL, so a reader thread fills the next
slab meanwhile (TaskVectors.chunks(read_ahead=True)). With many tasks TIES's threshold pass (the high- and
low-bit histograms of |tau|, core.merging.kselect.topk_thresholds) runs a compiled loop too
(`histogram_slab`: integer counts, the same in any order).

Bit-identity with the reference (nik-dim/tall_masks ties_utils.py on the stacked [N, d] matrix): every value
is added in torch's order. torch's float32 sum over dim 0 of a contiguous [N, W] matrix
(aten/src/ATen/native/cpu/SumKernel.cpp) sums the columns of each full group of 32 with `multi_row_sum`, a
cascade: rows accumulate in level 0; after each run of 16 rows level 0 is added into level 1 (and a level
into the next when a run of 16 of its own completes); rows after the last full run go into level 0; the
levels are added last (0 + 1 + 2 + 3). The last W mod 32 columns go through `row_sum`: four interleaved
cascades over rows k, k + 4, ..., the rows after the last group of four added to the first, then the four
added in order (narrower than 8 columns, torch's scalar loop groups columns by 4). The threads split the
columns at multiples of 32, so on the whole [N, d] matrix only its last d mod 32 columns sum the second way:
a slab passes where that tail starts in it (`tail_from`), and the kernel's sums are the reference's
wherever the slab's edges fall. Products, comparisons, the clamp and the division are single IEEE float32
operations in both.

That order is what torch 2.14's CPU kernels do on this machine (AVX512 capability; measured). On
first use, per torch thread count, `_order_matches` checks the kernel's column sums against torch.sum on
heavy-tailed matrices whose sums change with the order; any difference (another CPU, another torch) turns
the kernel off and the torch pass runs, with a warning. Without numba the torch pass runs too.
tests/test_merging_fused.py checks the kernel against the torch ops (N = 1..40, widths 2..4133, per-task
lambdas, exact cancellations, undecided entries) and whole merges against the flat reference.

Cost: numba's import and the cached machine code load once per process (0.7 s, ~80 MB); the first use
after an install compiles the kernel (4 s), cached next to this module (numba's cache=True).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

_kernel = None  # the compiled ties_slab; False when numba is missing or the sums disagree with torch's here
_checked_threads: set[int] = set()  # torch thread counts the order of the sums was checked at
ENABLED = True  # tests switch the kernel off to run the torch pass on the same inputs
log = logging.getLogger(__name__)


def usable(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a merge on `device` in `dtype` can use the kernel: float32 on the CPU, numba importable,
    and torch's sums on this machine in the order the kernel replays (`_order_matches`, checked once per
    torch thread count: another CPU's kernels could group columns differently; then the torch pass runs)."""
    if not (ENABLED and device.type == "cpu" and dtype == torch.float32):
        return False
    global _kernel
    if _kernel is None:
        try:
            from .ties_kernel import ties_slab as kernel
        except ImportError:  # numba missing: the torch pass does the same arithmetic
            log.info("numba is not installed: TIES merges on the CPU run the torch pass")
            _kernel = False
        else:
            _kernel = kernel
    threads = torch.get_num_threads()
    if _kernel and threads not in _checked_threads:
        if not _order_matches():
            log.warning("torch's sums on this machine are not in the order the TIES kernel replays: torch pass")
            _kernel = False
        _checked_threads.add(threads)
    return bool(_kernel)


def _order_matches() -> bool:
    """Column sums of heavy-tailed [N, W] matrices (N across the cascade's run of 16, W across torch's
    column groups and its threads' split) from the kernel equal torch.sum(dim=0) bit for bit."""
    g = torch.Generator().manual_seed(0)
    for n in (3, 5, 8, 17, 20, 33):
        for w in (2, 5, 8, 40, 1000, 40013):
            T = torch.randn(n, w, generator=g) * torch.exp(3 * torch.randn(n, w, generator=g))
            r = ties_slab(T, None, None, None, "sum", None, torch_tail(w))
            if not torch.equal(r.colsum.view(torch.int32), T.sum(dim=0).view(torch.int32)):
                return False
    return True


def torch_tail(w: int) -> int:
    """The first column of a contiguous [N, w] float32 matrix that torch sums over dim 0 in row_sum's
    interleaved order: on this build's CPU kernels, columns in full groups of 32 (vectorized_outer_sum's
    multi_row_sum) sum in the plain cascade, the rest in row_sum's order; narrower than 8 columns, torch takes
    its scalar loop, whose groups are 4 columns. Checked against torch at first use (`_order_matches`)."""
    return w - w % 32 if w >= 8 else w - w % 4


class SlabResult:
    """What `ties_slab` found in one slab (torch views of its numpy outputs)."""

    def __init__(self, out, colsum, hits, sign_total, cancel_cols, cancel_vals):
        self.out, self.colsum, self.hits = out, colsum, hits
        self.sign_total, self.cancel_cols, self.cancel_vals = sign_total, cancel_cols, cancel_vals


def ties_slab(
    T: torch.Tensor,
    lo: torch.Tensor | None,
    hi: torch.Tensor | None,
    per_task: list[float] | None,
    agg: str,
    at_or_above: torch.Tensor | None,
    tail_from: int,
    out: torch.Tensor | None = None,
) -> SlabResult:
    """The kernel on slab T (float32 [N, W], contiguous, CPU; `usable`). lo/hi: [N, 1] bin edges or
    thresholds (None: nothing trimmed); at_or_above: int64 [N] counts of entries >= lo, added to (or None);
    out: where to write the merged values (a [W] float32 view, e.g. FlatWriter.view) or None.
    tail_from: the first column summed in torch's row_sum order: where the flat vector's own tail
    (`torch_tail(d)`) starts in this slab, so the sums are those of the reference's whole [N, d] matrix
    (`torch_tail(W)` gives the sums torch takes of T itself)."""
    kernel = _kernel
    n, w = T.shape
    f32 = np.float32
    if lo is None:  # k = 1: every entry kept
        lo_a = hi_a = np.zeros(n, dtype=f32)
    else:
        lo_a = lo.reshape(-1).to(torch.float32).numpy()
        hi_a = lo_a if hi is lo else hi.reshape(-1).to(torch.float32).numpy()
    lam = np.ones(n, dtype=f32) if per_task is None else np.asarray(per_task, dtype=f32)
    out_t = torch.empty(w, dtype=torch.float32) if out is None else out
    colsum = np.empty(w, dtype=f32)
    counts = np.zeros(n, dtype=np.int64)
    hits = np.empty(w, dtype=np.int64)
    cancel_cols = np.empty(w, dtype=np.int64)
    cancel_vals = np.empty(w, dtype=f32)
    n_hits, sign_total, n_cancel = kernel(
        T.numpy(),
        lo_a,
        hi_a,
        lam,
        agg == "mean",
        tail_from,
        out_t.numpy(),
        colsum,
        counts,
        hits,
        cancel_cols,
        cancel_vals,
    )
    if at_or_above is not None:
        at_or_above += torch.from_numpy(counts)
    return SlabResult(
        out_t,
        torch.from_numpy(colsum),
        torch.from_numpy(hits[:n_hits]) if n_hits else None,
        int(sign_total),
        torch.from_numpy(cancel_cols[:n_cancel]) if n_cancel else None,
        torch.from_numpy(cancel_vals[:n_cancel]) if n_cancel else None,
    )


def histogram_slab(T: torch.Tensor, hist: torch.Tensor, cand: tuple | None, fine: torch.Tensor | None) -> None:
    """The TIES threshold pass's histograms of slab T (float32 [N, W], contiguous, CPU; `usable`): adds to
    hist (int64 [N, 2^15], CPU) and, with cand = (first, width, offset) int64 [N] tensors of the candidate
    bins, to fine (int64, CPU) - core.merging.ties_kernel.histogram_slab, GIL released."""
    from .ties_kernel import histogram_slab as kernel

    n = T.shape[0]
    if cand is None:
        z = np.zeros(n, dtype=np.int64)
        kernel(T.view(torch.int32).numpy(), hist.numpy(), z, z, z, np.zeros(1, dtype=np.int64), False)
        return
    first, width, offset = (c.to(torch.int64).numpy() for c in cand)
    kernel(T.view(torch.int32).numpy(), hist.numpy(), first, width, offset, fine.numpy(), True)


def warm() -> str:
    """Load (on a fresh install: compile, ~4 s) the kernel now, so no merge pays for it; `make` runs this after
    installing."""
    import time

    t = time.perf_counter()
    ok = usable(torch.device("cpu"), torch.float32)
    if ok:  # the threshold pass's loop too (`usable` ran the merge pass's)
        histogram_slab(torch.zeros(1, 8), torch.zeros(1, 1 << 15, dtype=torch.int64), None, None)
    state = "ready" if ok else "not usable here (the torch pass runs)"
    return f"TIES kernel {state} ({time.perf_counter() - t:.1f} s)"
