"""Reading the live loop's results: the comparison table the Merge lab draws, the choice of the LiNeS
α sweep, and the run-log recorder that logs every live evaluation. Pure functions over `LiveMerger`
results (core.live); no forward pass here."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .select import best_index
from .spec import EvalSpec, MergeSpec


def comparison_table(
    result: Mapping, refs: pd.DataFrame, others: Mapping[str, Mapping[str, float]] | None = None
) -> pd.DataFrame:
    """Long table task, model, accuracy, normalized for the bars and the CSV export.

    Models: "zero-shot" and "fine-tuned" (each task's own fine-tuned model) from
    `refs` (`LiveMerger.reference_rows`), "merged" from `result["accuracy"]`,
    plus `others` {label: {task: acc}} (e.g. plain task arithmetic).
    normalized = accuracy / the task's fine-tuned accuracy.
    """
    ft = dict(zip(refs["task"], refs["finetuned"]))
    series = {"zero-shot": dict(zip(refs["task"], refs["zero_shot"])), "merged": dict(result["accuracy"])}
    series.update(others or {})
    series["fine-tuned"] = ft
    rows = []
    for model, acc in series.items():
        for task in result["accuracy"]:
            if task in acc:
                a = float(acc[task])
                rows.append(
                    {"task": task, "model": model, "accuracy": a, "normalized": a / ft[task] if ft.get(task) else None}
                )
    return pd.DataFrame(rows)


def best_alpha(sweep: pd.DataFrame, kind: str = "LiNeS") -> pd.Series:
    """The sweep row with the highest score 2 target_norm + control_norm (first one on ties; the single-task
    LiNeS criterion, chosen on the sweep's split — val — by core.select.best_index)."""
    rows = sweep[sweep["kind"] == kind]
    i = None if rows.empty else best_index(rows["score"].tolist())
    if i is None:
        raise ValueError(f"the sweep has no {kind!r} rows with a score (kinds: {sorted(sweep['kind'].unique())})")
    return rows.iloc[i]


def run_log_recorder(run_log, ref, fingerprint: str | None = None, kind: str = "live"):
    """An `on_evaluated` callback that appends each new live evaluation to `run_log` (a RunLog, or a
    callable returning one at each write, e.g. the RunLog class: the log path is then read per write) as one
    finished run of `kind`: config = the RunConfig (model set ref, merge spec, eval spec) that reproduces
    it with `python -m core eval`, metrics = accuracies and their summaries. A failing write never stops
    the live loop (the number is still shown)."""
    from .spec import RunConfig

    def record(spec: MergeSpec, es: EvalSpec, out: dict) -> None:
        metrics = {
            k: out[k]
            for k in (
                "accuracy",
                "normalized",
                "mean",
                "normalized_mean",
                "target",
                "target_acc",
                "control_acc",
                "score",
            )
            if k in out
        }
        metrics.update(merge_seconds=out.get("merge_seconds"), eval_seconds=out.get("eval_seconds"))
        try:
            log = run_log() if callable(run_log) else run_log
            log.log(kind, RunConfig(model_set=ref, merge=spec, eval=es).to_dict(), metrics, fingerprint)
        except Exception as e:  # noqa: BLE001 - logging is best effort here, never the slider's failure
            import warnings

            warnings.warn(f"could not write the live evaluation to the run log: {e}", stacklevel=2)

    return record
