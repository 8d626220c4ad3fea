"""The app on a big model set: the Models page accepting N synthetic fine-tunes, and the Task vectors and Spectra pages
computing their per-block tables, then reading them back from the on-disk analysis cache.

Uses bench/merge.py's synthetic checkpoints (ViT-B-32 or ViT-L-14 visual towers: random init plus
structured perturbations), built once into `--keep DIR` (or a temp dir). Each step runs the page headless
(`streamlit.testing.v1.AppTest`) in a fresh process, which prints its wall time and its peak anonymous
memory above the process's start (RssAnon sampled every 20 ms: page cache and file pages do not count):

  models          the Models page: enter base + N files under "Files on the server", scan, use them
                  (headers only for a set over 500 MB: keys, shapes, dtypes; the NaN/Inf pass is on request)
  task_vectors    the Task vectors page on the first `--tv-tasks` tasks, analysis cache empty (computed)
  task_vectors    the same page again in a new process (tables read from the on-disk cache)
  spectra         the Spectra page on the same tasks (its first tab: every source's spectral table), twice

The analysis cache is a fresh temp dir ($MERGESCOPE_CACHE), so the first open really computes.
Targets (issue scale): the Models page takes a 20-task L/14 set from its metadata in seconds; reopening
the Task vectors page does not recompute; memory within 3 model sizes while the pages are open.

    python bench/bigset.py [--arch b32|l14] [--tasks 8] [--tv-tasks 3] [--keep DIR]   (the issue's figure: --arch l14 --tasks 20)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from merge import ARCHS, _AnonSampler, build  # noqa: E402  (the same synthetic checkpoints as the merge bench)


def run_page(step: str, folder: Path, n_tasks: int) -> dict:
    """One page in this process: returns seconds and peak anonymous bytes above the start."""
    from streamlit.testing.v1 import AppTest

    import core.plots.analysis  # noqa: F401  the pages' heavy imports, before the memory baseline
    import ui.state  # noqa: F401
    from core.spec import ModelSetRef

    base = folder / "base.safetensors"
    fts = [folder / f"task{t}.safetensors" for t in range(n_tasks)]
    anon = _AnonSampler()
    t0 = time.perf_counter()
    if step == "models":
        at = AppTest.from_file(str(ROOT / "pages" / "models.py"), default_timeout=3600).run()
        at.text_input(key="paths_base").input(str(base))
        at.text_area(key="paths_ft").input("\n".join(str(p) for p in fts))
        at.button(key="paths_scan").click().run()
        at.button(key="paths_use").click().run()
        ok = "model_set_ref" in at.session_state and at.session_state["model_set_ref"] is not None
    else:
        at = AppTest.from_file(str(ROOT / "pages" / f"{step}.py"), default_timeout=3600)
        at.session_state["model_set_ref"] = ModelSetRef(
            zoo=None, base=str(base), finetuned=tuple((f"task{t}", str(p)) for t, p in enumerate(fts))
        )
        at.run()
        ok = not at.exception and not at.error
    dt = time.perf_counter() - t0
    start, peak = anon.stop()
    errors = [e.value for e in at.exception] + [e.value for e in at.error]
    return {"step": step, "seconds": dt, "anon_above_start": peak - start, "ok": bool(ok), "errors": errors[:3]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--arch", choices=sorted(ARCHS), default="b32", help="b32 (default: make bench) or l14 (25 GB at 20 tasks)"
    )
    ap.add_argument("--tasks", type=int, default=8, help="fine-tuned files the Models page takes")
    ap.add_argument("--tv-tasks", type=int, default=3, help="tasks the Task vectors and Spectra pages analyse")
    ap.add_argument("--keep", type=Path, help="reuse/keep the synthetic checkpoints in this folder")
    ap.add_argument("--_step", help=argparse.SUPPRESS)
    ap.add_argument("--_n", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._step:
        print(json.dumps(run_page(a._step, a.keep, a._n)))
        return 0
    folder = a.keep or Path(tempfile.mkdtemp(prefix="mergescope-bigset-"))
    folder.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="mergescope-bigset-cache-"))
    try:
        if not (folder / f"task{a.tasks - 1}.safetensors").exists():
            print(f"building {a.tasks} synthetic {ARCHS[a.arch]} visual towers in {folder} ...", flush=True)
            build(folder, a.tasks, ARCHS[a.arch])
        model_bytes = (folder / "base.safetensors").stat().st_size
        print(f"model size {model_bytes / 2**20:.0f} MiB; load average {os.getloadavg()[0]:.1f}", flush=True)
        rows = []
        steps = [("models", a.tasks)] + [(p, a.tv_tasks) for p in ("task_vectors", "spectra") for _ in range(2)]
        for step, n in steps:
            label = step if step == "models" else f"{step} ({'reopened' if rows[-1][0].startswith(step) else 'first'})"
            r = subprocess.run(
                [sys.executable, __file__, "--_step", step, "--keep", str(folder), "--_n", str(n)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "MERGESCOPE_CACHE": str(cache)},
            )
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            res = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((label, n, res))
            print(f"  {label}: {res['seconds']:.1f} s", flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}, on {os.cpu_count()} cores")
        print(f"{'step':<26} {'tasks':>5} {'seconds':>8} {'peak anon':>10} {'x model':>8}  ok")
        for label, n, res in rows:
            anon = res["anon_above_start"]
            print(
                f"{label:<26} {n:>5} {res['seconds']:8.1f} {anon / 2**20:8.0f}Mi {anon / model_bytes:8.2f}  "
                f"{'yes' if res['ok'] else 'NO: ' + '; '.join(map(str, res['errors']))}"
            )
        print(
            "seconds: from the page's first run to its last (the pages' imports are done before, in the same fresh "
            "process); peak anon: RssAnon sampled every 20 ms above its value when the page starts. Targets: Models page in seconds, reopened Task vectors page "
            "from the disk cache, <= 3 model sizes."
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if not a.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
