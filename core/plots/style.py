"""One look for every figure: one layout function, one colour sequence, one axis helper.

Figures start from Plotly's empty template (named templates cost tens of ms per figure to
validate, and Streamlit restyles figures anyway). The title sits top-left in the figure's
top margin and pushes that margin as it needs (long titles are wrapped onto a second line).
Legends are placed in the figure's *container* coordinates, so they live in the margins and
push them instead of being pinned to the plot area: legend="below" sits at the very bottom
(under the x-axis title), "above" right under the title, "side" at the right. None of them can
overlap the title, an axis title or a tick label at any width. Axis margins grow with their
labels (automargin), so long labels are never cut off.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import get_colorscale, sample_colorscale

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
TITLE_SIZE = 15
TITLE_WRAP = 46  # characters per title line: fits a half-width chart at a 1000 px window
_LINE_PX = 20  # one line of title or legend
LEGENDS = ("below", "above", "side", "none")


def figure(*data) -> go.Figure:
    """A new figure on Plotly's empty template (cheap)."""
    return go.Figure(list(data), layout={"template": "none"})


def wrap(text: str, width: int = TITLE_WRAP) -> str:
    """Break a title into lines of at most `width` characters at spaces (Plotly's <br>); existing <br> are kept."""
    lines = []
    for part in text.split("<br>"):
        lines += textwrap.wrap(part, width, break_long_words=False, break_on_hyphens=False) or [""]
    return "<br>".join(lines)


def layout(fig: go.Figure, title: str | None = None, *, height: int = 360, legend: str = "below") -> go.Figure:
    """Apply the shared look. legend: "below" (default), "above", "side" or "none"."""
    if legend not in LEGENDS:
        raise ValueError(f"legend must be one of {list(LEGENDS)}, got {legend!r}")
    if height <= 0:
        raise ValueError(f"height must be positive, got {height}")
    text = wrap(title) if title else None
    lines = text.count("<br>") + 1 if text else 0
    # Plotly lifts a multi-line title anchored at its top by about half a line per extra line: move it down as much.
    title_y = 8 + 10 * (lines - 1)
    title_px = title_y + _LINE_PX * lines + 6 if text else 0
    legends = {
        "below": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
        "above": {
            "orientation": "h",
            "yref": "container",
            "y": 1 - title_px / height,
            "yanchor": "top",
            "x": 0,
            "xanchor": "left",
        },
        "side": {"orientation": "v", "yanchor": "top", "y": 1, "x": 1.02, "xanchor": "left"},
    }
    fig.update_layout(
        colorway=list(COLORWAY),
        plot_bgcolor="white",
        paper_bgcolor="white",
        font={"size": 12},
        hovermode="closest",
        title={
            "text": text,
            "font": {"size": TITLE_SIZE},
            "x": 0,
            "xref": "container",
            "xanchor": "left",
            "y": 1 - title_y / height,
            "yref": "container",
            "yanchor": "top",
            "pad": {"l": 6},
        }
        if text
        else None,
        height=height,
        margin={"l": 10, "r": 10, "t": max(title_px, 10), "b": 10},
        showlegend=legend != "none",
        legend={**legends.get(legend, {}), "bgcolor": "rgba(255,255,255,0)"},
    )
    fig.update_xaxes(showgrid=True, gridcolor=GRID, zeroline=False, automargin=True)
    fig.update_yaxes(showgrid=True, gridcolor=GRID, zeroline=False, automargin=True)
    return fig


def shade(frame: pd.DataFrame, scale: str = SEQUENTIAL, zmin: float | None = None, zmax: float | None = None):
    """CSS per cell colouring a numeric table like a heatmap (pandas `Styler.apply(shade, axis=None)`):
    background from `scale` over [zmin, zmax] (default: the table's finite range), white text on dark
    cells; NaN cells stay blank. Lets a page show a table of numbers where a chart would cost a JS bundle."""
    values = frame.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if zmin is None and finite.size else (zmin or 0.0)
    hi = float(finite.max()) if zmax is None and finite.size else (zmax if zmax is not None else 1.0)
    if hi < lo:
        raise ValueError(f"zmax {hi} is below zmin {lo}")
    colours = get_colorscale(scale)
    css = []
    for row in values:
        out = []
        for v in row:
            if not np.isfinite(v):
                out.append("")
                continue
            f = 0.5 if hi == lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
            colour = sample_colorscale(colours, [f], colortype="rgb")[0]
            r, g, b = (float(c) for c in colour[colour.index("(") + 1 : -1].split(","))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 140
            out.append(f"background-color: {colour}; color: {'white' if dark else 'black'}")
        css.append(out)
    return pd.DataFrame(css, index=frame.index, columns=frame.columns)


def _axis_values(fig: go.Figure, axis: str, row: int | None, col: int | None) -> list[float]:
    """Positive numbers drawn on one axis (of the subplot row/col, or all), for choosing log ticks."""
    ref = None
    if row is not None or col is not None:
        sub = fig.get_subplot(row or 1, col or 1)
        ref = (sub.xaxis if axis == "y" else sub.yaxis).anchor  # an x axis is anchored to its y axis and back
    out = []
    for tr in fig.data:
        if ref is not None and (getattr(tr, f"{axis}axis", None) or axis) != ref:
            continue
        vals = getattr(tr, axis, None)
        for v in () if vals is None else vals:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if f > 0 and math.isfinite(f):
                out.append(f)
    return out


def log_axis(fig: go.Figure, axis: str = "y", *, row: int | None = None, col: int | None = None) -> go.Figure:
    """A log axis with labels at decades only (1, 10, 100, … written 10ⁿ) instead of every digit.

    When the data on that axis span less than about two decades, decades alone would leave one label or
    none: then the labels sit at 1, 2 and 5 times each power of ten.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    values = _axis_values(fig, axis, row, col)
    span = math.log10(max(values) / min(values)) if values else float("inf")
    kw = {"type": "log", "exponentformat": "power", "minor": {"showgrid": False}}
    kw["dtick"] = 1 if span >= 2 else "D2"
    (fig.update_yaxes if axis == "y" else fig.update_xaxes)(row=row, col=col, **kw)
    return fig
