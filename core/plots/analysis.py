"""Figures for the analysis pages (Task vectors, Spectra): pure functions, table in, plotly Figure out.

Inputs are the tables `core.task_vectors`, `core.spectra` and `core.scopes` return; nothing
here computes statistics of tensors. Depth runs left to right everywhere: parameters before
the first block ("in": patch embedding, ln_pre, ...), blocks 0..L-1, then output-side
parameters ("out": ln_post, proj).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.layers import block_parts, is_output_param
from core.plots.style import COLORWAY, DIVERGING, SEQUENTIAL, figure, layout, log_axis

MEASURE_LABELS = {
    "norm": "task-vector norm ‖τ‖₂",
    "relative_norm": "relative norm ‖τ‖₂ / ‖θ₀‖₂",
    "conflict_fraction": "entries in sign conflict",
    "pairwise_conflict": "mean pairwise sign disagreement",
}
METRIC_LABELS = {
    "alpha": "α (power-law exponent)",
    "alpha_weighted": "α̂ = α·log₁₀ λmax",
    "stable_rank": "stable rank Σλ/λmax",
    "lambda_max": "λmax (squared spectral norm)",
    "alpha_hill": "α (Hill, median xmin)",
    "D": "KS distance D",
}


def _in_block(layer) -> bool:
    return layer is not None and not pd.isna(layer) and int(layer) >= 0


def block_label(layer) -> str:
    """Axis label of a block index: "0", "1", ...; -1 / None / NaN (outside the blocks) -> "outside"."""
    if not _in_block(layer):
        return "outside"
    return str(int(layer))


def short_name(name: str) -> str:
    """Compact parameter name for axes: 'visual.transformer.resblocks.3.attn.in_proj_weight' -> 'b3.attn.in_proj_weight'

    Blocks are found by core.layers (any container it knows, either tower); a `[q]`-style suffix is kept.
    """
    parts = block_parts(name)
    if parts is not None:
        return f"b{parts[1]}.{parts[2]}"
    return name.removeprefix("visual.")


def depth_position(name: str, layer, num_blocks: int) -> float:
    """x position along depth: the block index inside blocks, -1 before them, num_blocks after."""
    if _in_block(layer):
        return float(layer)
    return float(num_blocks) if is_output_param(name.split("[")[0]) else -1.0


def depth_sorted(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of a per-parameter table (columns name, layer) in depth order, with a `depth` column.

    Task vectors sort their keys by name (block 10 before block 2); this restores input ->
    blocks -> output order, names sorted within a block.
    """
    if table.empty:
        return table.assign(depth=pd.Series(dtype=float))
    layers = pd.to_numeric(table["layer"], errors="coerce")
    nb = int(layers.max()) + 1 if layers.notna().any() else 0
    depth = [depth_position(n, ly, nb) for n, ly in zip(table["name"], layers)]
    return table.assign(depth=depth).sort_values(["depth", "name"], kind="stable").reset_index(drop=True)


def _depth_ticks(num_blocks: int, has_in: bool, has_out: bool) -> dict:
    vals = ([-1] if has_in else []) + list(range(num_blocks)) + ([num_blocks] if has_out else [])
    text = [("in" if v == -1 else "out" if v == num_blocks else str(v)) for v in vals]
    step = max(1, math.ceil(len(vals) / 26))
    return {"tickmode": "array", "tickvals": vals[::step], "ticktext": text[::step]}


# ----------------------------------------------------------------------------------- task vectors


def norm_grid(table: pd.DataFrame, value: str = "norm", tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Tasks x blocks table of `value` from `block_table`/`kind_table` rows (columns task, layer, value):
    the numbers of `norm_heatmap`. Columns are block labels in depth order ("outside" first), rows
    follow `tasks` (default: order of appearance)."""
    missing = {"task", "layer", value} - set(table.columns)
    if missing:
        raise ValueError(f"norm_grid needs columns task, layer, {value}; missing {sorted(missing)}")
    t = table.assign(block=table["layer"].map(block_label))
    cols = [block_label(v) for v in sorted(t["layer"].unique())]
    grid = t.pivot_table(index="task", columns="block", values=value, aggfunc="first", sort=False)
    tasks = [x for x in tasks if x in set(t["task"])] if tasks is not None else list(dict.fromkeys(t["task"]))
    return grid.reindex(index=tasks, columns=cols).rename_axis(index="task", columns="block")


def norm_heatmap(
    table: pd.DataFrame, value: str = "norm", title: str | None = None, tasks: Sequence[str] | None = None
) -> go.Figure:
    """Tasks x blocks heatmap of `value` from `block_table`/`kind_table` rows (columns task, layer, value).

    Parameters outside the blocks (layer -1) form the first column, "outside". Hover shows task,
    block and value; clicking a cell selects that block (x = block label). Rows follow `tasks`
    (default: order of appearance).
    """
    grid = norm_grid(table, value, tasks)
    tasks, cols = list(grid.index), list(grid.columns)
    fig = figure(
        go.Heatmap(
            z=grid.to_numpy(dtype=float),
            x=cols,
            y=tasks,
            colorscale=SEQUENTIAL,
            colorbar={"title": {"text": {"norm": "‖τ‖₂", "relative_norm": "‖τ‖/‖θ₀‖"}.get(value, value)}},
            hovertemplate="task %{y}<br>block %{x}<br>" + MEASURE_LABELS.get(value, value) + " %{z:.4g}<extra></extra>",
        )
    )
    fig.update_xaxes(title="block (outside: embeddings, norms, projection)", type="category")
    fig.update_yaxes(title="task", autorange="reversed", type="category")
    return layout(fig, title, height=max(260, 60 + 28 * len(tasks)))


def block_profile(
    table: pd.DataFrame, value: str = "norm", title: str | None = None, tasks: Sequence[str] | None = None
) -> go.Figure:
    """One line per task over block index (parameters outside the blocks left out), in `tasks` order."""
    t = table[table["layer"] >= 0].sort_values("layer")
    order = list(tasks) if tasks is not None else list(dict.fromkeys(t["task"]))
    fig = figure()
    for task in order:
        g = t[t["task"] == task]
        if g.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=g["layer"],
                y=g[value],
                mode="lines+markers",
                name=str(task),
                hovertemplate=f"{task}<br>block %{{x}}<br>%{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(title="block", dtick=1 if t["layer"].nunique() <= 26 else None)
    fig.update_yaxes(title=MEASURE_LABELS.get(value, value), rangemode="tozero")
    return layout(fig, title)


def cosine_heatmap(cos: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Task x task cosine similarity (from `cosine_matrix`), diverging colours fixed to [-1, 1]."""
    n = len(cos)
    fig = figure(
        go.Heatmap(
            z=cos.to_numpy(dtype=float),
            x=list(cos.columns),
            y=list(cos.index),
            zmin=-1,
            zmax=1,
            colorscale=DIVERGING,
            reversescale=True,
            texttemplate="%{z:.2f}" if n <= 12 else None,
            colorbar={"title": {"text": "cosine"}},
            hovertemplate="%{y} · %{x}<br>cosine %{z:.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    return layout(fig, title, height=max(300, 80 + 34 * n))


def sign_conflict_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Per block: bars = fraction of entries where some tasks push up and others down;
    line = mean pairwise sign disagreement (from `sign_conflict_table`)."""
    t = table.sort_values("layer")
    x = [block_label(v) for v in t["layer"]]
    fig = figure()
    fig.add_trace(go.Bar(x=x, y=t["conflict_fraction"], name=MEASURE_LABELS["conflict_fraction"]))
    fig.add_trace(
        go.Scatter(x=x, y=t["pairwise_conflict"], name=MEASURE_LABELS["pairwise_conflict"], mode="lines+markers")
    )
    fig.update_xaxes(title="block", type="category")
    fig.update_yaxes(title="fraction of entries", range=[0, 1])
    return layout(fig, title)


def parameter_bars(table: pd.DataFrame, value: str = "norm", title: str | None = None) -> go.Figure:
    """Grouped bars: one group per parameter (short name), one bar per task (rows of `parameter_table`)."""
    t = depth_sorted(table)
    fig = figure()
    for task, g in t.groupby("task", sort=False):
        fig.add_trace(go.Bar(x=[short_name(n) for n in g["name"]], y=g[value], name=str(task)))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="parameter", type="category")
    fig.update_yaxes(title=MEASURE_LABELS.get(value, value))
    return layout(fig, title, height=420)


# ----------------------------------------------------------------------------------- spectra


def depth_means(table: pd.DataFrame, metric: str = "alpha", kind: str | None = None) -> pd.DataFrame:
    """Mean of `metric` per depth position of a `spectral_table` (finite values only), indexed by depth
    (-1 = "in", blocks 0..L-1, L = "out"), with the matrices averaged in `names` (<br>-joined, first 8).
    With `kind` only the matrices of that kind count."""
    if metric not in table.columns:
        raise ValueError(f"no column {metric!r} in the spectral table; columns: {list(table.columns)}")
    t = depth_sorted(table)
    if kind is not None:
        t = t[t["kind"] == kind]
    t = t[np.isfinite(pd.to_numeric(t[metric], errors="coerce"))]
    return t.groupby("depth", sort=True).agg(
        value=(metric, "mean"), names=("name", lambda s: "<br>".join(short_name(n) for n in list(s)[:8]))
    )


def depth_grid(tables: Mapping[str, pd.DataFrame], metric: str = "alpha", kind: str | None = None) -> pd.DataFrame:
    """Models x depth table of the mean `metric` (label -> `spectral_table`): the numbers of `spectral_depth`.
    Columns: "in", "0", ..., "out" in depth order; a model without that position has NaN there."""
    rows = {label: depth_means(table, metric, kind)["value"] for label, table in tables.items()}
    grid = pd.DataFrame(rows).T.sort_index(axis=1) if rows else pd.DataFrame()
    if grid.empty:
        return grid
    nb = max(int(pd.to_numeric(t["layer"], errors="coerce").max()) + 1 for t in tables.values())
    grid.columns = ["in" if d < 0 else "out" if d >= nb else str(int(d)) for d in grid.columns]
    return grid.rename_axis(index="model", columns="depth")


def spectral_depth(
    tables: Mapping[str, pd.DataFrame], metric: str = "alpha", kind: str | None = None, title: str | None = None
) -> go.Figure:
    """Per-layer spectral metric over depth, one line per model (label -> `spectral_table`).

    With `kind` None the matrices of a block (q, k, v, out, c_fc, c_proj) are averaged;
    otherwise only that kind is drawn. Matrices outside the blocks sit at "in" (before block 0)
    and "out" (after the last block). Hover names the matrices averaged.
    """
    fig = figure()
    nb, has_in, has_out = 0, False, False
    for label, table in tables.items():
        g = depth_means(table, metric, kind)
        if g.empty:
            continue
        layers = pd.to_numeric(table["layer"], errors="coerce")
        nb = max(nb, int(layers.max()) + 1 if layers.notna().any() else 0)
        has_in |= bool((g.index < 0).any())
        has_out |= bool((g.index >= nb).any())
        fig.add_trace(
            go.Scatter(
                x=g.index,
                y=g["value"],
                mode="lines+markers",
                name=label,
                customdata=g["names"],
                hovertemplate=f"{label}<br>%{{y:.3g}}<br>%{{customdata}}<extra></extra>",
            )
        )
    fig.update_xaxes(title="depth: in → blocks → out", **_depth_ticks(nb, has_in, has_out))
    ylabel = METRIC_LABELS.get(metric, metric) + ("" if kind is None else f" — {kind} matrices")
    fig.update_yaxes(title=ylabel)
    if metric == "lambda_max":
        log_axis(fig, "y")
    if metric == "alpha":
        fig.add_hrect(y0=2, y1=6, fillcolor="green", opacity=0.06, line_width=0)
    return layout(fig, title)


def esd_figure(
    spectra: Mapping[str, tuple[np.ndarray, Mapping]], title: str | None = None, bins: int = 60
) -> go.Figure:
    """ESDs on log-log axes, each with its power-law fit (label -> (eigenvalues, fit dict)).

    Markers: the empirical density of the eigenvalues (log-spaced histogram, density per unit λ).
    Dashed line: the fitted density for λ >= xmin, p(λ) = (n_tail/n)·(α−1)/xmin·(λ/xmin)^(−α),
    scaled to the fraction of eigenvalues in the tail; dotted vertical line: xmin.
    """
    fig = figure()
    for i, (label, (eigs, fit)) in enumerate(spectra.items()):
        colour = COLORWAY[i % len(COLORWAY)]
        e = np.asarray(eigs, dtype=np.float64)
        e = e[e > 1e-12]
        if e.size < 2:
            continue
        edges = np.geomspace(e.min(), e.max() * (1 + 1e-9), bins + 1)
        counts, _ = np.histogram(e, bins=edges)
        dens = counts / (e.size * np.diff(edges))
        centres = np.sqrt(edges[:-1] * edges[1:])
        keep = counts > 0
        fig.add_trace(
            go.Scatter(
                x=centres[keep],
                y=dens[keep],
                mode="markers",
                marker={"color": colour, "size": 6},
                name=f"{label}: ESD ({e.size} eigenvalues)",
                hovertemplate="λ %{x:.3g}<br>density %{y:.3g}<extra></extra>",
            )
        )
        alpha, xmin = fit.get("alpha"), fit.get("xmin")
        if alpha is None or xmin is None or not (np.isfinite(alpha) and np.isfinite(xmin)) or alpha <= 1 or xmin <= 0:
            continue
        tail = e[e >= xmin]
        xs = np.geomspace(xmin, e.max(), 50)
        ys = (tail.size / e.size) * (alpha - 1) / xmin * (xs / xmin) ** (-alpha)
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": colour, "dash": "dash"},
                name=f"{label}: power law α={alpha:.2f}, D={fit.get('D', float('nan')):.3f}",
            )
        )
        fig.add_vline(x=xmin, line={"color": colour, "dash": "dot", "width": 1})
        fig.add_annotation(
            x=math.log10(xmin), y=1, yref="paper", text=f"xmin {xmin:.3g}", showarrow=False,
            font={"color": colour, "size": 11}, xanchor="left", yanchor="top", yshift=-14 * i,
        )  # fmt: skip
    fig.update_xaxes(title="eigenvalue λ of WᵀW")
    fig.update_yaxes(title="density")
    log_axis(fig, "x")
    log_axis(fig, "y")
    return layout(fig, title, height=440)


def lr_multipliers_figure(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Learning-rate multipliers per weight matrix in depth order.

    `table` columns: name, layer, tempbalance (per matrix), model_balancing (its block's
    multiplier; NaN outside the blocks). Bars: TempBalance; diamonds: Model Balancing; grey line at 1.
    """
    t = depth_sorted(table)
    x = [short_name(n) for n in t["name"]]
    fig = figure()
    fig.add_trace(go.Bar(x=x, y=t["tempbalance"], name="TempBalance (linear in α)", marker_color=COLORWAY[0]))
    fig.add_trace(
        go.Scatter(
            x=x, y=t["model_balancing"], name="Model Balancing (sigmoid, per block)", mode="markers",
            marker={"color": COLORWAY[1], "size": 10, "symbol": "diamond"},
        )
    )  # fmt: skip
    fig.add_hline(y=1.0, line={"color": "grey", "dash": "dot"})
    fig.update_xaxes(title="weight matrix (input → output)", type="category", showticklabels=len(x) <= 40)
    fig.update_yaxes(title="learning-rate multiplier", rangemode="tozero")
    return layout(fig, title, height=400)


def weight_scopes_figure(
    scopes: Mapping[str, pd.DataFrame], title: str | None = None, relative_to: str | None = None
) -> go.Figure:
    """Weight scopes (WSA): per-layer mean (top) and standard deviation (bottom), one line per model.

    `scopes` maps a model label to a `core.scopes.weight_scopes` table (name, layer, mean, std).
    With `relative_to` (one of the labels), every model is drawn as its difference from that
    model (Δμ, Δσ per layer), which makes small drifts of fine-tunes visible; the reference
    itself is then left out.
    """
    ref = depth_sorted(scopes[relative_to]).set_index("name") if relative_to in scopes else None
    labels = ("Δ mean μ", "Δ std σ") if ref is not None else ("mean μ", "std σ")
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=labels, figure=figure()
    )
    for label, table in scopes.items():
        if ref is not None and label == relative_to:
            continue
        t = depth_sorted(table)
        x = [short_name(n) for n in t["name"]]
        for row, col in ((1, "mean"), (2, "std")):
            y = t[col].to_numpy(dtype=float)
            if ref is not None:
                y = y - ref[col].reindex(t["name"]).to_numpy(dtype=float)
            fig.add_trace(
                go.Scatter(
                    x=x, y=y, mode="lines+markers", name=label, legendgroup=label, showlegend=row == 1,
                    marker={"size": 4}, hovertemplate=f"{label}<br>%{{x}}<br>%{{y:.4g}}<extra></extra>",
                ),
                row=row, col=1,
            )  # fmt: skip
    fig.update_xaxes(type="category", showticklabels=False, row=1, col=1)
    n = max((len(t) for t in scopes.values()), default=0)
    fig.update_xaxes(type="category", title="layer (input → output)", showticklabels=n <= 40, row=2, col=1)
    return layout(fig, title, height=560, legend="side")
