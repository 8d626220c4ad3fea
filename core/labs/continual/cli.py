"""`python -m core continual`: continual learning with adapters on a frozen backbone (NTK-CL terms).

    python -m core continual --zoo demo --tasks digits,letters,arrows,counts,shapes \
        --setting class --terms expansion,ortho,l2 --steps 60 --seeds 0,1,2 [--compare]

Trains the tasks in sequence on the pretrained visual encoder of a built zoo (--zoo) or of any
open_clip CLIP checkpoint (--base), with the chosen NTK-CL terms; prints the accuracy matrix, or
(--compare) baseline, each term alone and all terms over the seeds as a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from core.cli.options import UserError, add_run_options, add_zoo_options, guarded
from core.runtime.threads import torch_threads

from . import compare as compare_mod
from .config import SETTINGS, TERMS, ContinualConfig
from .run import run_continual


def parser() -> argparse.ArgumentParser:
    d = ContinualConfig()
    p = argparse.ArgumentParser(
        prog="python -m core continual",
        description=__doc__.split("\n\n")[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_zoo_options(p)  # the zoo whose pretrained visual encoder is the backbone
    p.add_argument(
        "--base",
        default=None,
        help="any open_clip CLIP checkpoint whose visual tower is the backbone (instead of --zoo)",
    )
    p.add_argument("--tasks", default=",".join(d.tasks), help="comma-separated demo tasks, in training order")
    p.add_argument("--setting", choices=SETTINGS, default=d.setting, help="class- or task-incremental")
    p.add_argument("--terms", default=",".join(TERMS), help="comma-separated subset of expansion,ortho,l2 or 'none'")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per task")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--ortho-weight", type=float, default=d.ortho_weight)
    p.add_argument("--l2-weight", type=float, default=d.l2_weight)
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-test", type=int, default=d.n_test)
    p.add_argument("--ntk-samples", type=int, default=d.ntk_samples)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument(
        "--compare", action="store_true", help="baseline, each term alone and all terms; prints a Markdown table"
    )
    add_run_options(p, threads_default=1)
    return p


def cli_source(zoo: str, cache=None, base: str | None = None):
    """The backbone's source: a checkpoint (`base`) or a built zoo (`zoo`, `cache`); UserError when not built."""
    if base:
        from core.checkpoints import load_state_dict
        from core.models import build_model

        model = build_model(load_state_dict(base))
        model.name = base
        return model
    from core.zoo import is_built, load_model_set, manifest

    try:
        complete = manifest(zoo, cache).get("complete") is True
    except (FileNotFoundError, ValueError):
        complete = False
    if not complete:
        hint = " --micro" if zoo == "micro" else ""
        raise UserError(f"the {zoo} zoo is not built; run `python -m core zoo build{hint}`")
    if not is_built(zoo, cache):
        print(f"note: the {zoo} zoo in the cache was built with an older recipe; using it as it is", file=sys.stderr)
    return load_model_set(zoo, cache)


def config_from_args(args) -> ContinualConfig:
    """The run's config from the parsed flags (every task checked against the demo tasks)."""
    from core.zoo import data as D

    terms = [] if args.terms.strip() in ("", "none") else [t.strip() for t in args.terms.split(",") if t.strip()]
    cfg = ContinualConfig(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        setting=args.setting,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        ortho_weight=args.ortho_weight,
        l2_weight=args.l2_weight,
        lora_rank=args.lora_rank,
        n_train=args.n_train,
        n_test=args.n_test,
        ntk_samples=args.ntk_samples,
    ).with_terms(terms)
    for t in cfg.tasks:
        D.get_task(t)
    return cfg


def run(args) -> int:
    cfg = config_from_args(args)
    source = cli_source(args.zoo, args.cache, args.base)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    log = not args.no_log
    where = args.base or f"the {args.zoo} zoo"
    print(
        f"continual on {where}: {', '.join(cfg.tasks)} ({cfg.setting}-incremental), {cfg.steps} steps/task, "
        f"seeds {seeds}"
    )
    if args.compare:
        t0 = time.perf_counter()
        runs, summary = compare_mod.compare(source, cfg, seeds, run_log=log, progress=print)
        print()
        print(compare_mod.markdown_table(summary))
        print(f"\n{len(runs)} runs in {time.perf_counter() - t0:.0f} s")
        return 0
    for s in seeds:
        r = run_continual(source, dataclasses.replace(cfg, seed=s), run_log=log)
        t = r.timings
        print(
            f"\n{cfg.label()}, seed {s}: average accuracy {r.average_accuracy():.3f}, average forgetting "
            f"{r.average_forgetting():.3f}, {r.seconds:.0f} s (train {t['train']:.0f} s, eval {t['eval']:.0f} s, "
            f"NTK {t['ntk']:.0f} s)" + (f", run {r.run_id}" if r.run_id else "")
        )
        print(r.acc_frame().to_string(float_format=lambda v: f"{v:.3f}", na_rep="·"))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = parser()

    def body() -> int:
        args = p.parse_args(argv)
        torch.set_flush_denormal(True)
        with torch_threads(args.threads):
            return run(args)

    return guarded(body)
