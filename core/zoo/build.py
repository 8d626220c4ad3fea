"""Building the zoo into the cache, and reading a built zoo.

A built zoo lives in ``<cache>/zoo-<kind>/`` (the cache is `core.runtime.paths.cache_dir()` unless a
`cache` directory is given), never in the repository:

- ``base.safetensors``: the full open_clip CLIP (visual and text towers), fp32;
- ``finetuned/<task>.safetensors``: one fine-tuned visual tower per task (``visual.*`` only);
- ``manifest.json``: tasks, recipe and its hash, seeds, the base's source, head diagnostics,
  fine-tuning losses, accuracies (zero-shot, fine-tuned, cross, control, forgetting on val and
  test), timings, machine and library versions, and ``"complete": true`` written last.

The build goes to a temporary sibling folder and is moved into place only when complete, so an
interrupted build never looks built. `is_built` is true only for a complete build whose
``recipe_hash`` equals the current recipe's: any change of the recipe or of the image generator
makes the next `build_zoo` rebuild.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import load_state_dict, save_state_dict
from ..cli.options import DEFAULT_ZOO
from ..models import build_model, zero_shot_head
from ..runtime.executors import spawn_context
from ..runtime.paths import cache_dir
from ..runtime.threads import auto_threads
from .data import get_task, load_split
from .finetune import finetune, finetune_job, init_worker
from .pretrain import head_diagnostics, pretrain
from .recipe import RECIPES, Recipe, check_recipe
from .shipped import ASSETS, sha256_of, shipped_base, versions

Progress = Callable[[str, int, int], None]
MANIFEST_VERSION = 1


def zoo_path(kind: str = DEFAULT_ZOO, cache: str | Path | None = None) -> Path:
    """The folder of zoo `kind`: ``<cache>/zoo-<kind>`` (cache default: `core.runtime.paths.cache_dir()`)."""
    if kind not in RECIPES:
        raise ValueError(f"unknown zoo kind {kind!r}; choose from {list(RECIPES)}")
    return (Path(cache) if cache is not None else cache_dir()) / f"zoo-{kind}"


def is_built(kind: str = DEFAULT_ZOO, cache: str | Path | None = None) -> bool:
    """True when a complete zoo of `kind` built with the current recipe is in the cache."""
    m = zoo_path(kind, cache) / "manifest.json"
    if not m.exists():
        return False
    try:
        man = json.loads(m.read_text())
    except json.JSONDecodeError:
        return False
    return man.get("complete") is True and man.get("recipe_hash") == RECIPES[kind].hash()


def manifest(kind: str = DEFAULT_ZOO, cache: str | Path | None = None) -> dict:
    """The manifest.json of a built zoo (FileNotFoundError naming the build command when absent)."""
    m = zoo_path(kind, cache) / "manifest.json"
    if not m.exists():
        raise FileNotFoundError(f"no {kind} zoo in {m.parent}; build it with `{build_command(kind)}`")
    return json.loads(m.read_text())


def build_command(kind: str) -> str:
    return "python -m core zoo build" + ("" if kind == DEFAULT_ZOO else f" --zoo {kind}")


def load_model_set(kind: str = DEFAULT_ZOO, cache: str | Path | None = None):
    """The built zoo as a `core.modelset.ModelSet` (base + one fine-tuned visual tower per task)."""
    from ..modelset import ModelSet

    d = zoo_path(kind, cache)
    tasks = list(manifest(kind, cache)["tasks"])
    return ModelSet(
        name=f"{kind} zoo",
        base_path=d / "base.safetensors",
        finetuned_paths={t: d / "finetuned" / f"{t}.safetensors" for t in tasks},
        eval_tasks=tasks,
        zoo_dir=d,
    )


def heads_of(model, tasks, progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """The zero-shot head of each task for a CLIP model (`core.models.zero_shot_head`: rows are
    L2-normalized mean class-prompt embeddings times exp(logit_scale)) - the tensors fine-tuning
    trains through and `core.evaluate.Evaluator` classifies with."""
    out = {}
    for i, t in enumerate(tasks):
        spec = get_task(t)
        out[t] = zero_shot_head(model, spec.classnames, spec.templates)
        if progress:
            progress("heads", i + 1, len(tasks))
    return out


def build_zoo(
    kind: str = DEFAULT_ZOO,
    progress: Progress | None = None,
    force: bool = False,
    cache: str | Path | None = None,
    recipe: Recipe | None = None,
    cancel=None,
) -> Path:
    """Build (or reuse) the zoo of `kind` in the cache; returns its directory.

    Stages, each reported through `progress(stage, done, total)`: data, pretrain
    (skipped with a matching shipped base), heads, finetune, evaluate. Deterministic
    for a given recipe and thread count. Reuses a complete build with the same recipe
    unless `force`. `cancel` (anything with ``is_set()``) stops the training stages
    with `core.errors.Cancelled`; the cache is left as it was.
    """
    recipe = recipe or RECIPES.get(kind)
    final = zoo_path(kind, cache)
    check_recipe(recipe)
    if not force and recipe == RECIPES[kind] and is_built(kind, cache):
        return final
    progress = progress or (lambda *a: None)
    work = final.with_name(final.name + f".tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    (work / "finetuned").mkdir(parents=True)
    try:
        man = _build(kind, recipe, work, progress, cancel)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    (work / "manifest.json").write_text(json.dumps(man, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(work, final)
    return final


def _build(kind: str, recipe: Recipe, work: Path, progress: Progress, cancel) -> dict:
    torch.set_num_threads(1 if recipe.workers == 1 and kind == "micro" else auto_threads())
    torch.set_flush_denormal(True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # data
    t = time.perf_counter()
    for i, task in enumerate(recipe.tasks):
        load_split(task, "val")
        load_split(task, "test")
        progress("data", i + 1, len(recipe.tasks))
    timings["data"] = round(time.perf_counter() - t, 1)

    # pretrain (or the shipped base)
    t = time.perf_counter()
    shipped = shipped_base(recipe)  # any recipe whose pretraining is the shipped base's (demo, styled)
    if shipped is not None:
        base = {k: (v.float() if v.is_floating_point() else v) for k, v in load_state_dict(shipped).items()}
        pre_stats = {"source": str(shipped.relative_to(ASSETS.parents[2])), "sha256": sha256_of(shipped)}
        progress("pretrain", 1, 1)
    else:
        base, pre_stats = pretrain(recipe, progress, cancel)
        pre_stats["source"] = "pretrained in this build"
    save_state_dict(base, work / "base.safetensors")
    timings["pretrain"] = round(time.perf_counter() - t, 1)

    # heads
    t = time.perf_counter()
    model = build_model(base)
    heads = heads_of(model, recipe.tasks, progress)
    diag = head_diagnostics(model, recipe.tasks)
    timings["heads"] = round(time.perf_counter() - t, 1)

    # fine-tune
    t = time.perf_counter()
    ft_stats: dict[str, dict] = {}
    jobs = [
        (str(work / "base.safetensors"), task, heads[task], recipe, str(work / "finetuned" / f"{task}.safetensors"))
        for task in recipe.tasks
    ]
    workers = max(1, min(recipe.workers, os.cpu_count() or 1, len(jobs)))
    total = len(jobs) * recipe.ft_steps  # the bar counts optimizer steps: a fine-tune takes 15-40 s
    progress("finetune", 0, total)
    if workers == 1:
        for i, (_, task, head, _, out) in enumerate(jobs):
            done = i * recipe.ft_steps

            def on_step(s, d=done):  # every 10 steps, as pretraining reports (a page redraws its bar per call)
                if s % 10 == 0:
                    progress("finetune", d + s, total)

            sd, stats = finetune(base, task, head, recipe, cancel, on_step=on_step)
            save_state_dict(sd, Path(out), metadata={"task": task})
            ft_stats[task] = stats
            progress("finetune", done + recipe.ft_steps, total)
    else:
        ctx = spawn_context()  # built from the Models page, the workers must not re-run the app
        steps = ctx.Value("q", 0)
        with ctx.Pool(workers, initializer=init_worker, initargs=(steps,)) as pool:
            pending = pool.map_async(finetune_job, jobs, chunksize=1)
            while not pending.ready():
                pending.wait(0.5)
                progress("finetune", min(steps.value, total), total)
                if cancel is not None and cancel.is_set():
                    from ..errors import Cancelled

                    pool.terminate()
                    raise Cancelled(f"zoo build cancelled after {steps.value} of {total} fine-tuning steps")
            for task, stats in pending.get():
                ft_stats[task] = stats
        progress("finetune", total, total)
    timings["finetune"] = round(time.perf_counter() - t, 1)

    # evaluate: zero-shot, every fine-tuned model on every task (val and test)
    t = time.perf_counter()
    results = evaluate_zoo(work, recipe.tasks, progress)
    timings["evaluate"] = round(time.perf_counter() - t, 1)
    timings["total"] = round(time.perf_counter() - t_all, 1)

    return {
        "manifest_version": MANIFEST_VERSION,
        "kind": kind,
        "tasks": list(recipe.tasks),
        "recipe": dataclasses.asdict(recipe),
        "recipe_hash": recipe.hash(),
        "seeds": {
            "recipe": recipe.seed,
            "data": "core.zoo.data.load_split(task, split, seed=0)",
            "train_split_seed": recipe.finetune_seed,  # seed + ft_seed: the fine-tunes' images and order
        },
        "base": pre_stats,
        "head_max_cosine": diag,
        "finetune": {t: ft_stats[t] for t in recipe.tasks},
        **results,
        "timings_seconds": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "workers": workers,
            "load_avg": os.getloadavg(),
        },
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }


def evaluate_zoo(zdir: Path, tasks, progress: Progress | None = None) -> dict:
    """Zero-shot / fine-tuned / cross accuracies on val and test, control accuracy and forgetting."""
    from ..evaluate import Evaluator
    from ..modelset import ModelSet
    from ..select import control_accuracy, mean_accuracy

    ms = ModelSet(
        "zoo", zdir / "base.safetensors", {t: zdir / "finetuned" / f"{t}.safetensors" for t in tasks}, list(tasks), zdir
    )
    out: dict = {"accuracy": {}}
    n = 2 * (len(tasks) + 1)
    done = 0
    for split in ("val", "test"):
        ev = Evaluator.for_model_set(ms, split)
        zs = ev.accuracy(None)
        cross = {}
        for t in tasks:
            cross[t] = ev.accuracy(ms.finetuned(t))
            done += 1
            if progress:
                progress("evaluate", done, n)
        done += 1
        ft = {t: cross[t][t] for t in tasks}
        control = {t: control_accuracy(cross[t], t, zs) for t in tasks}
        drop = [zs[o] - cross[t][o] for t in tasks for o in tasks if o != t]
        out["accuracy"][split] = {
            "zero_shot": zs,
            "finetuned": ft,
            "cross": cross,
            "control": control,
            "mean_zero_shot": mean_accuracy(zs),
            "mean_finetuned": mean_accuracy(ft),
            "mean_forgetting": float(np.mean(drop)) if drop else 0.0,
        }
        Evaluator.evict(ev)
    return out
