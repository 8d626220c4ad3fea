"""Merge speed and memory from files, on ViT-B-32- or ViT-L-14-sized checkpoints.

Builds N synthetic fine-tunes of open_clip's visual tower (`--arch b32`: ViT-B-32, 88M parameters;
`--arch l14`: ViT-L-14, 303M parameters, 1.2 GB fp32; random init + structured perturbations: a
low-rank update growing with depth plus noise) as safetensors in a temp dir (written once; check
`df -h` first: 21 L/14 files are 25 GB), then times, each in a fresh subprocess so peak memory is
per method:

  floor   one streaming pass that reads every input once and writes one output
  TA      task arithmetic (lambda 0.3)
  TIES    exact global top-k (k = 0.2), mass sign election, disjoint mean
  every other method of the registry (core.merging.METHODS) at its default parameters
  TA+LiNeS  task arithmetic with LiNeS (alpha auto = 1/N, beta 0.5)

and prints each time as a ratio to the floor, plus the peak anonymous memory during the merge above
its start (RssAnon sampled every 20 ms by a thread: file pages of the page cache and mmaps do not
count, heap and tensors do) and the peak RSS (VmHWM reset after imports), in model sizes.
Targets (issue scale): TA and TA+LiNeS <= 1.5x floor, TIES <= 4x floor, peak anonymous memory
<= 3 model sizes for every method; a method that computes SVDs (core.merging.lowrank) <= the seconds
spent inside its decompositions (`lowrank.svd`, `top_svd`, `polar_factors`: timed in the same run) + 1.5x floor. The seconds inside its matrix
products (`@`, `addmm_`) are timed too and the rest is printed with and without them ("other x floor").

Page cache: inputs that fit in half the RAM are read once before the runs, so every run reads them from
memory (`--cache warm`); larger sets (L/14 x 20: 25 GB) are evicted from the page cache before every run
(posix_fadvise DONTNEED, no privileges needed), so the floor and every method read from the disk, as a
user's first merge of such a set would (`--cache cold`). Without that, each run met whatever the previous
one had left cached and the ratios measured the order of the runs.

Rounds (`--repeat 3`): every row runs once per round, rounds interleaved, the floor after each; a row's time
is its fastest run (on this shared machine the same run varies by up to 1.5x between rounds: noise only
adds), its memory the largest peak. Rows whose first run took over 20 s run once.

    python bench/merge.py [--arch b32|l14] [--tasks 8] [--keep DIR] [--methods ta,ties,tsv_m,...] [--device auto|cpu|cuda]
                          [--cache auto|warm|cold] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


ARCHS = {"b32": "ViT-B-32", "l14": "ViT-L-14"}


def build(dirpath: Path, n_tasks: int, model: str) -> None:
    import open_clip
    import torch

    from core.checkpoints import save_state_dict
    from core.layers import layer_index

    torch.manual_seed(0)
    m = open_clip.create_model(model, pretrained=None)
    base = {f"visual.{k}": v.detach().clone() for k, v in m.visual.state_dict().items()}
    del m
    save_state_dict(base, dirpath / "base.safetensors")
    L = 1 + max(i for i in (layer_index(k) for k in base) if i is not None)
    for t in range(n_tasks):
        g = torch.Generator().manual_seed(100 + t)
        ft = {}
        for k, v in base.items():
            i = layer_index(k)
            depth = 0.5 if i is None else 0.5 + i / max(1, L - 1)
            d = 1e-3 * depth * torch.randn(v.shape, generator=g)
            if v.ndim == 2:  # a low-rank, task-specific direction on every matrix
                r = 4
                d += (
                    1e-3
                    * depth
                    * (torch.randn(v.shape[0], r, generator=g) @ torch.randn(r, v.shape[1], generator=g))
                    / r
                )
            ft[k] = v + d
        save_state_dict(ft, dirpath / f"task{t}.safetensors")
        print(f"  wrote task{t}.safetensors", flush=True)


def run_one(dirpath: Path, what: str, n_tasks: int, threads: int | None = None, device: str = "auto") -> dict:
    import torch

    from core.checkpoints import open_state_dict, save_state_dict
    from core.merging import merge
    from core.runtime.threads import auto_threads

    # auto: 1 on a busy machine (2 OpenMP threads stall at barriers there), which on 2 cores means any load
    # above 0.5; --threads fixes it so two runs compare the same setting
    torch.set_num_threads(threads or auto_threads())
    base = open_state_dict(dirpath / "base.safetensors")
    fts = [open_state_dict(dirpath / f"task{t}.safetensors") for t in range(n_tasks)]
    out_path = dirpath / f"out-{what}.safetensors"
    # TIES's compiled kernel (numba import, its cached machine code, the check of torch's summation order):
    # once per process, like the imports above, so it is loaded before the clock starts and reported apart
    from core.merging import fused
    from core.runtime.devices import resolve_device

    t_load = time.perf_counter()
    fused.usable(resolve_device(device), torch.float32)
    kernel_load = time.perf_counter() - t_load
    import_peak = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )  # the import of torch's CUDA build peaks high
    _reset_peak_rss()  # from here VmHWM is the peak of the merge itself (plus what is resident now)
    baseline = _status_bytes("VmRSS")
    svd_time, product_time = _time_decompositions(), _time_products(torch)
    anon = _AnonSampler()
    t0, cpu0 = time.perf_counter(), time.process_time()
    if what == "floor":
        # The least any merge can do: read every input once (pread into one reused buffer, as the
        # streaming merges read) and write one output of the model's size.
        out, buf = {}, None
        for k in base.keys():
            need = base.nbytes(k)
            if buf is None or buf.numel() < need:
                buf = torch.empty(need, dtype=torch.uint8)
            for ft in fts:
                ft.read_into(k, buf)
            out[k] = base.read_into(k, None)  # the output tensor (the last input read)
    elif what == "ta":
        out = merge(base, fts, "task_arithmetic", coefficients=0.3, device=device)
    elif what == "ties":
        out = merge(base, fts, "ties", k=0.2, coefficients=1.0, device=device)
    elif what == "ta_lines":
        out = merge(base, fts, "task_arithmetic", lines=("auto", 0.5), device=device)
    else:
        out = merge(base, fts, what, device=device)  # any registered method, at its default parameters
    save_state_dict(out, out_path)
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out_path.unlink()
    rss = _status_bytes("VmHWM")
    anon_start, anon_peak = anon.stop()
    return {
        "what": what,
        "seconds": dt,
        "cpu_seconds": cpu,
        "peak_rss": rss,
        "baseline_rss": baseline,
        "import_peak_rss": import_peak,
        "anon_start": anon_start,
        "anon_peak": anon_peak,
        "svd_seconds": svd_time[0],
        "svd_calls": svd_time[1],
        "product_seconds": product_time[0],
        "kernel_load_seconds": kernel_load,
    }


_INSIDE = [0]  # depth of decomposition calls under way: their inner calls and products are theirs


def _time_decompositions() -> list:
    """[seconds, calls] spent inside the SVD methods' decompositions from now on in this process: the SVD
    methods' target is their SVDs' own time plus 1.5x the floor. Every decomposition of
    core.merging.lowrank goes through `lowrank.svd` (torch.linalg.svd: Iso's spectra), `lowrank.top_svd`
    (a task matrix's top triplets) or `lowrank.polar_factors` (a stacked basis's singular vectors); the last
    two take the eigendecomposition of a float64 Gram matrix, with the products that form and undo it, in
    place of the SVD, or the SVD; a call inside another counts once, as part of the outer one."""
    from core.merging import lowrank

    acc = _timed(lowrank, "svd", decomposition=True)
    _timed(lowrank, "top_svd", acc, decomposition=True)
    _timed(lowrank, "polar_factors", acc, decomposition=True)
    return acc


def _time_products(torch) -> list:
    """[seconds, calls] spent in matrix products (`@`, `addmm_`) outside the decompositions from now on in
    this process: the SVD methods' products of their factors (U V^T, the polar factors' product, CART's
    low-rank terms, Iso-CTS's projections), reported apart from the rest."""
    acc = _timed(torch.Tensor, "__matmul__")
    _timed(torch.Tensor, "addmm_", acc)
    return acc


def _timed(owner, name: str, acc: list | None = None, decomposition: bool = False) -> list:
    """Replace owner.name by a wrapper that adds its wall time and calls to acc ([seconds, calls]); calls
    made inside a decomposition are not counted (they are the decomposition's)."""
    acc = [0.0, 0] if acc is None else acc
    fn = getattr(owner, name)

    def timed(*args, **kwargs):
        if _INSIDE[0]:
            return fn(*args, **kwargs)
        _INSIDE[0] += decomposition
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[0] += time.perf_counter() - t
            acc[1] += 1
            _INSIDE[0] -= decomposition

    setattr(owner, name, timed)
    return acc


class _AnonSampler:
    """Peak RssAnon of this process, sampled every 20 ms by a daemon thread (and at start and stop)."""

    def __init__(self, period: float = 0.02):
        import threading

        self.start = self.peak = _status_bytes("RssAnon")
        self._stop = threading.Event()
        self._period = period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            self.peak = max(self.peak, _status_bytes("RssAnon"))

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_bytes("RssAnon"))
        return self.start, self.peak


def timed_rows(subset: str | None) -> list[str]:
    """ta, ties (at the bench's parameters), every other registered method, ta_lines; or the named subset."""
    from core.merging import METHODS

    named = {"task_arithmetic": "ta", "ties": "ties"}
    rows = [named.get(m, m) for m in METHODS] + ["ta_lines"]
    if subset is None:
        return rows
    want = [w.strip() for w in subset.split(",") if w.strip()]
    unknown = [w for w in want if w not in rows]
    if unknown:
        raise SystemExit(f"unknown bench row(s) {unknown}; choose from {rows}")
    return want


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _mem_total() -> int:
    """MemTotal of /proc/meminfo in bytes (a large number where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


def evict_from_page_cache(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (posix_fadvise DONTNEED after fdatasync, so even freshly
    written pages go): the next read of them comes from the disk. Needs no privileges."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--arch", choices=sorted(ARCHS), help="b32 (ViT-B-32) or l14 (ViT-L-14); overrides --model")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--keep", type=Path, help="reuse/keep the synthetic checkpoints in this folder")
    ap.add_argument("--methods", help="comma-separated subset of the timed rows (default: every registered method)")
    ap.add_argument("--threads", type=int, help="torch threads per merge (default: core.runtime.threads.auto_threads)")
    ap.add_argument("--device", default="auto", help="where merges compute: auto (CUDA when torch sees one), cpu, cuda")
    ap.add_argument(
        "--cache",
        choices=("auto", "warm", "cold"),
        default="auto",
        help="page cache before each run: warm (inputs read once first), cold (inputs evicted before every run), "
        "auto: cold when the inputs exceed half the RAM (L/14 x 20), else warm",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of every row, interleaved; a row's time is its fastest run, its memory the largest peak "
        "(rows whose first run took over --once-over seconds run once)",
    )
    ap.add_argument("--once-over", type=float, default=20.0, help=argparse.SUPPRESS)
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_dir", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.arch:
        a.model = ARCHS[a.arch]
    if a._one:
        print(json.dumps(run_one(a._dir, a._one, a.tasks, a.threads, a.device)))
        return 0
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="mergescope-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if not (tmp / f"task{a.tasks - 1}.safetensors").exists():
            print(f"building {a.tasks} synthetic {a.model} visual towers in {tmp} ...", flush=True)
            build(tmp, a.tasks, a.model)
        model_bytes = (tmp / "base.safetensors").stat().st_size
        print(
            f"model size: {model_bytes / 2**20:.0f} MiB ({model_bytes // 4 / 1e6:.1f}M fp32 parameters), {a.tasks} tasks"
        )
        inputs = sorted(tmp.glob("*.safetensors"))
        cold = a.cache == "cold" or (a.cache == "auto" and sum(f.stat().st_size for f in inputs) > _mem_total() // 2)
        if cold:  # inputs larger than the page cache can hold: every run starts from the disk, as a user's would
            print("page cache: cold (every input evicted before each run, so each run reads from the disk)")
        else:  # inputs that fit in memory: every run reads them from the page cache
            print("page cache: warm (every input read once before the runs)")
            for f in inputs:
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass
        results = {}
        rows = timed_rows(a.methods)
        load0 = os.getloadavg()[0]
        from core.runtime.threads import auto_threads

        threads = a.threads or auto_threads()
        from core.runtime.devices import resolve_device

        device = resolve_device(a.device)  # a forced GPU torch does not see fails here, before any run
        print(f"device: {device}; {threads} torch thread(s); load average {load0:.1f}", flush=True)
        runs: dict[str, list[dict]] = {}
        order = [("floor", 0)] + [(w, r) for r in range(max(1, a.repeat)) for w in (*rows, "floor")]
        for what, rnd in order:  # the floor first and after every round
            if rnd and what in runs and runs[what][0]["seconds"] > a.once_over:
                continue  # long rows (the SVD methods): one run; their noise is small next to their time
            if cold:
                evict_from_page_cache(inputs)
            r = subprocess.run(
                [sys.executable, __file__, "--_one", what, "--_dir", str(tmp), "--tasks", str(a.tasks)]
                + ["--device", str(device)]
                + (["--threads", str(a.threads)] if a.threads else []),
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            one = json.loads(r.stdout.strip().splitlines()[-1])
            runs.setdefault(what, []).append(one)
            print(f"  {what}: {one['seconds']:.2f} s ({one['cpu_seconds']:.1f} s CPU)", flush=True)
        for what, rs in runs.items():  # fastest run's times, largest peaks
            best = dict(min(rs, key=lambda x: x["seconds"]))
            worst = max(rs, key=lambda x: x["anon_peak"] - x["anon_start"])
            best["anon_peak"], best["anon_start"] = worst["anon_peak"], worst["anon_start"]
            worst = max(rs, key=lambda x: x["peak_rss"] - x["baseline_rss"])
            best["peak_rss"], best["baseline_rss"] = worst["peak_rss"], worst["baseline_rss"]
            results[what] = best
        floors = [x["seconds"] for x in runs["floor"]]
        floor = results["floor"]["seconds"]
        print(f"floor runs: {', '.join(f'{x:.2f}' for x in floors)} s (every row's time is its fastest run)")
        print(f"load average at start {load0:.1f}, at the end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores")
        print(
            f"{'method':<15} {'seconds':>8} {'CPU s':>7} {'x floor':>8} {'peak anon':>10} {'x model':>8} "
            f"{'peak RSS':>10} {'above start':>12} {'x model':>8} {'SVDs':>8} {'rest x floor':>13} "
            f"{'products':>9} {'other x floor':>14}"
        )
        for what, r in results.items():
            above = r["peak_rss"] - r["baseline_rss"]
            anon = r["anon_peak"] - r["anon_start"]
            svd = r.get("svd_seconds", 0.0)
            mm = r.get("product_seconds", 0.0)
            rest = (
                f"{svd:7.2f}s {(r['seconds'] - svd) / floor:13.2f} {mm:8.2f}s {(r['seconds'] - svd - mm) / floor:14.2f}"
                if r.get("svd_calls")
                else ""
            )
            print(
                f"{what:<15} {r['seconds']:8.2f} {r.get('cpu_seconds', 0.0):7.1f} {r['seconds'] / floor:8.2f} {anon / 2**20:8.0f}Mi "
                f"{anon / model_bytes:8.2f} {r['peak_rss'] / 2**20:8.0f}Mi {above / 2**20:10.0f}Mi "
                f"{above / model_bytes:8.2f} {rest}"
            )
        loads = [x.get("kernel_load_seconds", 0.0) for rs in runs.values() for x in rs]
        print(f"TIES kernel load (numba, once per process, before each timed run): {min(loads):.2f}-{max(loads):.2f} s")
        imp = max(r["import_peak_rss"] for r in results.values())
        print(
            "targets: ta, ta_lines <= 1.5x floor, ties <= 4x floor, peak anonymous memory <= 3.0 model sizes; "
            "SVD methods: seconds <= their SVDs' seconds + 1.5x floor (rest x floor <= 1.5; 'other': the rest "
            "without the methods' matrix products)"
        )
        print(
            "(peak anon: RssAnon sampled every 20 ms during the merge, minus its value at the start; peak RSS: "
            "VmHWM reset after imports and opening the files, above start: minus the RSS at the start. "
            f"Importing torch's CUDA build alone peaked at {imp / 2**20:.0f}Mi.)"
        )
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
