"""The grid's comparison: mean ± std of test accuracy per (fraction, method) and the paired gain over uniform lr."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import METHOD_LABELS, METHODS

SUMMARY_COLUMNS = ["fraction", "method", "train_size", "mean", "std", "n", "gain_vs_uniform", "zero_shot"]


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof 1) and count of test accuracy per (fraction, method), plus the mean paired gain over
    uniform lr (same fraction and seed) and the mean zero-shot accuracy."""
    if results.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    r = results.copy()
    g = r.groupby(["fraction", "method"], sort=False)
    out = g.agg(
        train_size=("train_size", "first"),
        mean=("accuracy", "mean"),
        std=("accuracy", "std"),
        n=("accuracy", "size"),
        zero_shot=("zero_shot", "mean"),
    ).reset_index()
    out["std"] = out["std"].fillna(0.0)
    uni = r[r["method"] == "uniform"].set_index(["fraction", "seed"])["accuracy"]
    gains = []
    for f, m in zip(out["fraction"], out["method"]):
        sub = r[(r["fraction"] == f) & (r["method"] == m)].set_index(["fraction", "seed"])["accuracy"]
        common = sub.index.intersection(uni.index)
        gains.append(float((sub[common] - uni[common]).mean()) if len(common) and m != "uniform" else float("nan"))
    out["gain_vs_uniform"] = gains
    order = {m: i for i, m in enumerate(METHODS)}
    out["_o"] = out["method"].map(lambda m: order.get(m, 99))
    return out.sort_values(["fraction", "_o"]).drop(columns="_o").reset_index(drop=True)


def markdown_table(summary: pd.DataFrame) -> str:
    """Accuracy (%) vs data fraction, one column per method: "mean ± std", gain over uniform lr in brackets."""
    if summary.empty:
        return "(no results)"
    methods = [m for m in METHODS if m in set(summary["method"])] + sorted(set(summary["method"]) - set(METHODS))
    head = "| fraction | train images | " + " | ".join(METHOD_LABELS.get(m, m) for m in methods) + " |"
    lines = [head, "|" + "---|" * (2 + len(methods))]
    for f, sub in summary.groupby("fraction", sort=True):
        by = sub.set_index("method")
        cells = []
        for m in methods:
            if m not in by.index:
                cells.append("")
                continue
            r = by.loc[m]
            cell = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
            if m != "uniform" and np.isfinite(r["gain_vs_uniform"]):
                cell += f" ({100 * r['gain_vs_uniform']:+.1f})"
            cells.append(cell)
        size = int(sub["train_size"].iloc[0])
        lines.append(f"| {f:g} | {size} | " + " | ".join(cells) + " |")
    n = int(summary["n"].max())
    lines.append("")
    lines.append(f"Test accuracy (%), mean ± std over {n} seeds; in brackets the mean paired gain over uniform lr.")
    return "\n".join(lines)
