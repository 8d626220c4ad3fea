"""Figures for the Fine-tune lab (TempBalance / Model Balancing, Weight Scope Alignment): table in, plotly Figure out.

Inputs are the tables the Fine-tune lab (`core.labs.finetune`) returns: training histories (step,
loss, ...), the grid summary (fraction, method, mean, std), per-unit α tables (unit, layer, alpha)
in parameter order (input -> output), the balancer's multiplier records (step, unit, layer, alpha,
multiplier) and interpolation curves (variant, t, loss, accuracy). Display names of the methods
come in as data (`labels`); this module imports no lab. The look is `core.plots.style.layout`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.plots.analysis import short_name
from core.plots.style import figure, layout

METHOD_COLOURS = {
    "uniform": "#7f7f7f",
    "tempbalance": "#4c78a8",
    "model_balancing": "#e45756",
    "wsa": "#54a24b",
    "tempbalance+wsa": "#72b7b2",
    "model_balancing+wsa": "#b279a2",
}
VARIANT_COLOURS = {"without WSA": "#7f7f7f", "with WSA": "#54a24b"}


def loss_curves(histories: Mapping[str, pd.DataFrame], y: str = "loss", title: str | None = None) -> go.Figure:
    """One line per run: `y` (default the training loss) against the step."""
    fig = figure()
    for label, h in histories.items():
        if h is None or len(h) == 0 or y not in h:
            continue
        fig.add_trace(go.Scatter(x=h["step"], y=h[y], mode="lines", name=label))
    fig.update_xaxes(title="step")
    fig.update_yaxes(title={"loss": "training loss (CE)", "scope_kl": "Σℓ KL(scope ‖ target)"}.get(y, y))
    return layout(fig, title, height=320)


def accuracy_vs_fraction(
    summary: pd.DataFrame, title: str | None = None, labels: Mapping[str, str] | None = None
) -> go.Figure:
    """Test accuracy against the data fraction (log axis), one line per method, error bars = std over seeds.

    `summary`: `core.labs.finetune.compare.summary_table` (fraction, method, mean, std, n, zero_shot);
    `labels`: method -> display name (default: the method). The zero-shot accuracy is the dotted line.
    """
    labels = labels or {}
    fig = figure()
    if summary.empty:
        return layout(fig, title)
    for method, sub in summary.groupby("method", sort=False):
        sub = sub.sort_values("fraction")
        fig.add_trace(
            go.Scatter(
                x=sub["fraction"],
                y=sub["mean"],
                error_y={"type": "data", "array": sub["std"], "visible": True},
                mode="lines+markers",
                name=labels.get(method, method),
                line={"color": METHOD_COLOURS.get(method)},
                customdata=np.stack([sub["n"], sub["train_size"]], axis=1),
                hovertemplate="fraction %{x:g} (%{customdata[1]} images)<br>accuracy %{y:.3f} ± %{error_y.array:.3f}"
                "<br>%{customdata[0]} seeds<extra>" + labels.get(method, method) + "</extra>",
            )
        )
    if "zero_shot" in summary and summary["zero_shot"].notna().any():
        fig.add_hline(
            y=float(summary["zero_shot"].mean()),
            line={"color": "grey", "dash": "dot"},
            annotation_text="zero-shot",
            annotation_position="bottom right",
        )
    fig.update_xaxes(type="log", title="fraction of the training set")
    fig.update_yaxes(title="test accuracy", tickformat=".0%")
    return layout(fig, title)


def alpha_before_after(before: pd.DataFrame, after: pd.DataFrame, title: str | None = None) -> go.Figure:
    """α per weight matrix (input -> output) of the pretrained and the fine-tuned model."""
    fig = figure()
    for label, t, colour in (("before (pretrained)", before, "#9ecae9"), ("after fine-tuning", after, "#4c78a8")):
        fig.add_trace(
            go.Scatter(
                x=[short_name(u) for u in t["unit"]],
                y=t["alpha"],
                mode="lines+markers",
                name=label,
                line={"color": colour},
            )
        )
    fig.update_xaxes(type="category", title="weight matrix (input → output)", showticklabels=len(before) <= 60)
    fig.update_yaxes(title="α (Hill, median xmin)")
    return layout(fig, title)


def multiplier_heatmap(mult: pd.DataFrame, value: str = "multiplier", title: str | None = None) -> go.Figure:
    """Learning-rate multiplier (or α with value="alpha") per weight matrix over the updates.

    Rows: weight matrices in parameter order (input at the top); columns: the steps at which
    the balancer recomputed. Multipliers use a diverging scale centred on 1 (red = faster).
    """
    fig = figure()
    if mult.empty:
        return layout(fig, title)
    units = list(dict.fromkeys(mult["unit"]))
    z = mult.pivot_table(index="unit", columns="step", values=value, aggfunc="first").reindex(units)
    kw: dict = {"colorscale": "Viridis"}
    if value == "multiplier":  # white at 1: blue slows a layer down, red speeds it up
        kw = {"colorscale": "RdBu_r", "zmid": 1.0}
    fig.add_trace(
        go.Heatmap(
            z=z.to_numpy(),
            x=[str(c) for c in z.columns],
            y=[short_name(u) for u in z.index],
            colorbar={"title": "lr ×" if value == "multiplier" else value},
            hovertemplate="%{y}<br>step %{x}<br>" + value + " %{z:.3f}<extra></extra>",
            **kw,
        )
    )
    fig.update_yaxes(autorange="reversed", type="category", title="weight matrix", showticklabels=len(units) <= 60)
    fig.update_xaxes(type="category", title="step of the update")
    return layout(fig, title, height=max(320, 12 * len(units) + 120))


def current_multipliers(mult: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Bars of the latest multipliers per weight matrix (the live view during a run)."""
    fig = figure()
    if not mult.empty:
        last = mult[mult["step"] == mult["step"].max()]
        fig.add_trace(
            go.Bar(
                x=[short_name(u) for u in last["unit"]],
                y=last["multiplier"],
                marker_color="#4c78a8",
                customdata=last["alpha"],
                hovertemplate="%{x}<br>lr × %{y:.3f}<br>α %{customdata:.2f}<extra></extra>",
            )
        )
        fig.add_hline(y=1.0, line={"color": "grey", "dash": "dot"})
        title = title or f"lr multipliers at step {int(last['step'].iloc[0])}"
    fig.update_xaxes(type="category", title="weight matrix (input → output)", showticklabels=False)
    fig.update_yaxes(title="lr multiplier", rangemode="tozero")
    return layout(fig, title, height=300)


def barrier_curves(curves: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Loss (top) and accuracy (bottom) along θ(t) = (1 − t)θ_A + tθ_B, one line per variant (with / without WSA)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=("loss", "accuracy"))
    for variant, sub in curves.groupby("variant", sort=False) if not curves.empty else []:
        colour = VARIANT_COLOURS.get(variant)
        for row, col in ((1, "loss"), (2, "accuracy")):
            fig.add_trace(
                go.Scatter(
                    x=sub["t"],
                    y=sub[col],
                    mode="lines+markers",
                    name=variant,
                    legendgroup=variant,
                    showlegend=row == 1,
                    line={"color": colour},
                ),
                row=row,
                col=1,
            )
            ends = sub.iloc[[0, -1]]
            fig.add_trace(
                go.Scatter(
                    x=ends["t"],
                    y=ends[col],
                    mode="lines",
                    line={"color": colour, "dash": "dot", "width": 1},
                    showlegend=False,
                    legendgroup=variant,
                    hoverinfo="skip",
                ),
                row=row,
                col=1,
            )
    fig.update_xaxes(title="t (0 = model A, 1 = model B)", row=2, col=1)
    fig.update_yaxes(tickformat=".0%", row=2, col=1)
    return layout(fig, title, height=480)


def wsa_merge_bars(summary: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The two fine-tunes, their midpoint (t = 0.5) and their task-arithmetic merge, with and without WSA."""
    fig = figure()
    cols = [
        ("accuracy_A", "model A"),
        ("accuracy_B", "model B"),
        ("midpoint_accuracy", "midpoint t=0.5"),
        ("ta_accuracy", "task arithmetic"),
    ]
    for r in summary.itertuples():
        fig.add_trace(
            go.Bar(
                x=[c[1] for c in cols],
                y=[getattr(r, c[0]) for c in cols],
                name=r.variant,
                marker_color=VARIANT_COLOURS.get(r.variant),
                texttemplate="%{y:.1%}",
            )
        )
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="test accuracy", tickformat=".0%")
    return layout(fig, title)
