"""Figures of the Continual page: tables from core.labs.continual -> plotly Figure (pure functions).

Accuracies and forgetting are fractions in [0, 1], shown as %. Inputs:
`ContinualResult.acc_frame()` (rows = evaluated task, columns = "after <task>", NaN for
tasks not seen yet), `.forgetting()`, `.angle_frame()` / `.angle_summary()`,
`.ntk_blocks()` / `.ntk_frame()`, `.history`, and `core.labs.continual.result.runs_table`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.plots.style import SEQUENTIAL, figure, layout

RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]


def _cells(values: np.ndarray, fmt: str) -> list[list[str]]:
    return [["" if not np.isfinite(v) else fmt.format(v) for v in row] for row in values]


def accuracy_heatmap(acc: pd.DataFrame, title: str = "Accuracy matrix A[i, j]") -> go.Figure:
    """Rows: the task evaluated; columns: after training task j. Empty cells: not seen yet."""
    z = acc.to_numpy(dtype=float) * 100
    fig = figure(
        go.Heatmap(
            z=z,
            x=list(acc.columns),
            y=list(acc.index),
            zmin=0,
            zmax=100,
            colorscale=SEQUENTIAL,
            text=_cells(z, "{:.0f}"),
            texttemplate="%{text}",
            colorbar=dict(title="%"),
            hovertemplate="task %{y}, %{x}: %{z:.1f}%<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", title="evaluated task")
    fig.update_xaxes(title="training stage")
    return layout(fig, title, height=120 + 45 * len(acc), legend="above")


def forgetting_bars(forgetting: Mapping[str, pd.Series], title: str = "Forgetting per task") -> go.Figure:
    """Grouped bars: one group per task, one bar per run (max earlier accuracy − final, in points)."""
    fig = figure()
    for k, (label, s) in enumerate(forgetting.items()):
        s = s.dropna()
        fig.add_bar(x=list(s.index), y=(s * 100).tolist(), name=label, marker_color=RUN_COLOURS[k % len(RUN_COLOURS)])
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="forgetting (points)")
    return layout(fig, title, legend="above")


def summary_bars(table: pd.DataFrame, title: str = "Average accuracy and forgetting") -> go.Figure:
    """Two panels over runs/variants: average accuracy and average forgetting (%), with error
    bars when the table has *_std columns. `table`: index = label; columns avg_acc(_mean),
    avg_forgetting(_mean) [, avg_acc_std, avg_forgetting_std]."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("average accuracy (%)", "average forgetting (points)"))
    labels = [str(i) for i in table.index]
    for col, (key, colour) in enumerate((("avg_acc", "#1f77b4"), ("avg_forgetting", "#d62728")), start=1):
        mean = table[f"{key}_mean"] if f"{key}_mean" in table else table[key]
        std = table.get(f"{key}_std")
        fig.add_bar(
            x=labels,
            y=(mean * 100).tolist(),
            marker_color=colour,
            showlegend=False,
            error_y=dict(type="data", array=(std * 100).tolist()) if std is not None else None,
            row=1,
            col=col,
        )
    return layout(fig, title, legend="above")


def angle_heatmap(
    angles: pd.DataFrame, title: str = "Mean principal angle between task feature subspaces"
) -> go.Figure:
    """Task x task mean principal angle in degrees (90 = orthogonal subspaces)."""
    z = angles.to_numpy(dtype=float)
    fig = figure(
        go.Heatmap(
            z=z,
            x=list(angles.columns),
            y=list(angles.index),
            zmin=0,
            zmax=90,
            colorscale=SEQUENTIAL,
            text=_cells(z, "{:.0f}°"),
            texttemplate="%{text}",
            colorbar=dict(title="degrees"),
            hovertemplate="%{y} vs %{x}: %{z:.1f}°<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title, height=120 + 45 * len(angles), legend="above")


def angle_stages(
    summaries: Mapping[str, pd.DataFrame], title: str = "Task-level feature orthogonality over training"
) -> go.Figure:
    """Mean inter-task principal angle among the seen tasks after each task, one line per run."""
    fig = figure()
    for k, (label, df) in enumerate(summaries.items()):
        d = df.dropna(subset=["mean_angle"])
        fig.add_scatter(
            x=d["after"].tolist(),
            y=d["mean_angle"].tolist(),
            mode="lines+markers",
            name=label,
            line=dict(color=RUN_COLOURS[k % len(RUN_COLOURS)]),
        )
    fig.update_yaxes(title="mean principal angle (°)", range=[0, 90])
    fig.update_xaxes(title="after training")
    return layout(fig, title, legend="above")


def ntk_block_heatmap(blocks: pd.DataFrame, title: str = "Empirical NTK: RMS entry of each task block") -> go.Figure:
    """Task x task RMS entry of K = J Jᵀ (intra-task blocks on the diagonal)."""
    z = blocks.to_numpy(dtype=float)
    fig = figure(
        go.Heatmap(
            z=z,
            x=list(blocks.columns),
            y=list(blocks.index),
            colorscale=SEQUENTIAL,
            text=_cells(z, "{:.3g}"),
            texttemplate="%{text}",
            colorbar=dict(title="RMS"),
            hovertemplate="K[%{y}, %{x}]: %{z:.4g}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title, height=120 + 45 * len(blocks), legend="above")


def ntk_stages(frames: Mapping[str, pd.DataFrame], title: str = "NTK across tasks") -> go.Figure:
    """Left: inter/intra-task block ratio; right: kernel distance to the kernel at initialisation,
    per stage ("init", then after each task), one line per run."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("inter / intra block RMS", "drift: kernel distance to init"))
    for k, (label, df) in enumerate(frames.items()):
        c = RUN_COLOURS[k % len(RUN_COLOURS)]
        x = df["after"].tolist()
        fig.add_scatter(
            x=x, y=df["inter_intra"].tolist(), mode="lines+markers", name=label, line=dict(color=c), row=1, col=1
        )
        fig.add_scatter(
            x=x,
            y=df["drift_init"].tolist(),
            mode="lines+markers",
            name=label,
            line=dict(color=c),
            showlegend=False,
            row=1,
            col=2,
        )
    return layout(fig, title, legend="above")


def training_curves(history: pd.DataFrame, title: str = "Training losses") -> go.Figure:
    """Loss per logged step, the stages laid end to end (task boundaries marked); extra terms dotted."""
    fig = figure()
    if len(history):
        steps_per = history.groupby("stage")["step"].max() + 1
        offset = steps_per.cumsum().shift(fill_value=0)
        x = (history["step"] + history["stage"].map(offset)).tolist()
        fig.add_scatter(x=x, y=history["loss"].tolist(), name="classification", line=dict(color="#333"))
        for col, colour in (("ortho", "#9467bd"), ("l2", "#2ca02c")):
            if col in history and history[col].notna().any():
                fig.add_scatter(x=x, y=history[col].tolist(), name=col, line=dict(color=colour, dash="dot"))
        for stage, off in offset.items():
            if stage:
                fig.add_vline(x=float(off), line=dict(color="#bbb", dash="dash"))
    fig.update_xaxes(title="step (all tasks)")
    return layout(fig, title, legend="above")
