"""Model Tinting speed (and, with a built demo zoo, the issue's accuracy check).

1. Step cost on a demo-sized synthetic set (the zoo's architecture, random weights, 8 tasks
   = base + noise, no zoo needed): per task step, the time to rebuild the merged parameters
   from λ, the forward pass, the backward pass and the Adam step, at 1 and 2 threads, and the
   projected wall time of the default run (100 steps x 8 tasks).
2. With the demo zoo built (or --cache DIR holding one): `python -m core tint` with the
   defaults, 3 seeds, with and without the filter - the comparison table, the wall time per
   run, and the issue's targets (Tinting > TA+LiNeS; within 3 normalized points of the
   individual fine-tuned models; <= 3 min per run on 2 cores).

    python bench/tinting.py [--steps 100] [--seeds 0,1,2] [--cache DIR] [--skip-zoo]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_cost(threads: int, tasks: int = 8, batch: int = 32, reps: int = 3) -> dict:
    import torch
    import torch.nn.functional as F

    from core.models import ZOO_CONFIGS, build_model
    from core.tinting import TintedMerge, pseudo_label_loss

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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--skip-zoo", action="store_true")
    args = ap.parse_args()
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

    if not is_built("demo", args.cache):
        print("\nThe demo zoo is not built: skipping the accuracy check (python -m core zoo build).")
        return 0
    from core.tinting import main as tint_main

    argv = ["--zoo", "demo", "--steps", str(args.steps), "--seeds", args.seeds, "--both", "--no-log"]
    if args.cache:
        argv += ["--cache", args.cache]
    print(f"\n## python -m core tint {' '.join(argv)}\n")
    return tint_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
