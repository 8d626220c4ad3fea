"""Per-layer ESD + power-law alpha for every weight matrix of open_clip ViT visual towers, vs WeightWatcher 0.7.7.

Random init (`open_clip.create_model(name, pretrained=None)`, no download): `--arch b32` is ViT-B-32
(74 matrices), `--arch l14` ViT-L-14 (24 blocks, 146 matrices); `--arch b32,l14` runs both in one go.
The fused attention in_proj is split into q, k, v. Times `core.spectra` (ESD, fit, and the whole
`spectral_table`) on the chosen device (auto: CUDA when torch sees one), and when weightwatcher is
importable (requirements-bench.txt pins 0.7.7), WeightWatcher's `analyze()` on the same matrices held
as separate nn.Linear modules (it skips the fused in_proj) plus conv1 as nn.Conv2d, and the largest
|alpha difference|. WeightWatcher runs with its BLAS limited to `--ww-threads` threads (default 1: on a
shared, loaded machine threaded BLAS spins and WeightWatcher gets several times slower; 0 = its default).
Also reports what float32 eigenvalues (instead of float64) would cost in alpha.
Targets (issue scale): >= 5x faster than WeightWatcher (wall), |d alpha| <= 1e-3.

    python bench/spectra.py [--arch b32|l14|b32,l14] [--device auto|cpu|cuda] [--repeat 1] [--ww-threads 1]
                            [--hybrid-study]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.spectra import analysed_matrices, esd_many, fit_powerlaw, resolve_device, spectral_table  # noqa: E402


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


def run_weightwatcher(matrices, threads: int = 1):
    try:
        import weightwatcher as ww
    except ImportError:
        return None
    from threadpoolctl import threadpool_limits

    logging.disable(logging.WARNING)
    module = ww_module(matrices)
    limit = threadpool_limits(threads) if threads > 0 else contextlib.nullcontext()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), limit:
        t0, c0 = time.perf_counter(), time.process_time()
        details = ww.WeightWatcher(model=module).analyze()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    by_name = dict(zip(details["name"], details["alpha"]))
    alphas = [by_name.get(f"m{i:03d}", float("nan")) for i in range(len(matrices))]
    return seconds, cpu, np.array(alphas, dtype=np.float64), ww.__version__


def float32_alpha_cost(matrices, fits) -> float:
    """max |alpha(float32 eigenvalues) - alpha(float64)| over the 2-D matrices: what float32 would cost."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    worst = 0.0
    with threadpool_limits(1):
        for (_name, w), fit in zip(matrices, fits):
            if w.ndim != 2:
                continue
            x = w.detach().float().numpy()
            gram = x.T @ x if x.shape[0] >= x.shape[1] else x @ x.T
            e32 = np.maximum(scipy.linalg.eigvalsh(gram, check_finite=False), 0.0).astype(np.float64)
            worst = max(worst, abs(fit_powerlaw(e32)["alpha"] - fit["alpha"]))
    return worst


def hybrid_study(rows: int = 3072, cols: int = 768, tail: int = 200, repeats: int = 3) -> None:
    """What a float32 bulk + float64 tail would cost on one (rows x cols) matrix, one BLAS thread: the float64
    Gram + all eigenvalues (what core.spectra does) against float32 Gram + the top `tail` eigenpairs (LAPACK
    syevr) followed by a float64 Rayleigh-Ritz refinement of that tail (QR of the vectors, (WQ)^T (WQ))."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    w = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.02).astype(np.float32)
    print(f"== float32 bulk + float64 tail, one {rows}x{cols} matrix, 1 BLAS thread (best of {repeats})")
    best = None
    with threadpool_limits(1):
        for _ in range(repeats):
            t0 = time.perf_counter()
            w64 = w.astype(np.float64)
            full = scipy.linalg.eigvalsh(w64.T @ w64, driver="ev", check_finite=False)
            t1 = time.perf_counter()
            _, vecs = scipy.linalg.eigh(
                w.T @ w, subset_by_index=[cols - tail, cols - 1], driver="evr", check_finite=False
            )
            t2 = time.perf_counter()
            q, _ = np.linalg.qr(vecs.astype(np.float64))
            y = w64 @ q
            ritz = np.sort(np.linalg.eigvalsh(y.T @ y))
            t3 = time.perf_counter()
            run = (t1 - t0, t2 - t1, t3 - t2)
            best = run if best is None or sum(run[1:]) < sum(best[1:]) else best
    err = float(np.max(np.abs(ritz - full[-tail:]) / full[-tail:]))
    print(
        f"float64 Gram + all values {best[0] * 1e3:.0f} ms; float32 Gram + top {tail} pairs {best[1] * 1e3:.0f} ms "
        f"+ float64 Rayleigh-Ritz {best[2] * 1e3:.0f} ms = {(best[1] + best[2]) * 1e3:.0f} ms "
        f"(tail values to {err:.1e} relative)"
    )


ARCHS = {"b32": "ViT-B-32", "l14": "ViT-L-14"}


def bench_one(arch: str, args) -> dict:
    model = ARCHS.get(arch, arch)
    sd = visual_state_dict(model)
    matrices = analysed_matrices(sd)
    kinds: dict[str, int] = {}
    for name, _ in matrices:
        kind = name.rsplit("[", 1)[1][0] if name.endswith("]") else name.rsplit(".", 2)[-2]
        kinds[kind] = kinds.get(kind, 0) + 1
    dev = resolve_device(args.device)
    print(f"== {model} visual tower: {len(matrices)} weight matrices ({kinds})")
    print(
        f"device {dev}; torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    best = None
    for _ in range(max(1, args.repeat)):
        t0, c0 = time.perf_counter(), time.process_time()
        spectra = esd_many([w for _, w in matrices], workers=args.workers, device=dev)
        t1 = time.perf_counter()
        fits = [fit_powerlaw(e) for e in spectra]
        t2, c2 = time.perf_counter(), time.process_time()
        run = (t1 - t0, t2 - t1, t2 - t0, c2 - c0)
        best = run if best is None or run[2] < best[2] else best
    t0 = time.perf_counter()
    table = spectral_table(sd, device=dev)
    t_table = time.perf_counter() - t0
    ours = np.array([f["alpha"] for f in fits])
    print(
        f"core.spectra: ESD {best[0]:.2f} s + fit {best[1]:.2f} s = {best[2]:.2f} s wall ({best[3]:.2f} s CPU); "
        f"spectral_table {t_table:.2f} s"
    )
    print(f"alpha: median {np.median(ours):.3f}, range {ours.min():.3f}..{ours.max():.3f}; rows {len(table)}")
    out = {"model": model, "ours_wall": best[2], "ours_cpu": best[3], "table_wall": t_table}
    if args.float32_cost:
        out["f32_cost"] = float32_alpha_cost(matrices, fits)
        print(f"float32 eigenvalues instead of float64 would move alpha by up to {out['f32_cost']:.2e}")
    ww = run_weightwatcher(matrices, args.ww_threads)
    if ww is None:
        print("weightwatcher not importable: pip install -r requirements-bench.txt for the comparison")
        return out
    seconds, cpu, ww_alpha, version = ww
    analysed = np.isfinite(ww_alpha)
    diff = np.abs(ww_alpha[analysed] - ours[analysed])
    worst = int(np.flatnonzero(analysed)[np.argmax(diff)]) if diff.size else -1
    threads = f"BLAS threads {args.ww_threads}" if args.ww_threads > 0 else "default BLAS threads"
    print(
        f"weightwatcher {version} analyze() ({threads}): {seconds:.2f} s wall ({cpu:.2f} s CPU) "
        f"on {int(analysed.sum())}/{len(matrices)} matrices"
    )
    out.update(ww_wall=seconds, ww_cpu=cpu, max_dalpha=float(diff.max()) if diff.size else float("nan"))
    out.update(all_analysed=diff.size == len(matrices), load=os.getloadavg()[0])
    print(
        f"speed-up: {seconds / best[2]:.1f}x wall (ESD + fit), {cpu / best[3]:.1f}x CPU, "
        f"{seconds / t_table:.1f}x wall (spectral_table)"
    )
    if worst >= 0:
        print(f"max |alpha - alpha_ww| = {diff.max():.2e} ({matrices[worst][0]}); mean {diff.mean():.2e}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="b32", help="b32, l14, a comma list, or an open_clip model name")
    parser.add_argument("--device", default="auto", help="auto (CUDA when torch sees one), cpu or cuda[:i]")
    parser.add_argument("--repeat", type=int, default=1, help="time core.spectra this many times, report the best")
    parser.add_argument("--workers", type=int, default=None, help="esd_many CPU worker threads (default: one per core)")
    parser.add_argument("--ww-threads", type=int, default=1, help="WeightWatcher's BLAS threads (0: its default)")
    parser.add_argument("--no-float32-cost", dest="float32_cost", action="store_false")
    parser.add_argument("--hybrid-study", action="store_true", help="also time a float32 bulk + float64 tail ESD")
    args = parser.parse_args()
    if args.hybrid_study:
        hybrid_study()
    results = [bench_one(a.strip(), args) for a in args.arch.split(",") if a.strip()]
    print("== summary (the machine is shared: see the load figures)")
    ok = True
    for r in results:
        if "ww_wall" not in r:
            ok = False
            continue
        wall, cpu = r["ww_wall"] / r["ours_wall"], r["ww_cpu"] / r["ours_cpu"]
        print(
            f"{r['model']}: {wall:.1f}x wall, {cpu:.1f}x CPU faster than WeightWatcher; "
            f"max |d alpha| {r['max_dalpha']:.2e}; load at the end {r['load']:.1f}"
        )
        ok &= r["all_analysed"] and r["max_dalpha"] <= 1e-3 and wall >= 5
    print("targets (>= 5x wall, |d alpha| <= 1e-3, all matrices analysed):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
