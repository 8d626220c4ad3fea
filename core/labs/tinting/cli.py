"""`python -m core tint`: Model Tinting (and layer-wise AdaMerging) on a built zoo, with the comparison.

python -m core tint --zoo demo --layer head --steps 100 --seeds 0,1,2 [--no-filter | --both]
    [--method tinting|adamerging|both] [--data test|val] [--out tinted.safetensors] [--resume RUN_ID]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ...cli.options import add_run_options, add_zoo_options, guarded
from ...runtime.threads import auto_threads
from ...select import normalized_accuracy
from .baselines import baselines, comparison_table, markdown_table, target_check
from .config import ADAMERGING, TINTING, TintConfig
from .data import evaluator, prepare_data, tint_tasks
from .export import export_tinted
from .model import HEAD
from .run import Progress, tint


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m core tint",
        description="Model Tinting: train layer-wise merging coefficients and one tinted layer per task "
        "on unlabeled images (transductive: the test images, without their labels, by default). "
        "--method adamerging: layer-wise AdaMerging (coefficients only, entropy minimization).",
    )
    add_zoo_options(ap)
    ap.add_argument(
        "--method",
        choices=(TINTING, ADAMERGING, "both"),
        default=TINTING,
        help="tinting (default), adamerging (layer-wise AdaMerging), or both side by side",
    )
    ap.add_argument("--layer", default=HEAD, help="head (default), last_mlp, last_attn, ln_post, proj or a layer name")
    ap.add_argument("--steps", type=int, default=None, help="outer steps (each: one Adam step per task); default 100")
    ap.add_argument("--lr", type=float, default=None, help="Adam lr (default: 1e-2 Tinting, 1e-3 AdaMerging)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--no-filter", action="store_true", help="train Tinting without the confidence filter only")
    ap.add_argument("--both", action="store_true", help="run Tinting with and without the filter")
    ap.add_argument("--data", choices=("test", "val"), default="test", help="unlabeled images to train on")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--out", default=None, help="export the (first seed's) tinted model set to this safetensors file")
    ap.add_argument("--resume", type=int, default=None, help="continue a logged Tinting run from its saved state")
    ap.add_argument("--no-baselines", action="store_true", help="skip TA / TIES / TA+LiNeS")
    ap.add_argument(
        "--workers", type=int, default=0, help="run the seeds/filters in N worker processes (1 thread each)"
    )
    add_run_options(ap)
    return ap


_CLI_CACHE: dict[tuple, Any] = {}


def model_set(zoo: str, cache=None):
    """The zoo's model set, loaded once per process (its state dicts stay cached in it)."""
    from ...zoo import load_model_set

    if (zoo, cache) not in _CLI_CACHE:
        _CLI_CACHE[(zoo, cache)] = load_model_set(zoo, cache)
    return _CLI_CACHE[(zoo, cache)]


def clear_prepared() -> None:
    """Forget the prepared images and pseudo-labels (the next `run_item` prepares them again)."""
    for k in [k for k in _CLI_CACHE if len(k) > 2]:
        del _CLI_CACHE[k]


def run_item(item: Mapping, progress: Progress | None = None) -> dict:
    """One CLI run, in this process or an executor's worker (the model set and the prepared
    images are kept per process). item: {"zoo", "cache", "config": TintConfig dict, "log": bool,
    "out": export path or None}. Returns the run's summary (no tensors)."""
    key = (item["zoo"], item.get("cache"))
    ms = model_set(*key)
    cfg = TintConfig.from_dict(item["config"])
    tasks = tint_tasks(ms, cfg.tasks)
    data = {}
    for split in (cfg.data, "test"):
        dk = (*key, split, tuple(tasks))
        if dk not in _CLI_CACHE:
            _CLI_CACHE[dk] = prepare_data(ms, tasks, split)
        data[split] = _CLI_CACHE[dk]
    res = tint(ms, cfg, progress=progress, run_log=item.get("log", True), data=data[cfg.data], eval_data=data["test"])
    if item.get("out"):
        export_tinted(res.model, item["out"], config=cfg, accuracy=res.accuracy)
    return summary(res)


def summary(res) -> dict:
    m = res.model
    return {
        "label": res.config.label(),
        "seed": res.config.seed,
        "accuracy": res.accuracy,
        "seconds": res.seconds,
        "run_id": res.run_id,
        "trainable": m.num_trainable(),
        "encoder": m.num_encoder_params(),
        "lambdas": m.lambdas_raw.numel(),
        "threads": torch.get_num_threads(),
    }


def _bar(label: str) -> Progress:
    def cb(step, total, row):
        if "loss" in row:
            msg = f"\r{label}: step {step}/{total} loss {row['loss']:.3f} kept {row['kept']:.2f}"
            if "accuracy" in row:
                msg += f" acc {np.mean(list(row['accuracy'].values())):.3f}"
            print(msg, end="", file=sys.stderr, flush=True)

    return cb


def configs(args) -> list[TintConfig]:
    """The runs the flags ask for: Tinting per filter setting x seed, then AdaMerging per seed."""
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        raise ValueError(f"--seeds needs at least one integer, got {args.seeds!r}")
    methods = [TINTING, ADAMERGING] if args.method == "both" else [args.method]
    common = dict(
        steps=100 if args.steps is None else args.steps,
        lr=args.lr,
        batch=args.batch,
        data=args.data,
        eval_every=args.eval_every,
    )
    out = []
    for method in methods:
        filters = ([True, False] if args.both else [not args.no_filter]) if method == TINTING else [True]
        for use_filter in filters:
            out += [TintConfig(layer=args.layer, filter=use_filter, seed=s, method=method, **common) for s in seeds]
    return out


def main(argv: list[str] | None = None) -> int:
    return guarded(lambda: run(parser().parse_args(argv)))


def run(args) -> int:
    torch.set_num_threads(args.threads or auto_threads())
    torch.set_flush_denormal(True)
    from ...zoo import is_built, manifest

    if not is_built(args.zoo, args.cache):
        try:
            recipe = manifest(args.zoo, args.cache).get("recipe")
        except FileNotFoundError:
            build = f"python -m core zoo build{' --micro' if args.zoo == 'micro' else ''}"
            print(f"the {args.zoo} zoo is not built; run `{build}`")
            return 1
        print(
            f"warning: this {args.zoo} zoo was built with another recipe than the current one: {recipe}",
            file=sys.stderr,
        )
    ms = model_set(args.zoo, args.cache)
    log = not args.no_log
    t0 = time.perf_counter()
    summaries: list[dict] = []

    if args.resume is not None:
        cfg = TintConfig(steps=args.steps) if args.steps is not None else None
        res = tint(ms, cfg, resume=args.resume, progress=_bar(f"resume run {args.resume}"), run_log=log)
        print(file=sys.stderr)
        print(f"run {res.run_id}: resumed {args.resume} to step {res.steps_done} in {res.seconds:.1f} s")
        if args.out:
            print(f"exported {export_tinted(res.model, args.out, config=res.config, accuracy=res.accuracy)}")
        summaries.append(summary(res))
    else:
        items = [
            {"zoo": args.zoo, "cache": args.cache, "config": c.to_dict(), "log": log, "out": None}
            for c in configs(args)
        ]
        items[0]["out"] = args.out
        if args.workers:
            from ...runtime.executors import LocalExecutor

            def prog(done, total):
                print(f"\r{done}/{total} runs done", end="", file=sys.stderr, flush=True)

            with LocalExecutor(processes=args.workers) as ex:
                summaries = ex.map(run_item, items, progress=prog)
            print(file=sys.stderr)
        else:
            for item in items:
                cfg = TintConfig.from_dict(item["config"])
                summaries.append(run_item(item, progress=_bar(f"{cfg.label()} seed {cfg.seed}")))
                print(file=sys.stderr)
        for s in summaries:
            acc = np.mean(list(s["accuracy"].values()))
            print(
                f"{s['label']} seed {s['seed']}: mean acc {acc:.4f}, {s['seconds']:.1f} s (run {s['run_id']})",
                file=sys.stderr,
            )
        if args.out:
            print(f"exported {args.out} ({summaries[0]['label']}, seed {summaries[0]['seed']})")
    report(ms, args, summaries, time.perf_counter() - t0)
    return 0


def report(ms, args, summaries: list[dict], elapsed: float) -> None:
    """The comparison table (with the baselines unless --no-baselines), per-seed spread and costs."""
    per_label: dict[str, list[dict[str, float]]] = {}
    for s in summaries:
        per_label.setdefault(s["label"], []).append(s["accuracy"])
    tinted = {label: {t: float(np.mean([a[t] for a in accs])) for t in accs[0]} for label, accs in per_label.items()}
    if args.no_baselines:
        ev = evaluator(ms, "test")
        base = {"individual": {"accuracy": {t: ev.accuracy(ms.finetuned(t), [t])[t] for t in tint_tasks(ms)}}}
    else:
        tb = time.perf_counter()
        base = baselines(ms)
        print(f"baselines (val-chosen) in {time.perf_counter() - tb:.1f} s", file=sys.stderr)
    table = comparison_table(base, tinted)
    print(markdown_table(table))
    ft = base["individual"]["accuracy"]
    if any(len(v) > 1 for v in per_label.values()):
        print("\nNormalized accuracy per seed (mean ± std):")
        for label, accs in per_label.items():
            norms = [normalized_accuracy(a, ft) for a in accs]
            per = ", ".join(f"{100 * v:.1f}" for v in norms)
            print(f"- {label}: {per} -> {100 * np.mean(norms):.1f} ± {100 * np.std(norms):.1f}")
    targets = target_check(table)
    if targets:
        print("\nTargets (issue 6):\n" + "\n".join(f"- {t}" for t in targets))
    for label in per_label:
        s = next(x for x in summaries if x["label"] == label)
        print(
            f"\n{label}: trained parameters {s['trainable']:,} ({100 * s['trainable'] / s['encoder']:.2f}% of the "
            f"{s['encoder']:,}-parameter visual encoder; λ: {s['lambdas']:,})",
            end="",
        )
    print()
    secs = ", ".join(f"{s['seconds']:.1f}" for s in summaries)
    s0 = summaries[0]
    where = f"{args.workers} worker processes x 1 thread" if args.workers else f"{s0['threads']} thread(s)"
    print(f"wall time per run: {secs} s ({where}); whole command {elapsed:.1f} s")
