"""TIES's compiled slab kernel (core.merging.fused): bit for bit the torch ops it replaces, the reference's
flat [N, d] sums (torch's cascade and its row_sum tail), the merges that use it, and its fallbacks."""

import logging
import sys

import pytest
import torch
from test_merging import reference_ties_keys

import core.merging.streaming as streaming
from core.merging import fused, merge
from core.merging.direction import weighted
from core.merging.methods import elect

CPU, F32 = torch.device("cpu"), torch.float32
pytestmark = pytest.mark.skipif(not fused.usable(CPU, F32), reason="numba missing or torch's sums in another order")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def torch_slab(T, lo, hi, per_task, agg):
    """The torch pass's arithmetic on one slab (methods._ties_pass), in plain torch ops."""
    T = T.clone()
    colsum = T.sum(dim=0)
    a = T.abs()
    ge_lo, kept = (a >= lo).float(), (a >= hi).float()
    counts = ge_lo.sum(dim=1).long()
    hits = (ge_lo.sum(0) - kept.sum(0)).nonzero().flatten()
    tr = weighted(T * kept, per_task)
    out, raw, cols, neg = elect(tr, agg)
    decided = torch.ones_like(raw, dtype=torch.bool)
    decided[hits] = False
    if cols is not None:
        keep = ~torch.isin(cols, hits)
        cols, neg = cols[keep], neg[keep]
    return out, colsum, hits, int(raw[decided].sum()), cols, neg, counts, decided


def slab(n, w, seed):
    g = torch.Generator().manual_seed(seed)
    T = torch.randn(n, w, generator=g) * torch.rand(n, 1, generator=g)
    T[:, : w // 3] = torch.round(T[:, : w // 3] * 2) / 2  # exact cancellations and ties at the edges
    return T, g


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 15, 16, 17, 20, 31, 32, 33, 40])
@pytest.mark.parametrize("w", [2, 7, 255, 256, 257, 1000, 4133])
def test_the_kernel_equals_the_torch_ops_bit_for_bit(n, w):
    T, g = slab(n, w, 100 * n + w)
    a = T.abs()
    lo, hi = torch.quantile(a, 0.7, dim=1, keepdim=True), torch.quantile(a, 0.8, dim=1, keepdim=True)
    for per_task in (None, [float(x) for x in torch.rand(n, generator=g) + 0.5]):
        for agg in ("mean", "sum"):
            out, colsum, hits, total, cols, neg, counts, decided = torch_slab(T, lo, hi, per_task, agg)
            got_counts = torch.zeros(n, dtype=torch.int64)
            r = fused.ties_slab(T, lo, hi, per_task, agg, got_counts, fused.torch_tail(w))
            assert torch.equal(bits(r.colsum), bits(colsum))
            assert torch.equal(bits(r.out[decided]), bits(out[decided])), (per_task is None, agg)
            assert torch.equal(r.hits if r.hits is not None else torch.empty(0, dtype=torch.int64), hits)
            assert r.sign_total == total and torch.equal(got_counts, counts)
            if cols is None or cols.numel() == 0:
                assert r.cancel_cols is None
            else:
                assert torch.equal(r.cancel_cols, cols) and torch.equal(bits(r.cancel_vals), bits(neg))
            # exact thresholds (lo is hi): nothing undecided, every column decided
            out, colsum, hits, total, *_ = torch_slab(T, hi, hi, per_task, agg)
            r = fused.ties_slab(T, hi, hi, per_task, agg, None, fused.torch_tail(w))
            assert r.hits is None and hits.numel() == 0
            assert torch.equal(bits(r.out), bits(out)) and r.sign_total == total


def test_the_slab_has_cancellations_and_undecided_columns():
    """The cases above exercise what they claim: exact cancellations and undecided entries occur."""
    T, _ = slab(8, 1000, 7)
    a = T.abs()
    lo, hi = torch.quantile(a, 0.7, dim=1, keepdim=True), torch.quantile(a, 0.8, dim=1, keepdim=True)
    r = fused.ties_slab(T, lo, hi, None, "mean", None, fused.torch_tail(1000))
    assert r.hits is not None and r.hits.numel() > 10
    r = fused.ties_slab(T, hi, hi, None, "mean", None, fused.torch_tail(1000))
    assert r.cancel_cols is not None and r.cancel_cols.numel() > 0


@pytest.mark.parametrize("n", [4, 5, 8, 20, 33])
@pytest.mark.parametrize("w", [9, 40, 100, 1000, 40013])
def test_column_sums_are_torchs_on_the_whole_matrix_whatever_the_tail(n, w):
    """torch sums the last W mod 32 columns of an [N, W] matrix in row_sum's interleaved order, the others
    in the plain cascade (N across its runs of 16): the kernel's sums equal torch's, with 1 and 2 threads."""
    g = torch.Generator().manual_seed(n * w)
    T = torch.randn(n, w, generator=g) * torch.exp(3 * torch.randn(n, w, generator=g))
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            r = fused.ties_slab(T, None, None, None, "sum", None, fused.torch_tail(w))
            assert torch.equal(bits(r.colsum), bits(T.sum(dim=0))), t
            # the plain cascade everywhere differs from torch in the tail (so the tail rule is tested)
            if w % 32 and n >= 8:
                plain = fused.ties_slab(T, None, None, None, "sum", None, w)
                assert not torch.equal(bits(plain.colsum[w - w % 32 :]), bits(T.sum(dim=0)[w - w % 32 :]))
    finally:
        torch.set_num_threads(threads)


def _models(n, d_keys, seed, quantize):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in d_keys.items()}
    fts = []
    for t in range(n):
        ft = {}
        for k, v in base.items():
            tv = torch.randn(v.shape, generator=g) * (0.01 + 0.02 * t)
            if quantize:
                tv = torch.round(tv * quantize) / quantize
            ft[k] = v + tv
        fts.append(ft)
    return base, fts


SHAPES = {"a.w": (37, 41), "b.w": (64, 33), "c.bias": (29,)}  # d = 3658: not a multiple of 32


@pytest.mark.parametrize("n, quantize", [(4, None), (5, 8), (8, None), (8, 16), (17, None), (20, 8)])
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_streamed_ties_with_the_kernel_equals_the_flat_reference(monkeypatch, n, quantize, agg):
    """Slabs of 256 columns (4 x CHUNK) through the kernel, deferred columns (few tasks), exact thresholds
    (many), per-task lambdas, ties at the threshold (quantized): the reference's bits, the flat vector's
    last d mod 32 columns included."""
    monkeypatch.setattr(streaming, "CHUNK", 64)
    calls = []
    kernel = fused.ties_slab
    monkeypatch.setattr(fused, "ties_slab", lambda *a, **kw: calls.append(a[0].shape) or kernel(*a, **kw))
    base, fts = _models(n, SHAPES, seed=n + (quantize or 0), quantize=quantize)
    for lam in (0.7, [0.5 + 0.1 * t for t in range(n)]):
        keys, want = sorted(base), reference_ties_keys(base, fts, 0.2, lam, agg)
        got = merge(base, fts, "ties", k=0.2, agg=agg, coefficients=lam)
        assert torch.equal(bits(torch.cat([got[x].reshape(-1) for x in keys])), bits(want)), lam
    assert calls, "the kernel was not used"


def test_the_torch_pass_runs_when_the_kernel_is_off_or_nonfinite_values_are_allowed(monkeypatch):
    monkeypatch.setattr(fused, "ties_slab", lambda *a, **kw: pytest.fail("the kernel should not run"))
    base, fts = _models(4, SHAPES, seed=3, quantize=None)
    keys, want = sorted(base), reference_ties_keys(base, fts, 0.2, 1.0)
    got = merge(base, fts, "ties", k=0.2, coefficients=1.0, allow_nonfinite=True)
    assert torch.equal(bits(torch.cat([got[x].reshape(-1) for x in keys])), bits(want))
    monkeypatch.setattr(fused, "ENABLED", False)
    got = merge(base, fts, "ties", k=0.2, coefficients=1.0)
    assert torch.equal(bits(torch.cat([got[x].reshape(-1) for x in keys])), bits(want))


def test_sums_in_another_order_turn_the_kernel_off(monkeypatch, caplog):
    """On a CPU whose torch kernels group columns differently the check at first use fails: the torch pass
    runs (with a warning) instead of a kernel whose sums would differ from the reference's."""
    monkeypatch.setattr(fused, "_kernel", None)
    monkeypatch.setattr(fused, "_checked_threads", set())
    monkeypatch.setattr(fused, "torch_tail", lambda w: w)  # as if torch summed every column in the cascade
    with caplog.at_level(logging.WARNING, logger="core.merging.fused"):
        assert not fused.usable(CPU, F32)
    assert "not in the order" in caplog.text


def test_without_numba_the_torch_pass_runs(monkeypatch):
    monkeypatch.setattr(fused, "_kernel", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.delitem(sys.modules, "core.merging.ties_kernel", raising=False)
    assert not fused.usable(CPU, F32)
    assert not fused.usable(torch.device("meta"), F32) and not fused.usable(CPU, torch.float64)


def test_warm_loads_the_kernel_and_says_so(monkeypatch):
    calls = []
    kernel = fused.histogram_slab
    monkeypatch.setattr(fused, "histogram_slab", lambda *a: calls.append(1) or kernel(*a))
    assert fused.warm().startswith("TIES kernel ready")
    assert calls  # the threshold pass's loop is loaded too


@pytest.mark.parametrize("n, quantize", [(6, None), (8, 16), (20, None)])
def test_the_threshold_pass_counts_the_same_histograms_with_the_kernel(monkeypatch, n, quantize):
    """kselect.topk_thresholds on the CPU counts its high- and low-bit histograms in the compiled loop: the
    same bins, ranks and exact thresholds as torch's bincounts, which equal the flat kthvalue."""
    from core.merging import TaskVectors, kselect

    monkeypatch.setattr(streaming, "CHUNK", 64)
    base, fts = _models(n, SHAPES, seed=50 + n, quantize=quantize)
    calls = []
    kernel = fused.histogram_slab
    monkeypatch.setattr(fused, "histogram_slab", lambda *a: calls.append(a[2] is not None) or kernel(*a))
    keys = sorted(base)
    tv = torch.stack([torch.cat([f[x].reshape(-1) for x in keys]) for f in fts]) - torch.cat(
        [base[x].reshape(-1) for x in keys]
    )
    exact = 0
    for k in (0.05, 0.2, 0.7):
        got = kselect.topk_thresholds(TaskVectors(base, fts), k)
        bins_only = kselect.topk_thresholds(TaskVectors(base, fts), k, None)
        with monkeypatch.context() as m:
            m.setattr(fused, "ENABLED", False)
            want = kselect.topk_thresholds(TaskVectors(base, fts), k)
            want_bins = kselect.topk_thresholds(TaskVectors(base, fts), k, None)
        assert got == want and bins_only == want_bins, k
        d = tv.shape[1]
        if got[2] is not None:
            exact += 1
            assert got[2] == tv.abs().kthvalue(d - int(d * k), dim=1).values.tolist()
    assert exact and True in calls and False in calls  # with and without candidate bins, through the kernel
