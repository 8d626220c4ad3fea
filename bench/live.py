"""Live-loop latency: time from a spec change (a slider move) to updated results.

    PYTHONPATH=. python bench/live.py [--micro] [--moves 30] [--subsample N] [--bf16]

Each move is a random slider position never seen before (so no result-cache hit)
of one of: single-task LiNeS alpha (beta = 1 - alpha), single-task LiNeS with free
beta, the global task-arithmetic lambda, and multi-task TA + LiNeS beta (auto alpha).
A move costs what the page pays: re-apply the cached direction (core.merging.apply_direction)
+ one forward pass over every task's test images. Directions are built once before
timing (that is the cost of choosing a target or a method, not of a slider move) and
reported separately. Target: median <= 1 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

from core.evaluate import Evaluator
from core.live import LiveMerger, single_task_spec
from core.spec import EvalSpec, MergeSpec
from core.zoo import is_built, load_model_set


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[i]


def random_move(rng: random.Random, tasks: list[str]) -> tuple[str, MergeSpec]:
    grid = [round(0.05 * i, 2) for i in range(21)]
    kind = rng.choice(["lines_alpha", "lines_alpha_beta", "ta_lambda", "ta_lines_beta"])
    if kind == "lines_alpha":
        return kind, single_task_spec(rng.choice(tasks), rng.choice(grid))
    if kind == "lines_alpha_beta":
        return kind, single_task_spec(rng.choice(tasks), rng.choice(grid), rng.choice(grid))
    if kind == "ta_lambda":
        return kind, MergeSpec.make("task_arithmetic", {"coefficients": rng.choice(grid[1:])})
    return kind, MergeSpec.make("task_arithmetic", lines=("auto", rng.choice(grid[1:])))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", action="store_true", help="use the micro zoo (tests' zoo) instead of the demo zoo")
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--subsample", type=int, default=None, help="images per task (default: the whole test split)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kind = "micro" if args.micro else "demo"
    if not is_built(kind):
        print(f"the {kind} zoo is not built; run `python -m core zoo build{' --micro' if args.micro else ''}` first")
        return 1
    ms = load_model_set(kind)
    t = time.perf_counter()
    ev = Evaluator.for_model_set(ms, split="test", subsample=args.subsample, bf16=args.bf16, seed=args.seed)
    live = LiveMerger(ms, ev, eval_spec=EvalSpec(subsample=args.subsample, bf16=args.bf16, seed=args.seed))
    live.reference_rows()
    setup = time.perf_counter() - t
    n_images = sum(len(d.labels) for d in ev.tasks.values())

    t = time.perf_counter()
    for task in ms.tasks:
        live.direction(single_task_spec(task, 0.5))
    live.auto_alpha(MergeSpec.make("task_arithmetic", lines=("auto", 0.5)))
    directions = time.perf_counter() - t
    live.evaluate(MergeSpec.make("task_arithmetic", {"coefficients": 0.123}))  # warm the forward path

    rng = random.Random(args.seed)
    seen: set[str] = set()
    totals, merges, evals, kinds = [], [], [], {}
    while len(totals) < args.moves:
        k, spec = random_move(rng, ms.tasks)
        if spec.key() in seen:
            continue
        seen.add(spec.key())
        t0 = time.perf_counter()
        r = live.evaluate(spec)
        dt = time.perf_counter() - t0
        assert not r["cached"]
        totals.append(dt)
        merges.append(r["merge_seconds"])
        evals.append(r["eval_seconds"])
        kinds.setdefault(k, []).append(dt)

    load = os.getloadavg()
    print(f"live loop on the {kind} zoo: {len(ms.tasks)} tasks, {n_images} test images per evaluation")
    print(
        f"  bf16={args.bf16} subsample={args.subsample} torch threads={torch.get_num_threads()} cpus={os.cpu_count()}"
    )
    print(f"  load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (shared machine: figures are noisy)")
    print(f"  setup (evaluator + references, once): {setup:.2f} s; {len(ms.tasks) + 1} directions: {directions:.2f} s")
    print(f"  {len(totals)} slider moves, spec change -> results (merge + evaluation on all tasks):")
    print(f"    median {statistics.median(totals) * 1e3:.0f} ms   p95 {percentile(totals, 95) * 1e3:.0f} ms   "
          f"min {min(totals) * 1e3:.0f} ms   max {max(totals) * 1e3:.0f} ms")  # fmt: skip
    print(f"    of which merge: median {statistics.median(merges) * 1e3:.0f} ms, "
          f"evaluation: median {statistics.median(evals) * 1e3:.0f} ms")  # fmt: skip
    for k, xs in sorted(kinds.items()):
        print(f"    {k:<17} n={len(xs):>2}  median {statistics.median(xs) * 1e3:.0f} ms")
    ok = statistics.median(totals) <= 1.0
    print(f"  target median <= 1 s: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
