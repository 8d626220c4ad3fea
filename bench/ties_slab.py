"""One TIES slab: the torch pass's ops against the compiled kernel (core.merging.fused), in one process.

An [N, width] float32 slab of Gaussian task vectors (the merge pass's default: 8 tasks, 262,144 columns),
undecided bin edges around each task's 80th percentile of |tau| (the one-pass range mode, with deferred
columns) and exact thresholds; each timed as the best of --repeat runs, alternating. Prints milliseconds per
slab, the slab's bytes per second and the ratio, and checks the two agree bit for bit.

    python bench/ties_slab.py [--tasks 8] [--width 262144] [--threads 2] [--repeat 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.merging import fused  # noqa: E402
from core.merging.direction import weighted  # noqa: E402
from core.merging.methods import elect  # noqa: E402


def torch_ops(T, lo, hi, agg="mean"):
    """The torch pass's per-slab arithmetic (core.merging.methods._ties_pass), on a copy of T."""
    T = T.clone()
    column_sums = T.sum(dim=0)
    a = T.abs()
    ge_lo = torch.ge(a, lo, out=torch.empty_like(a))
    kept = torch.ge(a, hi, out=a)
    counts = ge_lo.sum(dim=1)
    hits = ge_lo.sum(dim=0).sub_(kept.sum(dim=0))
    T.mul_(kept)
    out, raw, cols, neg = elect(weighted(T, None), agg)
    return out, column_sums, hits, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--width", type=int, default=262144)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    T = torch.randn(a.tasks, a.width, generator=g)
    q = T.abs()[:, : min(a.width, 100_000)]
    lo, hi = torch.quantile(q, 0.795, dim=1, keepdim=True), torch.quantile(q, 0.8, dim=1, keepdim=True)
    t0 = time.perf_counter()
    if not fused.usable(torch.device("cpu"), torch.float32):
        print("the kernel is not usable here (numba missing, or torch sums in another order)")
        return 1
    print(f"kernel load (numba import, cached code, order check): {time.perf_counter() - t0:.2f} s")
    tail = fused.torch_tail(a.width)
    best = {"torch ops": 1e9, "kernel, undecided range": 1e9, "kernel, exact thresholds": 1e9}
    for _ in range(a.repeat):
        for name, fn in (
            ("torch ops", lambda: torch_ops(T, lo, hi)),
            ("kernel, undecided range", lambda: fused.ties_slab(T, lo, hi, None, "mean", None, tail)),
            ("kernel, exact thresholds", lambda: fused.ties_slab(T, hi, hi, None, "mean", None, tail)),
        ):
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    out, sums, hits, _ = torch_ops(T, lo, hi)
    r = fused.ties_slab(T, lo, hi, None, "mean", None, tail)
    decided = hits == 0
    same = torch.equal(r.colsum.view(torch.int32), sums.view(torch.int32)) and torch.equal(
        r.out[decided].view(torch.int32), out[decided].view(torch.int32)
    )
    gb = T.numel() * 4 / 1e9
    print(
        f"[{a.tasks}, {a.width}] float32 slab, {a.threads} torch threads (the kernel runs on one), best of {a.repeat}:"
    )
    for name, s in best.items():
        print(f"  {name:<26} {s * 1e3:7.2f} ms  {gb / s:6.2f} GB/s  {best['torch ops'] / s:5.1f}x")
    print(f"bit for bit equal on the decided columns: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
