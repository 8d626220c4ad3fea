"""TSV-M, Iso-C, Iso-CTS, CART against small references written from the official code (float32,
zero-padded buffers and all), hand-checkable properties, and single-task behaviour."""

from __future__ import annotations

import copy

import pytest
import torch

from core.merging import lowrank, merge, merged_direction
from core.merging.lowrank import iso_cts_sizes, polar_factors, polar_product, svd, svdvals, top_svd

SHAPES = {
    "visual.class_embedding": (8,),
    "visual.positional_embedding": (10, 8),
    "visual.conv1.weight": (8, 3, 2, 2),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (24, 8),
    "visual.transformer.resblocks.0.attn.in_proj_bias": (24,),
    "visual.transformer.resblocks.0.ln_1.weight": (8,),
    "visual.transformer.resblocks.0.mlp.c_fc.weight": (32, 8),
    "visual.transformer.resblocks.1.mlp.c_proj.weight": (8, 32),
    "visual.transformer.resblocks.1.attn.out_proj.weight": (8, 8),
    "visual.proj": (8, 6),
    "text_projection": (6, 8),
    "logit_scale": (),
}


def models(n, seed):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]
    return base, fts


def task_vectors(base, fts):
    return [{k: f[k] - base[k] for k in sorted(base)} for f in fts]


def polar(a):
    """The orthogonal polar factor U V^T of a (float64), from lowrank's factors."""
    u, vh = polar_factors(a)
    return u @ vh


# ----------------------------------------------------------------- references, from the official code
def ref_tsv_m(tvs, sv_reduction=None):
    """AntoAndGar/task_singular_vectors compute_and_sum_svd_mem_reduction."""
    sv_reduction = 1 / len(tvs) if sv_reduction is None else sv_reduction
    new = {}
    for key in tvs[0]:
        for i, tv in enumerate(tvs):
            vec = tv[key]
            if len(vec.shape) == 2 and "text_projection" not in key:
                u, s, v = torch.linalg.svd(vec, full_matrices=False)
                if i == 0:
                    sum_u, sum_s, sum_v = torch.zeros_like(u), torch.zeros_like(s), torch.zeros_like(v)
                r = int(s.shape[0] * sv_reduction)
                sum_u[:, i * r : (i + 1) * r] = u[:, :r]
                sum_s[i * r : (i + 1) * r] = s[:r]
                sum_v[i * r : (i + 1) * r, :] = v[:r, :]
            elif i == 0:
                new[key] = vec.clone()
            else:
                new[key] += (vec - new[key]) / (i + 1)
        if len(tvs[0][key].shape) == 2 and "text_projection" not in key:
            u_u, _, v_u = torch.linalg.svd(sum_u, full_matrices=False)
            u_v, _, v_v = torch.linalg.svd(sum_v, full_matrices=False)
            new[key] = torch.linalg.multi_dot((u_u, v_u, torch.diag(sum_s), u_v, v_v))
    return new


def ref_iso_c(tvs):
    """danielm1405/iso-merging iso_c."""
    new = {}
    for key in tvs[0]:
        ts = [tv[key] for tv in tvs]
        new[key] = sum(ts) / len(ts)
        if len(ts[0].shape) == 2 and "text_projection" not in key:
            new[key] *= len(ts)
            u, s, v = torch.linalg.svd(new[key], full_matrices=False)
            new[key] = torch.linalg.multi_dot((u, torch.diag(torch.ones_like(s) * s.mean()), v))
    return new


def ref_iso_cts(tvs, common_space_fraction=0.8):
    """danielm1405/iso-merging iso_cts."""
    new, T = {}, len(tvs)
    for key in tvs[0]:
        shape = tvs[0][key].shape
        if not (len(shape) == 2 and "text_projection" not in key):
            for i, tv in enumerate(tvs):
                new[key] = tv[key].clone() if i == 0 else new[key] + (tv[key] - new[key]) / (i + 1)
            continue
        combined = sum(tv[key] for tv in tvs)
        c = int(min(shape) * common_space_fraction)
        c = min(shape) - round((min(shape) - c) / T) * T
        u, s, v = torch.linalg.svd(combined, full_matrices=False)
        cu, cs, cv = u[:, :c], s[:c], v[:c, :]
        per = int((min(shape) - c) / T)
        for i, tv in enumerate(tvs):
            w = tv[key]
            ut, st, vt = torch.linalg.svd(w - cu @ cu.T @ w, full_matrices=False)
            if i == 0:
                all_u, all_s, all_v = torch.zeros_like(ut), torch.zeros_like(st), torch.zeros_like(vt)
            all_u[:, i * per : (i + 1) * per] = ut[:, :per]
            all_s[i * per : (i + 1) * per] = st[:per]
            all_v[i * per : (i + 1) * per, :] = vt[:per, :]
        all_u[:, T * per : T * per + c] = cu
        all_s[T * per : T * per + c] = cs
        all_v[T * per : T * per + c, :] = cv
        a, _, b = torch.linalg.svd(all_u, full_matrices=False)
        all_u = a @ b
        a, _, b = torch.linalg.svd(all_v, full_matrices=False)
        all_v = a @ b
        new[key] = torch.linalg.multi_dot((all_u, torch.diag(torch.ones_like(all_s) * all_s.mean()), all_v))
    return new


def ref_cart(base, fts, rank_ratio=0.12, prior=2.0):
    """JH-GEECS/CART StaticMergeModule._merge_weights("CART"): returns the merged state dict."""
    tvs = task_vectors(base, fts)
    total = {k: sum(tv[k] for tv in tvs) for k in tvs[0]}
    avg = {k: base[k] + (1.0 / len(fts)) * total[k] for k in tvs[0]}
    low = {k: torch.zeros_like(v) for k, v in avg.items()}
    for tv in tvs:
        for key, value in tv.items():
            val = value + base[key] - avg[key]
            if ("attn" in key or "mlp" in key) and not ("ln" in key or "bias" in key):
                U, s, V_T = torch.linalg.svd(val, full_matrices=False)
                k = max(1, int(rank_ratio * s.shape[0]))
                low[key] += (U[:, :k] * s[:k]) @ V_T[:k, :]
            else:
                low[key] += val
    return {k: avg[k] + prior * low[k] for k in avg}


def close(got, want, rtol):
    """Max-norm relative error of a matrix against the reference."""
    err = float((got.double() - want.double()).abs().max())
    return err <= rtol * max(float(want.abs().max()), 1e-12), err


CASES = [(2, 101), (3, 202), (5, 303)]  # (tasks, seed), fixed before any comparison was run


@pytest.mark.parametrize("n, seed", CASES)
@pytest.mark.parametrize("sv_reduction", [None, 0.2])
def test_tsv_m_equals_the_official_code(n, seed, sv_reduction):
    base, fts = models(n, seed)
    want = ref_tsv_m(task_vectors(base, fts), sv_reduction)
    d = merged_direction(base, fts, "tsv_m", sv_reduction=sv_reduction)
    assert d.vector.keys() == want.keys() and d.scale == 1.0
    for k in want:
        ok, err = close(d.vector[k], want[k], 1e-4)
        assert ok, (k, err)


@pytest.mark.parametrize("n, seed", CASES)
def test_iso_c_equals_the_official_code(n, seed):
    base, fts = models(n, seed)
    want = ref_iso_c(task_vectors(base, fts))
    d = merged_direction(base, fts, "iso_c")
    for k in want:
        ok, err = close(d.vector[k], want[k], 1e-4)
        assert ok, (k, err)


@pytest.mark.parametrize("n, seed", CASES)
@pytest.mark.parametrize("f", [0.8, 0.5, 1.0])
def test_iso_cts_equals_the_official_code(n, seed, f):
    base, fts = models(n, seed)
    want = ref_iso_cts(task_vectors(base, fts), f)
    d = merged_direction(base, fts, "iso_cts", common_space_fraction=f)
    for k in want:
        ok, err = close(d.vector[k], want[k], 1e-4)
        assert ok, (k, err)


@pytest.mark.parametrize("n, seed", CASES)
@pytest.mark.parametrize("rank_ratio", [0.12, 0.5])
def test_cart_equals_the_official_code(n, seed, rank_ratio):
    base, fts = models(n, seed)
    want = ref_cart(base, fts, rank_ratio, 2.0)
    got = merge(base, fts, "cart", rank_ratio=rank_ratio)
    for k in want:
        ok, err = close(got[k] - base[k], want[k] - base[k], 1e-4)
        assert ok, (k, err)


def test_tsv_m_stacks_wider_where_the_official_buffers_overflow():
    # 5 tasks x int(8 * 0.25) = 10 > 8 = min(m, n): the official code fails to write its buffer
    base, fts = models(5, 303)
    d = merged_direction(base, fts, "tsv_m", sv_reduction=0.25)
    v = d.vector["visual.positional_embedding"]  # 10 x 8: 10 stacked columns still fit in R^10
    s = torch.linalg.svdvals(v.double())
    kept = torch.cat(
        [torch.linalg.svdvals(tv["visual.positional_embedding"].double())[:2] for tv in task_vectors(base, fts)]
    )
    assert torch.isfinite(v).all() and float(s.max()) <= float(kept.max()) * (1 + 1e-6)


def test_coefficients_is_the_global_scale():
    base, fts = models(3, 7)
    for method in ("tsv_m", "iso_c", "iso_cts", "cart"):
        d = merged_direction(base, fts, method)
        m = merge(base, fts, method, coefficients=0.7)
        for k in d.vector:
            assert torch.allclose(m[k], base[k] + 0.7 * d.vector[k], atol=1e-6), (method, k)
        with pytest.raises(ValueError, match="global scale"):
            merge(base, fts, method, coefficients=[1.0, 1.0, 1.0])


# ----------------------------------------------------------------- hand-checkable properties
@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_polar_factors_are_orthogonal(shape):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = polar(a)
    small = min(shape)
    gram = p.T @ p if shape[0] >= shape[1] else p @ p.T
    assert torch.allclose(gram, torch.eye(small, dtype=torch.float64), atol=1e-12)
    # the nearest such matrix: a = p h with h symmetric positive semi-definite (tall case)
    if shape[0] >= shape[1]:
        h = p.T @ a
        assert torch.allclose(h, h.T, atol=1e-12) and bool((torch.linalg.eigvalsh(h) > -1e-12).all())


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (16, 16)])
def test_polar_factors_come_from_the_gram_matrix_when_well_conditioned(shape, monkeypatch):
    a, _ = spectrum_matrix(*shape, 0.8, 11, torch.float64)  # condition number 0.8**-11 ~ 12 .. 0.8**-15 ~ 28
    u0, _, v0 = torch.linalg.svd(a, full_matrices=False)
    calls = []
    monkeypatch.setattr(torch.linalg, "svd", lambda *x, **k: calls.append(1))
    u, vh = polar_factors(a)
    assert not calls and u.shape == u0.shape and vh.shape == v0.shape
    assert torch.allclose(u @ vh, u0 @ v0, atol=1e-12)


@pytest.mark.parametrize("case", ["repeated column", "condition 1e5"])
def test_polar_factors_fall_back_to_the_svd_when_the_gram_matrix_cannot_tell(case):
    a, _ = spectrum_matrix(30, 10, 0.8, 13, torch.float64)
    if case == "repeated column":  # a stack whose last column repeats its first: singular
        a[:, -1] = a[:, 0]
    else:
        a, _ = spectrum_matrix(30, 10, 1e-5 ** (1 / 9), 13, torch.float64)
    u0, _, v0 = svd(a)
    u, vh = polar_factors(a)
    assert torch.equal(u, u0) and torch.equal(vh, v0)


@pytest.mark.parametrize("m, p, n", [(30, 8, 12), (12, 8, 30), (9, 9, 9), (6, 10, 14), (14, 10, 6), (5, 3, 40)])
@pytest.mark.parametrize("scalar", [False, True])
def test_polar_product_is_the_product_of_the_polar_factors(m, p, n, scalar):
    """polar(a) diag(s) polar(b), formed from the core out whichever side is cheaper (p > m or p > n too)."""
    g = torch.Generator().manual_seed(m * 100 + p * 10 + n)
    a, b = torch.randn(m, p, generator=g, dtype=torch.float64), torch.randn(p, n, generator=g, dtype=torch.float64)
    s = torch.tensor(1.7, dtype=torch.float64) if scalar else torch.rand(p, generator=g, dtype=torch.float64) + 0.5
    want = (polar(a) * s) @ polar(b)
    got = polar_product(a, s, b, torch.float64)
    assert got.shape == (m, n) and torch.allclose(got, want, atol=1e-12)
    got32 = polar_product(a.float(), s.float(), b.float(), torch.float32)
    assert got32.dtype == torch.float32 and torch.allclose(got32.double(), want, atol=1e-5)


@pytest.mark.parametrize("shape", [(12, 5), (5, 12), (7, 7)])
def test_svd_decomposes_wide_matrices_through_their_transpose(shape, monkeypatch):
    a = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []
    real = torch.linalg.svd

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "svd", spy)
    u, s, vh = svd(a)
    r = min(shape)
    assert seen == [(max(shape), r)]  # LAPACK only ever sees the tall orientation
    assert u.shape == (shape[0], r) and s.shape == (r,) and vh.shape == (r, shape[1])
    assert torch.allclose((u * s) @ vh, a, atol=1e-12)
    assert torch.allclose(u.T @ u, torch.eye(r, dtype=a.dtype), atol=1e-12)
    assert torch.allclose(vh @ vh.T, torch.eye(r, dtype=a.dtype), atol=1e-12)
    assert torch.allclose(s, torch.linalg.svdvals(a), atol=1e-12) and bool((s[:-1] >= s[1:]).all())
    seen.clear()
    monkeypatch.setattr(torch.linalg, "svdvals", lambda x: seen.append(tuple(x.shape)) or real(x)[1])
    assert torch.allclose(svdvals(a), s, atol=1e-12) and seen == [(max(shape), r)]


def spectrum_matrix(m, n, decay, seed, dtype=torch.float32):
    """An m x n matrix with singular values decay**i (i = 0..min-1) and random singular vectors."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    u = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    s = decay ** torch.arange(r, dtype=torch.float64)
    return ((u * s) @ v.T).to(dtype), s


@pytest.mark.parametrize("shape", [(60, 20), (20, 60), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_top_svd_gives_the_top_triplets_from_the_gram_matrix(shape, dtype, monkeypatch):
    a, s_true = spectrum_matrix(*shape, 0.9, 7, dtype)
    ur, sr, vr = torch.linalg.svd(a.double(), full_matrices=False)
    calls = []
    monkeypatch.setattr(torch.linalg, "svd", lambda *x, **k: calls.append(1))  # the Gram route takes no SVD
    u, s, vh = top_svd(a, 5)
    assert not calls and u.dtype == s.dtype == vh.dtype == dtype
    assert u.shape == (shape[0], 5) and s.shape == (5,) and vh.shape == (5, shape[1])
    assert torch.allclose(s.double(), s_true[:5], rtol=1e-6)
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.allclose(u.double().T @ u.double(), eye, atol=1e-6)
    assert torch.allclose(vh.double() @ vh.double().T, eye, atol=1e-6)
    a64 = a.double()  # a v_i = s_i u_i, and the rank-5 part is the best rank-5 approximation of a
    assert torch.allclose(a64 @ vh.double().T, u.double() * s.double(), atol=1e-6)
    assert torch.allclose((u.double() * s.double()) @ vh.double(), (ur[:, :5] * sr[:5]) @ vr[:5], atol=1e-6)


def test_top_svd_is_closer_to_float64_than_a_float32_svd():
    a, s_true = spectrum_matrix(300, 100, 0.97, 3)
    ref = torch.linalg.svd(a.double(), full_matrices=False)
    best = (ref[0][:, :10] * ref[1][:10]) @ ref[2][:10]
    u, s, vh = top_svd(a, 10)
    u32, s32, v32 = torch.linalg.svd(a, full_matrices=False)
    err_gram = float(((u.double() * s.double()) @ vh.double() - best).abs().max())
    err_f32 = float(((u32[:, :10] * s32[:10]) @ v32[:10]).double().sub(best).abs().max())
    assert err_gram < err_f32 / 3, (err_gram, err_f32)


@pytest.mark.parametrize("case", ["zero", "rank 2", "tiny tail", "all"])
def test_top_svd_falls_back_to_the_svd_where_the_gram_matrix_cannot_tell(case):
    a, _ = spectrum_matrix(40, 12, 0.9, 5)
    p = 4
    if case == "zero":
        a = torch.zeros(40, 12)
    elif case == "rank 2":
        a = a[:, :2] @ torch.randn(2, 12, generator=torch.Generator().manual_seed(1))
    elif case == "tiny tail":  # s_p / s_1 = 0.9 * 1e-5 < 1e-4: below GRAM_FLOOR's reach
        a, _ = spectrum_matrix(40, 12, 1e-5 ** (1 / 3), 5)
    else:
        p = 12
    u, s, vh = top_svd(a, p)
    u0, s0, v0 = svd(a)
    assert torch.equal(u, u0[:, :p]) and torch.equal(s, s0[:p]) and torch.equal(vh, v0[:p])
    for x in (u, s, vh):  # copies, not views of the full factors
        assert x.untyped_storage().nbytes() == x.numel() * x.element_size()


def test_top_svd_of_no_triplets_is_empty():
    u, s, vh = top_svd(torch.ones(6, 4), 0)
    assert u.shape == (6, 0) and s.shape == (0,) and vh.shape == (0, 4)


def test_top_svd_returns_the_dtype_asked_for():
    a, _ = spectrum_matrix(30, 10, 0.8, 2, torch.float64)
    u, s, vh = top_svd(a, 3, torch.float32)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert lowrank.GRAM_FLOOR == 1e-8


def test_tsv_m_orthogonalises_the_stacked_bases():
    base, fts = models(4, 5)
    d = merged_direction(base, fts, "tsv_m")
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight"  # 32 x 8, k = 2 per task, 8 = all of the rank
    s = torch.linalg.svdvals(d.vector[key].double())
    tvs = task_vectors(base, fts)
    kept = torch.cat([torch.linalg.svdvals(tv[key].double())[:2] for tv in tvs])
    # orthonormal U and V around diag(S): the merged singular values are exactly the kept ones
    assert torch.allclose(s.sort().values, kept.sort().values, rtol=1e-5)


@pytest.mark.parametrize("method", ["iso_c", "iso_cts"])
def test_iso_spectrum_is_flat_to_float_precision(method):
    base, fts = models(3, 9)
    d = merged_direction(base, fts, method)
    for k, v in d.vector.items():
        if v.dim() == 2 and "text_projection" not in k:
            s = torch.linalg.svdvals(v.double())
            assert float(s.max() / s.min() - 1) < 1e-5, (k, s)


def test_iso_cts_sizes_round_half_to_even():
    assert iso_cts_sizes((768, 768), 8, 0.8) == (616, 19)  # int(614.4) = 614; 154/8 = 19.25 -> 19 * 8 = 152
    assert iso_cts_sizes((10, 8), 3, 0.8) == (5, 1)  # int(6.4) = 6; 2/3 -> 1 * 3 = 3
    assert iso_cts_sizes((20, 20), 4, 0.5) == (12, 2)  # 10/4 = 2.5 -> 2 (half to even), not 3
    assert iso_cts_sizes((16, 16), 4, 0.625) == (8, 2)  # 6/4 = 1.5 -> 2 (half to even)
    assert iso_cts_sizes((12, 40), 8, 0.5) == (4, 1)  # 6/8 = 0.75 -> 1 * 8 = 8


def test_iso_cts_refuses_a_negative_common_space():
    base = {"visual.transformer.resblocks.0.mlp.c_fc.weight": torch.zeros(6, 6)}
    fts = [{k: torch.randn(6, 6) for k in base} for _ in range(4)]
    with pytest.raises(ValueError, match="leaves no common space"):
        merged_direction(base, fts, "iso_cts", common_space_fraction=0.0)


# ----------------------------------------------------------------- single task, inputs untouched
def test_single_task_with_coefficient_one():
    base, fts = models(1, 4)
    # TSV-M with T = 1 keeps every triplet: the fine-tuned model back; CART: theta_avg is the fine-tune
    for method in ("tsv_m", "cart"):
        m = merge(base, fts, method, coefficients=1.0)
        for k in SHAPES:
            assert torch.allclose(m[k], fts[0][k], atol=1e-5), (method, k)
    # Iso-C and Iso-CTS: the task vector with its singular values flattened to their mean
    tv = task_vectors(base, fts)[0]
    for method in ("iso_c", "iso_cts"):
        d = merged_direction(base, fts, method)
        for k, v in tv.items():
            if v.dim() == 2 and "text_projection" not in k:
                u, s, vh = torch.linalg.svd(v.double(), full_matrices=False)
                assert torch.allclose(d.vector[k].double(), s.mean() * (u @ vh), atol=1e-5), (method, k)
            else:
                assert torch.allclose(d.vector[k], v, atol=1e-7), (method, k)


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts", "cart"])
def test_inputs_are_never_mutated(method):
    base, fts = models(3, 8)
    b0, f0 = copy.deepcopy(base), copy.deepcopy(fts)
    merge(base, fts, method)
    assert all(torch.equal(base[k], b0[k]) for k in base)
    assert all(torch.equal(f[k], g[k]) for f, g in zip(fts, f0) for k in f)


def test_bad_parameters_are_named():
    base, fts = models(2, 1)
    with pytest.raises(ValueError, match="sv_reduction"):
        merge(base, fts, "tsv_m", sv_reduction=0.0)
    with pytest.raises(ValueError, match="common_space_fraction"):
        merge(base, fts, "iso_cts", common_space_fraction=1.5)
    with pytest.raises(ValueError, match="rank_ratio"):
        merge(base, fts, "cart", rank_ratio=-0.1)
