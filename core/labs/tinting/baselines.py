"""What a Tinting / AdaMerging run is compared with: zero-shot, the individual fine-tuned models, and
TA / TIES / TA+LiNeS with λ (β) chosen on validation by `core.select.choose_on_val`, all on test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ...merging import apply_direction, get_method, merged_direction
from ...runtime.locks import FORWARD_LOCK
from ...select import choose_on_val, summarize
from .data import evaluator, tint_tasks

# The grids come from the merge-method registry; TIES takes every second point of its grid from 0.3
# (0.3, 0.5, ..., 1.5: the CLI's budget). TA+LiNeS: alpha = 1/N (auto), beta on TA's beta grid.
BASELINE_GRIDS = {
    "TA": tuple(get_method("task_arithmetic").lambda_grid),
    "TIES": tuple(get_method("ties").lambda_grid[2::2]),
    "TA+LiNeS": tuple(get_method("task_arithmetic").beta_grid),
}
METHOD_ORDER = ["zero-shot", "TA", "TIES", "TA+LiNeS"]


def baselines(
    ms,
    tasks: Sequence[str] | None = None,
    *,
    grids: Mapping[str, Sequence[float]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, dict]:
    """Zero-shot, individual fine-tuned, and TA / TIES / TA+LiNeS with λ (β) chosen on the
    validation split by average normalized accuracy (`core.select.choose_on_val`: first of equal
    scores), all reported on test.

    Returns {method: {"accuracy": {task: acc}, "chosen": {...}, "val_norm": ...}}; "individual"
    holds each fine-tuned model on its own task."""
    tasks = tint_tasks(ms, tasks)
    grids = {**BASELINE_GRIDS, **(grids or {})}
    ev_val, ev_test = evaluator(ms, "val"), evaluator(ms, "test")
    base = ms.base()
    fts = {t: ms.finetuned(t) for t in tasks}
    total = 2 * len(tasks) + 1 + sum(len(v) for v in grids.values()) + 3
    done = 0

    def acc(ev, sd, ts=tasks):
        nonlocal done
        if cancel is not None and cancel.is_set():
            raise InterruptedError("baselines cancelled")
        with FORWARD_LOCK:
            out = ev.accuracy(sd, ts)
        done += 1
        if progress:
            progress(done, total)
        return out

    ft_val = {t: acc(ev_val, fts[t], [t])[t] for t in tasks}
    out: dict[str, dict] = {
        "individual": {"accuracy": {t: acc(ev_test, fts[t], [t])[t] for t in tasks}},
        "zero-shot": {"accuracy": acc(ev_test, None)},
    }
    ft_test = out["individual"]["accuracy"]
    ta = merged_direction(base, fts, "task_arithmetic", coefficients=1.0)
    ties = merged_direction(base, fts, "ties", k=0.2, coefficients=1.0)
    candidates = {
        "TA": [({"lambda": v}, lambda v=v: apply_direction(base, ta, scale=v)) for v in grids["TA"]],
        "TIES": [({"lambda": v}, lambda v=v: apply_direction(base, ties, scale=v)) for v in grids["TIES"]],
        "TA+LiNeS": [
            ({"alpha": ta.auto_alpha(), "beta": v}, lambda v=v: apply_direction(base, ta, lines=("auto", v)))
            for v in grids["TA+LiNeS"]
        ],
    }
    for name, points in candidates.items():
        sel = choose_on_val(
            points,
            lambda c: acc(ev_val, c[1]()),
            ft_val,
            evaluate_test=lambda c: acc(ev_test, c[1]()),
            finetuned_test=ft_test,
        )
        if sel.candidate is None:
            raise ValueError(f"{name}: no grid point has a finite validation score")
        out[name] = {"accuracy": sel.test["accuracy"], "chosen": sel.candidate[0], "val_norm": sel.val_score}
    return out


def comparison_table(base: Mapping[str, dict], tinted: Mapping[str, Mapping[str, float]] | None = None) -> pd.DataFrame:
    """One row per method (zero-shot, TA, TIES, TA+LiNeS, each Tinting / AdaMerging run, individual):
    test accuracy per task, avg_abs (mean accuracy) and avg_norm (mean of acc / individual acc)."""
    ft = base["individual"]["accuracy"]
    rows = []
    entries = [(m, base[m]) for m in METHOD_ORDER if m in base]
    entries += [(label, {"accuracy": dict(a)}) for label, a in (tinted or {}).items()]
    entries.append(("individual", base["individual"]))
    for name, e in entries:
        a = e["accuracy"]
        row = {"method": name, **{t: a.get(t, np.nan) for t in ft}}
        row.update(summarize(a, ft, tasks=list(ft)))
        chosen = e.get("chosen")
        row["chosen on val"] = ", ".join(f"{k}={v:.3g}" for k, v in chosen.items()) if chosen else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("method")


def markdown_table(df: pd.DataFrame, digits: int = 1) -> str:
    """Percent table in Markdown (numbers ×100), for the CLI and the README."""
    cols = list(df.columns)
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{100 * v:.{digits}f}" if isinstance(v, (float, np.floating)) and np.isfinite(v) else str(v))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_check(table: pd.DataFrame) -> list[str]:
    """The issue's targets per Tinting row: above TA+LiNeS, within 3 normalized points of individual."""
    if "TA+LiNeS" not in table.index or "individual" not in table.index:
        return []
    lines_norm, ind = table.loc["TA+LiNeS", "avg_norm"], table.loc["individual", "avg_norm"]
    out = []
    for name in table.index:
        if str(name).startswith("Tinting"):
            v = table.loc[name, "avg_norm"]
            above, close = v > lines_norm, ind - v <= 0.03
            out.append(
                f"{name}: {100 * v:.1f} normalized vs TA+LiNeS {100 * lines_norm:.1f} "
                f"({'above' if above else 'NOT above'}), "
                f"{100 * (ind - v):.1f} points below individual ({'met' if close else 'NOT met'})"
            )
    return out
