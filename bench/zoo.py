"""Does the demo zoo show the real phenomena? Prints the numbers of issue 3's five criteria.

    python bench/zoo.py [--zoo demo|styled | --micro] [--cache DIR] [--single-grid 11] [--tasks shapes,digits,...]
                        [--n-val 300 --n-test 1000]   # fresh, larger draws (the README's figures)

Hyperparameters (TA's lambda, LiNeS beta) are chosen on val and reported on test.
Results are printed and stored under "bench" in the zoo's manifest.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.cli.options import DEFAULT_ZOO, ZOO_KINDS  # noqa: E402
from core.evaluate import Evaluator  # noqa: E402
from core.lines import lines_scale  # noqa: E402
from core.merging import apply_direction, merged_direction  # noqa: E402
from core.select import control_accuracy, mean_accuracy, normalized_accuracy  # noqa: E402
from core.task_vectors import task_vector  # noqa: E402
from core.zoo import load_model_set, manifest  # noqa: E402
from core.zoo.data import get_task, load_split  # noqa: E402

LAMBDAS = [round(0.1 * i, 1) for i in range(1, 11)]
BETAS = [round(0.1 * i, 1) for i in range(0, 11)]


def _add(base: dict, tv: dict, scale: float = 1.0) -> dict:
    return {k: base[k] + scale * v for k, v in tv.items()}


def _blocks(keys) -> int:
    return 1 + max(int(k.split("resblocks.")[1].split(".")[0]) for k in keys if "resblocks." in k)


def _revert(ft: dict, base: dict, blocks: set[int]) -> dict:
    out = {}
    for k, v in ft.items():
        b = int(k.split("resblocks.")[1].split(".")[0]) if "resblocks." in k else None
        out[k] = base[k] if b in blocks else v
    return out


def _draw(ms, split: str, n: int | None) -> Evaluator:
    """The zoo's own split (n None), or a fresh draw of `n` images per task (`load_split(task, split, n=n)`:
    the same seeded generator, larger sets for claims that need them)."""
    if n is None:
        return Evaluator.for_model_set(ms, split)
    return Evaluator(ms.base(), {t: (*load_split(t, split, n=n), get_task(t)) for t in ms.eval_tasks})


def run(
    kind: str,
    cache: str | None,
    single_grid: int,
    tasks: list[str] | None = None,
    n_val: int | None = None,
    n_test: int | None = None,
) -> dict:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.set_flush_denormal(True)
    ms = load_model_set(kind, cache)
    if tasks:
        unknown = sorted(set(tasks) - set(ms.tasks))
        if unknown:
            raise SystemExit(f"--tasks: {unknown} not in the zoo (it has {ms.tasks})")
        ms = dataclasses.replace(ms, finetuned_paths={t: ms.finetuned_paths[t] for t in tasks}, eval_tasks=list(tasks))
    man = manifest(kind, cache)
    tasks = ms.tasks
    base = {k: v for k, v in ms.base().items() if k.startswith("visual.")}
    fts = ms.finetuned_all()
    tvs = {t: task_vector(base, fts[t]) for t in tasks}
    L = _blocks(base)
    val, test = _draw(ms, "val", n_val), _draw(ms, "test", n_test)
    out: dict = {"kind": kind, "tasks": tasks, "blocks": L, "n_val": n_val, "n_test": n_test}

    # 1. fine-tuning works and forgets
    zs = {s: ev.accuracy() for s, ev in (("val", val), ("test", test))}
    ft_test = {t: test.accuracy(fts[t]) for t in tasks}
    ft_own = {t: ft_test[t][t] for t in tasks}
    drop = [zs["test"][o] - ft_test[t][o] for t in tasks for o in tasks if o != t]
    out["s1"] = {"zero_shot": mean_accuracy(zs["test"]), "finetuned": mean_accuracy(ft_own), "forgetting": float(np.mean(drop)),
                 "per_task": {t: (zs["test"][t], ft_own[t]) for t in tasks}}  # fmt: skip
    ft_val = {t: val.accuracy(fts[t], [t])[t] for t in tasks}

    # 2. task arithmetic, lambda on val
    direction = merged_direction(base, fts, "task_arithmetic", coefficients=1.0)
    ta_val = {
        lam: normalized_accuracy(val.accuracy(apply_direction(base, direction, scale=lam)), ft_val) for lam in LAMBDAS
    }
    lam = max(ta_val, key=ta_val.get)
    ta_acc = test.accuracy(apply_direction(base, direction, scale=lam))
    out["s2"] = {"lambda": lam, "val_curve": ta_val, "abs": mean_accuracy(ta_acc), "normalized": normalized_accuracy(ta_acc, ft_own),
                 "gain_over_zero_shot": mean_accuracy(ta_acc) - mean_accuracy(zs["test"]), "per_task": ta_acc}  # fmt: skip

    # 3. depth: revert the shallowest vs the deepest third of the blocks to pretrained
    third = max(1, round(L / 3))
    shallow, deep = set(range(third)), set(range(L - third, L))
    rs = {t: test.accuracy(_revert(fts[t], base, shallow), [t])[t] for t in tasks}
    rd = {t: test.accuracy(_revert(fts[t], base, deep), [t])[t] for t in tasks}
    ratio = {t: (rs[t] / ft_own[t], rd[t] / ft_own[t]) for t in tasks}
    norms = [float(np.mean([sum(float(v.norm() ** 2) for k, v in tvs[t].items() if f"resblocks.{i}." in k) ** 0.5 /
                            sum(float(v.norm() ** 2) for k, v in base.items() if f"resblocks.{i}." in k) ** 0.5 for t in tasks]))
             for i in range(L)]  # fmt: skip
    out["s3"] = {"third": third, "revert_shallow_target": float(np.mean(list(rs.values()))), "revert_deep_target": float(np.mean(list(rd.values()))),
                 "finetuned_target": mean_accuracy(ft_own), "per_task_relative": ratio, "relative_tv_norm_per_block": norms}  # fmt: skip

    # 4a. multi-task LiNeS: alpha = multi-task rule (1/N for TA), beta on val
    lines_val = {}
    for beta in BETAS:
        acc = val.accuracy(apply_direction(base, direction, lines=("auto", beta)))
        lines_val[beta] = normalized_accuracy(acc, ft_val)
    beta = max(lines_val, key=lines_val.get)
    li_acc = test.accuracy(apply_direction(base, direction, lines=("auto", beta)))
    out["s4_multi"] = {"alpha": direction.auto_alpha(), "beta": beta, "val_curve": lines_val, "abs": mean_accuracy(li_acc),
                       "normalized": normalized_accuracy(li_acc, ft_own),
                       "gain_over_ta_points": 100 * (normalized_accuracy(li_acc, ft_own) - out["s2"]["normalized"]), "per_task": li_acc}  # fmt: skip

    # 4b. single task: LiNeS (alpha, beta = 1 - alpha) vs uniform scaling at equal target accuracy (test)
    alphas = [round(a, 2) for a in np.linspace(0, 1, single_grid)]
    gains, rows = [], {}
    for t in tasks:
        uni = []
        for c in alphas:
            acc = test.accuracy(_add(base, tvs[t], c))
            uni.append((acc[t], control_accuracy(acc, t, zs["test"])["control"]))
        lin = []
        for a in alphas[:-1]:  # alpha = 1 is the fine-tuned model for both
            acc = test.accuracy(_add(base, lines_scale(tvs[t], a, 1 - a, L)))
            lin.append((a, acc[t], control_accuracy(acc, t, zs["test"])["control"]))
        ux = np.array(uni)
        order = np.argsort(ux[:, 0], kind="stable")
        tx, cx = ux[order, 0], ux[order, 1]
        g = []
        for _alpha, tgt, ctl in lin:
            if tx[0] <= tgt <= tx[-1]:
                g.append(ctl - float(np.interp(tgt, tx, cx)))
        gains += g
        rows[t] = {"uniform": uni, "lines": lin, "mean_control_gain": float(np.mean(g)) if g else None}
    out["s4_single"] = {"mean_control_gain_points": 100 * float(np.mean(gains)) if gains else None, "per_task": rows}

    # 5. speed
    merged = apply_direction(base, direction, scale=lam)
    times = {}
    test = Evaluator.for_model_set(ms, "test")  # the speed figure is for the zoo's own test sets
    for bf16 in (False, True):
        test.bf16 = bf16
        ts = [test.timed_accuracy(merged)[1] for _ in range(5)]
        times["bf16" if bf16 else "fp32"] = statistics.median(ts)
    test.bf16 = False
    out["s5"] = {"eval_seconds_all_test_sets": times, "n_test_images": sum(len(d.labels) for d in test.tasks.values()),
                 "build_timings": man["timings_seconds"], "cpus": os.cpu_count(), "load_avg": os.getloadavg()}  # fmt: skip
    return out


def report(r: dict) -> None:
    s1, s2, s3, s4, s4s, s5 = r["s1"], r["s2"], r["s3"], r["s4_multi"], r["s4_single"], r["s5"]
    ok = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    draws = (
        "the zoo's own splits"
        if r.get("n_test") is None and r.get("n_val") is None
        else (f"fresh draws: {r.get('n_val') or 'own'} val / {r.get('n_test') or 'own'} test images per task")
    )
    print(f"zoo: {r['kind']}, {len(r['tasks'])} tasks, {r['blocks']} visual blocks; {draws}")
    print(f"1. fine-tuned {s1['finetuned']:.3f} (>=.85 {ok(s1['finetuned'] >= 0.85)})  zero-shot {s1['zero_shot']:.3f} "
          f"(<=.65 {ok(s1['zero_shot'] <= 0.65)})  forgetting (mean drop on other tasks) {s1['forgetting']:+.3f} ({ok(s1['forgetting'] > 0)})")  # fmt: skip
    for t, (z, f) in s1["per_task"].items():
        print(
            f"     {t:<10} zero-shot {z:.3f}  fine-tuned {f:.3f}  TA {s2['per_task'][t]:.3f}  TA+LiNeS {s4['per_task'][t]:.3f}"
        )
    print(f"2. TA (lambda {s2['lambda']} on val): abs {s2['abs']:.3f}, +{100 * s2['gain_over_zero_shot']:.1f} pts over zero-shot "
          f"(>=10 {ok(s2['gain_over_zero_shot'] >= 0.10)}), normalized {s2['normalized']:.3f} (.70-.95 {ok(0.70 <= s2['normalized'] <= 0.95)})")  # fmt: skip
    print(f"3. revert shallow {s3['third']} blocks: target {s3['revert_shallow_target']:.3f}; deep {s3['third']}: {s3['revert_deep_target']:.3f} "
          f"(fine-tuned {s3['finetuned_target']:.3f}) shallow cheaper: {ok(s3['revert_shallow_target'] > s3['revert_deep_target'])}")  # fmt: skip
    print("   relative task-vector norm per block:", " ".join(f"{x:.4f}" for x in s3["relative_tv_norm_per_block"]))
    print(f"4. TA+LiNeS (alpha {s4['alpha']:.3f}, beta {s4['beta']} on val): abs {s4['abs']:.3f}, normalized {s4['normalized']:.3f}, "
          f"{s4['gain_over_ta_points']:+.1f} normalized pts over TA (>=2 {ok(s4['gain_over_ta_points'] >= 2)})")  # fmt: skip
    g = s4s["mean_control_gain_points"]
    print(
        f"   single-task LiNeS vs uniform scaling, control at equal target: {g:+.2f} pts ({ok(g is not None and g > 0)})"
    )
    for t, row in s4s["per_task"].items():
        print(
            f"     {t:<10} {row['mean_control_gain'] if row['mean_control_gain'] is None else round(100 * row['mean_control_gain'], 2)}"
        )
    e = s5["eval_seconds_all_test_sets"]
    print(f"5. eval of one merged model on all {s5['n_test_images']} test images: fp32 {e['fp32']:.3f}s, bf16 {e['bf16']:.3f}s "
          f"(<=0.5 {ok(min(e.values()) <= 0.5)}); build timings {s5['build_timings']} on {s5['cpus']} cpus, load {s5['load_avg']}")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--micro", action="store_true", help="= --zoo micro")
    ap.add_argument("--zoo", default=DEFAULT_ZOO, choices=ZOO_KINDS, help=f"which built zoo (default {DEFAULT_ZOO})")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--n-val", type=int, default=None, help="fresh val images per task (default: the zoo's 250)")
    ap.add_argument("--n-test", type=int, default=None, help="fresh test images per task (default: the zoo's 250)")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the zoo's tasks (stored as bench_<tasks>)")
    ap.add_argument(
        "--single-grid", type=int, default=11, help="alpha / scale grid points for the single-task comparison"
    )
    args = ap.parse_args(argv)
    kind = "micro" if args.micro else args.zoo
    t0 = time.perf_counter()
    tasks = args.tasks.split(",") if args.tasks else None
    for n in (args.n_val, args.n_test):
        if n is not None and n < 2:
            raise SystemExit("--n-val and --n-test need at least 2 images per task")
    r = run(kind, args.cache, args.single_grid, tasks, args.n_val, args.n_test)
    r["bench_seconds"] = round(time.perf_counter() - t0, 1)
    report(r)
    ms = load_model_set(kind, args.cache)
    mpath = Path(ms.zoo_dir) / "manifest.json"
    man = json.loads(mpath.read_text())
    man["bench" if not tasks else "bench_" + "_".join(tasks)] = json.loads(json.dumps(r, default=float))
    mpath.write_text(json.dumps(man, indent=2) + "\n")
    print(f"(bench {r['bench_seconds']}s; results stored in {mpath})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
