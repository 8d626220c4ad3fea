"""Merge methods: hand-computed cases, a flat reference written from the official code
(the official code's semantics: global top-k trim over the whole flattened task
vector, mass sign election with the majority-sign fallback, disjoint mean), and
property tests."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.merging import (
    METHODS,
    TaskVectors,
    apply_direction,
    global_topk_thresholds,
    merge,
    merged_direction,
)

KEYS = [
    "visual.conv1.weight",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
    "visual.transformer.resblocks.1.mlp.c_fc.weight",
    "visual.transformer.resblocks.2.ln_1.bias",
    "visual.ln_post.weight",
]
SHAPES = [(4, 3, 2, 2), (12, 4), (8, 4), (4,), (4,)]


def make_models(n=4, seed=0, scale=0.1, quantize=None):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in zip(KEYS, SHAPES)}
    base["logit_scale"] = torch.tensor(4.6)
    base["visual.step"] = torch.tensor(3, dtype=torch.int64)  # integer buffer: skipped by task vectors
    fts = []
    for _ in range(n):
        ft = {}
        for k, s in zip(KEYS, SHAPES):
            d = torch.randn(s, generator=g) * scale
            if quantize:  # many exact ties in |tau|
                d = torch.round(d * quantize) / quantize
            ft[k] = base[k] + d
        ft["visual.step"] = base["visual.step"].clone()
        fts.append(ft)
    return base, fts


def flat(sd, keys=None):
    keys = keys or sorted(KEYS)
    return torch.cat([sd[k].reshape(-1) for k in keys])


def reference_ties(base, fts, k=0.2, lam=1.0, agg="mean"):
    """Straight from nik-dim/tall_masks ties_utils.py semantics, on the stacked, flattened [N, d] matrix."""
    fb = flat(base)
    tv = torch.stack([flat(f) for f in fts]) - fb
    d = tv.shape[1]
    if k < 1:
        kth = d - int(d * k)
        thr = tv.abs().kthvalue(kth, dim=1, keepdim=True).values
        trimmed = tv * (tv.abs() >= thr)
    else:
        trimmed = tv
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    keep = torch.where(sign.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    sel = trimmed * keep
    if agg == "mean":
        merged = sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1)
    else:
        merged = sel.sum(0)
    return fb + lam * merged


def test_registry_declares_parameters_for_the_ui():
    assert {"weight_average", "task_arithmetic", "ties", "dare", "consensus"} <= set(METHODS)
    ties = METHODS["ties"]
    assert ties.defaults() == {"k": 0.2, "agg": "mean", "coefficients": 1.0}
    assert ties.lambda_grid[-1] == 1.5 and "tall_masks" in ties.reference


def test_task_arithmetic_one_task_lambda_one_returns_the_finetuned_model():
    base, fts = make_models(1)
    m = merge(base, fts, "task_arithmetic", coefficients=1.0)
    for k in KEYS:
        assert torch.allclose(m[k], fts[0][k], atol=1e-6)
    assert torch.equal(m["logit_scale"], base["logit_scale"])  # base-only keys pass through
    assert m["visual.step"].dtype == torch.int64


def test_task_arithmetic_matches_flat_sum_bitwise():
    base, fts = make_models(5)
    m = merge(base, fts, "task_arithmetic", coefficients=0.3)
    fb = flat(base)
    ref = fb + 0.3 * (torch.stack([flat(f) for f in fts]) - fb).sum(0)
    assert torch.equal(flat(m), ref)


def test_per_task_coefficients():
    base, fts = make_models(2)
    m = merge(base, fts, "task_arithmetic", coefficients=[1.0, 0.0])
    assert torch.allclose(flat(m), flat(fts[0]), atol=1e-6)
    with pytest.raises(ValueError, match="3 coefficients for 2 tasks"):
        merge(base, fts, "task_arithmetic", coefficients=[1.0, 0.0, 1.0])


def test_weight_average_is_the_mean_of_the_finetuned_weights():
    base, fts = make_models(3)
    m = merge(base, fts, "weight_average")
    mean = torch.stack([flat(f) for f in fts]).mean(0)
    assert torch.allclose(flat(m), mean, atol=1e-6)


@pytest.mark.parametrize("seed, quantize", [(0, None), (1, None), (2, 20), (3, 5)])
@pytest.mark.parametrize("agg", ["mean", "sum"])
def test_ties_equals_flat_reference_bitwise(seed, quantize, agg):
    base, fts = make_models(4, seed=seed, quantize=quantize)
    m = merge(base, fts, "ties", k=0.2, coefficients=0.7, agg=agg)
    assert torch.equal(flat(m), reference_ties(base, fts, 0.2, 0.7, agg))


def test_ties_trims_globally_not_per_tensor():
    # Task vector with one tensor of large entries and one of small: a global
    # top-20% keeps only large entries; a per-tensor cut would keep some small ones.
    base = {"visual.transformer.resblocks.0.a": torch.zeros(10), "visual.transformer.resblocks.1.b": torch.zeros(10)}
    ft = {
        "visual.transformer.resblocks.0.a": torch.arange(1.0, 11.0),
        "visual.transformer.resblocks.1.b": torch.full((10,), 0.01),
    }
    m = merge(base, [ft], "ties", k=0.2, coefficients=1.0)
    assert torch.count_nonzero(m["visual.transformer.resblocks.1.b"]) == 0
    # d = 20, int(20*0.2) = 4, threshold = the 16th smallest |tau| = 6: floor(d*k)+1 = 5 entries kept
    assert m["visual.transformer.resblocks.0.a"].tolist() == [0.0] * 5 + [6.0, 7.0, 8.0, 9.0, 10.0]


def test_ties_keeps_all_entries_tied_at_the_threshold():
    base = {"visual.transformer.resblocks.0.a": torch.zeros(10)}
    ft = {"visual.transformer.resblocks.0.a": torch.tensor([1.0, 1, 1, 1, 1, 2, 2, 2, 3, 3])}
    thr = global_topk_thresholds(TaskVectors(base, [ft]), 0.2)
    assert thr == [2.0]  # the 8th smallest
    m = merge(base, [ft], "ties", k=0.2)
    assert torch.count_nonzero(m["visual.transformer.resblocks.0.a"]) == 5  # 3 at 2.0 tied + 2 at 3.0


def test_ties_elects_by_mass_and_disjoint_mean():
    base = {"visual.transformer.resblocks.0.a": torch.zeros(3)}
    fts = [
        {"visual.transformer.resblocks.0.a": torch.tensor([3.0, -1.0, 2.0])},
        {"visual.transformer.resblocks.0.a": torch.tensor([-1.0, -1.0, 2.0])},
        {"visual.transformer.resblocks.0.a": torch.tensor([-1.0, 4.0, -2.0])},
    ]
    m = merge(base, fts, "ties", k=1.0, coefficients=1.0)["visual.transformer.resblocks.0.a"]
    # entry 0: mass +1 -> keep +3 only; entry 1: mass +2 -> +4; entry 2: mass +2 -> mean(2, 2)
    assert m.tolist() == [3.0, 4.0, 2.0]


def test_ties_zero_mass_takes_the_majority_sign():
    base = {"visual.transformer.resblocks.0.a": torch.zeros(4)}
    fts = [
        {"visual.transformer.resblocks.0.a": torch.tensor([1.0, 1.0, 1.0, 2.0])},
        {"visual.transformer.resblocks.0.a": torch.tensor([1.0, 1.0, 1.0, -2.0])},
    ]
    # entry 3 sums to 0 -> majority sign of the elected vector (+) -> keep the +2
    m = merge(base, fts, "ties", k=1.0, coefficients=1.0)["visual.transformer.resblocks.0.a"]
    assert m.tolist() == [1.0, 1.0, 1.0, 2.0]


@pytest.mark.parametrize("values", [torch.randn(1000), torch.round(torch.randn(999) * 3) / 3, torch.zeros(50)])
def test_radix_select_equals_kthvalue(values):
    base = {
        "visual.transformer.resblocks.0.a": torch.zeros(values.numel() // 2),
        "x": torch.zeros(values.numel() - values.numel() // 2),
    }
    h = values.numel() // 2
    ft = {"visual.transformer.resblocks.0.a": values[:h], "x": values[h:]}
    for k in (0.01, 0.2, 0.5, 0.9):
        d = values.numel()
        want = float(values.abs().kthvalue(max(1, d - int(d * k))).values)
        assert global_topk_thresholds(TaskVectors(base, [ft]), k) == [want]


def _big_models(n, quantize=None, seed=3):
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "visual.transformer.resblocks.0.w": (300, 400),
        "visual.transformer.resblocks.1.w": (500, 300),
        "visual.b": (77,),
    }
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    fts = []
    for t in range(n):
        d = {k: torch.randn(v.shape, generator=g) * (0.01 * (1 + t)) for k, v in base.items()}
        if quantize:
            d = {k: torch.round(v * quantize) / quantize for k, v in d.items()}
        fts.append({k: base[k] + d[k] for k in base})
    return base, fts


def _flat_thresholds(base, fts, k):
    keys = sorted(base)
    tv = torch.stack([torch.cat([f[x].reshape(-1) for x in keys]) for f in fts]) - torch.cat(
        [base[x].reshape(-1) for x in keys]
    )
    d = tv.shape[1]
    return tv.abs().kthvalue(d - int(d * k), dim=1).values.tolist()


@pytest.mark.parametrize("quantize", [None, 200])
def test_thresholds_come_exact_from_one_pass_when_the_sample_finds_their_bin(quantize):
    from core.merging import kselect

    base, fts = _big_models(6, quantize)
    for k in (0.05, 0.2, 0.7):
        bins, ranks, thr = kselect.topk_thresholds(TaskVectors(base, fts), k)
        assert thr == _flat_thresholds(base, fts, k), k
        assert kselect.topk_thresholds(TaskVectors(base, fts), k, None)[2] is None  # no candidates: bins only


@pytest.mark.parametrize("n, quantize", [(20, None), (20, 200), (6, None)])
def test_ties_with_many_tasks_merges_in_two_passes_with_nothing_deferred(monkeypatch, n, quantize):
    """With 20 tasks nearly every column has some task's entry in its threshold's bin: TIES then gets
    exact thresholds from the histogram pass (low bits of the sampled candidate bins) and defers nothing,
    no gather pass. With few tasks it defers (cheaper), unless deferring would fill the budget."""
    from core.merging import methods

    base, fts = _big_models(n, quantize)
    if n < 20:
        monkeypatch.setattr(methods, "DEFER_BUDGET", 1e-6)  # few tasks, but a budget they would fill

    def forbidden(*a, **kw):
        raise AssertionError("the exact one-pass thresholds should have been used")

    monkeypatch.setattr(methods, "gather_thresholds", forbidden)
    monkeypatch.setattr(methods._Deferred, "add", forbidden)
    got = merge(base, fts, "ties", k=0.2, coefficients=0.7)
    assert torch.equal(flat(got, sorted(base)), reference_ties_keys(base, fts, 0.2, 0.7))


def _count_passes(monkeypatch):
    passes = []
    orig = TaskVectors.chunks
    monkeypatch.setattr(TaskVectors, "chunks", lambda self, **kw: passes.append(kw) or orig(self, **kw))
    return passes


@pytest.mark.parametrize("n", [2, 4])
def test_ties_with_few_tasks_merges_in_one_pass(monkeypatch, n):
    """A dense sample gives each threshold's range; the one pass defers the columns with an entry in it
    and counts the entries below it, which places the exact threshold inside: no histogram pass."""
    from core.merging import methods

    base, fts = _big_models(n)
    passes = _count_passes(monkeypatch)
    monkeypatch.setattr(methods, "topk_thresholds", lambda *a: pytest.fail("no histogram pass expected"))
    got = merge(base, fts, "ties", k=0.2, coefficients=0.7)
    assert len(passes) == 1
    assert torch.equal(flat(got, sorted(base)), reference_ties_keys(base, fts, 0.2, 0.7))


@pytest.mark.parametrize("how", ["missed", "too_wide"])
def test_a_one_pass_range_that_fails_falls_back_to_two_passes_and_stays_exact(monkeypatch, how):
    from core.merging import kselect, methods

    base, fts = _big_models(4)
    bins = torch.tensor(kselect.topk_thresholds(TaskVectors(base, fts), 0.2)[0])
    if how == "missed":  # a range beside the true threshold's bin
        lo, hi = kselect.bin_edges((bins + 3).tolist())
    else:  # a range holding every entry: the deferred columns overflow the budget
        lo, hi = kselect.bin_edges([0] * 4)[0], kselect.bin_edges([0x7F7F] * 4)[1]
    monkeypatch.setattr(methods, "threshold_range", lambda tvs, rank: kselect.ThresholdRange(lo, hi, 0.0))
    if how == "too_wide":
        monkeypatch.setattr(methods, "DEFER_BUDGET", 0.3)  # 4 tasks x all columns = 4 model sizes deferred
    passes = _count_passes(monkeypatch)
    got = merge(base, fts, "ties", k=0.2, coefficients=0.7)
    assert len(passes) == 3  # the failed pass, the histogram, the merge
    assert torch.equal(flat(got, sorted(base)), reference_ties_keys(base, fts, 0.2, 0.7))


def test_the_threshold_range_of_a_dense_sample_is_narrow_and_holds_the_thresholds():
    from core.merging import kselect

    base, fts = _big_models(4)
    tvs = TaskVectors(base, fts)
    rank = kselect.topk_rank(tvs, 0.2)
    r = kselect.threshold_range(tvs, rank)
    want = torch.tensor(_flat_thresholds(base, fts, 0.2)).unsqueeze(1)
    assert bool(((r.lo <= want) & (want < r.hi)).all())
    bins_lo = r.lo.view(torch.int32) >> 16
    bins_hi = r.hi.view(torch.int32) >> 16
    assert bool(((bins_hi - bins_lo) <= 8).all())  # a few bins of 1/128 of an octave each
    assert 0 < r.deferred_share < 0.5


def reference_ties_keys(base, fts, k, lam, agg="mean"):
    """nik-dim/tall_masks ties_utils.py on the stacked, flattened [N, d] matrix (keys sorted). lam: the global
    lambda, or per-task lambdas scaling the trimmed rows before the election (as core.merging.methods)."""
    keys = sorted(base)
    fb = torch.cat([base[x].reshape(-1) for x in keys])
    tv = torch.stack([torch.cat([f[x].reshape(-1) for x in keys]) for f in fts]) - fb
    d = tv.shape[1]
    thr = tv.abs().kthvalue(d - int(d * k), dim=1, keepdim=True).values
    tr = tv * (tv.abs() >= thr)
    scale = lam
    if isinstance(lam, list):
        tr, scale = tr * torch.tensor(lam).unsqueeze(1), 1.0
    sign = torch.sign(tr.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    sel = tr * torch.where(sign.unsqueeze(0) > 0, tr > 0, tr < 0)
    merged = sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1) if agg == "mean" else sel.sum(0)
    return fb + scale * merged


def test_a_sample_that_misses_the_threshold_bin_falls_back_and_stays_exact(monkeypatch):
    from core.merging import kselect, methods

    calls = []
    monkeypatch.setattr(
        methods._Deferred, "add", lambda self, *a, o=methods._Deferred.add: calls.append(1) or o(self, *a)
    )

    base, fts = _big_models(4)
    true_bins = kselect.topk_thresholds(TaskVectors(base, fts), 0.2)[0]
    # candidates beside the true bins, and a deferral estimate that makes TIES ask for them
    wrong = kselect.Candidates(torch.tensor(true_bins) + 3, torch.ones(4, dtype=torch.int64), 1.0)
    monkeypatch.setattr(kselect, "candidate_bins", lambda tvs, rank: wrong)
    monkeypatch.setattr(methods, "candidate_bins", lambda tvs, rank: wrong)
    bins, ranks, thr = kselect.topk_thresholds(TaskVectors(base, fts), 0.2)
    assert bins == true_bins and thr is None
    assert global_topk_thresholds(TaskVectors(base, fts), 0.2) == _flat_thresholds(base, fts, 0.2)  # gather pass
    got = merge(base, fts, "ties", k=0.2, coefficients=0.7)
    assert calls  # the merge pass deferred the in-bin columns
    assert torch.equal(flat(got, sorted(base)), reference_ties_keys(base, fts, 0.2, 0.7))


def test_the_threshold_sample_reads_a_small_share_of_each_lazy_file(tmp_path, monkeypatch):
    from core.checkpoints import open_state_dict, save_state_dict
    from core.checkpoints.formats import LazyStateDict

    base, fts = _big_models(3)
    save_state_dict(base, tmp_path / "b.safetensors")
    for t, f in enumerate(fts):
        save_state_dict(f, tmp_path / f"t{t}.safetensors")
    tvs = TaskVectors(
        open_state_dict(tmp_path / "b.safetensors"), [open_state_dict(tmp_path / f"t{t}.safetensors") for t in range(3)]
    )
    read = []
    orig = LazyStateDict.read_range
    monkeypatch.setattr(
        LazyStateDict,
        "read_range",
        lambda self, key, start, out: read.append(out.numel()) or orig(self, key, start, out),
    )
    s = tvs.sample(512)
    d = tvs.numel()
    assert s.shape[0] == 3 and d / 512 <= s.shape[1] <= d / 512 + 4 * 3 + 77  # ~1 in 512 (+ rounding, small keys whole)
    assert sum(read) == 4 * s.shape[1]  # base + 3 tasks, nothing else read
    eager = TaskVectors(base, fts).sample(512)
    assert torch.equal(s, eager)


def test_dare_with_p_zero_equals_task_arithmetic():
    base, fts = make_models(3)
    assert torch.equal(
        flat(merge(base, fts, "dare", p=0.0, coefficients=0.3)),
        flat(merge(base, fts, "task_arithmetic", coefficients=0.3)),
    )
    assert torch.equal(
        flat(merge(base, fts, "dare", p=0.0, then="ties", coefficients=1.0)), flat(merge(base, fts, "ties"))
    )


def test_dare_is_seeded_and_rescales_survivors():
    base, fts = make_models(1, scale=1.0)
    a = merge(base, fts, "dare", p=0.5, seed=7, coefficients=1.0)
    b = merge(base, fts, "dare", p=0.5, seed=7, coefficients=1.0)
    c = merge(base, fts, "dare", p=0.5, seed=8, coefficients=1.0)
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))
    tv, tv_ft = flat(a) - flat(base), flat(fts[0]) - flat(base)
    kept = tv != 0
    assert 0.3 < kept.float().mean() < 0.7
    assert torch.allclose(tv[kept], 2 * tv_ft[kept], atol=1e-5)


def test_consensus_k_zero_is_task_arithmetic_and_k_two_is_sparser_than_k_one():
    base, fts = make_models(4)
    ta = merge(base, fts, "task_arithmetic", coefficients=0.4)
    assert torch.equal(flat(merge(base, fts, "consensus", k=0, coefficients=0.4)), flat(ta))
    d1 = merged_direction(base, fts, "consensus", k=1)
    d2 = merged_direction(base, fts, "consensus", k=2)
    nz1 = sum(int(torch.count_nonzero(v)) for v in d1.vector.values())
    nz2 = sum(int(torch.count_nonzero(v)) for v in d2.vector.values())
    assert nz2 < nz1
    # every entry kept by k=2 is kept by k=1, with the same value
    for key in d2.vector:
        m2 = d2.vector[key] != 0
        assert torch.equal(d1.vector[key][m2], d2.vector[key][m2])


def test_consensus_hand_case():
    # theta_0 = 0; tau_1 = [1, 1], tau_2 = [1, -1]; tau_MTL = [2, 0]
    # mask_t = |tau_t| > lam |tau_MTL - tau_t|: lam = 0.5 -> task1 [1>0.5, 1>0.5], task2 [1>0.5, 1>0.5]
    base = {"visual.transformer.resblocks.0.a": torch.zeros(2)}
    fts = [
        {"visual.transformer.resblocks.0.a": torch.tensor([1.0, 1.0])},
        {"visual.transformer.resblocks.0.a": torch.tensor([1.0, -1.0])},
    ]
    d = merged_direction(base, fts, "consensus", k=2, tall_lambda=0.5)
    assert d.vector["visual.transformer.resblocks.0.a"].tolist() == [2.0, 0.0]
    # lam = 2: task1 mask [1 > 2, 1 > 2] = none -> no entry used by 2 tasks
    d = merged_direction(base, fts, "consensus", k=2, tall_lambda=[2.0, 0.1])
    assert d.vector["visual.transformer.resblocks.0.a"].tolist() == [0.0, 0.0]


def test_lines_in_merge_uses_auto_alpha_one_over_n_for_task_arithmetic():
    base, fts = make_models(4)
    d = merged_direction(base, fts, "task_arithmetic")
    assert d.auto_alpha() == 0.25
    m = apply_direction(base, d, lines=("auto", 0.5))
    tv_sum = {k: torch.stack([f[k] - base[k] for f in fts]).sum(0) for k in KEYS}
    assert torch.allclose(m["visual.conv1.weight"], base["visual.conv1.weight"] + 0.25 * tv_sum["visual.conv1.weight"])
    # block 2 of 3 blocks -> alpha + beta
    k = "visual.transformer.resblocks.2.ln_1.bias"
    assert torch.allclose(m[k], base[k] + 0.75 * tv_sum[k], atol=1e-6)


def test_unknown_method_and_parameter_give_clear_errors():
    base, fts = make_models(2)
    with pytest.raises(KeyError, match="unknown merge method 'foo'"):
        merge(base, fts, "foo")
    with pytest.raises(TypeError, match="no parameter"):
        merge(base, fts, "ties", lam=3)


def test_mismatched_checkpoints_are_named():
    base, fts = make_models(2)
    del fts[1]["visual.ln_post.weight"]
    with pytest.raises(ValueError, match="task1"):
        merge(base, fts, "task_arithmetic")
    base, fts = make_models(2)
    fts[0]["visual.conv1.weight"] = torch.zeros(2, 2)
    fts[1]["visual.conv1.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="shape mismatch for 'visual.conv1.weight'"):
        merge(base, fts, "task_arithmetic")


def test_named_dict_of_finetuned_models_is_accepted():
    base, fts = make_models(2)
    a = merge(base, {"x": fts[0], "y": fts[1]}, "task_arithmetic")
    b = merge(base, fts, "task_arithmetic")
    assert torch.equal(flat(a), flat(b))


# ----------------------------------------------------------------- property tests
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5), k=st.sampled_from([0.05, 0.2, 0.5, 1.0]))
def test_ties_matches_reference_for_random_inputs(seed, n, k):
    base, fts = make_models(n, seed=seed, quantize=10 if seed % 2 else None)
    assert torch.equal(flat(merge(base, fts, "ties", k=k, coefficients=1.0)), reference_ties(base, fts, k, 1.0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 5))
def test_merges_are_invariant_to_task_order(seed, n):
    base, fts = make_models(n, seed=seed)
    perm = list(reversed(fts))
    for method in ("task_arithmetic", "ties", "consensus"):
        assert torch.allclose(flat(merge(base, fts, method)), flat(merge(base, perm, method)), atol=1e-6), method


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 5))
def test_merging_identical_finetunes_recovers_the_finetune(seed, n):
    base, fts = make_models(1, seed=seed)
    same = [fts[0]] * n
    assert torch.allclose(flat(merge(base, same, "task_arithmetic", coefficients=1.0 / n)), flat(fts[0]), atol=1e-5)
    assert torch.allclose(flat(merge(base, same, "ties", k=1.0, coefficients=1.0)), flat(fts[0]), atol=1e-6)
    assert torch.allclose(flat(merge(base, same, "weight_average")), flat(fts[0]), atol=1e-5)


def test_chunk_boundaries_inside_tensors_change_nothing(monkeypatch):
    import core.merging.streaming as streaming

    base, fts = make_models(3, seed=5)
    want = {m: flat(merge(base, fts, m)) for m in ("task_arithmetic", "ties", "consensus")}
    monkeypatch.setattr(streaming, "CHUNK", 7)  # chunks now cut through every tensor
    for m, w in want.items():
        assert torch.allclose(flat(merge(base, fts, m)), w, atol=1e-6), m


def test_ties_bitwise_on_a_model_larger_than_one_chunk():
    g = torch.Generator().manual_seed(11)
    shapes = {
        "visual.transformer.resblocks.0.w": (1100, 1000),
        "visual.transformer.resblocks.1.w": (1000, 1001),
        "visual.z": (333,),
    }
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    fts = [{k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(5)]
    keys = sorted(shapes)
    got = torch.cat([merge(base, fts, "ties", coefficients=0.5)[k].reshape(-1) for k in keys])
    fb = torch.cat([base[k].reshape(-1) for k in keys])
    tv = torch.stack([torch.cat([f[k].reshape(-1) for k in keys]) for f in fts]) - fb
    d = tv.shape[1]
    thr = tv.abs().kthvalue(d - int(d * 0.2), dim=1, keepdim=True).values
    tr = tv * (tv.abs() >= thr)
    sign = torch.sign(tr.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    sel = tr * torch.where(sign.unsqueeze(0) > 0, tr > 0, tr < 0)
    ref = fb + 0.5 * (sel.sum(0) / torch.clamp((sel != 0).sum(0).float(), min=1))
    assert torch.equal(got, ref)


def test_block_l1_equals_the_flat_sum_and_ignores_how_the_vector_is_cut():
    from core.merging.direction import BlockL1

    x = torch.randn(5000, generator=torch.Generator().manual_seed(3))
    for cuts in ([5000], [1, 4999], [97] * 51 + [53], [2048, 2048, 904]):
        acc, start = BlockL1(), 0
        for c in cuts:
            acc.add(x[start : start + c])
            start += c
        assert acc.total() == float(x.abs().sum())  # one block: bit for bit the reference's float32 sum
    small = BlockL1(block=1000)
    small.add(x)
    assert small.total() == sum(float(x[i : i + 1000].abs().sum()) for i in range(0, 5000, 1000))


def test_lines_auto_alpha_does_not_depend_on_the_slab_width(monkeypatch):
    from core.merging import merged_direction, streaming

    base, fts = make_models(n=3, seed=11)
    want = {m: merged_direction(base, fts, m).auto_alpha() for m in ("task_arithmetic", "ties", "consensus")}
    monkeypatch.setattr(streaming, "CHUNK", 7)  # slabs cut through every tensor
    assert {m: merged_direction(base, fts, m).auto_alpha() for m in want} == want
