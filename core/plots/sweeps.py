"""Figures of sweeps: a sweep frame (core.sweeps.SweepResult.frame) -> plotly Figure.

Pure functions, no streamlit. Accuracies are fractions in [0, 1], shown as %.
The chosen point (best average normalized accuracy on validation) is marked with
a star; its test numbers, when given, are written in a callout below it, pointing
inwards so no end of the grid cuts it off - never used to choose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from core.plots.style import SEQUENTIAL, figure, layout

METRIC_LABELS = {"avg_norm": "avg normalized accuracy (%)", "avg_abs": "avg absolute accuracy (%)"}
BEST_COLOUR = "#d62728"


def _need(frame: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(cols)}; missing {missing}")


def _test_note(test: Mapping | None) -> str:
    if not test:
        return ""
    return f"<br>test: {100 * test['avg_norm']:.1f}% norm, {100 * test['avg_abs']:.1f}% abs"


def _star_best(fig: go.Figure, x: float, y: float, label: str, xs: Sequence[float]) -> None:
    """Star the best point and write `label` in a callout below it, pointing inwards: the best point is the
    curve's top, often at an end of the grid, where a label above it (or centred on it) was cut off by the
    plot's top and side (the Sweeps page's λ = 0.1 on the styled zoo lost its first line and first letters)."""
    fig.add_scatter(
        x=[x],
        y=[y],
        name="best on val",
        mode="markers",
        marker=dict(symbol="star", size=18, color=BEST_COLOUR),
        hovertext=[label],
        hoverinfo="text",
    )
    lo, hi = min(xs), max(xs)
    left_half = hi == lo or (x - lo) <= (hi - lo) / 2
    fig.add_annotation(
        x=x,
        y=y,
        text=label,
        showarrow=True,
        arrowcolor=BEST_COLOUR,
        ax=36 if left_half else -36,
        ay=44,
        xanchor="left" if left_half else "right",
        yanchor="top",
        align="left" if left_half else "right",
        bgcolor="rgba(255,255,255,0.85)",
        bordercolor=BEST_COLOUR,
        font=dict(size=11),
    )


def lambda_curve(
    frame: pd.DataFrame,
    best: Mapping | None = None,
    test: Mapping | None = None,
    tasks: Sequence[str] = (),
    title: str = "Validation accuracy over λ",
) -> go.Figure:
    """Average normalized (solid) and absolute (dashed) val accuracy against λ, per-task accuracies
    as thin lines (legend-toggled, hidden by default), the best λ starred."""
    _need(frame, ["lambda", "avg_norm", "avg_abs"], "lambda_curve")
    f = frame.sort_values("lambda")
    fig = figure()
    for t in tasks:
        if t in f:
            fig.add_scatter(
                x=f["lambda"], y=f[t] * 100, name=t, mode="lines", line=dict(width=1), visible="legendonly", opacity=0.7
            )
    fig.add_scatter(
        x=f["lambda"], y=f["avg_abs"] * 100, name="avg absolute", mode="lines+markers", line=dict(dash="dash")
    )
    fig.add_scatter(
        x=f["lambda"], y=f["avg_norm"] * 100, name="avg normalized", mode="lines+markers", line=dict(width=3)
    )
    if best:
        _star_best(fig, best["lambda"], best["avg_norm"] * 100, f"λ={best['lambda']:g}{_test_note(test)}", f["lambda"])
    fig.update_layout(xaxis_title="λ (global scale)", yaxis_title="accuracy on val (%)")
    return layout(fig, title)


def lines_heatmap(
    frame: pd.DataFrame,
    best: Mapping | None = None,
    test: Mapping | None = None,
    metric: str = "avg_norm",
    title: str = "Validation accuracy over LiNeS (α, β)",
) -> go.Figure:
    """Heatmap of `metric` (%) over α (rows) × β (columns), the best cell starred. With a single α
    (e.g. α = auto) it is a one-row heatmap; use `beta_curve` for a line instead."""
    _need(frame, ["alpha", "beta", metric], "lines_heatmap")
    grid = frame.pivot_table(index="alpha", columns="beta", values=metric, aggfunc="mean").sort_index()
    fig = figure(
        go.Heatmap(
            z=grid.values * 100,
            x=[f"{b:g}" for b in grid.columns],
            y=[f"{a:.3g}" for a in grid.index],
            colorscale=SEQUENTIAL,
            colorbar=dict(title="%"),
            hovertemplate="α=%{y}, β=%{x}: %{z:.1f}%<extra></extra>",
            text=[[f"{100 * v:.1f}" for v in row] for row in grid.values],
            texttemplate="%{text}",
        )
    )
    if best:
        fig.add_scatter(
            x=[f"{best['beta']:g}"],
            y=[f"{best['alpha']:.3g}"],
            name="best on val",
            mode="markers",
            marker=dict(symbol="star", size=20, color=BEST_COLOUR, line=dict(color="white", width=1)),
            hovertext=[f"best on val{_test_note(test)}"],
        )
    fig.update_layout(xaxis_title="β (slope over depth)", yaxis_title="α (shallowest scale)", yaxis_type="category")
    return layout(fig, title, height=max(260, 60 + 40 * len(grid)))


def beta_curve(
    frame: pd.DataFrame,
    best: Mapping | None = None,
    test: Mapping | None = None,
    title: str = "Validation accuracy over β (α fixed)",
) -> go.Figure:
    """Avg normalized and absolute val accuracy against β, one line pair per α, the best starred."""
    _need(frame, ["alpha", "beta", "avg_norm", "avg_abs"], "beta_curve")
    fig = figure()
    for alpha, rows in frame.sort_values("beta").groupby("alpha"):
        fig.add_scatter(
            x=rows["beta"], y=rows["avg_norm"] * 100, name=f"normalized, α={alpha:.3g}", mode="lines+markers"
        )
        fig.add_scatter(
            x=rows["beta"],
            y=rows["avg_abs"] * 100,
            name=f"absolute, α={alpha:.3g}",
            mode="lines",
            line=dict(dash="dash"),
        )
    if best:
        _star_best(fig, best["beta"], best["avg_norm"] * 100, f"β={best['beta']:g}{_test_note(test)}", frame["beta"])
    fig.update_layout(xaxis_title="β", yaxis_title="accuracy on val (%)")
    return layout(fig, title)


def sweep_figure(frame: pd.DataFrame, best: Mapping | None = None, test: Mapping | None = None, tasks=()) -> go.Figure:
    """The natural figure for a sweep frame: λ line, β line (one α), or α × β heatmap."""
    if "lambda" in frame.columns:
        return lambda_curve(frame, best, test, tasks)
    if frame["alpha"].nunique() == 1:
        return beta_curve(frame, best, test)
    return lines_heatmap(frame, best, test)
