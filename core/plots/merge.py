"""Figures of the live merge pages: DataFrame (or plain lists) -> plotly Figure.

Pure functions, no streamlit: the LiNeS page and the Merge lab draw them, the
tests inspect their traces. Accuracies are fractions in [0, 1] and shown as %.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from core.layers import TOWER_LABELS
from core.plots.style import COLORWAY, figure, layout

# One colour per model kind, the same on every figure.
MODEL_COLOURS = {
    "zero-shot": "#9aa0a6",
    "fine-tuned": "#1f77b4",
    "merged": "#d62728",
    "task arithmetic": "#ff7f0e",
}
KIND_COLOURS = {"LiNeS": "#d62728", "uniform": "#7f7f7f"}


def accuracy_bars(table: pd.DataFrame, title: str = "Accuracy per task") -> go.Figure:
    """Grouped bars: one group per task, one bar per model.

    `table`: long format with columns task, model (e.g. "zero-shot", "merged",
    "fine-tuned") and accuracy in [0, 1] (as `core.live_report.comparison_table` returns).
    """
    missing = {"task", "model", "accuracy"} - set(table.columns)
    if missing:
        raise ValueError(f"accuracy_bars needs columns task, model, accuracy; missing {sorted(missing)}")
    fig = figure()
    for model, rows in table.groupby("model", sort=False):
        fig.add_bar(
            name=str(model),
            x=rows["task"].tolist(),
            y=(rows["accuracy"] * 100).tolist(),
            marker_color=MODEL_COLOURS.get(str(model)),
            hovertemplate="%{x}: %{y:.1f}%<extra>" + str(model) + "</extra>",
        )
    fig.update_layout(barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 100]))
    return layout(fig, title)


def block_scale_curve(
    curves: Mapping[str, Sequence[float]],
    outside: Mapping[str, float] | None = None,
    title: str = "Per-block scale λ(ℓ)",
    tower: str | None = None,
) -> go.Figure:
    """Per-block scale curves, block ℓ = 0..L-1 on x.

    `curves`: {label: [s_0, ..., s_{L-1}]}, e.g. {"LiNeS": lines_curve(a, b, L)}.
    `outside`: {label: scale of every parameter outside the blocks} (LiNeS: alpha),
    drawn as a dotted horizontal line of the same colour.
    `tower`: the tower the blocks belong to ("visual"/"text", core.layers), named on the x axis.
    """
    fig = figure()
    for i, (label, scales) in enumerate(curves.items()):
        colour = KIND_COLOURS.get(label, COLORWAY[i % len(COLORWAY)])
        fig.add_scatter(
            name=label,
            x=list(range(len(scales))),
            y=[float(s) for s in scales],
            mode="lines+markers",
            line=dict(color=colour),
            hovertemplate="block %{x}: λ = %{y:.3f}<extra>" + label + "</extra>",
        )
        if outside and label in outside:
            fig.add_scatter(
                name=f"{label}: outside blocks",
                x=[0, max(len(scales) - 1, 0)],
                y=[float(outside[label])] * 2,
                mode="lines",
                line=dict(color=colour, dash="dot", width=1),
                hovertemplate="outside blocks: %{y:.3f}<extra></extra>",
            )
    xtitle = "block ℓ" if tower is None else f"block ℓ of the {TOWER_LABELS.get(tower, tower)}"
    fig.update_layout(xaxis=dict(title=xtitle, dtick=1), yaxis=dict(title="scale λ(ℓ)", rangemode="tozero"))
    return layout(fig, title, height=300)


def tradeoff_curve(
    sweep: pd.DataFrame,
    current: Mapping[str, float] | None = None,
    references: Mapping[str, tuple[float, float]] | None = None,
    *,
    chosen: Mapping[str, float] | None = None,
    title: str = "Target vs control accuracy",
) -> go.Figure:
    """The single-task trade-off: control accuracy (x) vs target accuracy (y), one line per kind.

    `sweep`: rows with kind, alpha, target_acc, control_acc (`LiveMerger.alpha_sweep`).
    `current`: {"control_acc", "target_acc"} of the point the sliders show (a star).
    `references`: {label: (control_acc, target_acc)}, e.g. zero-shot and fine-tuned (crosses).
    `chosen`: the point picked on validation (a ring).
    """
    fig = figure()
    for kind, rows in sweep.groupby("kind", sort=False):
        rows = rows.sort_values("alpha")
        fig.add_scatter(
            name=str(kind),
            x=(rows["control_acc"] * 100).tolist(),
            y=(rows["target_acc"] * 100).tolist(),
            mode="lines+markers+text",
            text=[f"{a:.1f}" for a in rows["alpha"]],
            textposition="top left",
            textfont=dict(size=9),
            line=dict(color=KIND_COLOURS.get(str(kind))),
            hovertemplate="α=%{text}: control %{x:.1f}%, target %{y:.1f}%<extra>" + str(kind) + "</extra>",
        )
    for label, (ctrl, tgt) in (references or {}).items():
        fig.add_scatter(
            name=label,
            x=[ctrl * 100],
            y=[tgt * 100],
            mode="markers",
            marker=dict(symbol="x", size=11, color=MODEL_COLOURS.get(label, "#333")),
        )
    if chosen is not None:
        fig.add_scatter(
            name="chosen on val",
            x=[chosen["control_acc"] * 100],
            y=[chosen["target_acc"] * 100],
            mode="markers",
            marker=dict(symbol="circle-open", size=16, line=dict(width=2), color="#2ca02c"),
        )
    if current is not None:
        fig.add_scatter(
            name="current",
            x=[current["control_acc"] * 100],
            y=[current["target_acc"] * 100],
            mode="markers",
            marker=dict(symbol="star", size=16, color="#000"),
        )
    fig.update_layout(xaxis=dict(title="control accuracy (%)"), yaxis=dict(title="target accuracy (%)"))
    return layout(fig, title, height=380)
