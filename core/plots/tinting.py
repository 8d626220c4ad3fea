"""Figures of the Tinting page: DataFrame -> plotly Figure (pure functions, no streamlit).

Accuracies and fractions are in [0, 1] and shown as %. Tables come from core.labs.tinting:
the per-step history (step, loss, kept, agreement), the long per-task evaluation table
(step, task, accuracy), `comparison_table` (one row per method) and
`TintedMerge.lambda_frame` (rows = layers, columns = tasks).
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.plots.style import layout

# One colour per method, the same on every figure.
METHOD_COLOURS = {
    "zero-shot": "#9aa0a6",
    "TA": "#ff7f0e",
    "TIES": "#8c564b",
    "TA+LiNeS": "#d62728",
    "AdaMerging (layer-wise)": "#e377c2",
    "individual": "#1f77b4",
}
TINT_COLOURS = ["#2ca02c", "#17becf", "#9467bd", "#bcbd22", "#7f7f7f"]


def _need(df: pd.DataFrame, cols: set[str], who: str) -> None:
    missing = cols - set(df.columns)
    if missing:
        raise ValueError(f"{who} needs columns {sorted(cols)}; missing {sorted(missing)}")


def training_curves(history: pd.DataFrame, title: str = "Training") -> go.Figure:
    """Left: the pseudo-label loss per step (mean over the tasks' batches). Right: the fraction
    of samples the confidence filter kept and the merged model's agreement with the experts (%)."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "kept by the filter / agreement (%)"))
    if len(history):
        _need(history, {"step", "loss", "kept", "agreement"}, "training_curves")
        x = history["step"].tolist()
        fig.add_scatter(x=x, y=history["loss"].tolist(), name="loss", line=dict(color="#333"), row=1, col=1)
        fig.add_scatter(x=x, y=(history["kept"] * 100).tolist(), name="kept", line=dict(color="#2ca02c"), row=1, col=2)
        fig.add_scatter(
            x=x,
            y=(history["agreement"] * 100).tolist(),
            name="agreement",
            line=dict(color="#9467bd", dash="dot"),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(range=[0, 100], row=1, col=2)
    return layout(fig, title, height=340)


def accuracy_curves(evals: pd.DataFrame, title: str = "Test accuracy per task (own tint)") -> go.Figure:
    """One line per task over the evaluation steps, plus the mean (black, dashed)."""
    fig = go.Figure()
    if len(evals):
        _need(evals, {"step", "task", "accuracy"}, "accuracy_curves")
        for task, rows in evals.groupby("task", sort=False):
            fig.add_scatter(
                x=rows["step"].tolist(),
                y=(rows["accuracy"] * 100).tolist(),
                name=str(task),
                mode="lines+markers",
                hovertemplate="step %{x}: %{y:.1f}%<extra>" + str(task) + "</extra>",
            )
        mean = evals.groupby("step", sort=True)["accuracy"].mean()
        fig.add_scatter(
            x=mean.index.tolist(),
            y=(mean * 100).tolist(),
            name="mean",
            mode="lines+markers",
            line=dict(color="black", dash="dash", width=3),
        )
    fig.update_layout(xaxis_title="step", yaxis=dict(title="accuracy (%)", range=[0, 100]))
    return layout(fig, title, height=340)


def _colour(method: str, i: int) -> str:
    return METHOD_COLOURS.get(method, TINT_COLOURS[i % len(TINT_COLOURS)])


def normalized_bars(table: pd.DataFrame, title: str = "Normalized accuracy (acc / individual fine-tuned)") -> go.Figure:
    """One bar per method: avg_norm in %, the method's absolute mean accuracy in the hover."""
    _need(table, {"avg_norm", "avg_abs"}, "normalized_bars")
    methods = [str(m) for m in table.index]
    fig = go.Figure()
    fig.add_bar(
        x=methods,
        y=(table["avg_norm"] * 100).tolist(),
        marker_color=[_colour(m, i) for i, m in enumerate(methods)],
        text=[f"{v * 100:.1f}" for v in table["avg_norm"]],
        textposition="outside",
        customdata=(table["avg_abs"] * 100).tolist(),
        hovertemplate="%{x}: %{y:.1f}% normalized, %{customdata:.1f}% absolute<extra></extra>",
    )
    top = max(105.0, float(table["avg_norm"].max() * 100) + 8)
    fig.update_layout(yaxis=dict(title="normalized accuracy (%)", range=[0, top]), showlegend=False)
    return layout(fig, title, height=340, legend="none")


def task_bars(table: pd.DataFrame, tasks: list[str], title: str = "Test accuracy per task") -> go.Figure:
    """Grouped bars: one group per task, one bar per method (rows of `comparison_table`)."""
    fig = go.Figure()
    for i, (method, row) in enumerate(table.iterrows()):
        fig.add_bar(
            name=str(method),
            x=list(tasks),
            y=[float(row[t]) * 100 for t in tasks],
            marker_color=_colour(str(method), i),
            hovertemplate="%{x}: %{y:.1f}%<extra>" + str(method) + "</extra>",
        )
    fig.update_layout(barmode="group", yaxis=dict(title="accuracy (%)", range=[0, 100]))
    return layout(fig, title, height=380)


def lambda_heatmap(frame: pd.DataFrame, title: str = "Learned λ(layer, task)") -> go.Figure:
    """Heatmap of the effective merging coefficients in [0, 1]: rows = layers (input end at the
    top), columns = tasks. The initial value 0.3 is white-ish on the scale's lower third."""
    height = max(300, min(1400, 16 * len(frame) + 120))
    fig = go.Figure(
        go.Heatmap(
            z=frame.to_numpy(),
            x=[str(c) for c in frame.columns],
            y=[str(i) for i in frame.index],
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar=dict(title="λ"),
            hovertemplate="%{y} / %{x}: λ = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed")
    return layout(fig, title, height=height)
