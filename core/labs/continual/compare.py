"""The comparison of NTK-CL's terms: baseline, each term alone and all terms, over seeds."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import pandas as pd

from .config import TERMS, ContinualConfig
from .run import run_continual

VARIANTS: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "+expansion": ("expansion",),
    "+ortho (EMA + orthogonality)": ("ortho",),
    "+l2": ("l2",),
    "all terms": TERMS,
}


def compare(
    source,
    cfg: ContinualConfig,
    seeds: Sequence[int] = (0, 1, 2),
    variants: Mapping[str, Sequence[str]] | None = None,
    *,
    run_log=None,
    progress: Callable[[str], None] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every variant (a set of terms; default `VARIANTS`) x seed. Returns (per-run rows, summary with
    mean ± std of average accuracy and forgetting and the mean wall time per run). run_log: as
    `run_continual`'s."""
    rows = []
    for name, terms in (VARIANTS if variants is None else variants).items():
        for s in seeds:
            c = dataclasses.replace(cfg.with_terms(terms), seed=int(s))
            r = run_continual(source, c, run_log=run_log)
            rows.append(
                {
                    "variant": name,
                    "seed": s,
                    "avg_acc": r.average_accuracy(),
                    "avg_forgetting": r.average_forgetting(),
                    "seconds": r.seconds,
                    "run_id": r.run_id,
                }
            )
            if progress:
                last = rows[-1]
                progress(
                    f"{name} seed {s}: acc {last['avg_acc']:.3f} forgetting {last['avg_forgetting']:.3f} "
                    f"({r.seconds:.0f} s)"
                )
    return pd.DataFrame(rows), summarize(pd.DataFrame(rows))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean ± std (ddof 0) of average accuracy and forgetting, mean seconds, number of seeds."""
    g = runs.groupby("variant", sort=False)
    return pd.DataFrame(
        {
            "avg_acc_mean": g["avg_acc"].mean(),
            "avg_acc_std": g["avg_acc"].std(ddof=0),
            "avg_forgetting_mean": g["avg_forgetting"].mean(),
            "avg_forgetting_std": g["avg_forgetting"].std(ddof=0),
            "seconds": g["seconds"].mean(),
            "seeds": g["seed"].count(),
        }
    )


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table (accuracy and forgetting as fractions)."""
    lines = ["| variant | avg accuracy | avg forgetting | wall time / run |", "|---|---|---|---|"]
    for name, r in summary.iterrows():
        lines.append(
            f"| {name} | {r.avg_acc_mean:.3f} ± {r.avg_acc_std:.3f} | "
            f"{r.avg_forgetting_mean:.3f} ± {r.avg_forgetting_std:.3f} | {r.seconds:.0f} s |"
        )
    return "\n".join(lines)
