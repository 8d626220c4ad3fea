"""One look for every figure: one layout function, one colour sequence, one axis helper.

Figures start from Plotly's empty template (named templates cost tens of ms per figure to
validate, and Streamlit restyles figures anyway). The title sits top-left; the legend sits in
one row *below* the plot area by default, so it can never overlap the title at any width
(legend="side" puts it at the right for figures with many traces). Margins grow with the
axis labels (automargin), so long labels are not cut off.
"""

from __future__ import annotations

import plotly.graph_objects as go

# Tableau-10-like: distinguishable, colour-blind-friendlier than Plotly's default.
COLORWAY = (
    "#4c78a8",
    "#e45756",
    "#54a24b",
    "#b279a2",
    "#f58518",
    "#72b7b2",
    "#9d755d",
    "#eeca3b",
    "#ff9da6",
    "#bab0ac",
)
# Sequential scale for magnitudes (one hue, light = low, dark = high) and a diverging one for signed values.
SEQUENTIAL = "Blues"
DIVERGING = "RdBu"
GRID = "#ececec"


def figure(*data) -> go.Figure:
    """A new figure on Plotly's empty template (cheap)."""
    return go.Figure(list(data), layout={"template": "none"})


def layout(fig: go.Figure, title: str | None = None, *, height: int = 360, legend: str = "below") -> go.Figure:
    """Apply the shared look. legend: "below" (default), "above", "side" or "none"."""
    legends = {
        "below": {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "xanchor": "left"},
        "above": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "xanchor": "left"},
        "side": {"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02, "xanchor": "left"},
    }
    if legend not in (*legends, "none"):
        raise ValueError(f"legend must be one of {[*legends, 'none']}, got {legend!r}")
    top = (40 if title else 10) + (28 if legend == "above" else 0)
    fig.update_layout(
        colorway=list(COLORWAY),
        plot_bgcolor="white",
        paper_bgcolor="white",
        font={"size": 12},
        hovermode="closest",
        title={"text": title, "x": 0, "xanchor": "left", "y": 0.99, "yanchor": "top", "pad": {"t": 6}}
        if title
        else None,
        height=height,
        margin={"l": 10, "r": 10, "t": top, "b": 10},
        showlegend=legend != "none",
        legend=legends.get(legend, {}),
    )
    fig.update_xaxes(showgrid=True, gridcolor=GRID, zeroline=False, automargin=True)
    fig.update_yaxes(showgrid=True, gridcolor=GRID, zeroline=False, automargin=True)
    return fig


def log_axis(fig: go.Figure, axis: str = "y", *, row: int | None = None, col: int | None = None) -> go.Figure:
    """A log axis with ticks at decades only (1, 10, 100, … labelled as 10ⁿ), not every 2 and 5."""
    kw = {"type": "log", "dtick": 1, "exponentformat": "power", "minor": {"showgrid": False}}
    (fig.update_yaxes if axis == "y" else fig.update_xaxes)(row=row, col=col, **kw)
    return fig
