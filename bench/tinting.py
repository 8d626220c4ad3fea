"""Model Tinting / layer-wise AdaMerging speed (and, with a built demo zoo, the issue's accuracy check).

1. Step cost on a demo-sized synthetic set (the zoo's architecture, random weights, 8 tasks
   = base + noise, no zoo needed): per task step, the time to rebuild the merged parameters
   from λ, the forward pass, the backward pass and the Adam step, at 1 and 2 threads, and the
   projected wall time of the default run (100 steps x 8 tasks).
2. With the demo zoo built (or --cache DIR holding one): `python -m core tint` with the
   defaults, 3 seeds, Tinting with and without the filter and AdaMerging - the comparison table,
   the wall time per run, and the issue's targets (Tinting > TA+LiNeS; within 3 normalized points
   of the individual fine-tuned models; <= 3 min per run on 2 cores).
3. --job-vs-cli: the same config through `TintJob` (what the page starts) and through the CLI's
   per-run function (`core.labs.tinting.cli.run_item`, with the CLI's thread setting), in one
   process: wall time of each, their ratio (target <= 1.3) and the time to the first progress
   report (target <= 2 s). --poll emulates the page polling the job every second (its two figures,
   rebuilt when there are new rows); --job-threads N also runs the job at N threads (the old behaviour: the job
   inherited the server's torch setting, 2 threads on this machine).

    python bench/tinting.py [--zoo styled|demo] [--steps 100] [--seeds 0,1,2] [--cache DIR] [--skip-zoo]
    python bench/tinting.py --job-vs-cli [--zoo demo|micro] [--cache DIR] [--steps 20] [--poll] [--job-threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.cli.options import DEFAULT_ZOO, ZOO_KINDS  # noqa: E402


def step_cost(threads: int, tasks: int = 8, batch: int = 32, reps: int = 3) -> dict:
    import torch
    import torch.nn.functional as F

    from core.labs.tinting.model import TintedMerge, pseudo_label_loss
    from core.models import ZOO_CONFIGS, build_model

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    base = {k: v.detach().clone() for k, v in build_model(arch="mergescope-zoo").state_dict().items()}
    fts = {
        f"task{i}": {k: v + 0.01 * torch.randn_like(v) for k, v in base.items() if k.startswith("visual.")}
        for i in range(tasks)
    }
    dim = ZOO_CONFIGS["mergescope-zoo"]["embed_dim"]
    heads = {t: F.normalize(torch.randn(8, dim), dim=-1) * 100 for t in fts}
    m = TintedMerge(base, fts, heads)
    opt = torch.optim.Adam([p for _, p in m.named_trainable()], lr=1e-2)
    x = torch.randn(batch, 3, 32, 32)
    y, c = torch.randint(0, 8, (batch,)), torch.rand(batch)
    parts = {"merge": 0.0, "forward": 0.0, "backward": 0.0, "adam": 0.0}
    n = 0
    for rep in range(reps + 1):
        for t in fts:
            t0 = time.perf_counter()
            merged = m.merged_params()
            t1 = time.perf_counter()
            loss, _ = pseudo_label_loss(m(x, t, merged), y, c)
            t2 = time.perf_counter()
            opt.zero_grad()
            loss.backward()
            t3 = time.perf_counter()
            opt.step()
            t4 = time.perf_counter()
            if rep > 0:  # the first pass warms up
                for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    parts[k] += v
                n += 1
    per = {k: v / n for k, v in parts.items()}
    per["task step"] = sum(per.values())
    per["default run (100 x 8)"] = per["task step"] * 100 * tasks
    return per


# --------------------------------------------------------------------------- job vs CLI
def _poller(job, stop: threading.Event) -> threading.Thread:
    """What the page's live panel does every second while a job runs: rebuild its two figures when the
    job has new rows, and serialize them (Streamlit sends every element again on each fragment rerun)."""
    import pandas as pd

    from core.plots.tinting import accuracy_curves, training_curves

    def loop():
        key, figs = None, ()
        while not stop.wait(1.0):
            now = (id(job.rows), len(job.rows), len(job.evals))
            if now != key:
                key = now
                figs = (training_curves(pd.DataFrame(list(job.rows))), accuracy_curves(pd.DataFrame(list(job.evals))))
            for f in figs:
                f.to_json()

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return th


def time_job(ms, cfg, threads: int | None, poll: bool) -> dict:
    from core.labs.tinting.job import TintJob

    t0 = time.perf_counter()
    first_step: dict = {}

    class TimedJob(TintJob):  # notes the first finished step from the worker thread (no extra polling thread)
        def _progress(self, step, total, row):
            if "loss" in row:
                first_step.setdefault("t", time.perf_counter() - t0)
            super()._progress(step, total, row)

    job = TimedJob(ms, cfg, threads=threads, run_log=False)
    stop = threading.Event()
    if poll:
        _poller(job, stop)
    job.join()
    stop.set()
    if job.error:
        raise RuntimeError(job.error)
    return {
        "seconds": time.perf_counter() - t0,
        "first": job.first_progress,
        "first_step": first_step.get("t"),
        "threads": job.threads,
    }


def time_cli(zoo: str, cache, cfg) -> dict:
    from core.labs.tinting import cli
    from core.runtime.threads import auto_threads, torch_threads

    cli.clear_prepared()  # the images and pseudo-labels are prepared again, as in the job
    seen: dict = {}
    t0 = time.perf_counter()

    def progress(step, total, row):
        seen.setdefault("first", time.perf_counter() - t0)
        if "loss" in row:
            seen.setdefault("first_step", time.perf_counter() - t0)

    threads = auto_threads()
    with torch_threads(threads):
        cli.run_item({"zoo": zoo, "cache": cache, "config": cfg.to_dict(), "log": False}, progress=progress)
    return {
        "seconds": time.perf_counter() - t0,
        "first": seen.get("first"),
        "first_step": seen.get("first_step"),
        "threads": threads,
    }


def job_vs_cli(args) -> int:
    import numpy as np
    import torch

    from core.labs.tinting import cli
    from core.labs.tinting.config import TintConfig
    from core.labs.tinting.data import evaluator
    from core.zoo import is_built

    if not is_built(args.zoo, args.cache):
        print(f"the {args.zoo} zoo is not built (python -m core zoo build{' --micro' if args.zoo == 'micro' else ''})")
        return 1
    torch.set_flush_denormal(True)
    ms = cli.model_set(args.zoo, args.cache)  # the same model set object for both paths
    evaluator(ms, "test")  # the images, loaded once for both (the page has them from earlier rooms too)
    cfg = TintConfig(steps=args.steps, eval_every=max(1, args.steps // 4), method=args.method)
    print(f"\n## {cfg.label()}, {args.steps} steps on the {args.zoo} zoo: TintJob (page) vs run_item (CLI)\n")
    print(f"load average before: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cpus")
    rows = []
    job_name = "TintJob" + (" + page polling" if args.poll else "")
    for rep in range(args.reps):  # alternate the order: the load of a shared machine drifts
        pair = [
            ("CLI run_item", lambda: time_cli(args.zoo, args.cache, cfg)),
            (job_name, lambda: time_job(ms, cfg, None, args.poll)),
        ]
        for name, fn in pair if rep % 2 == 0 else pair[::-1]:
            rows.append((name, fn()))
        if args.job_threads:
            rows.append((f"TintJob, {args.job_threads} threads", time_job(ms, cfg, args.job_threads, args.poll)))
    print("| path | threads | wall s | first progress s | first step s |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        fs = f"{r['first_step']:.2f}" if r["first_step"] is not None else "-"
        print(f"| {name} | {r['threads']} | {r['seconds']:.2f} | {r['first']:.2f} | {fs} |")
    cli_s = sorted(r["seconds"] for n, r in rows if n == "CLI run_item")
    job_s = sorted(r["seconds"] for n, r in rows if n.startswith("TintJob") and "threads" not in n)
    ratio = float(np.median(job_s) / np.median(cli_s))
    first = max(r["first"] for n, r in rows if n.startswith("TintJob") and "threads" not in n)
    print(
        f"\njob / CLI wall-time ratio (medians): {ratio:.2f} (target <= 1.3); "
        f"job's first progress: {first:.2f} s at worst (target <= 2 s)"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0 if ratio <= 1.3 and first <= 2.0 else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="default: 100 (zoo check), 20 (--job-vs-cli)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--zoo", default=DEFAULT_ZOO, choices=ZOO_KINDS, help=f"which built zoo (default {DEFAULT_ZOO})")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--skip-zoo", action="store_true")
    ap.add_argument("--job-vs-cli", action="store_true", help="time TintJob against the CLI's run function")
    ap.add_argument("--method", default="tinting", choices=("tinting", "adamerging"), help="for --job-vs-cli")
    ap.add_argument("--reps", type=int, default=1, help="--job-vs-cli repetitions (medians are compared)")
    ap.add_argument("--poll", action="store_true", help="--job-vs-cli: emulate the page polling the job")
    ap.add_argument("--job-threads", type=int, default=None, help="--job-vs-cli: also run the job at N threads")
    args = ap.parse_args()
    if args.job_vs_cli:
        args.steps = args.steps or 20
        return job_vs_cli(args)
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus (timings scale with it)")
    print("\n## Step cost, demo-sized synthetic set (seconds)\n")
    print("| threads | merge λ | forward | backward | Adam | task step | default run (100 x 8) |")
    print("|---|---|---|---|---|---|---|")
    for threads in (1, 2):
        c = step_cost(threads)
        print(f"| {threads} | " + " | ".join(f"{v:.3f}" for v in c.values()) + " |")
    if args.skip_zoo:
        return 0
    from core.zoo import is_built

    if not is_built(args.zoo, args.cache):
        from core.zoo.build import build_command

        print(f"\nThe {args.zoo} zoo is not built: skipping the accuracy check ({build_command(args.zoo)}).")
        return 0
    from core.labs.tinting.cli import main as tint_main

    steps = str(args.steps or 100)
    argv = ["--zoo", args.zoo, "--steps", steps, "--seeds", args.seeds, "--both", "--method", "both", "--no-log"]
    if args.cache:
        argv += ["--cache", args.cache]
    print(f"\n## python -m core tint {' '.join(argv)}\n")
    return tint_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
