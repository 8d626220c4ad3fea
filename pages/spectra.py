"""Spectra: heavy-tailed self-regularization per layer (WeightWatcher's α), the lr rules built on it,
and weight scopes."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.layers import TOWER_LABELS, towers
from core.lr_rules import block_mean_alphas, model_balancing_multipliers, tempbalance_multipliers
from core.plots import analysis as P
from core.plots.style import shade
from ui import state as S

st.title("Spectra")
ms = S.require_model_set()
st.caption(
    "Each weight matrix W has an empirical spectral density (ESD): the eigenvalues of WᵀW. Its tail follows a "
    "power law p(λ) ∝ λ^−α. Well-trained layers are heavy-tailed (α ≈ 2–6, shaded); larger α means a layer "
    "learned less. Fits follow WeightWatcher; spectra are computed once per model and cached."
)
st.markdown(
    "**What to look for:** "
    "compare a fine-tuned model with the base, then open a task vector (tv:): fine-tuning lowers the mean α (on the styled zoo 3.71 → 3.32 for digits_typed, 3.12 for letters, 3.68 for counts: the more a task had to learn, the heavier the tails, as HT-SR theory and TempBalance assume), and a task vector's spectrum falls off fast (mean α 1.8–2.4): a few directions carry each update, the low rank the SVD merges (TSV-M, Iso-C, CART) act on."
)

METRICS = ["alpha", "alpha_weighted", "stable_rank", "lambda_max"]
sources = S.spectral_sources(ms)
models = [w for w in sources if not w.startswith("tv:")]
tvs = [w for w in sources if w.startswith("tv:")]

# A full CLIP has two stacks of blocks: depth is per tower, so pick one (image tower by default).
tower_names = towers(S.analysis_keys(ms))
tower = (
    st.radio("Tower", tower_names, horizontal=True, key="spec_tower", format_func=TOWER_LABELS.get)
    if len(tower_names) > 1
    else None
)
base_table = S.cached_spectral_table(ms, "base", tower)
TABS = ["Summary", "α over depth", "One layer: ESD", "TempBalance learning rates", "Weight scopes", "Merge spectra"]
# on_change="rerun": only the open tab is computed and drawn. The first tab shows numbers only: a page whose
# first view draws a chart makes a fresh browser tab load Plotly's 4.7 MB bundle first (bench/app.py).
tab_summary, tab_depth, tab_layer, tab_lr, tab_scopes, tab_merge = st.tabs(TABS, key="spec_tab", on_change="rerun")
DEFAULT_MODELS = ["base", *ms.tasks[:2]] + (["merged"] if "merged" in models else [])


def summary_view() -> None:
    chosen = st.session_state.get("spec_models") or DEFAULT_MODELS
    chosen_tv = st.session_state.get("spec_tvs") or tvs[:2]
    st.markdown(
        "**Mean α per block** (power-law exponent of each weight matrix's spectrum, averaged over the block's "
        "matrices; in = before the first block, out = after the last). Heavy-tailed, well-trained layers have "
        "α ≈ 2–6; darker = larger α = the layer learned less. The charts are under *α over depth*."
    )
    for what, sources in (("Weights", chosen), ("Task vectors τ = θ_ft − θ₀", chosen_tv)):
        tables = {S.source_label(w): S.cached_spectral_table(ms, w, tower) for w in sources}
        grid = P.depth_grid(tables, "alpha")
        if grid.empty:
            continue
        st.markdown(f"*{what}*")
        st.table(grid.style.format("{:.2f}", na_rep="").apply(shade, axis=None))


def depth_view() -> None:
    c1, c2, c3 = st.columns([3, 3, 2])
    chosen = c1.multiselect("Models", models, default=DEFAULT_MODELS, key="spec_models", format_func=S.source_label)
    chosen_tv = c2.multiselect("Task vectors", tvs, default=tvs[:2], key="spec_tvs", format_func=S.source_label)
    metric = c3.selectbox("Metric", METRICS, key="spec_metric", format_func=P.METRIC_LABELS.get)
    kinds = sorted(base_table["kind"].unique())
    kind = st.radio(
        "Matrices", ["mean", *kinds], horizontal=True, key="spec_kind",
        format_func=lambda k: "mean per block" if k == "mean" else k,
    )  # fmt: skip
    kind_arg = None if kind == "mean" else kind
    left, right = st.columns(2)
    with left:
        tables = {S.source_label(w): S.cached_spectral_table(ms, w, tower) for w in chosen}
        st.plotly_chart(P.spectral_depth(tables, metric, kind_arg, title="Weights"), key="spec_depth")
    with right:
        tv_tables = {S.source_label(w): S.cached_spectral_table(ms, w, tower) for w in chosen_tv}
        fig = P.spectral_depth(tv_tables, metric, kind_arg, title="Task vectors τ = θ_ft − θ₀")
        st.plotly_chart(fig, key="spec_depth_tv")
    if "merged" not in models:
        st.caption("Merge models in the Merge lab to add the merged model here.")
    with st.expander("Spectral table of the base model"):
        st.dataframe(P.depth_sorted(base_table).drop(columns=["depth"]), hide_index=True, key="spec_table")
        st.download_button("Download (CSV)", base_table.to_csv(index=False), "spectra_base.csv", "text/csv")


def layer_view() -> None:
    names = list(P.depth_sorted(base_table)["name"])
    c1, c2, c3 = st.columns([3, 2, 2])
    matrix = c1.selectbox("Weight matrix", names, key="spec_layer", format_func=P.short_name)
    model = c2.selectbox("Model", models, key="spec_esd_model", format_func=S.source_label)
    task = c3.selectbox("Task vector of", ms.tasks, key="spec_task") if ms.tasks else None
    plots = [(model, "Weights")] + ([(f"tv:{task}", "Task vector")] if task else [])
    for col, (which, title) in zip(st.columns(len(plots)), plots):
        with col:
            eigs, fit = S.cached_esd(ms, which, matrix)
            label = S.source_label(which)
            st.plotly_chart(P.esd_figure({label: (eigs, fit)}, title=f"{title}: {label}"), key=f"spec_esd_{title}")
            ok = fit["status"] != "failed"
            st.markdown(
                f"α = **{fit['alpha']:.2f}** · xmin = **{fit['xmin']:.3g}** · KS distance D = **{fit['D']:.3f}** · "
                f"**{len(eigs)}** eigenvalues ({fit['num_pl_spikes']} in the power-law tail)"
                if ok
                else f"No power-law fit ({len(eigs)} eigenvalues)."
            )
            if fit.get("warning"):
                st.caption(f"WeightWatcher would flag this layer as {fit['warning']}.")


def lr_view() -> None:
    st.caption(
        "TempBalance gives each layer lr·[s1 + (s2 − s1)(α − α_min)/(α_max − α_min)]: heavy-tailed (well-trained, "
        "low α) layers learn slower. Model Balancing averages α per block and uses "
        "lr·10^(s·(σ(T(ᾱ_b − mean)) − ½)), T = 10."
    )
    c1, c2, c3 = st.columns([2, 3, 2])
    source = c1.selectbox("α from", models, key="spec_lr_source", format_func=S.source_label)
    s1, s2 = c2.slider("TempBalance s1, s2", 0.0, 3.0, (0.5, 1.5), 0.05, key="spec_s1s2")
    s_mb = c3.select_slider("Model Balancing s", [0.25, 0.5, 0.75, 1.0, 1.25], value=0.25, key="spec_mb_s")
    t = S.cached_spectral_table(ms, source, tower)[["name", "layer", "alpha"]].copy()
    t["tempbalance"] = tempbalance_multipliers(t["alpha"], s1=s1, s2=s2).to_numpy()
    mb = model_balancing_multipliers(block_mean_alphas(t), s=s_mb)
    t["model_balancing"] = pd.to_numeric(t["layer"].map(mb.to_dict()), errors="coerce")
    st.plotly_chart(P.lr_multipliers_figure(t), key="spec_lr")


def scopes_view() -> None:
    st.caption(
        "Mean μ and standard deviation σ of every weight matrix. Weight Scope Alignment pulls fine-tunes toward "
        "a common scope so they merge better; here: how far each fine-tune drifted from the base."
    )
    scope_models = st.multiselect(
        "Models", models, default=["base", *ms.tasks], key="spec_scope_models", format_func=S.source_label
    )
    relative = st.toggle("Show the difference from the base", value=True, key="spec_scope_relative")
    scopes = {}
    for w in dict.fromkeys(["base", *scope_models] if relative else scope_models):
        sc = S.cached_scopes(ms, w, tower)
        scopes[S.source_label(w)] = sc[(sc["level"] == "tensor") & (sc["ndim"] >= 2)]
    ref = S.source_label("base") if relative else None
    st.plotly_chart(P.weight_scopes_figure(scopes, relative_to=ref), key="spec_scopes")


SVD_METHODS = ["tsv_m", "iso_c", "iso_cts", "cart", "task_arithmetic"]


def merge_spectra_view() -> None:
    """What a merge does to each matrix's singular spectrum, and how much the tasks' subspaces overlap
    (the interference TSV-M removes): why the SVD methods beat task arithmetic, layer by layer."""
    from core.merge_spectra import (
        interference_matrix,
        interference_profile,
        interference_table,
        matrix_keys,
        rank_table,
        singular_values_table,
    )
    from core.merging import merged_direction
    from core.plots import merge_spectra as MP

    st.markdown(
        "Singular values of each task's τ and of the merged τ for one matrix (Iso flattens the merged spectrum, "
        "TSV-M keeps each task's top 1/T), the overlap of the tasks' top singular subspaces (0: orthogonal, "
        "no interference; 1: the same directions) per block, and how much of each τ's energy a rank-k cut keeps."
    )
    tv = S.cached_task_vectors(ms)
    keys = [k for k in matrix_keys(tv) if (tower is None or k.startswith("visual.") == (tower == "visual"))]
    if not keys:
        st.info("No matrices shared by the fine-tuned models in this tower.")
        return
    c1, c2, c3 = st.columns([2, 3, 2])
    method = c1.selectbox("Merge method", SVD_METHODS, key="spec_ms_method")
    key = c2.selectbox("Matrix", keys, index=min(len(keys) - 1, len(keys) // 2), key="spec_ms_key")
    frac = c3.slider(
        "sv_reduction (rank kept per task)", 0.05, 1.0, round(1 / max(1, len(ms.tasks)), 2), 0.05, key="spec_ms_frac"
    )
    direction = S.memo(
        ms,
        f"merge-dir:{method}",
        lambda cb: merged_direction(ms.base(), ms.finetuned_all(), method),
        f"Merging with {method}",
    )
    sv = singular_values_table(tv, key, merged=direction.vector, merged_scale=direction.scale)
    st.plotly_chart(MP.singular_values_figure(sv), key="spec_ms_sv")
    inter = S.memo(
        ms,
        f"interference:{frac}:{tower}",
        lambda cb: interference_table(tv, sv_reduction=frac, keys=keys),
        "Singular subspaces of every task's matrices",
    )
    layer = int(sv["layer"].iloc[0])
    left, right = st.columns(2)
    with left:
        st.plotly_chart(
            MP.interference_heatmap(interference_matrix(inter, layer=layer), f"Subspace overlap, block {layer}"),
            key="spec_ms_heat",
        )
    with right:
        st.plotly_chart(MP.interference_profile_figure(interference_profile(inter)), key="spec_ms_profile")
    ranks = S.memo(ms, f"ranks:{frac}:{tower}", lambda cb: rank_table(tv, sv_reduction=frac), "Effective ranks")
    ranks = ranks[ranks["key"].isin(keys)]
    summary = ranks.groupby("task")[["effective_rank", "energy_kept"]].mean()
    st.markdown(
        f"**Per task, mean over the matrices:** effective rank, and the energy a rank-k cut keeps at sv_reduction {frac:g}"
    )
    st.dataframe(summary.style.format("{:.3f}"), key="spec_ms_ranks")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Singular values (CSV)", sv.to_csv(index=False), "singular_values.csv", key="spec_ms_csv1")
    d2.download_button("Interference (CSV)", inter.to_csv(index=False), "interference.csv", key="spec_ms_csv2")
    d3.download_button("Ranks and energy (CSV)", ranks.to_csv(index=False), "ranks.csv", key="spec_ms_csv3")


VIEWS = [(tab_summary, summary_view), (tab_depth, depth_view), (tab_layer, layer_view), (tab_lr, lr_view)]
for tab, view in [*VIEWS, (tab_scopes, scopes_view), (tab_merge, merge_spectra_view)]:
    if tab.open:
        with tab:
            view()
