"""ESD and power-law fit: hand-computed cases, a slow reference, and WeightWatcher 0.7.7 golden numbers."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.spectra import (
    alpha_hill_median,
    analysed_matrices,
    esd,
    esd_many,
    fit_powerlaw,
    spectral_table,
    weight_matrices,
)

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "ww_golden.json").read_text())
_spec = importlib.util.spec_from_file_location("make_ww_golden", FIXTURES / "make_ww_golden.py")
make_ww_golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_ww_golden)


def slow_fit(eigs, thresh=1e-5):
    """The WeightWatcher fit written as the plain loop over candidate xmins (n >= 20 only)."""
    x = np.sort(np.asarray(eigs, dtype=np.float64))
    x = x[x > thresh]
    logs = np.log(x)
    alphas, ds = np.zeros(len(x) - 1), np.ones(len(x) - 1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for i in range(len(x) - 1):
            n = float(len(x) - i)
            alphas[i] = 1 + n / (np.sum(logs[i:]) - n * logs[i])
            if alphas[i] > 1:
                ds[i] = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alphas[i]) - np.arange(n) / n))
    best = int(np.argmin(ds))  # the first least D
    return {"D": ds[best], "alpha": alphas[best], "xmin": x[best]}


# ------------------------------------------------------------------------ ESD


def test_esd_equals_squared_singular_values_both_orientations():
    rng = np.random.default_rng(0)
    for shape in [(30, 12), (12, 30), (20, 20)]:
        w = rng.standard_normal(shape)
        expected = np.sort(np.linalg.svd(w, compute_uv=False) ** 2)
        got = esd(torch.from_numpy(w))
        assert got.dtype == np.float64 and got.shape == (min(shape),)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
        assert np.all(np.diff(got) >= 0)


def test_esd_has_no_normalization():
    # diag(3, 2) has eigenvalues 9 and 4 of WᵀW, whatever N is.
    w = np.zeros((50, 2))
    w[0, 0], w[1, 1] = 3.0, 2.0
    np.testing.assert_allclose(esd(w), [4.0, 9.0])


def test_conv_kernel_is_sliced_per_kernel_position_and_scaled_by_sqrt_half():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((6, 4, 3, 2))
    mats = weight_matrices(torch.from_numpy(kernel))
    assert mats.shape == (3 * 2, 6, 4)  # kh·kw slices of out x in
    np.testing.assert_allclose(mats[4].numpy(), kernel[:, :, 2, 0] * math.sqrt(0.5))
    expected = np.sort(
        np.concatenate(
            [np.linalg.svd(kernel[:, :, i, j], compute_uv=False) ** 2 / 2 for i in range(3) for j in range(2)]
        )
    )
    got = esd(kernel)
    assert got.shape == (6 * 4,)  # 6 slices x min(6, 4) eigenvalues, pooled
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_esd_many_matches_one_by_one_and_keeps_order():
    rng = np.random.default_rng(2)
    weights = [rng.standard_normal(s) for s in [(10, 8), (8, 10), (10, 8), (5, 4, 2, 2), (10, 8)]]
    many = esd_many(weights)
    assert len(many) == len(weights)
    assert all(np.array_equal(a, b) for a, b in zip(esd_many(weights, workers=1), many))
    for w, e in zip(weights, many):
        np.testing.assert_allclose(e, esd(w), rtol=1e-12)


def test_esd_rejects_vectors_and_non_finite_weights():
    with pytest.raises(ValueError, match="2-D weight matrix or a 4-D conv kernel"):
        esd(np.ones(5))
    with pytest.raises(ValueError, match="NaN or inf"):
        esd(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="visual.proj: NaN or inf"):
        spectral_table({"visual.proj": torch.full((4, 3), float("inf"))})


# ---------------------------------------------------------------- power-law fit


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_fit_equals_slow_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    eigs = [rng.standard_normal(n) ** 2, np.abs(rng.standard_t(2.5, n)) ** 2, rng.pareto(1.5, n) + 0.01][seed % 3]
    got = fit_powerlaw(eigs)
    ref = slow_fit(eigs)
    assert got["method"] == "standard"
    assert got["xmin"] == ref["xmin"]
    assert got["alpha"] == ref["alpha"]  # the deciding candidates are recomputed term for term
    assert got["D"] == ref["D"]
    assert got["num_pl_spikes"] == np.count_nonzero(eigs >= got["xmin"])
    assert got["sigma"] == pytest.approx((got["alpha"] - 1) / math.sqrt(got["num_pl_spikes"]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=20, max_size=120), st.floats(1e-3, 1e3))
def test_fit_equals_slow_loop_on_spectra_with_many_ties(levels, scale):
    eigs = scale * np.asarray(levels, dtype=np.float64) ** 2
    got, ref = fit_powerlaw(eigs), slow_fit(eigs)
    assert (got["xmin"], got["alpha"], got["D"]) == (ref["xmin"], ref["alpha"], ref["D"])


def test_fit_takes_the_first_xmin_among_equal_distances(monkeypatch):
    # Exact ties in D do not arise from real spectra, so feed the selection a D curve with two equal
    # minima (candidates 5 and 12) through the two functions that compute D.
    import core.spectra as spectra

    eigs = np.geomspace(1.0, 100.0, 30)
    curve = np.full(29, 0.5)
    curve[[5, 12]] = 0.1
    monkeypatch.setattr(spectra, "_ks_distances", lambda logs, alphas, rows: curve[rows])
    monkeypatch.setattr(spectra, "_ww_alpha_d", lambda data, logs, i, bias_corrected=False: (1.0, 2.0, curve[i]))
    got = spectra.fit_powerlaw(eigs)
    assert got["xmin"] == eigs[5] and got["D"] == 0.1
    assert got["num_pl_spikes"] == 25


def test_flat_spectrum_is_degenerate():
    flat = fit_powerlaw(np.full(25, 4.0))
    assert flat["xmin"] == 4.0 and flat["status"] == "degenerate"


def test_fit_drops_eigenvalues_at_or_below_thresh():
    eigs = np.r_[np.zeros(40), np.full(5, 1e-5), np.geomspace(1, 50, 30)]
    got = fit_powerlaw(eigs)
    assert got["n"] == 30
    assert got == fit_powerlaw(np.geomspace(1, 50, 30))


def test_small_n_uses_bias_corrected_hill_and_tails_of_at_least_eight():
    eigs = np.exp(np.linspace(0.0, 3.0, 12))  # 12 < 20 eigenvalues
    got = fit_powerlaw(eigs)
    assert got["method"] == "small_n"
    i = int(np.flatnonzero(eigs == got["xmin"])[0])
    n = 12 - i
    assert n >= 8
    s = np.sum(np.log(eigs[i:] / eigs[i]))
    assert got["alpha"] == pytest.approx(1 + (n - 1) / s)


def test_small_n_fallback_and_failures():
    few = fit_powerlaw([1.0, 2.0, 4.0, 9.0, 20.0])  # fewer than 8: the whole sample is the tail
    assert few["method"] == "small_n_fallback" and few["xmin"] == 1.0
    assert few["alpha"] == pytest.approx(1 + 4 / np.sum(np.log([1.0, 2.0, 4.0, 9.0, 20.0])))
    assert few["sigma"] == pytest.approx(-1 / math.sqrt(5))  # WeightWatcher's sigma before the fallback
    for eigs in ([], [3.0], [1e-7, 1e-6]):
        failed = fit_powerlaw(eigs)
        assert failed["status"] == "failed" and failed["alpha"] == -1
    equal = fit_powerlaw([2.0] * 10)
    assert equal["status"] == "degenerate" and equal["alpha"] == 0.0 and equal["D"] == 1.0


# --------------------------------------------------------------- WeightWatcher


@pytest.mark.parametrize("name", sorted(GOLDEN["matrices"]))
def test_fit_matches_weightwatcher_on_golden_matrices(name):
    entry = GOLDEN["matrices"][name]
    weight = make_ww_golden.make_matrix(entry["recipe"])
    got = fit_powerlaw(esd(torch.from_numpy(weight)))
    ww = entry["ww"]
    assert got["alpha"] == pytest.approx(ww["alpha"], abs=0.01)
    assert got["xmin"] == pytest.approx(ww["xmin"], rel=1e-6)
    assert got["D"] == pytest.approx(ww["D"], abs=1e-6)
    assert got["num_pl_spikes"] == ww["num_pl_spikes"]


@pytest.mark.parametrize("name", sorted(GOLDEN["eigenvalue_cases"]))
def test_fit_matches_weightwatcher_on_edge_cases(name):
    entry = GOLDEN["eigenvalue_cases"][name]
    got = fit_powerlaw(entry["eigenvalues"])
    ww = entry["ww"]
    for key in ("alpha", "xmin", "D", "sigma"):
        assert got[key] == pytest.approx(ww[key], abs=1e-9), key
    assert got["num_pl_spikes"] == ww["num_pl_spikes"]


def test_golden_covers_the_required_families():
    kinds = {e["recipe"]["kind"] for e in GOLDEN["matrices"].values()}
    shapes = [e["recipe"]["shape"] for e in GOLDEN["matrices"].values()]
    assert {"gaussian", "student_t", "product", "lowrank_noise"} <= kinds
    assert any(len(s) == 4 for s in shapes)
    assert any(len(s) == 2 and s[0] > s[1] for s in shapes) and any(len(s) == 2 and s[0] < s[1] for s in shapes)
    assert any(len(s) == 2 and min(s) < 20 for s in shapes)
    assert GOLDEN["weightwatcher"] == "0.7.7"


# ------------------------------------------------------------------ TempBalance


def test_alpha_hill_median_uses_index_n_over_2_and_keeps_zeros_by_default():
    eigs = np.array([0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0])  # n = 7, i = 3, xmin = 2, tail 2,4,8,16
    expected = 1 + 4 / np.sum(np.log(np.array([2.0, 4.0, 8.0, 16.0]) / 2.0))
    assert alpha_hill_median(eigs) == pytest.approx(expected)
    # filter_zeros drops the two zeros: n = 5, i = 2, xmin = 4, tail 4, 8, 16
    assert alpha_hill_median(eigs, filter_zeros=True) == pytest.approx(1 + 3 / np.sum(np.log([1.0, 2.0, 4.0])))
    assert math.isnan(alpha_hill_median(np.zeros(4)))


# --------------------------------------------------------------------- the table


def _tiny_clip_state_dict(d=8, blocks=2):
    g = torch.Generator().manual_seed(0)
    sd = {
        "visual.conv1.weight": torch.randn(d, 3, 4, 4, generator=g),
        "visual.class_embedding": torch.randn(d, generator=g),
        "visual.positional_embedding": torch.randn(5, d, generator=g),
        "visual.proj": torch.randn(d, 6, generator=g),
        "token_embedding.weight": torch.randn(100, d, generator=g),
        "logit_scale": torch.tensor(4.6),
    }
    for b in range(blocks):
        p = f"visual.transformer.resblocks.{b}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * d, d, generator=g)
        sd[p + "attn.in_proj_bias"] = torch.randn(3 * d, generator=g)
        sd[p + "attn.out_proj.weight"] = torch.randn(d, d, generator=g)
        sd[p + "mlp.c_fc.weight"] = torch.randn(4 * d, d, generator=g)
        sd[p + "mlp.c_proj.weight"] = torch.randn(d, 4 * d, generator=g)
        sd[p + "ln_1.weight"] = torch.ones(d)
    return sd


def test_in_proj_is_split_into_q_k_v_rows():
    sd = _tiny_clip_state_dict()
    table = spectral_table(sd)
    qkv = table[table["name"].str.startswith("visual.transformer.resblocks.1.attn.in_proj_weight")]
    assert list(qkv["kind"]) == ["q", "k", "v"]
    assert list(qkv["name"].str[-3:]) == ["[q]", "[k]", "[v]"]
    assert all(s == (8, 8) for s in qkv["shape"])
    assert set(qkv["layer"]) == {1}
    w = sd["visual.transformer.resblocks.1.attn.in_proj_weight"]
    np.testing.assert_allclose(qkv["lambda_max"].iloc[1], esd(w[8:16])[-1])


def test_spectral_table_rows_columns_and_skips():
    sd = _tiny_clip_state_dict()
    calls = []
    table = spectral_table(sd, progress=lambda done, total: calls.append((done, total)))
    names = list(table["name"])
    # conv1 + proj + 2 blocks x (q, k, v, out, c_fc, c_proj); no vectors, positional or token embeddings
    assert len(table) == 2 + 2 * 6
    assert "visual.positional_embedding" not in names and "token_embedding.weight" not in names
    assert calls[-1] == (14, 14) and len(calls) == 14
    conv = table[table["name"] == "visual.conv1.weight"].iloc[0]
    assert conv["kind"] == "conv" and conv["n_eigs"] == 16 * 3 and conv["layer"] is pd.NA
    row = table[table["name"] == "visual.transformer.resblocks.0.mlp.c_fc.weight"].iloc[0]
    eigs = esd(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"])
    assert row["kind"] == "c_fc" and row["layer"] == 0 and row["n_eigs"] == 8
    assert row["lambda_max"] == pytest.approx(eigs[-1])
    assert row["stable_rank"] == pytest.approx(eigs.sum() / eigs[-1])
    assert row["alpha_weighted"] == pytest.approx(row["alpha"] * math.log10(eigs[-1]))
    assert row["alpha_hill"] == pytest.approx(alpha_hill_median(eigs))
    with_emb = analysed_matrices(sd, include_embeddings=True)
    assert "token_embedding.weight" in [n for n, _ in with_emb]
    assert analysed_matrices(sd, keys=["token_embedding.weight", "visual.proj"]) == [("visual.proj", sd["visual.proj"])]
    with pytest.raises(KeyError, match="not in the state dict"):
        analysed_matrices(sd, keys=["nope"])
    only = spectral_table(sd, keys=["visual.proj"])
    assert list(only["name"]) == ["visual.proj"] and only["kind"].iloc[0] == "proj"


# ------------------------------------------------------------------ per tower (full CLIP)
_fc_spec = importlib.util.spec_from_file_location("full_clip", FIXTURES / "full_clip.py")
full_clip = importlib.util.module_from_spec(_fc_spec)
_fc_spec.loader.exec_module(full_clip)


def test_spectral_table_of_full_clip_is_per_tower():
    sd = full_clip.open_clip_full()
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    full = spectral_table(sd)
    pd.testing.assert_frame_equal(full, spectral_table(visual))  # the α-over-depth curve does not change
    pd.testing.assert_frame_equal(spectral_table(sd, tower="visual"), full)
    text = spectral_table(sd, tower="text")
    assert not text["name"].str.startswith("visual.").any()
    assert sorted(text["layer"].dropna().unique()) == list(range(full_clip.TEXT_LAYERS))
    assert len(text) == full_clip.TEXT_LAYERS * 6 + 1  # q, k, v, out, c_fc, c_proj per block + text_projection
    with pytest.raises(ValueError, match="no text tower"):
        spectral_table(visual, tower="text")


# ---------------------------------------------------------------------- devices


def test_device_auto_is_the_cpu_without_a_gpu_and_forcing_cuda_without_one_is_an_error():
    from core.spectra import resolve_device

    rng = np.random.default_rng(3)
    weights = [rng.standard_normal((12, 9)).astype(np.float32), rng.standard_normal((4, 3, 2, 2))]
    cpu = esd_many(weights, device="cpu")
    assert all(np.array_equal(a, b) for a, b in zip(cpu, esd_many(weights, device="cpu", workers=1)))
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu" and resolve_device(None).type == "cpu"
        assert all(np.array_equal(a, b) for a, b in zip(cpu, esd_many(weights)))
        with pytest.raises(ValueError, match="no CUDA GPU"):
            esd_many(weights, device="cuda")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("meta")


def test_spectral_table_streams_on_the_cpu_and_a_bad_matrix_stops_the_rest(monkeypatch):
    """The table's CPU stream (`_cpu_esd_stream`) names a NaN matrix in the middle and cancels the
    matrices not yet started; a finite set gives the same rows with one worker or two."""
    from core import spectra as S

    rng = torch.Generator().manual_seed(0)
    sd = {f"visual.transformer.resblocks.{i}.mlp.c_fc.weight": torch.randn(24, 16, generator=rng) for i in range(12)}
    monkeypatch.setattr(S, "_default_workers", lambda: 1)
    serial = spectral_table(sd)
    monkeypatch.setattr(S, "_default_workers", lambda: 2)
    pd.testing.assert_frame_equal(serial, spectral_table(sd))
    bad = dict(sd)
    bad["visual.transformer.resblocks.3.mlp.c_fc.weight"] = torch.full((24, 16), float("nan"))
    seen = []
    real = S._gram_eigenvalues_numpy
    import time

    def slow(w):  # 50 ms per matrix: the stream meets the bad one long before the rest could all be done
        seen.append(1)
        time.sleep(0.05)
        return real(w)

    monkeypatch.setattr(S, "_gram_eigenvalues_numpy", slow)
    with pytest.raises(ValueError, match=r"resblocks\.3\.mlp\.c_fc\.weight: NaN or inf"):
        spectral_table(bad)
    assert len(seen) <= 7  # of the 11 finite matrices, those after the bad one were cancelled
