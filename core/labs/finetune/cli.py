"""`python -m core finetune`: the Fine-tune lab's grid (accuracy vs data fraction per method) or, with --wsa,
the Weight Scope Alignment merge comparison. Prints Markdown tables; runs are logged unless --no-log."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import pandas as pd
import torch

from core.cli.options import UserError, add_run_options, add_zoo_options, guarded
from core.runtime.executors import spawn_context
from core.runtime.threads import torch_threads

from .compare import markdown_table, summary_table
from .config import METHODS, LabConfig, parse_method, recipe_defaults
from .run import finetune, grid_configs
from .wsa import wsa_experiment, wsa_markdown


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v.strip()]


def _grid_job(args) -> dict:
    """One grid run in a worker process: (zoo kind, cache dir, LabConfig dict, threads, log) -> row."""
    kind, cache, cfg, threads, log = args
    torch.set_flush_denormal(True)
    from core.zoo import load_model_set

    with torch_threads(threads):
        return finetune(load_model_set(kind, cache), LabConfig(**cfg), run_log=None if log else False).row()


def run_grid_cli(
    kind: str, cache, ms, configs: list[LabConfig], workers: int, threads: int, log: bool = True
) -> pd.DataFrame:
    """The grid as the CLI runs it: in this process (workers <= 1) or in `workers` spawned processes,
    one line on stderr per finished run."""
    rows, t0 = [], time.perf_counter()

    def report(i, row):
        print(
            f"[{i}/{len(configs)} {time.perf_counter() - t0:6.0f}s] {row['method']:<16} fraction "
            f"{row['fraction']:<6g} seed {row['seed']}  n={row['train_size']:<5} acc {row['accuracy']:.3f}  "
            f"({row['seconds']:.1f}s)",
            file=sys.stderr,
            flush=True,
        )

    if workers <= 1:
        for i, cfg in enumerate(configs, start=1):
            rows.append(finetune(ms, cfg, run_log=None if log else False).row())
            report(i, rows[-1])
        return pd.DataFrame(rows)
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(kind, cache, c.to_dict(), threads, log) for c in configs]
    with ProcessPoolExecutor(workers, mp_context=spawn_context()) as pool:
        for i, row in enumerate(pool.map(_grid_job, jobs), start=1):
            rows.append(row)
            report(i, row)
    return pd.DataFrame(rows)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m core finetune",
        description="Fine-tune lab: accuracy vs data fraction for uniform lr / TempBalance / Model Balancing "
        "(and WSA), or (--wsa) the Weight Scope Alignment merge comparison. Prints Markdown tables.",
    )
    add_zoo_options(ap)
    ap.add_argument("--task", default="digits")
    ap.add_argument("--fractions", default="0.01,0.05,0.2,1.0", help="comma-separated fractions of the training pool")
    ap.add_argument(
        "--methods", default="uniform,tempbalance,model_balancing", help=f"comma-separated, from {','.join(METHODS)}"
    )
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0..n-1)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=None, help="base learning rate (default: the zoo's fine-tuning lr)")
    ap.add_argument("--every", type=int, default=25, help="recompute TempBalance / Model Balancing every K steps")
    ap.add_argument("--s1", type=float, default=0.5)
    ap.add_argument("--s2", type=float, default=1.5)
    ap.add_argument("--s", type=float, default=1.25, help="Model Balancing scale s")
    ap.add_argument("--weight", type=float, default=1.0, help="WSA weight")
    ap.add_argument("--wsa", action="store_true", help="run the WSA merge comparison instead of the grid")
    ap.add_argument("--tasks", default="colors,shapes", help="--wsa: two tasks, or one task (two disjoint shards)")
    ap.add_argument(
        "--fraction", type=float, default=None, help="--wsa: data fraction per model (default 1, or 0.5 per shard)"
    )
    ap.add_argument("--target", default="base", choices=["base", "fused"], help="--wsa: target scopes")
    ap.add_argument("--seed", type=int, default=0, help="--wsa: seed")
    ap.add_argument("--workers", type=int, default=1, help="grid runs in parallel processes")
    add_run_options(ap, threads_default=1)  # --threads: torch threads per process
    ap.add_argument("--out", default=None, help="write the per-run results (CSV)")
    return ap


def load_zoo(kind: str, cache):
    """The built zoo's model set; a zoo built with recipe overrides is used with a note; none: UserError."""
    from core.zoo import is_built, load_model_set, manifest

    if not is_built(kind, cache):
        try:  # a complete zoo built with recipe overrides (`zoo build --set ...`) is usable, with a warning
            complete = manifest(kind, cache).get("complete") is True
        except (FileNotFoundError, ValueError):
            complete = False
        if not complete:
            hint = " --micro" if kind == "micro" else ""
            raise UserError(f"the {kind} zoo is not built; run `python -m core zoo build{hint}`")
        print(f"note: the {kind} zoo in the cache was built with another recipe than the current one", file=sys.stderr)
    return load_model_set(kind, cache)


def common_settings(args, ms) -> dict:
    """The LabConfig fields every run of the command shares (flags, else the model set's recipe)."""
    d = recipe_defaults(ms)
    return {
        "steps": args.steps,
        "batch_size": args.batch,
        "lr": args.lr or d["lr"],
        "weight_decay": d["weight_decay"],
        "warmup": d["warmup"],
        "n_train": d["n_train"],
        "every": args.every,
        "s1": args.s1,
        "s2": args.s2,
        "s": args.s,
    }


def grid_from_args(args, ms) -> list[LabConfig]:
    """The grid's configs of the parsed flags (what the command runs without --wsa)."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        parse_method(m)
    common = common_settings(args, ms)
    return grid_configs(
        args.task, _floats(args.fractions), methods, range(args.seeds), wsa_weight=args.weight, **common
    )


def run(args) -> int:
    log = not args.no_log
    ms = load_zoo(args.zoo, args.cache)
    common = common_settings(args, ms)
    t0 = time.perf_counter()
    if args.wsa:
        tasks = [t for t in args.tasks.split(",") if t]
        if args.fraction is not None:
            common["fraction"] = args.fraction
        res = wsa_experiment(
            ms,
            tasks,
            weight=args.weight,
            target=args.target,
            seed=args.seed,
            run_log=None if log else False,
            progress=lambda i, n, msg: print(f"[{i}/{n}] {msg}", file=sys.stderr, flush=True),
            **common,
        )
        print(wsa_markdown(res))
        print(f"\n{time.perf_counter() - t0:.0f} s, run id {res.run_id}")
        if args.out:
            res.summary.to_csv(args.out, index=False)
        return 0
    configs = grid_from_args(args, ms)
    print(
        f"{len(configs)} fine-tunes on {args.task} ({args.zoo} zoo): {args.steps} steps x batch {args.batch}, "
        f"lr {common['lr']:g}, workers {args.workers}",
        file=sys.stderr,
        flush=True,
    )
    results = run_grid_cli(args.zoo, args.cache, ms, configs, args.workers, args.threads, log)
    if args.out:
        results.to_csv(args.out, index=False)
    print(
        f"## {args.task}: accuracy vs data fraction ({args.zoo} zoo, {args.steps} steps x batch {args.batch}, "
        f"lr {common['lr']:g})\n"
    )
    print(markdown_table(summary_table(results)))
    print(
        f"\nzero-shot {100 * results['zero_shot'].mean():.1f}%; {math.ceil(time.perf_counter() - t0)} s on "
        f"{args.workers} worker(s) x {args.threads} thread(s), {os.cpu_count()} cpus"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = parser()

    def body() -> int:
        args = ap.parse_args(argv)
        torch.set_flush_denormal(True)
        with torch_threads(args.threads):
            return run(args)

    return guarded(body)
