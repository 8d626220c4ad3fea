"""The README results table: zero-shot, individual fine-tuned, and three merge methods with and
without LiNeS, absolute and normalized accuracy on the test split.

Every merge row is a sweep through the CLI's code path (core.cli.commands.run_sweep_config, the same as
`python -m core sweep --config ...`): λ chosen on validation for the plain methods (the method's
registry lambda_grid), LiNeS with α = auto (the multi-task rule) and β chosen on validation
(the method's beta_grid). Validation uses a seeded subsample of each task's val split
(--val-subsample, default 100 images per task) to keep the run to a few minutes on 2 cores;
test uses the full split. Every sweep is stored in the run log.

    python bench/results_table.py                # the default zoo (build it first: python -m core zoo build)
    python bench/results_table.py --zoo demo     # another built zoo
    python bench/results_table.py --micro        # micro zoo (plumbing only: near-chance accuracy)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli.commands import UserError, run_sweep_config  # noqa: E402
from core.cli.options import DEFAULT_ZOO, ZOO_KINDS  # noqa: E402
from core.merging import get_method  # noqa: E402
from core.spec import EvalSpec, MergeSpec, ModelSetRef  # noqa: E402
from core.sweeps import SweepSpec, default_grid  # noqa: E402

METHODS = [
    ("Task arithmetic", "task_arithmetic", {}),
    ("TIES", "ties", {"k": 0.2}),
    ("Consensus (TA, k=2)", "consensus", {"k": 2}),
    ("TSV-M", "tsv_m", {}),
    ("Iso-C", "iso_c", {}),
    ("Iso-CTS", "iso_cts", {}),
    ("CART", "cart", {}),
    ("Breadcrumbs", "breadcrumbs", {}),
    ("MagMax", "magmax", {}),
    ("PCB", "pcb", {}),
]
WITH_LINES = {"task_arithmetic", "ties", "consensus"}  # LiNeS rows as in the paper's table


def sweeps(ref: ModelSetRef, es: EvalSpec):
    """(row label, SweepSpec) for every merge row of the table."""
    for label, method, params in METHODS:
        m = MergeSpec.make(method, params)
        yield label, SweepSpec.make(ref, m, default_grid(method, lines=False), es)
        if method in WITH_LINES:
            yield f"{label} + LiNeS", SweepSpec.make(ref, m, default_grid(method, lines=True), es)


def markdown(rows: list[dict]) -> str:
    out = [
        "| Method | chosen on val | Absolute (test) | Normalized (test) |",
        "|---|---|---:|---:|",
    ]
    for r in rows:
        out.append(f"| {r['method']} | {r['chosen']} | {100 * r['abs']:.1f} | {100 * r['norm']:.1f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro", action="store_true", help="use the micro zoo (fast, plumbing only; = --zoo micro)")
    p.add_argument("--zoo", default=DEFAULT_ZOO, choices=ZOO_KINDS, help=f"which built zoo (default {DEFAULT_ZOO})")
    p.add_argument("--val-subsample", type=int, default=100, help="val images per task (0: the full split)")
    p.add_argument("--processes", type=int, default=None, help="worker processes (default: up to 4; 0: serial)")
    p.add_argument("--per-task", action="store_true", help="also print per-task test accuracy")
    args = p.parse_args(argv)

    kind = "micro" if args.micro else args.zoo
    ref = ModelSetRef(zoo=kind)
    es = EvalSpec(split="val", subsample=args.val_subsample or None, seed=0)
    t0 = time.perf_counter()
    rows, per_task = [], {}
    refs = None
    try:
        for label, spec in sweeps(ref, es):
            t = time.perf_counter()
            res = run_sweep_config(spec, processes=args.processes, quiet=True)
            refs = res.refs_test
            rows.append(
                {"method": label, "chosen": res.best["point"], "abs": res.test["avg_abs"], "norm": res.test["avg_norm"]}
            )
            per_task[label] = res.test["accuracy"]
            n = len(spec.points())
            print(f"  {label:<28} {n:>2} points, {time.perf_counter() - t:6.1f} s, run {res.run_id}", file=sys.stderr)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ft = dict(zip(refs["task"], refs["finetuned"]))
    zs = dict(zip(refs["task"], refs["zero_shot"]))
    head = [
        {"method": "Zero-shot", "chosen": "", "abs": sum(zs.values()) / len(zs)},
        {"method": "Individual (fine-tuned)", "chosen": "", "abs": sum(ft.values()) / len(ft)},
    ]
    head[0]["norm"] = sum(zs[t] / ft[t] for t in zs) / len(zs)
    head[1]["norm"] = 1.0
    print(f"\n{kind} zoo, {len(ft)} tasks; val subsample {es.subsample or 'full'}/task,")
    print(f"test full split; λ grids: {', '.join(f'{m}: {len(get_method(m).lambda_grid)}' for _, m, _ in METHODS)}")
    print(f"points; LiNeS α = auto, β from the method's beta_grid. Total {time.perf_counter() - t0:.0f} s.\n")
    print(markdown(head + rows))
    if args.per_task:
        print("\n| Method | " + " | ".join(ft) + " |\n|---|" + "---:|" * len(ft))
        for name, acc in {"Zero-shot": zs, "Individual": ft, **per_task}.items():
            print(f"| {name} | " + " | ".join(f"{100 * acc[t]:.1f}" for t in ft) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
