"""Figures of the merge-spectra view (tables from core.merge_spectra): pure functions, table in, figure out."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from core.plots.style import SEQUENTIAL, figure, layout, log_axis


def singular_values_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """One line per source (each task's τ and the merged τ) of singular value against index, log scale:
    Iso's flat spectrum and TSV's truncation show as the merged line's shape."""
    missing = {"source", "index", "singular_value"} - set(table.columns)
    if missing:
        raise ValueError(f"singular_values_figure needs columns source, index, singular_value; missing {missing}")
    fig = figure()
    for source, rows in table.groupby("source", sort=False):
        merged = source == "merged"
        fig.add_scatter(
            x=rows["index"],
            y=rows["singular_value"].clip(lower=1e-12),
            name=str(source),
            mode="lines",
            line={"width": 3 if merged else 1.5, "color": "black" if merged else None, "dash": None},
        )
    key = table["key"].iloc[0] if "key" in table and len(table) else ""
    fig.update_layout(xaxis_title="singular value index (1 = largest)", yaxis_title="singular value σᵢ")
    log_axis(fig, "y")
    return layout(fig, title or f"Singular values of each task's τ and the merged τ: {key}", height=360)


def interference_heatmap(matrix: pd.DataFrame, title: str = "Subspace overlap between tasks") -> go.Figure:
    """tasks × tasks overlap ‖U_aᵀU_b‖_F/√k (0: orthogonal subspaces, 1: the same)."""
    fig = figure(
        go.Heatmap(
            z=matrix.to_numpy(),
            x=[str(c) for c in matrix.columns],
            y=[str(i) for i in matrix.index],
            zmin=0,
            zmax=1,
            colorscale=SEQUENTIAL,
            text=[[f"{v:.2f}" for v in row] for row in matrix.to_numpy()],
            texttemplate="%{text}",
            colorbar={"title": "overlap"},
            hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title, height=120 + 32 * len(matrix), legend="none")


def interference_profile_figure(profile: pd.DataFrame, title: str = "Interference over depth") -> go.Figure:
    """Mean and max overlap between different tasks, block by block (-1: outside the blocks)."""
    fig = figure()
    x = [("outside" if int(v) < 0 else str(int(v))) for v in profile["layer"]]
    fig.add_scatter(x=x, y=profile["mean"], name="mean over task pairs", mode="lines+markers")
    fig.add_scatter(x=x, y=profile["max"], name="max", mode="lines+markers", line={"dash": "dot"})
    fig.update_layout(xaxis_title="block", yaxis_title="subspace overlap", yaxis_range=[0, 1.05])
    return layout(fig, title, height=320)
