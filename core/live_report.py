"""Reading the live loop's results: the comparison table the Merge lab draws, the choice of the LiNeS
α sweep, the run-log recorder that logs every live evaluation, and the two lessons a zoo build measures
(which task shows LiNeS best; each merge method's λ on validation). Pure functions over `LiveMerger`
results (core.live); no forward pass here."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .merging import get_method, lambda_methods
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


LESSON_ALPHAS: tuple[float, ...] = (0.3, 0.5, 0.7)


def lines_lesson(live, alphas: tuple[float, ...] = LESSON_ALPHAS, split: str = "val", progress=None) -> dict:
    """Where a model set shows the LiNeS paper's single-task effect: LiNeS' trade-off lies above uniform
    scaling's (wang-kee/LiNeS, single-task editing: theta_0 + lambda(l) tau with lambda(l) = alpha + (1 - alpha)
    l/(L-1), against theta_0 + alpha tau).

    Per target task: the mean over `alphas` of score(LiNeS at alpha) - score(uniform at alpha) on `split`
    (score = 2 target_norm + control_norm, core.live). The task with the largest mean advantage is the
    lesson's default target: the one a teacher should open the LiNeS page on. Measured, never assumed:
    2 len(alphas) evaluations per task (about 15 s on the demo zoo). Returns {"target", "advantage"
    {task: mean difference}, "wins" {task: alphas where LiNeS is ahead}, "alphas", "split"}.
    progress: optional callable(done, total, message)."""
    from .live import single_task_spec, uniform_spec

    tasks = [t for t in live.tasks if t in live.eval_tasks]
    if not tasks:
        raise ValueError("the model set has no task with evaluation data: there is no lesson to measure")
    advantage, wins = {}, {}
    for i, task in enumerate(tasks):
        diffs = []
        for a in alphas:
            lines = live.evaluate(single_task_spec(task, a), split)["score"]
            uniform = live.evaluate(uniform_spec(task, a), split)["score"]
            diffs.append(lines - uniform)
        advantage[task] = sum(diffs) / len(diffs)
        wins[task] = [a for a, d in zip(alphas, diffs) if d > 0]
        if progress is not None:
            progress(i + 1, len(tasks), f"LiNeS vs uniform scaling on {task}")
    target = max(tasks, key=lambda t: (advantage[t], -tasks.index(t)))
    return {"target": target, "advantage": advantage, "wins": wins, "alphas": list(alphas), "split": split}


def lesson_files(ms) -> list:
    """The files a model set's lesson depends on (its checkpoints; the data are in the fingerprint)."""
    return [ms.base_path, *ms.finetuned_paths.values()]


def _cached_lesson(kind: str, measure, ms, live, cache, compute: bool, params: dict, progress) -> dict | None:
    """The one get-or-measure of a model set's lesson `kind` in the analysis cache (keyed by the set's
    checkpoints and fingerprint plus `params`); `measure(live, progress)` runs on a miss when `compute`."""
    from .analysis_cache import AnalysisCache

    cache = cache or AnalysisCache()
    params = {"fingerprint": ms.fingerprint(), **params}
    hit = cache.get(kind, lesson_files(ms), params)
    if hit is not None or not compute:
        return hit
    if live is None:
        from .live import LiveMerger

        live = LiveMerger(ms)
    value = measure(live, progress=progress)
    cache.put(kind, lesson_files(ms), params, value)
    return value


def cached_lines_lesson(ms, live=None, *, cache=None, compute: bool = True, progress=None) -> dict | None:
    """`lines_lesson` of a model set, kept on disk (core.analysis_cache, keyed by the files and the
    model set's fingerprint): `zoo build` measures it once, the LiNeS page reads it back. compute=False
    only reads (None when it was never measured)."""
    params = {"alphas": list(LESSON_ALPHAS), "split": "val"}
    return _cached_lesson("lines_lesson", lines_lesson, ms, live, cache, compute, params, progress)


# The methods whose λ a model set's merge lesson chooses on validation: the Merge lab opens each of them there.
# Every registered method with a global λ (`coefficients`): at their published λ the styled zoo's val scores
# spread from 42.2 (CART, prior 2) to 67.0 normalized (Breadcrumbs), against 68.1 for the plain weight
# average, so a method opened at its paper's λ looked broken on a model set whose task vectors are scaled
# differently.
LESSON_METHODS: tuple[str, ...] = lambda_methods()
LESSON_PATIENCE = 3  # stop a method's grid after this many points in a row below its best so far


def merge_lesson(live, methods: tuple[str, ...] = LESSON_METHODS, split: str = "val", progress=None) -> dict:
    """Each method's global λ chosen on `split`, as the papers tune it (task arithmetic's and TSV-M's
    scaling coefficient chosen on validation): the point of the method's registry `lambda_grid` with the
    highest average normalized accuracy over the merged tasks (`core.select.best_index`: first best). The
    grid is walked upwards and left after `LESSON_PATIENCE` points in a row below the best so far (the
    curves were single-peaked on the styled and micro zoos; on the styled zoo the walk reads 9 of TSV-M's
    30 points and 4 of task arithmetic's 10). The choice follows nik-dim/tall_masks src/utils/utils.py
    `find_optimal_coef` (metric avg_normalized_top1 on validation, strict > so the first best wins).

    Returns {"lambda": {method: λ}, "normalized": {method: val score at λ}, "curve": {method: {λ: score}},
    "split"}. progress: optional callable(done, total, message), total = the full grids' size."""
    if not [t for t in live.tasks if t in live.eval_tasks]:
        raise ValueError("the model set has no task with evaluation data: there is no lesson to measure")
    out = {"lambda": {}, "normalized": {}, "curve": {}, "split": split}
    grids = [get_method(m).lambda_grid for m in methods]
    total, offset = sum(map(len, grids)), 0
    for m, grid in zip(methods, grids):
        scores: list[float] = []
        for lam in grid:
            scores.append(float(live.evaluate(MergeSpec.make(m, {"coefficients": lam}), split)["normalized_mean"]))
            if progress is not None:
                progress(offset + len(scores), total, f"{m} at λ {lam}")
            best = best_index(scores)
            if best is not None and len(scores) - 1 - best >= LESSON_PATIENCE:
                break
        i = best_index(scores)
        if i is None:
            raise ValueError(f"{m}: no finite validation score on the λ grid")
        out["lambda"][m], out["normalized"][m] = grid[i], scores[i]
        out["curve"][m] = {str(g): v for g, v in zip(grid, scores)}
        offset += len(grid)
        if progress is not None and len(scores) < len(grid):  # left early: the bar jumps to the next method
            progress(offset, total, f"{m}: λ {grid[i]}")
    return out


def cached_merge_lesson(ms, live=None, *, cache=None, compute: bool = True, progress=None) -> dict | None:
    """`merge_lesson` of a model set, kept on disk like `cached_lines_lesson`: `zoo build` measures it
    once, the Merge lab opens each method at its λ. compute=False only reads (None when never measured)."""
    grids = {m: list(get_method(m).lambda_grid) for m in LESSON_METHODS}
    params = {"grids": grids, "patience": LESSON_PATIENCE, "split": "val"}
    return _cached_lesson("merge_lesson", merge_lesson, ms, live, cache, compute, params, progress)
