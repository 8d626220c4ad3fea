"""The live loop: merge + evaluate fast enough to follow a slider.

What does not change between two slider positions is computed once and kept
(docs/methods/steering.md, "The live loop"):

- the base state dict and the fine-tuned checkpoints (the ModelSet's own cache),
- the merged direction tau_merged of each (method, direction parameters, tasks),
  keyed by `MergeSpec.direction_key()` (LiNeS alpha/beta, a block curve and a
  scalar lambda are not part of it),
- the evaluator's preprocessed tensors and zero-shot heads (core.evaluate),
- the results of every spec already seen, keyed by `MergeSpec.key()` and the
  evaluation settings (a bounded LRU).

So a move of a LiNeS or lambda slider costs one `apply_direction` (a scaled
add per tensor) and one forward pass over the evaluation images.

Conventions (core.select): accuracies are fractions in [0, 1]. Normalized
accuracy = acc / acc_finetuned (the task's own fine-tuned model). In a
single-task spec (tasks=(target,)) the other tasks are *control* tasks:
control_norm = mean over them of acc / acc_zeroshot, and the LiNeS paper's
trade-off score is 2 * target_norm + control_norm.

No streamlit here; the pages and the bench drive the same object.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from .checkpoints import save_state_dict
from .evaluate import Evaluator
from .lines import infer_num_blocks, lines_curve
from .merging import MergedDirection, apply_direction, get_method, merged_direction
from .runtime.locks import FORWARD_LOCK
from .select import control_accuracy, mean_accuracy, normalized_accuracy
from .spec import EvalSpec, MergeSpec

# The single-task LiNeS grid (wang-kee/LiNeS, single-task editing): alpha in {1.0, 0.9, ..., 0.0}, beta = 1 - alpha.
ALPHAS: tuple[float, ...] = tuple(round(1.0 - 0.1 * i, 1) for i in range(11))


Progress = Callable[[int, int, str], None]


SUBSAMPLE_CHOICES: tuple[int | None, ...] = (None, 50, 100, 200)


def default_subsample(ms, large_mb: float = 100.0) -> int | None:
    """Images per task the live pages start with: the whole split for small models (the demo zoo),
    a fixed seeded 100 per task when the base checkpoint is larger than `large_mb` MB
    (on big models: evaluate a subsample first, refine on request)."""
    try:
        size_mb = Path(ms.base_path).stat().st_size / 2**20
    except OSError:
        return None
    return None if size_mb <= large_mb else 100


def single_task_spec(target: str, alpha: float, beta: float | None = None) -> MergeSpec:
    """Single-task LiNeS: theta_0 + lambda(l) tau_target, lambda(l) = alpha + beta * l/(L-1); beta defaults to 1 - alpha."""
    beta = round(1.0 - alpha, 10) if beta is None else beta
    return MergeSpec.make("task_arithmetic", tasks=(target,), lines=(float(alpha), float(beta)))


def uniform_spec(target: str, alpha: float) -> MergeSpec:
    """The uniform-scaling baseline: theta_0 + alpha * tau_target (every layer scaled alike)."""
    return MergeSpec.make("task_arithmetic", {"coefficients": float(alpha)}, tasks=(target,))


def apply_spec(base, direction: MergedDirection, spec: MergeSpec, *, auto_alpha: float | None = None) -> dict:
    """theta for `spec` from its merged direction: the one place a MergeSpec's LiNeS line, block
    curve or global lambda is applied (the live loop, sweeps and their workers call it).

    A scalar lambda is not part of the direction key, so the cached direction's own scale may be
    another spec's: it is taken from this spec. auto_alpha: the resolved multi-task LiNeS alpha
    when spec.lines[0] == "auto" (computed from the direction when not given).
    """
    lines = spec.lines
    if lines is not None and lines[0] == "auto":
        lines = (direction.auto_alpha() if auto_alpha is None else auto_alpha, float(lines[1]))
    elif lines is not None:
        lines = (float(lines[0]), float(lines[1]))
    c = spec.param_dict.get("coefficients")
    scale = float(c) if isinstance(c, int | float) and not isinstance(c, bool) else None
    return apply_direction(
        base,
        direction,
        lines=lines,
        curve=spec.curve,
        outside=spec.outside,
        scale=scale,
        output_as_last_block=spec.output_as_last_block,
    )


class LiveMerger:
    """Merges and evaluates MergeSpecs of one model set, caching everything reusable.

    `evaluator` evaluates on `eval_spec.split` (default: the evaluator's test
    split); other splits (e.g. "val" for choosing alpha) get their evaluator
    from `evaluator_for(EvalSpec)`, by default `Evaluator.for_model_set`.
    Merged directions are kept (LRU) up to `max_direction_mb` of tensors, results up to
    `max_results` entries. Thread-safe: the caches and the forward passes are guarded by locks.
    """

    def __init__(
        self,
        ms,
        evaluator: Evaluator | None = None,
        *,
        eval_spec: EvalSpec | None = None,
        evaluator_for: Callable[[EvalSpec], Evaluator] | None = None,
        max_results: int = 512,
        max_direction_mb: float = 1024.0,
        on_evaluated: Callable[[MergeSpec, EvalSpec, dict], None] | None = None,
        allow_nonfinite: bool = False,
    ):
        self.ms = ms
        self.allow_nonfinite = allow_nonfinite  # else NaN/Inf inputs raise core.errors.NonFiniteError
        self.eval_spec = eval_spec or EvalSpec(bf16=bool(getattr(evaluator, "bf16", False)))
        self._evaluator_for = evaluator_for or self._default_evaluator
        self._evaluators: dict[str, Evaluator] = {}
        if evaluator is not None:
            self._evaluators[self.eval_spec.split] = evaluator
        self._directions: OrderedDict[str, tuple[MergedDirection, dict]] = OrderedDict()
        self._results: OrderedDict[tuple, dict] = OrderedDict()
        self._refs: dict[tuple, object] = {}
        self.max_results = max_results
        self.max_direction_mb = max_direction_mb
        self._lock = threading.RLock()
        self.last_state_dict: tuple[str, dict[str, torch.Tensor]] | None = None
        self.stats = {"direction_builds": 0, "evaluations": 0, "result_hits": 0}
        # Called once per new (not cached) evaluation: the app logs every evaluation to the run log here.
        self.on_evaluated = on_evaluated

    # -- plumbing -------------------------------------------------------------------------
    def _default_evaluator(self, es: EvalSpec) -> Evaluator:
        return Evaluator.for_model_set(
            self.ms,
            split=es.split,
            subsample=es.subsample,
            bf16=es.bf16,
            seed=es.seed,
            fp16=getattr(es, "fp16", False),
            device=getattr(es, "device", "auto"),
        )

    def evaluator(self, split: str | None = None) -> Evaluator:
        split = split or self.eval_spec.split
        with self._lock:
            if split not in self._evaluators:
                self._evaluators[split] = self._evaluator_for(replace(self.eval_spec, split=split))
            return self._evaluators[split]

    @property
    def tasks(self) -> list[str]:
        return list(self.ms.tasks)

    @property
    def eval_tasks(self) -> list[str]:
        return list(self.eval_spec.tasks or self.evaluator().task_names)

    @property
    def num_blocks(self) -> int:
        if "num_blocks" not in self._refs:
            self._refs["num_blocks"] = infer_num_blocks(self.ms.finetuned(self.tasks[0]))
        return self._refs["num_blocks"]

    def base(self) -> dict[str, torch.Tensor]:
        return self.ms.base()

    def _merge_tasks(self, spec: MergeSpec) -> list[str]:
        tasks = list(spec.tasks) if spec.tasks else self.tasks
        unknown = [t for t in tasks if t not in self.ms.tasks]
        if unknown:
            raise KeyError(f"tasks {unknown} have no fine-tuned checkpoint in this model set (it has {self.ms.tasks})")
        return tasks

    # -- merging --------------------------------------------------------------------------
    def direction(self, spec: MergeSpec) -> tuple[MergedDirection, dict]:
        """The cached merged direction of `spec` and its memo (the LiNeS auto alpha, computed once)."""
        key = spec.direction_key()
        with self._lock:
            if key in self._directions:
                self._directions.move_to_end(key)
                return self._directions[key]
            tasks = self._merge_tasks(spec)
            fts = {t: self.ms.finetuned(t) for t in tasks}
            d = merged_direction(self.base(), fts, spec.method, allow_nonfinite=self.allow_nonfinite, **spec.param_dict)
            self.stats["direction_builds"] += 1
            entry = (d, {})
            self._directions[key] = entry
            # Keep as many directions as fit the memory budget (the newest always stays):
            # every target of the demo zoo fits; for ViT-B/32 (~350 MB each) two or three do.
            while len(self._directions) > 1 and self._direction_mb() > self.max_direction_mb:
                self._directions.popitem(last=False)
            return entry

    def _direction_mb(self) -> float:
        return (
            sum(v.numel() * v.element_size() for d, _ in self._directions.values() for v in d.vector.values()) / 2**20
        )

    def auto_alpha(self, spec: MergeSpec) -> float:
        """The multi-task LiNeS alpha, (||sum tau||_1 / ||tau_merged||_1) / N, of the spec's direction."""
        d, memo = self.direction(spec)
        if "auto_alpha" not in memo:
            memo["auto_alpha"] = d.auto_alpha()
        return memo["auto_alpha"]

    def merged_state_dict(self, spec: MergeSpec) -> dict[str, torch.Tensor]:
        """theta_0 + (scaled) tau_merged for `spec`: the cached direction re-applied with its lines/curve/lambda."""
        if self.last_state_dict is not None and self.last_state_dict[0] == spec.key():
            return self.last_state_dict[1]
        d, _ = self.direction(spec)
        alpha = self.auto_alpha(spec) if spec.lines is not None and spec.lines[0] == "auto" else None
        sd = apply_spec(self.base(), d, spec, auto_alpha=alpha)
        self.last_state_dict = (spec.key(), sd)
        return sd

    def block_scales(self, spec: MergeSpec) -> tuple[list[float], float]:
        """The effective per-block scales lambda(l), l = 0..L-1, and the scale outside the blocks,
        for any spec: its curve, its LiNeS line (auto alpha resolved) or its global lambda."""
        L = self.num_blocks
        if spec.curve is not None:
            curve = [float(x) for x in spec.curve]
            return curve, float(spec.outside if spec.outside is not None else curve[0])
        if spec.lines is not None:
            alpha = self.auto_alpha(spec) if spec.lines[0] == "auto" else float(spec.lines[0])
            return lines_curve(alpha, float(spec.lines[1]), L), alpha
        c = spec.param_dict.get("coefficients")
        lam = float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else self.direction(spec)[0].scale
        return [lam] * L, lam

    def save(self, spec: MergeSpec, path: str | Path, *, hf_names: bool = False) -> Path:
        """Write the merged model as safetensors (open_clip or Hugging Face CLIP names), the spec in its metadata."""
        path = Path(path)
        save_state_dict(
            self.merged_state_dict(spec), path, hf_names=hf_names, metadata={"mergescope_spec": spec.to_dict()}
        )
        return path

    def safetensors_bytes(self, spec: MergeSpec, *, hf_names: bool = False) -> bytes:
        """The bytes `save` would write (for a download button)."""
        with tempfile.TemporaryDirectory() as d:
            return self.save(spec, Path(d) / "merged.safetensors", hf_names=hf_names).read_bytes()

    def model_megabytes(self) -> float:
        return sum(v.numel() * v.element_size() for v in self.base().values()) / 2**20

    # -- evaluation -----------------------------------------------------------------------
    def _accuracy(self, sd, split: str, tasks: Sequence[str] | None = None) -> dict[str, float]:
        # Shared evaluators are never mutated here: `evaluator_for` returns one with this merger's
        # settings (Evaluator.for_model_set gives a per-settings view of the cached model and images).
        ev = self.evaluator(split)
        with FORWARD_LOCK:
            return ev.accuracy(sd, list(tasks) if tasks is not None else self.eval_tasks)

    def evaluate(self, spec: MergeSpec, split: str | None = None) -> dict:
        """Merge `spec` and evaluate it on every evaluation task (cached by spec and eval settings).

        Returns a dict with
          accuracy {task: acc}, normalized {task: acc / acc_finetuned},
          mean / normalized_mean over the merged tasks, mean_all over every evaluated task;
        for a single-task spec also
          target, target_acc, target_norm, control {task: acc}, control_acc (mean),
          control_norm (mean of acc / acc_zeroshot over the control tasks), score = 2 target_norm + control_norm;
        and merge_seconds, eval_seconds, cached, spec_key, split.
        """
        split = split or self.eval_spec.split
        rkey = (spec.key(), json.dumps(replace(self.eval_spec, split=split).to_dict(), sort_keys=True))
        with self._lock:
            hit = self._results.get(rkey)
            if hit is not None:
                self._results.move_to_end(rkey)
                self.stats["result_hits"] += 1
                return {**hit, "cached": True}
        t0 = time.perf_counter()
        sd = self.merged_state_dict(spec)
        t1 = time.perf_counter()
        acc = self._accuracy(sd, split)
        t2 = time.perf_counter()
        out = self.summarize(spec, acc, split)
        out.update(merge_seconds=t1 - t0, eval_seconds=t2 - t1, cached=False, spec_key=spec.key(), split=split)
        out["n"] = self._images(split)
        self._store(spec, split, rkey, out)
        return dict(out)

    def _images(self, split: str) -> dict[str, int]:
        ev = self.evaluator(split)
        n = ev.num_images() if hasattr(ev, "num_images") else {}
        return {t: int(n[t]) for t in self.eval_tasks if t in n}

    def evaluate_rounds(
        self, spec: MergeSpec, split: str | None = None, *, cancel=None, first: int | None = None
    ) -> Iterator[dict]:
        """Anytime `evaluate`: yields results that sharpen as rounds of each task's seeded, stratified
        image order complete (core.evaluate.Evaluator.rounds), so a page shows first numbers within about
        a second even on big test sets, with 95% Wilson intervals that tighten. Each yield is `evaluate`'s
        dict plus ``n`` {task: images so far}, ``total`` {task: images in the split}, ``interval``
        {task: (low, high)} and ``final``. The last yield (final=True) equals `evaluate(spec)` exactly and
        is cached and logged like it; a cached spec yields once. Between rounds a caller may stop iterating
        (a newer slider position): nothing partial is cached. `cancel` (Event or callable) stops between
        batches. `first`: images per task in the first round (default: what the evaluator runs in ~1 s)."""
        split = split or self.eval_spec.split
        rkey = (spec.key(), json.dumps(replace(self.eval_spec, split=split).to_dict(), sort_keys=True))
        with self._lock:
            hit = self._results.get(rkey)
        ev = self.evaluator(split)
        if hit is not None or not hasattr(ev, "rounds"):
            out = self.evaluate(spec, split)
            total = self._images(split)
            out.update(n=dict(total), total=total, interval={t: (a, a) for t, a in out["accuracy"].items()})
            yield {**out, "final": True}
            return
        t0 = time.perf_counter()
        sd = self.merged_state_dict(spec)
        t1 = time.perf_counter()
        gen = ev.rounds(sd, self.eval_tasks, cancel=cancel, seed=self.eval_spec.seed, first=first)
        while True:
            with FORWARD_LOCK:  # one round at a time: other sessions' passes may run between rounds
                est = next(gen, None)
            if est is None:
                return  # cancelled between batches: nothing partial is kept
            acc = {t: e.accuracy for t, e in est.items()}
            extra = {
                "n": {t: e.n for t, e in est.items()},
                "total": {t: e.total for t, e in est.items()},
                "interval": {t: e.interval for t, e in est.items()},
            }
            if not all(e.done for e in est.values()):
                partial = self.summarize(spec, acc, split)
                partial.update(extra, merge_seconds=t1 - t0, eval_seconds=time.perf_counter() - t1, cached=False)
                yield {**partial, "spec_key": spec.key(), "split": split, "final": False}
                continue
            out = self.summarize(spec, acc, split)
            out.update(
                merge_seconds=t1 - t0,
                eval_seconds=time.perf_counter() - t1,
                cached=False,
                spec_key=spec.key(),
                split=split,
                n=extra["n"],
            )
            self._store(spec, split, rkey, out)
            yield {**out, **extra, "final": True}
            return

    def _store(self, spec: MergeSpec, split: str, rkey: tuple, out: dict) -> None:
        with self._lock:
            self.stats["evaluations"] += 1
            self._results[rkey] = out
            while len(self._results) > self.max_results:
                self._results.popitem(last=False)
        if self.on_evaluated is not None:
            self.on_evaluated(spec, replace(self.eval_spec, split=split), dict(out))

    def summarize(self, spec: MergeSpec, acc: Mapping[str, float], split: str | None = None) -> dict:
        """The derived numbers of `evaluate` from per-task accuracies (no merging, no forward pass)."""
        split = split or self.eval_spec.split
        refs = self.reference_rows(split).set_index("task")
        ft, zs = refs["finetuned"].to_dict(), refs["zero_shot"].to_dict()
        merged = [t for t in self._merge_tasks(spec) if t in acc]
        out: dict = {
            "tasks": merged,
            "accuracy": dict(acc),
            "normalized": {t: a / ft[t] if ft.get(t) else float("nan") for t, a in acc.items()},
            "mean": mean_accuracy({t: acc[t] for t in merged}),
            "normalized_mean": normalized_accuracy({t: acc[t] for t in merged}, ft),
            "mean_all": mean_accuracy(acc),
        }
        if len(merged) == 1:
            target = merged[0]
            ctrl = control_accuracy(acc, target, zs)
            target_norm = acc[target] / ft[target] if ft.get(target) else float("nan")
            out.update(
                target=target,
                target_acc=acc[target],
                target_norm=target_norm,
                control={t: a for t, a in acc.items() if t != target},
                control_acc=ctrl["control"],
                control_norm=ctrl["control_normalized"],
                score=2 * target_norm + ctrl["control_normalized"],
            )
        return out

    # -- references -----------------------------------------------------------------------
    def reference_rows(self, split: str | None = None) -> pd.DataFrame:
        """Per task: zero-shot accuracy (the base) and the task's own fine-tuned model's accuracy.

        Columns task, zero_shot, finetuned, source ("manifest" or "evaluated"). Read
        from the zoo manifest when it was measured with these evaluation settings
        (full split, fp32), else evaluated once (1 + N forward passes) and cached.
        """
        split = split or self.eval_spec.split
        key = ("refs", split)
        with self._lock:
            if key in self._refs:
                return self._refs[key].copy()
        df = self._manifest_references(split)
        if df is None:
            zs = self._accuracy(None, split)
            ft = {}
            for t in self.eval_tasks:
                if t in self.ms.tasks:
                    ft[t] = self._accuracy(self.ms.finetuned(t), split, [t])[t]
            df = pd.DataFrame(
                {"task": t, "zero_shot": zs[t], "finetuned": ft.get(t, float("nan")), "source": "evaluated"}
                for t in self.eval_tasks
            )
        with self._lock:
            self._refs[key] = df
        return df.copy()

    def _manifest(self, split: str) -> dict | None:
        """The zoo manifest's accuracies for `split` when they were measured with these
        evaluation settings (the full split, fp32, every task), else None."""
        es = self.eval_spec
        zoo_dir = getattr(self.ms, "zoo_dir", None)
        if zoo_dir is None or es.subsample is not None or es.bf16:
            return None
        path = Path(zoo_dir) / "manifest.json"
        if not path.exists():
            return None
        try:
            found = manifest_accuracies(json.loads(path.read_text()), split)
        except (ValueError, OSError):
            return None
        if found is None or any(t not in found["zero_shot"] or t not in found["finetuned"] for t in self.eval_tasks):
            return None
        return found

    def _manifest_references(self, split: str) -> pd.DataFrame | None:
        found = self._manifest(split)
        if found is None:
            return None
        return pd.DataFrame(
            {"task": t, "zero_shot": found["zero_shot"][t], "finetuned": found["finetuned"][t], "source": "manifest"}
            for t in self.eval_tasks
        )

    def finetuned_accuracy(self, target: str, split: str | None = None) -> dict[str, float]:
        """The fully fine-tuned model of `target` on every evaluation task (its forgetting on the others)."""
        split = split or self.eval_spec.split
        key = ("ft_all", target, split)
        with self._lock:
            if key in self._refs:
                return dict(self._refs[key])
        found = self._manifest(split)
        cross = (found or {}).get("cross", {}).get(target)
        if cross is not None and all(t in cross for t in self.eval_tasks):
            acc = {t: float(cross[t]) for t in self.eval_tasks}
        else:
            acc = self._accuracy(self.ms.finetuned(target), split)
        with self._lock:
            self._refs[key] = acc
        return dict(acc)

    def single_task_table(
        self,
        target: str,
        current: Mapping,
        label: str = "current",
        split: str | None = None,
        others: Mapping[str, Mapping] | None = None,
    ):
        """The LiNeS page's numbers: rows zero-shot (the base), fine-tuned (the target's full fine-tune)
        and `label` (`current` = an `evaluate` result), then `others` {label: result} (e.g. uniform scaling
        at the same α); columns the target's accuracy, each control task's, their mean, target_norm,
        control_norm and score = 2 target_norm + control_norm."""
        spec = MergeSpec.make("task_arithmetic", tasks=(target,))
        rows = []
        for name, acc in (
            ("zero-shot", self.zero_shot_accuracy(split)),
            ("fine-tuned", self.finetuned_accuracy(target, split)),
            (label, current["accuracy"]),
            *((k, v["accuracy"]) for k, v in (others or {}).items()),
        ):
            s = self.summarize(spec, acc, split)
            rows.append(
                {
                    "model": name,
                    f"{target} (target)": s["target_acc"],
                    **s["control"],
                    "control mean": s["control_acc"],
                    "target_norm": s["target_norm"],
                    "control_norm": s["control_norm"],
                    "score": s["score"],
                }
            )
        return pd.DataFrame(rows).set_index("model")

    def zero_shot_accuracy(self, split: str | None = None) -> dict[str, float]:
        refs = self.reference_rows(split)
        return dict(zip(refs["task"], refs["zero_shot"]))

    # -- comparisons and sweeps -----------------------------------------------------------
    def delta_to_task_arithmetic(
        self, spec: MergeSpec, coefficients: float | None = None, split: str | None = None
    ) -> dict:
        """`spec`'s results minus plain task arithmetic's on the same tasks (lambda = `coefficients`,
        default the registry's default): per-task accuracy deltas and the deltas of the means."""
        lam = get_method("task_arithmetic").defaults()["coefficients"] if coefficients is None else coefficients
        ta = MergeSpec.make("task_arithmetic", {"coefficients": float(lam)}, tasks=spec.tasks)
        a, b = self.evaluate(spec, split), self.evaluate(ta, split)
        return {
            "task_arithmetic_spec": ta,
            "coefficients": float(lam),
            "accuracy": {t: a["accuracy"][t] - b["accuracy"][t] for t in a["accuracy"]},
            "mean": a["mean"] - b["mean"],
            "normalized_mean": a["normalized_mean"] - b["normalized_mean"],
            "task_arithmetic": b,
        }

    def alpha_sweep(
        self,
        target: str,
        alphas: Sequence[float] = ALPHAS,
        split: str = "val",
        progress: Progress | None = None,
        *,
        beta: float | None = None,
        uniform: bool = True,
    ) -> pd.DataFrame:
        """Single-task LiNeS over `alphas` (beta = 1 - alpha unless given), and the uniform-scaling
        baseline at the same alphas when `uniform`. Meant for the validation split: pick with
        `best_alpha`, then report that point on test.

        Columns: kind ("LiNeS" | "uniform"), alpha, beta, target_acc, control_acc, target_norm,
        control_norm, score, split.
        """
        points = [("LiNeS", a) for a in alphas] + ([("uniform", a) for a in alphas] if uniform else [])
        rows = []
        for i, (kind, a) in enumerate(points):
            b = (round(1.0 - a, 10) if beta is None else beta) if kind == "LiNeS" else None
            spec = single_task_spec(target, a, b) if kind == "LiNeS" else uniform_spec(target, a)
            r = self.evaluate(spec, split)
            rows.append(
                {
                    "kind": kind,
                    "alpha": float(a),
                    "beta": b,
                    **{k: r[k] for k in ("target_acc", "control_acc", "target_norm", "control_norm", "score")},
                    "split": split,
                }
            )
            if progress is not None:
                progress(i + 1, len(points), f"{kind} alpha={a:.2f}")
        return pd.DataFrame(rows)


def manifest_accuracies(manifest: Mapping, split: str = "test") -> dict[str, dict] | None:
    """The zoo manifest's accuracies for `split` (core.zoo.evaluate_zoo: full split, fp32), or None.

    Returns {"zero_shot": {task: acc}, "finetuned": {task: acc of its own fine-tune},
    "cross": {fine-tuned task: {task: acc}}} ("cross" may be empty).
    """
    acc = (manifest.get("accuracy") or {}).get(split)
    if not isinstance(acc, Mapping):
        return None
    zs, ft = acc.get("zero_shot"), acc.get("finetuned")
    if not isinstance(zs, Mapping) or not isinstance(ft, Mapping):
        return None
    return {"zero_shot": dict(zs), "finetuned": dict(ft), "cross": dict(acc.get("cross") or {})}


# --------------------------------------------------------------------------- URL state
