"""Figures are pure functions of tables: built here from tiny synthetic task vectors, no Streamlit."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from core.lr_rules import block_mean_alphas, model_balancing_multipliers, tempbalance_multipliers
from core.plots import analysis as P
from core.spectra import esd, fit_powerlaw, spectral_table
from core.task_vectors import block_table, cosine_matrix, kind_table, parameter_table, sign_conflict_table
from tests.fixtures import full_clip


def tiny_visual(seed: int, width: int = 24, blocks: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    sd = {
        "visual.conv1.weight": r(width, 3, 4, 4),
        "visual.class_embedding": r(width),
        "visual.positional_embedding": r(5, width),
        "visual.ln_pre.weight": 1 + r(width),
        "visual.ln_pre.bias": r(width),
    }
    for i in range(blocks):
        p = f"visual.transformer.resblocks.{i}."
        sd |= {
            p + "ln_1.weight": 1 + r(width),
            p + "ln_1.bias": r(width),
            p + "attn.in_proj_weight": r(3 * width, width),
            p + "attn.in_proj_bias": r(3 * width),
            p + "attn.out_proj.weight": r(width, width),
            p + "attn.out_proj.bias": r(width),
            p + "ln_2.weight": 1 + r(width),
            p + "ln_2.bias": r(width),
            p + "mlp.c_fc.weight": r(4 * width, width),
            p + "mlp.c_fc.bias": r(4 * width),
            p + "mlp.c_proj.weight": r(width, 4 * width),
            p + "mlp.c_proj.bias": r(width),
        }
    sd |= {"visual.ln_post.weight": 1 + r(width), "visual.ln_post.bias": r(width), "visual.proj": r(width, 8)}
    return sd


@pytest.fixture(scope="module")
def tvs():
    base = tiny_visual(0)
    tv = {}
    for s, task in enumerate(["digits", "shapes", "colours"], start=1):
        noise = tiny_visual(100 + s)
        tv[task] = {k: 0.01 * s * noise[k] for k in base}
    return base, tv


def test_norm_heatmap_is_tasks_by_blocks_with_outside_column(tvs):
    base, tv = tvs
    fig = P.norm_heatmap(block_table(base, tv), value="relative_norm", tasks=list(tv))
    hm = fig.data[0]
    assert isinstance(hm, go.Heatmap)
    assert list(hm.y) == ["digits", "shapes", "colours"]
    assert list(hm.x) == ["outside", "0", "1", "2"]
    z = np.asarray(hm.z)
    assert z.shape == (3, 4) and np.all(z > 0)
    # task vectors scale with s = 1, 2, 3 on the same noise pattern family: norms grow down the rows
    assert np.all(z[2] > z[0])


def test_kind_heatmap_and_profile_and_parameter_bars(tvs):
    base, tv = tvs
    k = kind_table(base, tv)
    fig = P.norm_heatmap(k[k["kind"] == "attention"], value="norm")
    assert list(fig.data[0].x) == ["0", "1", "2"]
    prof = P.block_profile(block_table(base, tv), tasks=list(tv))
    assert [t.name for t in prof.data] == ["digits", "shapes", "colours"]
    assert list(prof.data[0].x) == [0, 1, 2]
    p = parameter_table(base, tv)
    bars = P.parameter_bars(p[p["layer"] == 1])
    assert len(bars.data) == 3 and "b1.attn.in_proj_weight" in list(bars.data[0].x)


def test_cosine_heatmap_has_unit_diagonal_and_fixed_range(tvs):
    _, tv = tvs
    fig = P.cosine_heatmap(cosine_matrix(tv))
    hm = fig.data[0]
    assert np.allclose(np.diag(np.asarray(hm.z)), 1.0)
    assert (hm.zmin, hm.zmax) == (-1, 1)


def test_sign_conflict_figure_per_block(tvs):
    _, tv = tvs
    fig = P.sign_conflict_figure(sign_conflict_table(tv))
    assert list(fig.data[0].x) == ["outside", "0", "1", "2"]
    assert all(0 <= v <= 1 for v in fig.data[0].y)


def test_depth_sorted_restores_block_order():
    t = pd.DataFrame(
        {
            "name": [
                "visual.proj",
                "visual.transformer.resblocks.10.mlp.c_fc.weight",
                "visual.transformer.resblocks.2.mlp.c_fc.weight",
                "visual.conv1.weight",
            ],
            "layer": [None, 10, 2, None],
        }
    )
    s = P.depth_sorted(t)
    assert list(s["depth"]) == [-1.0, 2.0, 10.0, 11.0]
    assert P.short_name(s["name"][1]) == "b2.mlp.c_fc.weight"


def test_spectral_depth_one_line_per_model_in_depth_order(tvs):
    base, tv = tvs
    tables = {"base": spectral_table(base), "τ digits": spectral_table(tv["digits"])}
    fig = P.spectral_depth(tables, metric="alpha")
    assert [t.name for t in fig.data] == ["base", "τ digits"]
    xs = list(fig.data[0].x)
    assert xs == sorted(xs) and xs[0] == -1 and xs[-1] == 3  # conv1 "in", blocks 0..2, proj "out"
    only_q = P.spectral_depth(tables, metric="stable_rank", kind="q")
    assert list(only_q.data[0].x) == [0, 1, 2]


def test_esd_figure_marks_fit_and_xmin():
    w = torch.randn(200, 80, generator=torch.Generator().manual_seed(0))
    eigs = esd(w)
    fit = fit_powerlaw(eigs)
    fig = P.esd_figure({"W": (eigs, fit)})
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert len(fig.data) == 2 and f"α={fit['alpha']:.2f}" in fig.data[1].name
    assert fig.layout.shapes[0].x0 == pytest.approx(fit["xmin"])
    # the empirical density integrates to ~1 over the log-spaced bins
    assert np.all(np.asarray(fig.data[0].y) > 0)


def test_lr_multipliers_figure(tvs):
    base, _ = tvs
    t = spectral_table(base)
    t["tempbalance"] = tempbalance_multipliers(t["alpha"]).to_numpy()
    mb = model_balancing_multipliers(block_mean_alphas(t), s=1.25)
    t["model_balancing"] = t["layer"].map(mb.to_dict()).astype(float)
    fig = P.lr_multipliers_figure(t)
    assert min(fig.data[0].y) == pytest.approx(0.5) and max(fig.data[0].y) == pytest.approx(1.5)


def test_weight_scopes_figure_two_panels():
    rows = [
        {"name": "visual.transformer.resblocks.0.mlp.c_fc.weight", "layer": 0, "mean": 0.0, "std": 0.1},
        {"name": "visual.conv1.weight", "layer": None, "mean": 0.01, "std": 0.2},
    ]
    fig = P.weight_scopes_figure({"base": pd.DataFrame(rows), "ft": pd.DataFrame(rows)})
    assert len(fig.data) == 4
    assert list(fig.data[0].x) == ["conv1.weight", "b0.mlp.c_fc.weight"]


def test_weight_scopes_relative_to_base_draws_differences():
    base = pd.DataFrame({"name": ["visual.conv1.weight"], "layer": [None], "mean": [0.01], "std": [0.2]})
    ft = base.assign(mean=[0.03], std=[0.25])
    fig = P.weight_scopes_figure({"base": base, "ft": ft}, relative_to="base")
    assert [t.name for t in fig.data] == ["ft", "ft"]
    assert fig.data[0].y[0] == pytest.approx(0.02) and fig.data[1].y[0] == pytest.approx(0.05)


def test_short_name_uses_the_layer_map_for_every_container():
    assert P.short_name("visual.transformer.resblocks.3.attn.in_proj_weight[q]") == "b3.attn.in_proj_weight[q]"
    assert P.short_name("transformer.resblocks.1.mlp.c_fc.weight") == "b1.mlp.c_fc.weight"
    assert P.short_name("vision_model.encoder.layers.7.self_attn.q_proj.weight") == "b7.self_attn.q_proj.weight"
    assert P.short_name("text_model.encoder.layers.0.mlp.fc1.weight") == "b0.mlp.fc1.weight"
    assert P.short_name("visual.attnpool.heads.3.weight") == "attnpool.heads.3.weight"  # not a block
    assert P.short_name("visual.proj") == "proj"


def test_text_tower_depth_figure_has_its_own_blocks():
    sd = full_clip.open_clip_full()
    fig = P.spectral_depth({"text": spectral_table(sd, tower="text")}, metric="stable_rank")
    xs = list(fig.data[0].x)
    assert xs == [*range(full_clip.TEXT_LAYERS), full_clip.TEXT_LAYERS]  # blocks 0..1, then text_projection "out"
    fig = P.spectral_depth({"visual": spectral_table(sd)}, metric="stable_rank")
    assert list(fig.data[0].x) == [-1, *range(full_clip.VISION_LAYERS), full_clip.VISION_LAYERS]


# ----------------------------------------------------------------------------------- the shared look


def test_layout_puts_legends_in_the_margins_and_wraps_long_titles():
    from core.plots.style import TITLE_WRAP, figure, layout, wrap

    fig = layout(figure(go.Scatter(x=[1, 2], y=[1, 2], name="a")), "x " * 40, height=400)
    text = fig.layout.title.text
    assert "<br>" in text and all(len(line) <= TITLE_WRAP for line in text.split("<br>"))
    assert fig.layout.legend.yref == "container" and fig.layout.legend.y == 0  # below: bottom of the figure
    assert fig.layout.margin.t >= 2 * 20  # room for both title lines
    above = layout(figure(), "Title", legend="above")
    assert above.layout.legend.yref == "container" and above.layout.legend.y < 1
    assert layout(figure(), None, legend="none").layout.showlegend is False
    with pytest.raises(ValueError, match="legend must be one of"):
        layout(figure(), "t", legend="top")
    assert wrap("short") == "short" and wrap("a<br>b") == "a<br>b"


def test_log_axis_labels_decades_or_one_two_five():
    from core.plots.style import figure, log_axis

    wide = log_axis(figure(go.Scatter(x=[1, 2, 3], y=[1e-4, 1.0, 10.0])), "y")
    assert wide.layout.yaxis.type == "log" and wide.layout.yaxis.dtick == 1
    narrow = log_axis(figure(go.Scatter(x=np.array([50.0, 900.0]), y=[1, 2])), "x")
    assert narrow.layout.xaxis.dtick == "D2"  # less than two decades: 1-2-5 labels, not one or none
    with pytest.raises(ValueError, match="axis"):
        log_axis(figure(), "z")


def test_shade_colours_a_table_light_to_dark_and_leaves_nan_blank():
    from core.plots.style import shade

    frame = pd.DataFrame({"a": [0.0, 1.0], "b": [0.5, np.nan]})
    css = shade(frame)
    assert css.loc[0, "a"].startswith("background-color: rgb(247, 251, 255)")  # Blues: light = low
    assert "color: white" in css.loc[1, "a"] and css.loc[1, "b"] == ""
    with pytest.raises(ValueError, match="below zmin"):
        shade(frame, zmin=1.0, zmax=0.0)


def test_norm_grid_and_depth_grid_are_the_numbers_the_charts_draw(tvs):
    base, tv = tvs
    bt = block_table(base, tv)
    grid = P.norm_grid(bt, "relative_norm", tasks=["shapes", "digits"])
    assert list(grid.index) == ["shapes", "digits"] and list(grid.columns) == ["outside", "0", "1", "2"]
    heat = P.norm_heatmap(bt, "relative_norm", tasks=["shapes", "digits"]).data[0]
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float), grid.to_numpy(dtype=float))
    with pytest.raises(ValueError, match="missing"):
        P.norm_grid(bt.drop(columns=["layer"]))
    tables = {"base": spectral_table(base), "τ digits": spectral_table(tv["digits"])}
    depth = P.depth_grid(tables, "alpha")
    assert list(depth.index) == ["base", "τ digits"] and list(depth.columns) == ["in", "0", "1", "2", "out"]
    line = P.spectral_depth(tables, "alpha").data[0]
    np.testing.assert_allclose(np.asarray(line.y, dtype=float), depth.loc["base"].to_numpy(dtype=float))
    with pytest.raises(ValueError, match="no column"):
        P.depth_grid(tables, "nope")
