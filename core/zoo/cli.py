"""`python -m core zoo build|pretrain|info`: build, pretrain or inspect a zoo (default: `DEFAULT_ZOO`, styled).

    python -m core zoo build [--micro | --zoo demo|styled|micro] [--force] [--cache DIR] [--set key=value ...]
    python -m core zoo pretrain [--out DIR] [--set key=value ...]
    python -m core zoo info [--micro | --zoo demo|styled|micro] [--cache DIR]

`--set` overrides recipe fields for experiments (the build's recipe hash changes with them, so
such a build is never mistaken for the default one). `pretrain` remakes the shipped base
(core/assets/zoo-base by default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..cli.options import DEFAULT_ZOO, UserError, add_zoo_options, guarded
from ..runtime.threads import auto_threads
from .build import build_command, build_zoo, is_built, manifest, zoo_path
from .recipe import RECIPES, recipe_for
from .shipped import ASSETS, write_shipped_base


class TqdmProgress:
    """progress(stage, done, total) drawing one tqdm bar per stage (on stderr)."""

    def __init__(self):
        self.stage, self.bar = None, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            unit = "step" if stage in ("pretrain", "finetune") else "it"
            self.stage, self.bar = stage, tqdm(total=total, desc=f"{stage:<9}", unit=unit, file=sys.stderr)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def overrides(pairs: list[str] | None) -> dict:
    """["key=value", ...] -> {key: value} (values stay strings; `recipe_for` types them)."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise UserError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _kind(args) -> str:
    if args.micro and args.zoo not in (None, "micro"):
        raise UserError(f"--micro contradicts --zoo {args.zoo}")
    return "micro" if args.micro else (args.zoo or DEFAULT_ZOO)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m core zoo", description="Build or inspect a zoo.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the zoo into the cache (reused when already built)")
    b.add_argument("--micro", action="store_true", help="the tiny zoo used by the tests (= --zoo micro)")
    add_zoo_options(b, default=None)
    b.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields (experiments)")
    p = sub.add_parser("pretrain", help="pretrain the demo base and write it (fp16) with recipe and sha256")
    p.add_argument("--out", default=str(ASSETS), help=f"output folder (default {ASSETS})")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override recipe fields")
    i = sub.add_parser("info", help="print the manifest summary")
    i.add_argument("--micro", action="store_true", help="the micro zoo (= --zoo micro)")
    add_zoo_options(i, default=None)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    return guarded(lambda: run(ap.parse_args(argv)))


def run(args) -> int:
    if args.cmd == "build":
        kind = _kind(args)
        recipe = recipe_for(kind, overrides(args.set))
        if not args.force and recipe == RECIPES[kind] and is_built(kind, args.cache):
            print(f"{kind} zoo already built at {zoo_path(kind, args.cache)} (use --force to rebuild)")
        else:
            bar = TqdmProgress()
            try:
                path = build_zoo(kind, bar, force=True, cache=args.cache, recipe=recipe)
            finally:
                bar.close()
            print(f"built {kind} zoo at {path}")
            print_summary(json.loads((path / "manifest.json").read_text()))
        if recipe == RECIPES[kind]:
            lesson(kind, args.cache)
        return 0
    if args.cmd == "pretrain":
        from ..models import build_model
        from .pretrain import head_diagnostics, pretrain

        recipe = recipe_for("demo", overrides(args.set))
        torch.set_num_threads(auto_threads())
        torch.set_flush_denormal(True)
        bar = TqdmProgress()
        try:
            sd, stats = pretrain(recipe, bar)
        finally:
            bar.close()
        stats["head_max_cosine"] = head_diagnostics(build_model(sd), recipe.tasks)
        f = write_shipped_base(sd, recipe, stats, Path(args.out))
        print(f"wrote {f} ({f.stat().st_size / 1e6:.1f} MB); {json.dumps(stats)}")
        return 0
    # info
    kind = _kind(args)
    try:
        man = manifest(kind, args.cache)
    except FileNotFoundError:
        print(f"no {kind} zoo in {zoo_path(kind, args.cache)}; run `{build_command(kind)}`")
        return 1
    current = "yes" if is_built(kind, args.cache) else "NO, rebuild"
    print(f"{kind} zoo at {zoo_path(kind, args.cache)} (current recipe: {current})")
    print_summary(man)
    return 0


def lesson(kind: str, cache) -> None:
    """Measure (once, then read from disk) the two lessons the pages open on: which task shows the LiNeS
    effect best (the LiNeS page's target) and each merge method's λ on validation (the Merge lab's start)."""
    from ..analysis_cache import AnalysisCache
    from ..live import LiveMerger
    from ..live_report import cached_lines_lesson, cached_merge_lesson
    from . import load_model_set

    ms = load_model_set(kind, cache=cache)
    # into the analysis cache of the zoo's own cache folder: an app served with MERGESCOPE_CACHE=<cache> reads them
    store = AnalysisCache(None if cache is None else Path(cache) / "analysis")
    live = None

    def get(cached, label: str) -> dict:
        nonlocal live
        found = cached(ms, compute=False, cache=store)
        if found is not None:
            return found
        live = live or LiveMerger(ms)
        bar = TqdmProgress()
        try:
            return cached(ms, live, cache=store, progress=lambda i, n, _: bar(label, i, n))
        finally:
            bar.close()

    les = get(cached_lines_lesson, "LiNeS lesson: LiNeS vs uniform on val")
    adv = ", ".join(f"{t} {a:+.3f}" for t, a in sorted(les["advantage"].items(), key=lambda kv: -kv[1]))
    print(
        f"LiNeS lesson: default target {les['target']} (score LiNeS - uniform on val, mean over α {les['alphas']}: {adv})"
    )
    mles = get(cached_merge_lesson, "Merge lesson: each method's λ on val")
    chosen = ", ".join(f"{m} λ {lam} ({100 * mles['normalized'][m]:.1f})" for m, lam in mles["lambda"].items())
    print(f"Merge lesson (λ chosen on val, normalized accuracy %): {chosen}")


def print_summary(man: dict) -> None:
    """Mean and per-task accuracies of a manifest, and its timings."""
    for split in ("val", "test"):
        a = man["accuracy"][split]
        print(
            f"[{split}] zero-shot {a['mean_zero_shot']:.3f}  fine-tuned {a['mean_finetuned']:.3f}  "
            f"forgetting {a['mean_forgetting']:.3f}"
        )
    a = man["accuracy"]["test"]
    w = max(10, *(len(t) for t in man["tasks"]))
    print(f"{'task':<{w}} {'zero-shot':>9} {'fine-tuned':>10} {'control':>8} {'head cos':>8}")
    for t in man["tasks"]:
        print(
            f"{t:<{w}} {a['zero_shot'][t]:>9.3f} {a['finetuned'][t]:>10.3f} {a['control'][t]['control']:>8.3f} "
            f"{man['head_max_cosine'][t]:>8.3f}"
        )
    print("timings (s):", man["timings_seconds"])
