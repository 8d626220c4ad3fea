"""Fine-tune lab benchmark on the demo zoo: accuracy vs data fraction for uniform lr, TempBalance and
Model Balancing (3 seeds, mean ± std), then the Weight Scope Alignment merge comparison.

    python bench/finetune_lab.py [--quick] [--workers 2] [--zoo micro --cache DIR]

It runs the CLI's code path (`python -m core finetune`) with the budget stated below and prints
its Markdown tables. --quick: one seed, two fractions (a smoke run).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.finetune_lab import main as finetune_main  # noqa: E402
from core.zoo import is_built  # noqa: E402

# The budget: 4 fractions x 3 methods x 3 seeds = 36 fine-tunes of 80 steps x 32 images on one
# thread each, then 4 fine-tunes for WSA.
TASK, FRACTIONS, METHODS, SEEDS, STEPS = "digits", "0.01,0.05,0.2,1.0", "uniform,tempbalance,model_balancing", 3, 80
WSA_TASKS, WSA_WEIGHT, WSA_FRACTION = "colors,shapes", 100.0, 0.2


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--zoo", default="demo")
    ap.add_argument("--cache", default=None, help="cache directory of the zoo")
    args = ap.parse_args()
    if not is_built(args.zoo, args.cache):
        print(f"the {args.zoo} zoo is not built: run `python -m core zoo build` first (skipped)")
        return 0
    seeds, fractions = (1, "0.05,1.0") if args.quick else (SEEDS, FRACTIONS)
    t0 = time.perf_counter()
    where = ["--zoo", args.zoo] + (["--cache", args.cache] if args.cache else [])
    grid = [*where, "--task", TASK, "--fractions", fractions, "--methods", METHODS, "--seeds", str(seeds),
            "--steps", str(STEPS), "--workers", str(args.workers)]  # fmt: skip
    print("$ python -m core finetune " + " ".join(grid) + "\n", flush=True)
    rc = finetune_main(grid)
    wsa = [*where, "--wsa", "--tasks", WSA_TASKS, "--weight", str(WSA_WEIGHT), "--fraction", str(WSA_FRACTION),
           "--steps", str(STEPS)]  # fmt: skip
    print("\n$ python -m core finetune " + " ".join(wsa) + "\n", flush=True)
    rc = rc or finetune_main(wsa)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
