"""Continual lab (NTK-CL): cost of a run, and the comparison table of the issue.

1. Cost on the demo architecture (random weights, no zoo needed), one thread: seconds per
   training step (batch 32) for the baseline and with every term, the evaluation throughput,
   the NTK per stage, and the projected wall time of the default 5-task run. The machine's load
   average is printed next to it: on a shared machine every number scales with it.
2. With a backbone (--zoo demo when built, or --base CHECKPOINT): baseline, each term alone and
   all terms over seeds, each seed in its own single-thread process (--parallel), printed as
   the Markdown table of `python -m core continual --compare` plus the measured wall time of
   every run. Runs are logged (kind "continual") unless --no-log.

3. --job-vs-cli: the same small config (default 2 tasks x 20 steps, 100 images per task) through
   the page's background job (`ContinualJob`, polled every second with the page's live figure, as
   the page's fragment does) and through the CLI function (`core.labs.continual.cli.main`), in one
   process, alternating; prints both wall times, their ratio, and the job's time to its first
   progress report and to its first training step. Without a built zoo the backbone is the
   shipped demo base (core/assets/zoo-base).

    python bench/continual.py [--zoo demo | --base PATH] [--seeds 0,1,2] [--steps 60]
                              [--parallel 3] [--skip-cost] [--ntk-samples 0]
    python bench/continual.py --job-vs-cli [--steps 20] [--repeats 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.jobreport import job_row, print_report  # noqa: E402


def step_cost(reps: int = 3) -> dict:
    import torch
    import torch.nn.functional as F

    from core.labs.continual import config as CC
    from core.labs.continual import diagnostics as CD
    from core.labs.continual import model as CM
    from core.labs.continual import terms as CT
    from core.models import build_model

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    visual = build_model(arch="mergescope-zoo").visual
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    out = {}
    for name, terms in (("baseline", ()), ("all terms", CC.TERMS)):
        cfg = CC.ContinualConfig().with_terms(terms)
        model = CM.ContinualModel(visual, cfg)
        if cfg.ortho:  # a non-empty past-prototype span, as from the second task on
            model.add_prototypes(torch.randn(20, model.n_sections, model.backbone.out_dim), torch.arange(20) % 10, 10)
        head = CM.CosineHead(model.n_sections * model.backbone.out_dim, 10, 10.0, torch.Generator())
        opt = torch.optim.AdamW([*model.trainable().values(), *head.parameters()], 1e-3)
        t0 = time.perf_counter()
        for _ in range(reps):
            feats = model.features(x)
            loss = sum(F.cross_entropy(head(f.flatten(1)), y) for f in feats.values())
            if cfg.ortho:
                loss = loss + CT.orthogonality_loss(feats[model.feature_key][:, -1], model.basis)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"step {name}"] = (time.perf_counter() - t0) / reps
        t0 = time.perf_counter()
        model.classifier_features(torch.randn(250, 3, 32, 32))
        out[f"eval 250 images {name}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        CD.empirical_ntk(
            model, model.trainable(), torch.randn(32, 3, 32, 32), torch.linalg.qr(torch.randn(visual.output_dim, 4))[0]
        )
        out[f"NTK 32 samples {name}"] = time.perf_counter() - t0
    d = CC.ContinualConfig()
    n_tasks = len(d.tasks)
    for name in ("baseline", "all terms"):
        train = n_tasks * d.steps * out[f"step {name}"]
        evals = (n_tasks * d.n_train + d.n_test * n_tasks * (n_tasks + 1) / 2) / 250 * out[f"eval 250 images {name}"]
        ntk = (n_tasks + 1) * n_tasks * d.ntk_samples / 32 * out[f"NTK 32 samples {name}"]
        out[f"projected 5-task run {name}"] = train + evals + ntk
    return out


def _one(job: tuple) -> dict:
    source_kw, cfg_dict, log = job
    import torch

    from core.labs.continual.config import ContinualConfig
    from core.labs.continual.run import run_continual

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    cfg = ContinualConfig.from_dict(cfg_dict)
    r = run_continual(_source(**source_kw), cfg, run_log=True if log else False)
    return {
        "avg_acc": r.average_accuracy(),
        "avg_forgetting": r.average_forgetting(),
        "seconds": r.seconds,
        "run_id": r.run_id,
        "timings": r.timings,
        "acc": r.acc.tolist(),
    }


def _source(zoo: str | None = None, cache: str | None = None, base: str | None = None):
    if base:
        from core.checkpoints import load_state_dict
        from core.models import build_model

        m = build_model(load_state_dict(base))
        m.name = base
        return m
    from core.zoo import load_model_set

    return load_model_set(zoo, cache)


SHIPPED_BASE = ROOT / "core" / "assets" / "zoo-base" / "base.safetensors"


def job_vs_cli(args) -> int:
    """The same small config through `ContinualJob` (polled like the page) and the CLI function, alternating."""
    import numpy as np
    import pandas as pd

    from core.labs.continual import cli
    from core.labs.continual.job import ContinualJob
    from core.plots import continual as P

    where = (
        ["--base", args.base] if args.base else ["--zoo", args.zoo] + (["--cache", args.cache] if args.cache else [])
    )
    if not args.base:
        from core.zoo import manifest

        try:
            manifest(args.zoo, args.cache)
        except FileNotFoundError:
            print(f"no {args.zoo} zoo built: the backbone is the shipped demo base {SHIPPED_BASE.name}")
            where = ["--base", str(SHIPPED_BASE)]
    argv = [*where, "--tasks", args.tasks or "digits,arrows", "--steps", str(args.steps or 20)]
    argv += ["--n-train", str(args.n_train or 100), "--n-test", str(args.n_test or 100)]
    argv += ["--ntk-samples", str(8 if args.ntk_samples is None else args.ntk_samples), "--seeds", "0", "--no-log"]
    argv += ["--threads", str(args.threads)]
    parsed = cli.parser().parse_args(argv)
    cfg = cli.config_from_args(parsed)
    source = cli.cli_source(parsed.zoo, parsed.cache, parsed.base)
    job_threads = args.job_threads if args.job_threads is not None else args.threads
    print(
        f"config: {', '.join(cfg.tasks)}, {cfg.steps} steps/task, batch {cfg.batch}, {cfg.n_train} train images, "
        f"NTK probe {cfg.ntk_samples}; CLI --threads {args.threads}, job threads {job_threads or 'process default'}"
    )
    print("$ python -m core continual " + " ".join(argv))
    warm = dataclasses.replace(cfg, steps=1, ntk_samples=0)  # imports, data and backbone caches for both paths
    from core.labs.continual.run import run_continual

    run_continual(source, warm, run_log=False)
    rows = []
    for rep in range(args.repeats):
        for path in ("cli", "job") if rep % 2 == 0 else ("job", "cli"):
            load = os.getloadavg()[0]
            cpu0 = time.process_time()  # this process's CPU seconds (all threads): the work, whatever the load
            if path == "cli":
                t0 = time.perf_counter()
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    rc = cli.main(argv)
                if rc:
                    print(out.getvalue())
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
            job = ContinualJob(source, cfg, run_log=False, threads=job_threads or None)
            polls, stamp = 0, None
            while job.running:  # the page's fragment: every second; the live heatmap when a task is done
                job.join(1.0)
                if stamp != int(np.isfinite(job.acc).sum()):
                    stamp = int(np.isfinite(job.acc).sum())
                    cols = [f"after {t}" for t in cfg.tasks]
                    fig = P.accuracy_heatmap(pd.DataFrame(job.acc, index=list(cfg.tasks), columns=cols), "so far")
                fig.to_json()  # what st.plotly_chart sends on every refresh
                polls += 1
            if job.error:
                print(f"the job failed: {job.error}")
                return 1
            rows.append(job_row(job, cpu0, load, polls))
    print_report(rows)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="demo")
    p.add_argument("--cache", default=None)
    p.add_argument("--base", default=None, help="open_clip checkpoint whose visual tower is the backbone")
    p.add_argument("--tasks", default=None)
    p.add_argument("--setting", default="class")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--l2-weight", type=float, default=None)
    p.add_argument("--ortho-weight", type=float, default=None)
    p.add_argument("--ntk-samples", type=int, default=None)
    p.add_argument("--parallel", type=int, default=1, help="processes (one thread each)")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--no-log", action="store_true")
    p.add_argument("--job-vs-cli", action="store_true", help="time one small config as the page's job and the CLI")
    p.add_argument("--repeats", type=int, default=2, help="--job-vs-cli: runs per path (alternating order)")
    p.add_argument("--threads", type=int, default=1, help="--job-vs-cli: the CLI's --threads")
    p.add_argument(
        "--job-threads",
        type=int,
        default=None,
        help="--job-vs-cli: the job's threads (default --threads; 0: the "
        "process default, as the job had before it used the CLI's setting)",
    )
    args = p.parse_args()

    print(f"load average: {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    if args.job_vs_cli:
        return job_vs_cli(args)

    import pandas as pd

    from core.labs.continual import compare as CP
    from core.labs.continual.config import ContinualConfig

    if not args.skip_cost:
        for k, v in step_cost().items():
            print(f"  {k:<34} {v:7.2f} s")
    if not args.base:
        from core.zoo import manifest

        try:
            manifest(args.zoo, args.cache)
        except FileNotFoundError:
            print(f"no {args.zoo} zoo built: skipping the comparison (or pass --base CHECKPOINT)")
            return 0
    cfg = ContinualConfig(setting=args.setting)
    over = {
        "steps": args.steps,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "batch": args.batch,
        "lr": args.lr,
        "l2_weight": args.l2_weight,
        "ortho_weight": args.ortho_weight,
        "ntk_samples": args.ntk_samples,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in over.items() if v is not None})
    if args.tasks:
        cfg = dataclasses.replace(cfg, tasks=tuple(args.tasks.split(",")))
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs, keys = [], []
    for name, terms in CP.VARIANTS.items():
        for s in seeds:
            c = dataclasses.replace(cfg.with_terms(terms), seed=s)
            jobs.append(({"zoo": args.zoo, "cache": args.cache, "base": args.base}, c.to_dict(), not args.no_log))
            keys.append((name, s))
    print(
        f"{len(jobs)} runs: {', '.join(cfg.tasks)} ({cfg.setting}-incremental), {cfg.steps} steps/task, seeds {seeds}"
    )
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as ex:
        results = list(ex.map(_one, jobs))
    rows = []
    for (name, s), r in zip(keys, results):
        rows.append(
            {"variant": name, "seed": s, **{k: r[k] for k in ("avg_acc", "avg_forgetting", "seconds", "run_id")}}
        )
        print(
            f"  {name:<30} seed {s}: acc {r['avg_acc']:.3f}  forgetting {r['avg_forgetting']:.3f}  {r['seconds']:.0f} s"
            f"  (train {r['timings']['train']:.0f}, eval {r['timings']['eval']:.0f}, NTK {r['timings']['ntk']:.0f})"
        )
    runs = pd.DataFrame(rows)
    summary = CP.summarize(runs)
    print()
    print(CP.markdown_table(summary))
    print(
        f"\n{len(jobs)} runs in {time.perf_counter() - t0:.0f} s wall ({args.parallel} processes); "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    base = summary.loc["baseline", "avg_forgetting_mean"]
    better = [n for n in summary.index if n != "baseline" and summary.loc[n, "avg_forgetting_mean"] < base]
    print(f"variants forgetting less than the baseline: {better or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
