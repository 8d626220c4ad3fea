"""Task vectors: where, block by block, did fine-tuning change the weights, and do the tasks agree?"""

from __future__ import annotations

import streamlit as st

from core.layers import TOWER_LABELS, towers
from core.plots import analysis as P
from core.plots.style import shade
from ui import state as S

st.title("Task vectors")
ms = S.require_model_set()
st.caption(
    "A task vector τ = θ_fine-tuned − θ_base is what fine-tuning on one task added to the weights. "
    "Rows are tasks, columns are the network's residual blocks from input (left) to output (right); "
    "“outside” collects the parameters outside the blocks (patch embedding, ln_pre, ln_post, projection)."
)
st.markdown(
    "**What to look for:** "
    "the relative change ‖τ‖ / ‖θ₀‖ grows with depth (on the styled zoo from 0.088 in block 0 to 0.109 in the last block, averaged over the tasks: fine-tuning moves the deep blocks most, the premise of LiNeS). Under *Agreement between tasks*, tasks that share class words share directions: counts and counts_mixed have a cosine of 0.53, shapes and shapes_textured 0.47 (the mean over all pairs is 0.16, against 0.03 on the demo zoo), and in every block 94–97 % of the entries are pushed up by some tasks and down by others: the interference that TIES and the SVD merges resolve."
)
if not ms.tasks:
    st.warning("This model set has no fine-tuned checkpoints.")
    st.stop()

# A full CLIP has two stacks of blocks: depth is per tower, so pick one (image tower by default).
tower_names = towers(S.analysis_keys(ms))
tower = (
    st.radio("Tower", tower_names, horizontal=True, key="tv_tower", format_func=TOWER_LABELS.get)
    if len(tower_names) > 1
    else None
)
tables = S.cached_tv_tables(ms, tower)
params = tables["parameter"]
KINDS = {"all": "all parameters", "attention": "attention", "mlp": "MLP", "norm": "norms", "embedding": "embeddings"}
blocks = sorted(tables["block"]["layer"].unique())
labels = [P.block_label(b) for b in blocks]
# on_change="rerun": only the open tab is computed and drawn. The first tab shows numbers only: a page whose
# first view draws a chart makes a fresh browser tab load Plotly's 4.7 MB bundle first (bench/app.py).
tab_summary, tab_norms, tab_agree, tab_tables = st.tabs(
    ["Summary", "Norms by block", "Agreement between tasks", "Tables"], key="tv_tab", on_change="rerun"
)


def summary_view() -> None:
    block = tables["block"]
    grid = P.norm_grid(block, "relative_norm", tasks=ms.tasks)
    top = grid.drop(columns=["outside"], errors="ignore")
    st.markdown(
        "**Relative change ‖τ‖ / ‖θ₀‖ per block**, darker = fine-tuning changed that block more. "
        "The charts are under *Norms by block*."
    )
    st.table(grid.style.format("{:.3g}", na_rep="").apply(shade, axis=None))
    if not top.empty and top.notna().any().any():
        st.markdown("**Most changed block per task**")
        cols = st.columns(min(len(grid), 4))
        for i, task in enumerate(grid.index):
            row = top.loc[task].astype(float)
            if row.notna().any():
                cols[i % len(cols)].metric(task, f"block {row.idxmax()}", help=f"relative change {row.max():.3g}")
    conflict = tables["sign_conflict"].assign(block=tables["sign_conflict"]["layer"].map(P.block_label))
    st.markdown("**Entries in sign conflict per block** (some tasks push a weight up, others down)")
    conflicts = conflict.set_index("block")[["conflict_fraction"]].T.rename(index={"conflict_fraction": "share"})
    st.table(conflicts.style.format("{:.1%}").apply(shade, axis=None, zmin=0.0, zmax=1.0))


def norms_view() -> None:
    c1, c2 = st.columns([2, 3])
    measure = c1.radio(
        "Measure", ["norm", "relative_norm"], horizontal=True, key="tv_measure",
        format_func=lambda m: {"norm": "absolute ‖τ‖", "relative_norm": "relative ‖τ‖ / ‖θ₀‖"}[m],
    )  # fmt: skip
    kind = c2.radio("Parameters", list(KINDS), horizontal=True, key="tv_kind", format_func=KINDS.get)
    table = tables["block"] if kind == "all" else tables["kind"][tables["kind"]["kind"] == kind]
    if table.empty:
        st.info(f"The task vectors hold no {KINDS[kind]} parameters.")
        table = tables["block"]
    heat = P.norm_heatmap(table, measure, tasks=ms.tasks, title="Norm per task and block")
    event = st.plotly_chart(heat, key="tv_heatmap", on_select="rerun", selection_mode="points")
    st.caption("Click a cell to inspect that block's parameters below.")
    points = event.get("selection", {}).get("points", []) if event else []
    if points:
        clicked = str(points[0].get("x"))
        if clicked in labels and st.session_state.get("_tv_last_click") != clicked:
            st.session_state["_tv_last_click"] = clicked
            st.session_state["tv_block"] = clicked
    st.plotly_chart(P.block_profile(table, measure, tasks=ms.tasks, title="Profile over depth"), key="tv_profile")

    st.subheader("Drill into a block")
    if st.session_state.get("tv_block") not in labels:
        st.session_state.pop("tv_block", None)
    block = st.selectbox(
        "Block", labels, key="tv_block", format_func=lambda x: "outside the blocks" if x == "outside" else f"block {x}"
    )
    sel = params[params["layer"].isna()] if block == "outside" else params[params["layer"] == int(block)]
    st.plotly_chart(P.parameter_bars(sel, measure), key="tv_params")
    st.dataframe(
        P.depth_sorted(sel).drop(columns=["depth"]), hide_index=True, key="tv_param_table",
        column_config={
            "numel": st.column_config.NumberColumn("entries"),
            "near_zero_fraction": st.column_config.NumberColumn("near zero", format="percent"),
        },
    )  # fmt: skip


def agreement_view() -> None:
    left, right = st.columns(2)
    with left:
        st.subheader("Task × task cosine similarity")
        scope = st.selectbox(
            "Over", ["all", *labels], key="tv_cos_scope",
            format_func=lambda x: {"all": "all parameters", "outside": "parameters outside the blocks"}.get(x, f"block {x}"),
        )  # fmt: skip
        layer = "all" if scope == "all" else (None if scope == "outside" else int(scope))
        if len(ms.tasks) < 2:
            st.info("Cosine similarity needs at least two tasks.")
        else:
            st.plotly_chart(P.cosine_heatmap(S.cached_cosine(ms, layer, tower)), key="tv_cosine")
            st.caption("Near 0: the tasks changed the weights in unrelated directions (little interference).")
    with right:
        st.subheader("Sign conflicts per block")
        st.plotly_chart(P.sign_conflict_figure(tables["sign_conflict"]), key="tv_conflict")
        st.caption(
            "Bars: share of entries where at least one task pushes the weight up and another down (what TIES "
            "resolves). Line: mean over task pairs."
        )


def tables_view() -> None:
    shown = tables["block"].assign(block=tables["block"]["layer"].map(P.block_label))
    st.dataframe(shown[["task", "block", "numel", "norm", "relative_norm"]], hide_index=True, key="tv_block_table")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Per-block table (CSV)", tables["block"].to_csv(index=False), "task_vector_blocks.csv")
    d2.download_button("Per-parameter table (CSV)", params.to_csv(index=False), "task_vector_parameters.csv")
    d3.download_button("Sign conflicts (CSV)", tables["sign_conflict"].to_csv(index=False), "sign_conflicts.csv")


views = ((tab_summary, summary_view), (tab_norms, norms_view), (tab_agree, agreement_view), (tab_tables, tables_view))
for tab, view in views:
    if tab.open:
        with tab:
            view()
