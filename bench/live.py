"""Live-loop latency: time from a spec change (a slider move) to updated results.

    PYTHONPATH=. python bench/live.py [--micro] [--moves 30] [--subsample N] [--bf16]

Each move is a random slider position never seen before (so no result-cache hit)
of one of: single-task LiNeS alpha (beta = 1 - alpha), single-task LiNeS with free
beta, the global task-arithmetic lambda, and multi-task TA + LiNeS beta (auto alpha).
A move costs what the page pays: re-apply the cached direction (core.merging.apply_direction)
+ one forward pass over every task's test images. Directions are built once before
timing (that is the cost of choosing a target or a method, not of a slider move) and
reported separately. Target: median <= 1 s on 2 cores.

Without a built demo zoo the bench times a stand-in of the same cost: the demo
architecture (open_clip "mergescope-zoo", random weights, fine-tunes = base + small
noise) evaluated on the demo tasks' real test splits. Its accuracies mean nothing;
its timings are the demo zoo's (same model, same images). It says so when it does.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

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


def demo_standin(out: Path):
    """A ModelSet with the demo zoo's architecture and tasks, random weights (timing only)."""
    from core.checkpoints import save_state_dict
    from core.models import build_model
    from core.modelset import ModelSet
    from core.zoo import RECIPES

    recipe = RECIPES["demo"]
    torch.manual_seed(0)
    base = build_model(arch=recipe.arch).state_dict()
    save_state_dict(base, out / "base.safetensors")
    paths = {}
    for i, task in enumerate(recipe.tasks):
        g = torch.Generator().manual_seed(i)
        ft = {
            k: v + 0.01 * v.std() * torch.randn(v.shape, generator=g)
            for k, v in base.items()
            if k.startswith("visual.")
        }
        paths[task] = out / f"{task}.safetensors"
        save_state_dict(ft, paths[task])
    return ModelSet("demo stand-in", out / "base.safetensors", paths, eval_tasks=list(recipe.tasks))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--micro", action="store_true", help="use the micro zoo (tests' zoo) instead of the demo zoo")
    ap.add_argument("--moves", type=int, default=30)
    ap.add_argument("--subsample", type=int, default=None, help="images per task (default: the whole test split)")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    kind = "micro" if args.micro else "demo"
    tmp = None
    if is_built(kind):
        ms = load_model_set(kind)
    elif kind == "demo":
        tmp = tempfile.TemporaryDirectory(prefix="mergescope-bench-")
        ms = demo_standin(Path(tmp.name))
        kind = "demo STAND-IN (demo zoo not built: demo architecture + demo test images, random weights)"
    else:
        print("the micro zoo is not built; run `python -m core zoo build --micro` first")
        return 1
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
    totals, merges, evals, cpus, kinds = [], [], [], [], {}
    while len(totals) < args.moves:
        k, spec = random_move(rng, ms.tasks)
        if spec.key() in seen:
            continue
        seen.add(spec.key())
        t0, c0 = time.perf_counter(), time.process_time()
        r = live.evaluate(spec)
        dt = time.perf_counter() - t0
        cpus.append(time.process_time() - c0)
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
    print(f"    CPU time per move (all threads; less sensitive to other load): median {statistics.median(cpus) * 1e3:.0f} ms, "
          f"p95 {percentile(cpus, 95) * 1e3:.0f} ms")  # fmt: skip
    for k, xs in sorted(kinds.items()):
        print(f"    {k:<17} n={len(xs):>2}  median {statistics.median(xs) * 1e3:.0f} ms")
    ok = statistics.median(totals) <= 1.0
    print(f"  target median <= 1 s: {'met' if ok else 'NOT met'}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
