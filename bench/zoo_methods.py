"""Does the demo zoo separate the merge methods? One row of docs/methods/zoo.md's "what was tried" table.

    python bench/zoo_methods.py --cache DIR [--zoo demo|styled] [--n-test 2000] [--n-val 500]
    python bench/zoo_methods.py --aggregate A/methods.json B/methods.json C/methods.json
    python bench/zoo_methods.py --competing-probe [--zoo demo] [--n-test 400]

On a built zoo (in DIR, e.g. a MERGESCOPE_CACHE of one experiment) it reports, on fresh draws of
`--n-test` test images per task (hyperparameters chosen on `--n-val` val images per task, average
normalized accuracy, `core.select.normalized_accuracy`):

- zero-shot, fine-tuned (each model on its own task), task arithmetic (lambda on val), TA + LiNeS
  (multi-task alpha rule, beta on val), and TSV-M (`core.merging` tsv_m at sv_reduction 1/T, alpha on val);
- paired standard errors of the differences that the goals are about (same images for both methods);
- the relative task-vector norm per visual block, ||tau|| / ||theta_0||.

Results are printed and stored as JSON (``--out``, default ``<DIR>/zoo-<kind>/methods.json``).
``--aggregate`` reads several such files (e.g. builds with ``--set ft_seed=1``, ``2``: fine-tuning seeds
over the one shipped base) and prints each figure's mean ± standard deviation over them. ``--competing-probe`` asks the style-shifted tasks' own scenes other questions in words pretraining
knows (colour, position) and prints the base's zero-shot accuracy on each (lever 2 of docs/methods/zoo.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli.options import ZOO_KINDS  # noqa: E402
from core.evaluate import Evaluator  # noqa: E402
from core.merging import apply_direction, merged_direction  # noqa: E402
from core.task_vectors import task_vector  # noqa: E402
from core.zoo import load_model_set, manifest  # noqa: E402
from core.zoo.data import get_task, load_split  # noqa: E402

# Grids wide enough that the chosen value is interior on every zoo tried (a choice on a grid's edge is
# reported as such): strongly interfering zoos need lambda well under 0.1.
LAMBDAS = [0.02, 0.04, 0.06, 0.08] + [round(0.1 * i, 1) for i in range(1, 11)]
BETAS = [round(0.1 * i, 1) for i in range(0, 11)]
TSV_ALPHAS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]


def _correct(ev: Evaluator, sd) -> dict[str, np.ndarray]:
    return {t: (lg.argmax(1) == ev.tasks[t].labels).numpy() for t, lg in ev.logits(sd).items()}


def _norm_acc(c: dict[str, np.ndarray], ft: dict[str, float]) -> float:
    return float(np.mean([c[t].mean() / ft[t] for t in c]))


def _abs(c: dict[str, np.ndarray]) -> float:
    return float(np.mean([c[t].mean() for t in c]))


def paired_se(a: dict[str, np.ndarray], b: dict[str, np.ndarray], ft: dict[str, float] | None = None) -> float:
    """Standard error of the difference of task-averaged accuracies of two methods on the same images
    (normalized by the fine-tuned accuracies when `ft` is given)."""
    var = 0.0
    for t in a:
        d = a[t].astype(float) - b[t].astype(float)
        if ft:
            d = d / ft[t]
        var += d.var(ddof=1) / len(d)
    return float(np.sqrt(var) / len(a))


def _evaluator(ms, split: str, n: int) -> Evaluator:
    tasks = {}
    for t in ms.eval_tasks:
        x, y = load_split(t, split, n=n)
        tasks[t] = (x, y, get_task(t))
    return Evaluator(ms.base(), tasks)


def run(cache: str, n_val: int, n_test: int, kind: str = "demo") -> dict:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.set_flush_denormal(True)
    ms = load_model_set(kind, cache)
    tasks = ms.tasks
    base = {k: v for k, v in ms.base().items() if k.startswith("visual.")}
    fts = ms.finetuned_all()
    tvs = {t: task_vector(base, fts[t]) for t in tasks}
    val, test = _evaluator(ms, "val", n_val), _evaluator(ms, "test", n_test)

    def both(sd):
        return _correct(val, sd), _correct(test, sd)

    zs_v, zs_t = both(None)
    ft_v = {t: float(_correct(val, fts[t])[t].mean()) for t in tasks}
    ft_c = {}
    for t in tasks:
        ft_c[t] = test.logits(fts[t], [t])[t].argmax(1).eq(test.tasks[t].labels).numpy()
    ft_t = {t: float(ft_c[t].mean()) for t in tasks}

    def pick(grid, make):
        curve = {g: _norm_acc(_correct(val, make(g)), ft_v) for g in grid}
        best = max(curve, key=curve.get)
        return best, curve, _correct(test, make(best))

    direction = merged_direction(base, fts, "task_arithmetic", coefficients=1.0)
    lam, ta_curve, ta = pick(LAMBDAS, lambda g: apply_direction(base, direction, scale=g))
    beta, li_curve, li = pick(BETAS, lambda g: apply_direction(base, direction, lines=("auto", g)))
    tsv_dir = merged_direction(base, fts, "tsv_m", coefficients=1.0)  # the library's TSV-M (sv_reduction 1/T)
    alpha, tsv_curve, tsv = pick(TSV_ALPHAS, lambda g: apply_direction(base, tsv_dir, scale=g))

    blocks = 1 + max(int(k.split("resblocks.")[1].split(".")[0]) for k in base if "resblocks." in k)

    def block_norm(sd, i):
        return sum(float(v.norm() ** 2) for k, v in sd.items() if f"resblocks.{i}." in k) ** 0.5

    rel = [float(np.mean([block_norm(tvs[t], i) / block_norm(base, i) for t in tasks])) for i in range(blocks)]
    row = {
        "tasks": tasks,
        "n_val": n_val,
        "n_test": n_test,
        "zoo": kind,
        "recipe_hash": manifest(kind, cache)["recipe_hash"],
        "build_seconds": manifest(kind, cache).get("timings_seconds", {}).get("total"),
        "per_task": {
            t: {
                "zero_shot": float(zs_t[t].mean()),
                "finetuned": ft_t[t],
                "ta": float(ta[t].mean()),
                "ta_lines": float(li[t].mean()),
                "tsv_m": float(tsv[t].mean()),
            }
            for t in tasks
        },
        "abs": {
            "zero_shot": _abs(zs_t),
            "finetuned": float(np.mean(list(ft_t.values()))),
            "ta": _abs(ta),
            "ta_lines": _abs(li),
            "tsv_m": _abs(tsv),
        },
        "normalized": {
            "zero_shot": _norm_acc(zs_t, ft_t),
            "ta": _norm_acc(ta, ft_t),
            "ta_lines": _norm_acc(li, ft_t),
            "tsv_m": _norm_acc(tsv, ft_t),
        },
        "chosen": {"ta_lambda": lam, "lines_beta": beta, "lines_alpha": direction.auto_alpha(), "tsv_alpha": alpha},
        "val_curves": {"ta": ta_curve, "lines": li_curve, "tsv": tsv_curve},
        "paired_se": {
            "ft_minus_zs": paired_se(ft_c, zs_t),
            "ta_minus_zs": paired_se(ta, zs_t),
            "tsv_minus_ta": paired_se(tsv, ta),
            "lines_minus_ta_normalized": paired_se(li, ta, ft_t),
            "tsv_minus_ta_normalized": paired_se(tsv, ta, ft_t),
        },
        "relative_tv_norm_per_block": rel,
    }
    return row


def report(r: dict) -> None:
    a, n, se = r["abs"], r["normalized"], r["paired_se"]
    print(f"tasks {r['tasks']}  ({r['n_test']} test / {r['n_val']} val images per task)")
    print(f"{'task':<16} {'ZS':>6} {'FT':>6} {'TA':>6} {'LiNeS':>6} {'TSV-M':>6}")
    for t, row in r["per_task"].items():
        print(f"{t:<16} " + " ".join(f"{row[k]:6.3f}" for k in ("zero_shot", "finetuned", "ta", "ta_lines", "tsv_m")))
    print(f"{'mean':<16} " + " ".join(f"{a[k]:6.3f}" for k in ("zero_shot", "finetuned", "ta", "ta_lines", "tsv_m")))
    print(f"normalized: ZS {n['zero_shot']:.3f} TA {n['ta']:.3f} TA+LiNeS {n['ta_lines']:.3f} TSV-M {n['tsv_m']:.3f}")
    c = r["chosen"]

    def edge(v, grid):
        return " (grid edge)" if float(v) in (grid[0], grid[-1]) else ""

    print(
        f"chosen on val: TA lambda {c['ta_lambda']}{edge(c['ta_lambda'], LAMBDAS)}, LiNeS beta {c['lines_beta']}"
        f"{edge(c['lines_beta'], BETAS)} (alpha {c['lines_alpha']:.3f}), "
        f"TSV-M alpha {c['tsv_alpha']}{edge(c['tsv_alpha'], TSV_ALPHAS)}"
    )
    print(
        f"FT-ZS {100 * (a['finetuned'] - a['zero_shot']):+.1f} ± {100 * se['ft_minus_zs']:.1f} pts; "
        f"TA-ZS {100 * (a['ta'] - a['zero_shot']):+.1f} ± {100 * se['ta_minus_zs']:.1f}; "
        f"TSV-M-TA {100 * (a['tsv_m'] - a['ta']):+.1f} ± {100 * se['tsv_minus_ta']:.1f} (abs), "
        f"{100 * (n['tsv_m'] - n['ta']):+.1f} ± {100 * se['tsv_minus_ta_normalized']:.1f} (norm); "
        f"LiNeS-TA {100 * (n['ta_lines'] - n['ta']):+.1f} ± {100 * se['lines_minus_ta_normalized']:.1f} (norm)"
    )
    print("||tau||/||theta0|| per block:", " ".join(f"{x:.4f}" for x in r["relative_tv_norm_per_block"]))


AGGREGATED = (
    ("FT", lambda r: r["abs"]["finetuned"]),
    ("ZS", lambda r: r["abs"]["zero_shot"]),
    ("TA", lambda r: r["abs"]["ta"]),
    ("TA+LiNeS", lambda r: r["abs"]["ta_lines"]),
    ("TSV-M", lambda r: r["abs"]["tsv_m"]),
    ("FT-ZS", lambda r: r["abs"]["finetuned"] - r["abs"]["zero_shot"]),
    ("TA-ZS", lambda r: r["abs"]["ta"] - r["abs"]["zero_shot"]),
    ("TSV-M-TA", lambda r: r["abs"]["tsv_m"] - r["abs"]["ta"]),
    ("TSV-M-TA (norm)", lambda r: r["normalized"]["tsv_m"] - r["normalized"]["ta"]),
    ("LiNeS-TA (norm)", lambda r: r["normalized"]["ta_lines"] - r["normalized"]["ta"]),
    ("min task FT-ZS", lambda r: min(v["finetuned"] - v["zero_shot"] for v in r["per_task"].values())),
)


def aggregate(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Mean and sample standard deviation (ddof 1; 0 for one row) of each `AGGREGATED` figure, in points."""
    if not rows:
        raise ValueError("nothing to aggregate")
    tasks = {tuple(r["tasks"]) for r in rows}
    if len(tasks) > 1:
        raise ValueError(f"the runs cover different task lists: {sorted(tasks)}")
    out = {}
    for name, get in AGGREGATED:
        v = 100 * np.array([get(r) for r in rows], dtype=float)
        out[name] = (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    return out


COMPETING = (  # (question task whose classes and prompts are asked, style of the scenes)
    *((q, s) for s in ("textured_shape", "typed_digit", "novel_letter") for q in ("colors", "position")),
    ("colors", "mixed_count"),
)


def competing_probe(kind: str, cache, n: int) -> dict[str, float]:
    """Zero-shot accuracy of the base on each `COMPETING` question asked of a styled scene kind. The
    questions are temporary tasks (a copy of the question's TaskSpec whose scenes come from
    `make_styled_scene`); the zoo's own task tables are restored afterwards."""
    import dataclasses

    from core.zoo import data as D

    ms = load_model_set(kind, cache)
    added, out = [], {}
    try:
        tasks = {}
        for q, style in COMPETING:
            name = f"{q}_of_{style}"
            D._TASKS[name] = dataclasses.replace(D.get_task(q), name=name)
            D._TASK_STYLE[name] = style
            added.append(name)
            x, y = D.generate_split(name, "test", 0, n)
            tasks[name] = (x, y, D.get_task(name))
        ev = Evaluator(ms.base(), tasks)
        for name, lg in ev.logits(None).items():
            out[name] = float((lg.argmax(1) == ev.tasks[name].labels).float().mean())
    finally:
        for name in added:
            D._TASKS.pop(name, None)
            D._TASK_STYLE.pop(name, None)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="cache holding the built zoo (default $MERGESCOPE_CACHE)")
    ap.add_argument("--zoo", default="demo", choices=ZOO_KINDS, help="which zoo kind in the cache (default demo)")
    ap.add_argument("--aggregate", nargs="+", metavar="JSON", help="mean ± std over earlier runs' JSON files")
    ap.add_argument("--competing-probe", action="store_true", help="zero-shot of other questions on styled scenes")
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--out", default=None, help="JSON output (default <cache>/zoo-demo/methods.json)")
    args = ap.parse_args(argv)
    if args.aggregate:
        rows = [json.loads(Path(f).read_text()) for f in args.aggregate]
        print(f"{len(rows)} runs of {rows[0]['tasks']}; recipe hashes {[r['recipe_hash'] for r in rows]}")
        for name, (m, s) in aggregate(rows).items():
            print(f"{name:<18} {m:7.1f} ± {s:.1f} pts")
        return 0
    if args.competing_probe:
        n = min(args.n_test, 400) if args.n_test == ap.get_default("n_test") else args.n_test
        for name, acc in competing_probe(args.zoo, args.cache, n).items():
            print(f"{name:<28} zero-shot {acc:.3f}  ({n} test images)")
        return 0
    if args.n_val < 2 or args.n_test < 2:
        raise SystemExit("--n-val and --n-test need at least 2 images per task")
    t0 = time.perf_counter()
    r = run(args.cache, args.n_val, args.n_test, args.zoo)
    r["seconds"] = round(time.perf_counter() - t0, 1)
    r["load_avg"] = os.getloadavg()
    report(r)
    out = Path(args.out) if args.out else Path(load_model_set(args.zoo, args.cache).zoo_dir) / "methods.json"
    out.write_text(json.dumps(r, indent=2, default=float) + "\n")
    print(f"({r['seconds']}s; stored in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
