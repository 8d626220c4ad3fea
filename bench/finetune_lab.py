"""Fine-tune lab benchmark on the demo zoo: accuracy vs data fraction for uniform lr, TempBalance and
Model Balancing (3 seeds, mean ± std), then the Weight Scope Alignment merge comparison.

    python bench/finetune_lab.py [--quick] [--workers 2] [--zoo micro --cache DIR] [--task T] [--wsa-tasks A,B]
    python bench/finetune_lab.py --zoo styled --task digits_typed --wsa-tasks digits_typed,letters_novel [--grid-steps 300]
    python bench/finetune_lab.py --job-vs-cli [--zoo micro] [--steps 20] [--repeats 2]

It runs the CLI's code path (`python -m core finetune`) with the budget stated below and prints
its Markdown tables. --quick: one seed, two fractions (a smoke run).

--job-vs-cli: one small grid (uniform lr and TempBalance, one fraction, one seed) through the page's
background job (`LabJob`, polled every second with the page's live figures, as its fragment does)
and through the CLI function (`core.labs.finetune.cli.main`), in one process, alternating; prints
both wall times, their ratio and the job's time to its first progress report and first training
step. Without a built zoo of the kind asked for, a micro zoo is built into a temporary cache first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.jobreport import job_row, print_report  # noqa: E402
from core.labs.finetune.cli import main as finetune_main  # noqa: E402
from core.zoo import is_built  # noqa: E402

# The budget: 4 fractions x 3 methods x 3 seeds = 36 fine-tunes of 80 steps x 32 images on one
# thread each, then 4 fine-tunes for WSA.
TASK, FRACTIONS, METHODS, SEEDS, STEPS = "digits", "0.01,0.05,0.2,1.0", "uniform,tempbalance,model_balancing", 3, 80
WSA_TASKS, WSA_WEIGHT, WSA_FRACTION = "colors,shapes", 100.0, 0.2


def job_vs_cli(args) -> int:
    """The same small grid through `LabJob` (polled like the page) and the CLI function, alternating."""
    import pandas as pd

    from core.labs.finetune import cli
    from core.labs.finetune.job import LabJob
    from core.plots import training as P

    cache = args.cache
    if not is_built(args.zoo, cache):
        from core.zoo import build_zoo

        cache = tempfile.mkdtemp(prefix="mergescope-bench-")
        print(f"no {args.zoo} zoo built: building a micro zoo in {cache}", flush=True)
        build_zoo("micro", cache=cache)
        args.zoo = "micro"
    argv = ["--zoo", args.zoo, "--cache", str(cache)] if cache else ["--zoo", args.zoo]
    argv += ["--task", args.task, "--fractions", "0.2", "--methods", "uniform,tempbalance", "--seeds", "1"]
    argv += ["--steps", str(args.steps), "--batch", "16", "--every", "5", "--no-log", "--threads", str(args.threads)]
    parsed = cli.parser().parse_args(argv)
    ms = cli.load_zoo(parsed.zoo, parsed.cache)
    configs = cli.grid_from_args(parsed, ms)
    job_threads = args.job_threads if args.job_threads is not None else args.threads
    print(
        f"{len(configs)} fine-tunes of {args.steps} steps; CLI --threads {args.threads}, "
        f"job threads {job_threads or 'process default'}"
    )
    print("$ python -m core finetune " + " ".join(argv), flush=True)
    from core.labs.finetune.run import finetune

    finetune(ms, dataclasses.replace(configs[0], steps=1), run_log=False)  # warm both paths
    rows = []
    for rep in range(args.repeats):
        for path in ("cli", "job") if rep % 2 == 0 else ("job", "cli"):
            load = os.getloadavg()[0]
            cpu0 = time.process_time()  # this process's CPU seconds (all threads): the work, whatever the load
            if path == "cli":
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    rc = cli.main(argv)
                if rc:
                    print(f"the CLI failed (exit {rc})")
                    return rc
                rows.append(
                    {
                        "path": "cli",
                        "seconds": time.perf_counter() - t0,
                        "cpu": time.process_time() - cpu0,
                        "load": load,
                    }
                )
                continue
            job = LabJob("grid", ms, configs=configs, run_log=False, threads=job_threads or None)
            polls = 0
            while job.running:  # the page's fragment: every second, the live loss and multipliers
                job.join(1.0)
                cur = job.current or {}
                h = pd.DataFrame(list(cur.get("history", [])))  # a snapshot: the job appends while we read
                P.loss_curves({"now": h}).to_json()  # built and sent on every refresh, as the page does
                bal = cur.get("balancer")
                if bal is not None and bal.history:
                    P.current_multipliers(bal.table()).to_json()
                polls += 1
            if job.error:
                print(f"the job failed: {job.error}")
                return 1
            rows.append(job_row(job, cpu0, load, polls))
    print_report(rows)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zoo", default="demo")
    ap.add_argument("--cache", default=None, help="cache directory of the zoo")
    ap.add_argument("--job-vs-cli", action="store_true", help="time one small grid as the page's job and the CLI")
    ap.add_argument("--task", default=TASK, help=f"the task of the fraction grid (default {TASK})")
    ap.add_argument(
        "--grid-steps", type=int, default=STEPS, help=f"steps per fine-tune of the grid and WSA (default {STEPS})"
    )
    ap.add_argument("--wsa-tasks", default=WSA_TASKS, help=f"the two tasks of the WSA merge (default {WSA_TASKS})")
    ap.add_argument("--steps", type=int, default=20, help="--job-vs-cli: steps per fine-tune")
    ap.add_argument("--repeats", type=int, default=2, help="--job-vs-cli: runs per path (alternating order)")
    ap.add_argument("--threads", type=int, default=1, help="--job-vs-cli: the CLI's --threads")
    ap.add_argument(
        "--job-threads",
        type=int,
        default=None,
        help="--job-vs-cli: the job's threads (default --threads; 0: the process default)",
    )
    args = ap.parse_args()
    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    if args.job_vs_cli:
        return job_vs_cli(args)
    if not is_built(args.zoo, args.cache):
        print(f"the {args.zoo} zoo is not built: run `python -m core zoo build` first (skipped)")
        return 0
    seeds, fractions = (1, "0.05,1.0") if args.quick else (SEEDS, FRACTIONS)
    t0 = time.perf_counter()
    where = ["--zoo", args.zoo] + (["--cache", args.cache] if args.cache else [])
    grid = [
        *where,
        "--task",
        args.task,
        "--fractions",
        fractions,
        "--methods",
        METHODS,
        "--seeds",
        str(seeds),
        "--steps",
        str(args.grid_steps),
        "--workers",
        str(args.workers),
    ]
    print("$ python -m core finetune " + " ".join(grid) + "\n", flush=True)
    rc = finetune_main(grid)
    wsa = [
        *where,
        "--wsa",
        "--tasks",
        args.wsa_tasks,
        "--weight",
        str(WSA_WEIGHT),
        "--fraction",
        str(WSA_FRACTION),
        "--steps",
        str(args.grid_steps),
    ]
    print("\n$ python -m core finetune " + " ".join(wsa) + "\n", flush=True)
    rc = rc or finetune_main(wsa)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
