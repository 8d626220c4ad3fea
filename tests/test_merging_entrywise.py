"""Model Breadcrumbs, MagMax and PCB-merging against small references written from the official code,
hand-computed cases (row masks, the tie rule, quantiles) and single-task behaviour."""

from __future__ import annotations

import copy

import pytest
import torch

from core.merging import merge, merged_direction
from core.merging.kselect import kth_smallest

SHAPES = {
    "visual.class_embedding": (16,),
    "visual.conv1.weight": (6, 3, 4, 4),
    "visual.transformer.resblocks.0.attn.in_proj_weight": (24, 16),
    "visual.transformer.resblocks.0.ln_1.bias": (16,),
    "visual.transformer.resblocks.1.mlp.c_fc.weight": (40, 16),
    "visual.proj": (16, 10),
    "logit_scale": (),
}


def models(n, seed, scale=0.1):
    g = torch.Generator().manual_seed(seed)
    base = {k: torch.randn(s, generator=g) for k, s in SHAPES.items()}
    fts = [{k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()} for _ in range(n)]
    return base, fts


def flat(sd, keys):
    return torch.cat([sd[k].reshape(-1) for k in keys])


# ----------------------------------------------------------------- references, from the official code
def ref_breadcrumbs_mask(tensor, top_k_keep, top_k_remove):
    """rezazzr/breadcrumbs TaskVectorMiddleKeep (remove_first): rows by sorting, one row at a time."""
    if tensor.dim() == 0:
        return tensor
    rows = tensor.reshape(-1, tensor.shape[-1])
    out = torch.zeros_like(rows)
    c = rows.shape[1]
    for i, row in enumerate(rows):
        order = torch.argsort(row.abs(), descending=True).tolist()
        removed = set(order[: int(c * top_k_remove)])
        rest = [j for j in order if j not in removed]  # still in descending |tau|
        for j in rest[: int(c * top_k_keep)]:
            out[i, j] = row[j]
    return out.reshape(tensor.shape)


def ref_breadcrumbs(base, fts, density, gamma, alpha):
    total = None
    for f in fts:
        tv = {k: ref_breadcrumbs_mask(f[k] - base[k], density, gamma) for k in base}
        total = tv if total is None else {k: total[k] + tv[k] for k in tv}
    return {k: base[k] + alpha * total[k] for k in base}


def ref_magmax(base, fts, alpha):
    """danielm1405/magmax merge_max_abs, then apply_to(scaling_coef=alpha)."""
    tvs = [{k: f[k] - base[k] for k in base} for f in fts]
    out = {}
    for key in tvs[0]:
        best = tvs[0][key]
        for tv in tvs[1:]:
            best = torch.where(tv[key].abs() >= best.abs(), tv[key], best)
        out[key] = base[key] + alpha * best
    return out


def ref_pcb(flat_task_checks, pcb_ratio):
    """duguodong7/pcb-merging PCB_merge (with its normalize / clamp / act), on the stacked [N, d] matrix."""

    def normalize(x, dim=0):
        lo, hi = torch.min(x, dim=dim, keepdim=True)[0], torch.max(x, dim=dim, keepdim=True)[0]
        return (x - lo) / (hi - lo)

    def clamp(x, min_ratio=0, max_ratio=0):
        d = x.size(1)
        s = torch.sort(x, dim=1)[0]
        return torch.clamp(x, s[:, int(d * min_ratio)].unsqueeze(1), s[:, int(d * (1 - max_ratio) - 1)].unsqueeze(1))

    all_checks = flat_task_checks.clone()
    n, d = all_checks.shape
    abs_ = clamp(torch.abs(all_checks), min_ratio=0.0001, max_ratio=0.0001)
    clamped = torch.sign(all_checks) * abs_
    self_pcb_act = torch.exp(n * normalize(abs_, 1) ** 2)
    cross_pcb_act = torch.tanh(all_checks * torch.sum(all_checks, dim=0))
    scale = normalize(clamp(self_pcb_act * cross_pcb_act, 1 - pcb_ratio, 0), dim=1)
    return torch.sum(clamped * scale, dim=0) / torch.clamp(torch.sum(scale, dim=0), min=1e-12)


def rel_close(got, want, rtol):
    err = float((got.double() - want.double()).abs().max())
    return err <= rtol * max(float(want.abs().max()), 1e-12), err


CASES = [(2, 41), (3, 52), (6, 63)]  # (tasks, seed), fixed before any comparison was run


@pytest.mark.parametrize("n, seed", CASES)
@pytest.mark.parametrize("density, gamma", [(0.2, 0.1), (0.5, 0.0), (0.9, 0.3)])
def test_breadcrumbs_equals_the_official_code(n, seed, density, gamma):
    base, fts = models(n, seed)
    want = ref_breadcrumbs(base, fts, density, gamma, 0.4)
    got = merge(base, fts, "breadcrumbs", density=density, gamma=gamma)
    for k in base:
        ok, err = rel_close(got[k], want[k], 1e-5)
        assert ok, (k, err)


@pytest.mark.parametrize("n, seed", CASES)
def test_magmax_equals_the_official_code(n, seed):
    base, fts = models(n, seed)
    want = ref_magmax(base, fts, 0.5)
    got = merge(base, fts, "magmax")
    for k in base:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("n, seed", CASES)
@pytest.mark.parametrize("pcb_ratio", [0.1, 0.3])
def test_pcb_equals_the_official_code(n, seed, pcb_ratio):
    base, fts = models(n, seed)
    keys = sorted(SHAPES)
    tv = torch.stack([flat(f, keys) for f in fts]) - flat(base, keys)
    want = ref_pcb(tv, pcb_ratio)
    d = merged_direction(base, fts, "pcb", pcb_ratio=pcb_ratio)
    ok, err = rel_close(flat(d.vector, keys), want, 1e-5)
    assert ok, err
    assert d.scale == 1.2


def test_pcb_is_the_same_when_chunks_cut_through_tensors(monkeypatch):
    import core.merging.streaming as streaming

    base, fts = models(3, 5)
    want = merged_direction(base, fts, "pcb").vector
    monkeypatch.setattr(streaming, "CHUNK", 97)
    got = merged_direction(base, fts, "pcb").vector
    assert all(torch.allclose(got[k], want[k], rtol=1e-6, atol=0) for k in want)


# ----------------------------------------------------------------- hand-computed cases
def test_breadcrumbs_row_mask_on_a_1x10_example():
    tau = torch.tensor([[0.3, -1.0, 0.05, 0.7, -0.2, 0.9, 0.1, -0.6, 0.4, 0.8]])
    base = {"visual.transformer.resblocks.0.mlp.c_fc.weight": torch.zeros(1, 10)}
    ft = {"visual.transformer.resblocks.0.mlp.c_fc.weight": tau}
    got = merged_direction(base, [ft], "breadcrumbs", density=0.3, gamma=0.2).vector
    # gamma: int(10 * 0.2) = 2 largest |tau| go (-1.0, 0.9); density: int(10 * 0.3) = 3 of the rest stay (0.8, 0.7, -0.6)
    want = torch.tensor([0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0, -0.6, 0.0, 0.8])
    assert torch.equal(got["visual.transformer.resblocks.0.mlp.c_fc.weight"], want.unsqueeze(0))
    # a 1-D tensor is one row; a 0-d tensor is kept whole
    base = {"a.bias": torch.zeros(10), "a.scale": torch.tensor(0.0)}
    got = merged_direction(
        base, [{"a.bias": tau[0], "a.scale": torch.tensor(5.0)}], "breadcrumbs", density=0.3, gamma=0.2
    )
    assert torch.equal(got.vector["a.bias"], want)
    assert float(got.vector["a.scale"]) == 5.0


def test_breadcrumbs_masks_conv_kernels_along_their_last_dim():
    tau = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # each row [4k+1 .. 4k+4]
    base = {"visual.conv1.weight": torch.zeros(1, 1, 4, 4)}
    got = merged_direction(base, [{"visual.conv1.weight": tau}], "breadcrumbs", density=0.5, gamma=0.25).vector
    # per row of 4: drop the 1 largest, keep the 2 largest of the rest
    want = torch.tensor([[0.0, 2, 3, 0], [0, 6, 7, 0], [0, 10, 11, 0], [0, 14, 15, 0]]).reshape(1, 1, 4, 4)
    assert torch.equal(got["visual.conv1.weight"], want)


def test_magmax_ties_go_to_the_later_task():
    base = {"w": torch.zeros(4)}
    fts = [{"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}, {"w": torch.tensor([-1.0, 2.0, -1.0, -0.5])}]
    assert merged_direction(base, fts, "magmax").vector["w"].tolist() == [-1.0, 2.0, 3.0, -0.5]
    fts.reverse()
    assert merged_direction(base, fts, "magmax").vector["w"].tolist() == [1.0, -2.0, 3.0, 0.5]


def test_pcb_quantiles_on_a_handmade_vector():
    tau = torch.tensor([0.1, -0.2, 0.3, 0.4, -0.5, 0.6, 0.7, -0.8, 0.9, 1.0])
    base = {"w": torch.zeros(10)}
    d = merged_direction(base, [{"w": tau}], "pcb", pcb_ratio=0.5)
    # d = 10: |tau| clamped to sorted[int(10*0.0001)] = 0.1 and sorted[int(10*0.9999 - 1)] = sorted[8] = 0.9,
    # so 1.0 -> 0.9; the score cut is sorted[int(10*0.5)] = the 6th smallest (|tau| = 0.6): it and below -> 0
    assert torch.allclose(d.vector["w"], torch.tensor([0, 0, 0, 0, 0, 0, 0.7, -0.8, 0.9, 0.9]), atol=1e-7)


def test_kth_smallest_on_handmade_rows():
    x = torch.tensor([[3.0, -1.0, 2.0, -7.0, 0.0, 5.0], [1.0, 1.0, 1.0, -2.0, 4.0, 4.0]])
    blocks = lambda: iter([x[:, :4], x[:, 4:]])  # noqa: E731
    assert kth_smallest(blocks, [[1, 2, 6], [1, 2, 4, 5]]) == [[-7.0, -1.0, 5.0], [-2.0, 1.0, 1.0, 4.0]]
    assert kth_smallest(lambda: iter([x.double()]), [[3], [6]]) == [[0.0], [4.0]]
    with pytest.raises(ValueError, match="rank 7 out of range"):
        kth_smallest(blocks, [[7], [1]])


# ----------------------------------------------------------------- single task, inputs untouched, bad input
def test_single_task_with_coefficient_one():
    base, fts = models(1, 3)
    for method, kw in (("magmax", {}), ("breadcrumbs", {"density": 1.0, "gamma": 0.0})):
        m = merge(base, fts, method, coefficients=1.0, **kw)
        assert all(torch.allclose(m[k], fts[0][k], atol=1e-6) for k in base), method
    # PCB on one task keeps the entries above the score cut (scores rise with |tau|), clamped, as they are
    keys = sorted(SHAPES)
    tv = flat(fts[0], keys) - flat(base, keys)
    got = flat(merged_direction(base, fts, "pcb", pcb_ratio=0.25).vector, keys)
    kept = got != 0
    assert abs(float(kept.float().mean()) - 0.25) < 0.01
    assert float(tv.abs()[kept].min()) >= float(tv.abs()[~kept].max())
    assert torch.allclose(got[kept], tv[kept].sign() * tv.abs()[kept].clamp(max=float(got.abs().max())))


@pytest.mark.parametrize("method", ["breadcrumbs", "magmax", "pcb"])
def test_inputs_are_never_mutated(method):
    base, fts = models(3, 8)
    b0, f0 = copy.deepcopy(base), copy.deepcopy(fts)
    merge(base, fts, method)
    assert all(torch.equal(base[k], b0[k]) for k in base)
    assert all(torch.equal(f[k], g[k]) for f, g in zip(fts, f0) for k in f)


def test_bad_parameters_are_named():
    base, fts = models(2, 1)
    with pytest.raises(ValueError, match="density"):
        merge(base, fts, "breadcrumbs", density=1.5)
    with pytest.raises(ValueError, match="pcb_ratio"):
        merge(base, fts, "pcb", pcb_ratio=0.0)
    with pytest.raises(ValueError, match="global scale"):
        merge(base, fts, "magmax", coefficients=[0.5, 0.5])
