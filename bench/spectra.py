"""Per-layer ESD + power-law alpha for every weight matrix of open_clip ViT-B-32's visual tower.

Random init (`open_clip.create_model("ViT-B-32", pretrained=None)`, no download). The fused
attention in_proj is split into q, k, v. Times `core.spectra` (ESD, fit, and the whole
`spectral_table`), and when weightwatcher is importable (requirements-bench.txt pins 0.7.7),
WeightWatcher's `analyze()` on the same matrices held as separate nn.Linear modules (it skips
the fused in_proj) plus conv1 as nn.Conv2d, and the largest |alpha difference|.
Targets (issue 2): >= 3x faster than WeightWatcher, alpha equal within 0.01.

    python bench/spectra.py [--model ViT-B-32] [--repeat 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spectra import analysed_matrices, esd_many, fit_powerlaw, spectral_table  # noqa: E402


def visual_state_dict(model_name: str) -> dict[str, torch.Tensor]:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model(model_name, pretrained=None)
    return {f"visual.{k}": v.detach() for k, v in model.visual.state_dict().items()}


def ww_module(matrices: list[tuple[str, torch.Tensor]]) -> torch.nn.Module:
    """The same weights as WeightWatcher sees them: one nn.Linear / nn.Conv2d per analysed matrix."""
    mods = torch.nn.ModuleDict()
    for i, (_name, w) in enumerate(matrices):
        if w.ndim == 4:
            layer = torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), bias=False)
        else:
            layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(w)
        mods[f"m{i:03d}"] = layer
    return mods


def run_weightwatcher(matrices):
    try:
        import weightwatcher as ww
    except ImportError:
        return None
    logging.disable(logging.WARNING)
    module = ww_module(matrices)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        t0, c0 = time.perf_counter(), time.process_time()
        details = ww.WeightWatcher(model=module).analyze()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    by_name = dict(zip(details["name"], details["alpha"]))
    alphas = [by_name.get(f"m{i:03d}", float("nan")) for i in range(len(matrices))]
    return seconds, cpu, np.array(alphas, dtype=np.float64), ww.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--repeat", type=int, default=1, help="time core.spectra this many times, report the best")
    parser.add_argument("--workers", type=int, default=None, help="esd_many CPU worker threads (default: up to 2)")
    args = parser.parse_args()

    sd = visual_state_dict(args.model)
    matrices = analysed_matrices(sd)
    kinds: dict[str, int] = {}
    for name, _ in matrices:
        kind = name.rsplit("[", 1)[1][0] if name.endswith("]") else name.rsplit(".", 2)[-2]
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"{args.model} visual tower: {len(matrices)} weight matrices ({kinds})")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")

    best = None
    for _ in range(max(1, args.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        spectra = esd_many([w for _, w in matrices], workers=args.workers)
        t1 = time.perf_counter()
        fits = [fit_powerlaw(e) for e in spectra]
        t2, c2 = time.perf_counter(), time.process_time()
        run = (t1 - t0, t2 - t1, t2 - t0, c2 - c0)
        best = run if best is None or run[2] < best[2] else best
    t0 = time.perf_counter()
    table = spectral_table(sd)
    t_table = time.perf_counter() - t0
    ours = np.array([f["alpha"] for f in fits])
    print(
        f"core.spectra: ESD {best[0]:.2f} s + fit {best[1]:.2f} s = {best[2]:.2f} s wall ({best[3]:.2f} s CPU); "
        f"spectral_table {t_table:.2f} s"
    )
    print(f"alpha: median {np.median(ours):.3f}, range {ours.min():.3f}..{ours.max():.3f}; rows {len(table)}")

    ww = run_weightwatcher(matrices)
    if ww is None:
        print("weightwatcher not importable: pip install -r requirements-bench.txt for the comparison")
        return
    seconds, cpu, ww_alpha, version = ww
    analysed = np.isfinite(ww_alpha)
    diff = np.abs(ww_alpha[analysed] - ours[analysed])
    worst = int(np.flatnonzero(analysed)[np.argmax(diff)]) if diff.size else -1
    print(
        f"weightwatcher {version} analyze(): {seconds:.2f} s wall ({cpu:.2f} s CPU) "
        f"on {int(analysed.sum())}/{len(matrices)} matrices"
    )
    print(
        f"speed-up: {seconds / best[2]:.1f}x wall (ESD + fit), {cpu / best[3]:.1f}x CPU, "
        f"{seconds / t_table:.1f}x wall (spectral_table)"
    )
    if worst >= 0:
        print(f"max |alpha - alpha_ww| = {diff.max():.2e} ({matrices[worst][0]}); mean {diff.mean():.2e}")
    ok = diff.size == len(matrices) and diff.max() <= 0.01 and seconds / best[2] >= 3
    print("targets (>= 3x, |d alpha| <= 0.01, all matrices analysed):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
