"""Sweeps: choose a merge's coefficients on the validation split, report the choice on test.

A sweep is a base MergeSpec plus a grid - over the global lambda of any method
with a `coefficients` parameter (the method's `lambda_grid` by default), or over
LiNeS (alpha, beta) (alpha may be "auto", the multi-task rule; the method's
`beta_grid` by default). Every grid point is merged and evaluated on the
validation split; the point with the highest average normalized accuracy
(acc / acc_finetuned, core.select) is re-evaluated on the test split. The test
split is never used to choose.

Work runs through an executor (core.executors) as small jobs that describe the
work, not the weights: a worker loads the model set from its ModelSetRef (cheap
with cached files), keeps it, and computes a merged direction once per
`MergeSpec.direction_key()`, so a 10-point lambda grid merges once and applies
ten scales. With processes=0 the jobs run in this process and can use a model
set that exists only in memory (`run_sweep(..., model_set=ms)`).

Sweep spec JSON (the CLI's `sweep --config`, written by the Sweeps page):

    {"model_set": {"zoo": "styled"},
     "merge": {"method": "ties", "params": {"k": 0.2}},
     "eval": {"subsample": 100, "seed": 0},          # the grid's val evaluation (split is always val)
     "grid": {"lambda": [0.1, 0.2, ...]}  or  {"alpha": ["auto"], "beta": [0.1, ...]},
     "test_subsample": null}                          # the best point's test evaluation (null = full split)
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import select
from .merging import get_method
from .runtime.executors import Cancelled, Executor, LocalExecutor
from .runtime.locks import FORWARD_LOCK
from .spec import EvalSpec, MergeSpec, ModelSetRef, RunConfig

Progress = Callable[[int, int], None]


# --------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SweepSpec:
    """A grid over one base MergeSpec. grid: {"lambda": [...]} or {"alpha": [...], "beta": [...]}."""

    model_set: ModelSetRef = field(default_factory=ModelSetRef)
    merge: MergeSpec = field(default_factory=MergeSpec)
    eval: EvalSpec = field(default_factory=lambda: EvalSpec(split="val"))
    grid: tuple = ()  # sorted (name, tuple of values) pairs, hashable
    test_subsample: int | None = None

    @staticmethod
    def make(
        model_set: ModelSetRef,
        merge: MergeSpec,
        grid: Mapping[str, Sequence],
        eval: EvalSpec | None = None,
        test_subsample: int | None = None,
    ) -> SweepSpec:
        ev = replace(eval or EvalSpec(), split="val")
        spec = SweepSpec(model_set, merge, ev, tuple(sorted((k, tuple(v)) for k, v in grid.items())), test_subsample)
        spec.validate()
        return spec

    @property
    def grid_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in self.grid}

    @property
    def kind(self) -> str:
        """ "lambda" or "lines"."""
        return "lambda" if "lambda" in self.grid_dict else "lines"

    def validate(self) -> None:
        g = self.grid_dict
        m = get_method(self.merge.method)
        if set(g) == {"lambda"}:
            if "coefficients" not in m.defaults():
                raise ValueError(f"merge method {m.name!r} has no global lambda (no 'coefficients' parameter) to sweep")
            if self.merge.lines is not None or self.merge.curve is not None:
                raise ValueError("a lambda grid needs a merge without LiNeS/curve (LiNeS replaces the global lambda)")
            if isinstance(self.merge.param_dict.get("coefficients"), list):
                raise ValueError("a lambda grid needs a scalar 'coefficients', not per-task values")
            _check_numbers("lambda", g["lambda"])
        elif set(g) == {"alpha", "beta"}:
            if self.merge.curve is not None:
                raise ValueError("a LiNeS grid cannot be combined with a per-block curve")
            _check_numbers("alpha", [a for a in g["alpha"] if a != "auto"])
            _check_numbers("beta", g["beta"])
        else:
            raise ValueError(f"grid must have key 'lambda' or keys 'alpha' and 'beta', got {sorted(g)}")
        if not all(g.values()):
            raise ValueError("every grid axis needs at least one value")

    def points(self) -> list[MergeSpec]:
        """One MergeSpec per grid point (lambda ascending, or alpha-major then beta)."""
        g = self.grid_dict
        if self.kind == "lambda":
            params = self.merge.param_dict
            return [
                MergeSpec.make(self.merge.method, {**params, "coefficients": float(v)}, **_rest(self.merge))
                for v in g["lambda"]
            ]
        return [
            self.merge.with_(lines=(a if a == "auto" else float(a), float(b))) for a in g["alpha"] for b in g["beta"]
        ]

    def to_dict(self) -> dict:
        return {
            "model_set": self.model_set.to_dict(),
            "merge": self.merge.to_dict(),
            "eval": self.eval.to_dict(),
            "grid": self.grid_dict,
            "test_subsample": self.test_subsample,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @staticmethod
    def from_dict(d: Mapping) -> SweepSpec:
        if not isinstance(d, Mapping):
            raise ValueError("a sweep spec must be a JSON object")
        unknown = set(d) - {"model_set", "merge", "eval", "grid", "test_subsample"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in the sweep spec")
        if "grid" not in d:
            raise ValueError("the sweep spec has no 'grid' ({'lambda': [...]} or {'alpha': [...], 'beta': [...]})")
        base = RunConfig.from_dict({k: d[k] for k in ("model_set", "merge", "eval") if k in d})
        return SweepSpec.make(base.model_set, base.merge, d["grid"], base.eval, d.get("test_subsample"))

    @staticmethod
    def load(path: str | Path) -> SweepSpec:
        try:
            return SweepSpec.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e


def _rest(spec: MergeSpec) -> dict:
    return {"tasks": spec.tasks, "output_as_last_block": spec.output_as_last_block}


def _check_numbers(name: str, values) -> None:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            extra = ' or "auto"' if name == "alpha" else ""
            raise ValueError(f"grid values for {name!r} must be numbers{extra}, got {v!r}")


def parse_values(text: str, what: str, allow_auto: bool = False) -> list:
    """A grid typed as text ("0.1, 0.2; 0.3", or "auto" where allowed) -> its values; a part that is not a
    number is named in the error, with the field (`what`) it came from."""
    out: list = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if allow_auto and part == "auto":
            out.append("auto")
            continue
        try:
            out.append(float(part))
        except ValueError:
            also = ' or "auto"' if allow_auto else ""
            raise ValueError(f"{what}: {part!r} is not a number{also}; separate the values with commas") from None
    return out


def default_grid(method: str, lines: bool) -> dict[str, list]:
    """The paper's grid for `method`: lambda_grid, or LiNeS alpha = auto with the method's beta_grid."""
    m = get_method(method)
    return {"alpha": ["auto"], "beta": list(m.beta_grid)} if lines else {"lambda": list(m.lambda_grid)}


# --------------------------------------------------------------------------- worker side
@dataclass(frozen=True)
class EvalJob:
    """One evaluation, as sent to a worker: which model set, which model, which split.

    merge: a MergeSpec dict, or None for a reference model - `reference` is
    "zero_shot" (the base) or "finetuned:<task>" (evaluated on its own task only).
    """

    model_set: dict
    eval: dict
    merge: dict | None = None
    reference: str | None = None
    allow_nonfinite: bool = False  # merge NaN/Inf inputs (with a warning) instead of raising NonFiniteError


_MODEL_SETS: dict[str, Any] = {}  # ModelSetRef key -> ModelSet, per process
_DIRECTIONS: OrderedDict[tuple, dict] = OrderedDict()  # (ref, direction_key) -> direction and its LiNeS auto alpha
_LOCK = threading.RLock()


def _ref_key(ref: Mapping) -> str:
    return json.dumps(ref, sort_keys=True)


def register_model_set(ref: ModelSetRef, ms) -> None:
    """Use `ms` for jobs naming `ref` in this process (in-memory sets, serial runs, the app's loaded set)."""
    with _LOCK:
        _MODEL_SETS[_ref_key(ref.to_dict())] = ms


def model_set_for(ref: ModelSetRef):
    """The ModelSet this process uses for `ref`: a registered one, else loaded (and kept)."""
    return _model_set(ref.to_dict())


def _model_set(ref: Mapping):
    key = _ref_key(ref)
    with _LOCK:
        if key not in _MODEL_SETS:
            _MODEL_SETS[key] = ModelSetRef.from_dict(ref).load()
        return _MODEL_SETS[key]


def _direction(ref: Mapping, ms, spec: MergeSpec, allow_nonfinite: bool = False) -> dict:
    """{"direction": MergedDirection, "auto_alpha": float | None (computed on first use)}, cached.
    Non-finite inputs raise core.errors.NonFiniteError (unless allow_nonfinite), which fails the sweep."""
    from .merging import merged_direction

    key = (_ref_key(ref), spec.direction_key(), allow_nonfinite)
    with _LOCK:
        if key in _DIRECTIONS:
            _DIRECTIONS.move_to_end(key)
            return _DIRECTIONS[key]
        tasks = list(spec.tasks) if spec.tasks else ms.tasks
        fts = {t: ms.finetuned(t) for t in tasks}
        d = merged_direction(ms.base(), fts, spec.method, allow_nonfinite=allow_nonfinite, **spec.param_dict)
        entry = {"direction": d, "auto_alpha": None}
        _DIRECTIONS[key] = entry
        while len(_DIRECTIONS) > 4:
            _DIRECTIONS.popitem(last=False)
        return entry


def spec_state_dict(
    ref: ModelSetRef | Mapping, spec: MergeSpec, ms=None, *, allow_nonfinite: bool = False
) -> tuple[dict, float | None]:
    """theta for `spec` from the process's cached direction; returns (state dict, LiNeS alpha used or None)."""
    from .live import apply_spec

    ref = ref.to_dict() if isinstance(ref, ModelSetRef) else dict(ref)
    ms = ms or _model_set(ref)
    entry = _direction(ref, ms, spec, allow_nonfinite)
    d = entry["direction"]
    alpha = None
    if spec.lines is not None:
        if spec.lines[0] == "auto":
            if entry["auto_alpha"] is None:
                entry["auto_alpha"] = d.auto_alpha()
            alpha = entry["auto_alpha"]
        else:
            alpha = float(spec.lines[0])
    return apply_spec(ms.base(), d, spec, auto_alpha=alpha), alpha


def make_evaluator(ms, es: EvalSpec):
    """The evaluator of a job; tests replace this (serial runs) to avoid building models."""
    from .evaluate import Evaluator

    return Evaluator.for_model_set(
        ms, split=es.split, subsample=es.subsample, bf16=es.bf16, seed=es.seed, fp16=es.fp16, device=es.device
    )


def evaluate_job(job: EvalJob) -> dict:
    """Run one job (in a worker or in-process). Returns {"accuracy": {task: acc}, "alpha": LiNeS alpha
    used or None, "seconds": wall time}."""
    t0 = time.perf_counter()
    ms = _model_set(job.model_set)
    es = EvalSpec.from_dict(job.eval)
    ev = make_evaluator(ms, es)
    tasks = list(es.tasks) if es.tasks else list(ms.eval_tasks)
    alpha = None
    if job.merge is not None:
        sd, alpha = spec_state_dict(
            job.model_set, MergeSpec.from_dict(job.merge), ms, allow_nonfinite=job.allow_nonfinite
        )
    elif job.reference == "zero_shot":
        sd = None
    elif job.reference and job.reference.startswith("finetuned:"):
        task = job.reference.split(":", 1)[1]
        sd, tasks = ms.finetuned(task), [task]
    else:
        raise ValueError(f"an evaluation job needs a merge spec or a reference, got {job.reference!r}")
    with FORWARD_LOCK:  # never interleave with a slider's forward pass on the shared evaluator
        acc = ev.accuracy(sd, tasks)
    n = {t: int(ev.num_images(t)) for t in acc} if hasattr(ev, "num_images") else {}
    return {"accuracy": acc, "alpha": alpha, "seconds": time.perf_counter() - t0, "n": n}


# --------------------------------------------------------------------------- driver side
def eval_tasks(ms, merge: MergeSpec, es: EvalSpec) -> list[str]:
    """The tasks a merge is scored on: eval.tasks if given, else the merged tasks that have evaluation data."""
    if not ms.eval_tasks:
        raise ValueError(f"model set {ms.name!r} has no evaluation tasks; sweeps need a zoo or tasks with data")
    merged = list(merge.tasks) if merge.tasks else ms.tasks
    unknown = [t for t in merged if t not in ms.tasks]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown} in merge.tasks; this model set has {ms.tasks}")
    if es.tasks:
        bad = [t for t in es.tasks if t not in ms.eval_tasks]
        if bad:
            raise ValueError(f"unknown task(s) {bad} in eval.tasks; this model set evaluates {ms.eval_tasks}")
        return list(es.tasks)
    tasks = [t for t in merged if t in ms.eval_tasks]
    if not tasks:
        raise ValueError(f"none of the merged tasks {merged} has evaluation data in {ms.name!r}")
    return tasks


def reference_jobs(ref: ModelSetRef, ms, es: EvalSpec, tasks: Sequence[str]) -> list[EvalJob]:
    """Zero-shot (the base on every task) and each task's own fine-tuned model, for normalizing."""
    r, e = ref.to_dict(), es.to_dict()
    jobs = [EvalJob(r, e, reference="zero_shot")]
    jobs += [EvalJob(r, e, reference=f"finetuned:{t}") for t in tasks if t in ms.tasks]
    return jobs


_REFERENCES: OrderedDict[tuple, list[dict]] = OrderedDict()  # driver side: (ref, files, eval spec) -> results


def _refs_key(ref: ModelSetRef, ms, es: EvalSpec) -> tuple:
    return (_ref_key(ref.to_dict()), ms.fingerprint(), json.dumps(es.to_dict(), sort_keys=True))


def _cached_references(key: tuple) -> list[dict] | None:
    with _LOCK:
        return _REFERENCES.get(key)


def _store_references(key: tuple, results: list[dict]) -> None:
    with _LOCK:
        _REFERENCES[key] = results
        while len(_REFERENCES) > 16:
            _REFERENCES.popitem(last=False)


def reference_table(results: Sequence[dict], tasks: Sequence[str]) -> pd.DataFrame:
    """Columns task, zero_shot, finetuned from the results of `reference_jobs`."""
    zs = results[0]["accuracy"]
    ft: dict[str, float] = {}
    for r in results[1:]:
        ft.update(r["accuracy"])
    return pd.DataFrame({"task": t, "zero_shot": zs.get(t, np.nan), "finetuned": ft.get(t, np.nan)} for t in tasks)


def summarize(acc: Mapping[str, float], refs: pd.DataFrame) -> dict:
    """avg_abs and avg_norm (core.select.summarize) over the reference table's tasks."""
    ft = {t: float(v) for t, v in zip(refs["task"], refs["finetuned"])}
    return select.summarize(acc, ft, tasks=list(refs["task"]))


@dataclass
class SweepResult:
    """frame: one row per evaluated grid point on val (point, lambda | alpha + beta, one column
    per task, avg_abs, avg_norm); best: the chosen row as a dict (+ its MergeSpec as "spec");
    test: the best point on test ({task: acc}, avg_abs, avg_norm); refs_val / refs_test:
    zero-shot and fine-tuned accuracies per task; cancelled: the grid stopped early
    (then `test` is empty)."""

    spec: SweepSpec
    frame: pd.DataFrame
    best: dict
    test: dict
    refs_val: pd.DataFrame
    refs_test: pd.DataFrame | None
    tasks: list[str]
    run_id: int | None = None
    cancelled: bool = False
    seconds: float = 0.0
    executor: str = ""

    def metrics(self) -> dict:
        """What goes into the run log."""
        best = {k: v for k, v in self.best.items() if k != "spec"}
        return {
            "best": best,
            "best_spec": self.best["spec"].to_dict() if "spec" in self.best else None,
            "test": self.test,
            "cancelled": self.cancelled,
            "seconds": self.seconds,
            "executor": self.executor,
            "refs_val": self.refs_val.to_dict(orient="records"),
            "refs_test": None if self.refs_test is None else self.refs_test.to_dict(orient="records"),
            "grid": self.frame.to_dict(orient="records"),
        }


def point_label(spec: MergeSpec, alpha_used: float | None) -> str:
    if spec.lines is None:
        return f"λ={spec.param_dict['coefficients']:g}"
    a, b = spec.lines
    a_txt = f"auto ({alpha_used:.3f})" if a == "auto" else f"{float(a):g}"
    return f"α={a_txt}, β={float(b):g}"


def _row(spec: MergeSpec, res: dict, refs: pd.DataFrame) -> dict:
    row: dict[str, Any] = {"point": point_label(spec, res["alpha"])}
    if spec.lines is None:
        row["lambda"] = float(spec.param_dict["coefficients"])
    else:
        row["alpha"] = float(res["alpha"])
        row["alpha_auto"] = spec.lines[0] == "auto"
        row["beta"] = float(spec.lines[1])
    row.update(res["accuracy"])
    row.update(summarize(res["accuracy"], refs))
    if res.get("n"):
        row["images"] = int(sum(res["n"].values()))  # what each number of this row rests on
    return row


def run_sweep(
    spec: SweepSpec,
    *,
    executor: Executor | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    run_log=None,
    model_set=None,
    log: bool = True,
    allow_nonfinite: bool = False,
) -> SweepResult:
    """Evaluate every grid point on val, pick the best average normalized accuracy, evaluate it on test.

    executor: default in-process serial. model_set: the already loaded set for `spec.model_set`
    (used in this process; workers load their own). progress(done, total) counts every job
    (references and grid points on val, then the test evaluations). run_log: a RunLog (default
    RunLog()) unless log=False; the sweep is recorded as kind "sweep" with status ok/cancelled/error.
    NaN/Inf in the model set's checkpoints fail the sweep with core.errors.NonFiniteError (logged as an
    error) unless allow_nonfinite=True.
    """
    t0 = time.perf_counter()
    spec.validate()
    ms = model_set if model_set is not None else spec.model_set.load()
    register_model_set(spec.model_set, ms)
    executor = executor or LocalExecutor(processes=0)
    tasks = eval_tasks(ms, spec.merge, spec.eval)
    es_val = replace(spec.eval, split="val", tasks=tuple(tasks))
    es_test = replace(spec.eval, split="test", subsample=spec.test_subsample, tasks=tuple(tasks))
    points = spec.points()
    ref = spec.model_set.to_dict()
    # Zero-shot and fine-tuned references are evaluated once per process and settings, then reused.
    key_val, key_test = _refs_key(spec.model_set, ms, es_val), _refs_key(spec.model_set, ms, es_test)
    cached_val, cached_test = _cached_references(key_val), _cached_references(key_test)
    val_refs = [] if cached_val else reference_jobs(spec.model_set, ms, es_val, tasks)
    grid_jobs = [EvalJob(ref, es_val.to_dict(), merge=p.to_dict(), allow_nonfinite=allow_nonfinite) for p in points]
    test_jobs = [] if cached_test else reference_jobs(spec.model_set, ms, es_test, tasks)
    total = len(val_refs) + len(grid_jobs) + len(test_jobs) + 1

    def prog(offset):
        return None if progress is None else (lambda done, _n: progress(offset + done, total))

    if log and run_log is None:
        from .runtime.runlog import RunLog

        run_log = RunLog()
    run_id = run_log.start("sweep", spec.to_dict(), ms.fingerprint(), seed=spec.eval.seed) if log else None
    cancelled = False
    try:
        try:
            results = executor.map(evaluate_job, val_refs + grid_jobs, prog(0), cancel)
        except Cancelled as c:
            cancelled = True
            results = [c.results.get(i) for i in range(len(val_refs) + len(grid_jobs))]
        if any(r is None for r in results[: len(val_refs)]):
            refs_val = pd.DataFrame({"task": tasks, "zero_shot": np.nan, "finetuned": np.nan})
        else:
            if not cached_val:
                cached_val = results[: len(val_refs)]
                _store_references(key_val, cached_val)
            refs_val = reference_table(cached_val, tasks)
        rows = [_row(p, r, refs_val) for p, r in zip(points, results[len(val_refs) :]) if r is not None]
        frame = pd.DataFrame(rows)
        best: dict = {}
        i = None if frame.empty else select.best_index(frame["avg_norm"].tolist())
        if i is not None:  # the first of ties: the smallest lambda / alpha-major order
            best = {**frame.iloc[i].to_dict(), "spec": _evaluated_points(points, results[len(val_refs) :])[i]}
        test: dict = {}
        refs_test = None
        if best and not cancelled:
            best_job = EvalJob(ref, es_test.to_dict(), merge=best["spec"].to_dict(), allow_nonfinite=allow_nonfinite)
            try:
                out = executor.map(evaluate_job, test_jobs + [best_job], prog(len(val_refs) + len(grid_jobs)), cancel)
            except Cancelled:
                cancelled = True
            else:
                if not cached_test:
                    cached_test = out[:-1]
                    _store_references(key_test, cached_test)
                refs_test = reference_table(cached_test, tasks)
                test = {"accuracy": out[-1]["accuracy"], **summarize(out[-1]["accuracy"], refs_test), "split": "test"}
                if out[-1].get("n"):
                    test["images"] = int(sum(out[-1]["n"].values()))
        result = SweepResult(
            spec,
            frame,
            best,
            test,
            refs_val,
            refs_test,
            tasks,
            run_id,
            cancelled,
            time.perf_counter() - t0,
            executor.describe(),
        )
    except BaseException as e:
        if run_id is not None:
            run_log.finish(run_id, {"error": f"{type(e).__name__}: {e}"}, status="error")
        raise
    if run_id is not None:
        run_log.finish(run_id, result.metrics(), status="cancelled" if cancelled else "ok")
    return result


def _evaluated_points(points: Sequence[MergeSpec], results: Sequence[dict | None]) -> list[MergeSpec]:
    return [p for p, r in zip(points, results) if r is not None]


def evaluate_specs(
    ref: ModelSetRef,
    specs: Sequence[MergeSpec],
    es: EvalSpec,
    *,
    executor: Executor | None = None,
    model_set=None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    allow_nonfinite: bool = False,
) -> tuple[list[dict], pd.DataFrame]:
    """Evaluate several merges on one split (no choosing): per spec {"accuracy", "avg_abs", "avg_norm",
    "alpha"}, plus the reference table (zero-shot, fine-tuned) used to normalize."""
    ms = model_set if model_set is not None else ref.load()
    register_model_set(ref, ms)
    executor = executor or LocalExecutor(processes=0)
    tasks = eval_tasks(ms, specs[0] if specs else MergeSpec(), es)
    es = replace(es, tasks=tuple(tasks))
    key = _refs_key(ref, ms, es)
    cached = _cached_references(key)
    refs = [] if cached else reference_jobs(ref, ms, es, tasks)
    jobs = [EvalJob(ref.to_dict(), es.to_dict(), merge=s.to_dict(), allow_nonfinite=allow_nonfinite) for s in specs]
    out = executor.map(evaluate_job, refs + jobs, progress, cancel)
    if not cached:
        cached = out[: len(refs)]
        _store_references(key, cached)
    table = reference_table(cached, tasks)
    rows = [{**r, **summarize(r["accuracy"], table)} for r in out[len(refs) :]]
    return rows, table
