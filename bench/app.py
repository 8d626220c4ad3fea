"""Page latency: time from a page request to a fully rendered page, per page, warm cache.

Serves the app with `streamlit run` on a free port with the demo zoo preselected (or the micro
zoo with --micro), opens every page once to warm the server's caches (spectra, task-vector
tables, evaluators), then loads each page --repeats times in a fresh browser session
(headless Chromium via Playwright) and prints the median and worst time until the script run
has finished and every chart is drawn; then, in one session, the time from a click on each page's
sidebar link to its rendered page (how a visitor moves through the app: the JavaScript bundles,
Plotly's among them, are parsed once per tab). Target: under 2 s per page on the demo zoo.
--script-times adds, per page, the server's warm script run and the number and JSON size of the
Plotly figures its first view draws (both independent of the machine's load).

Where a fresh tab's time goes: a page whose first view draws any Plotly chart makes the browser load
and evaluate Streamlit's Plotly chunk (4.7 MB; about 3.6 s of V8 module evaluation at load 18 on 2
cores), whatever the number, size or staticPlot setting of the figures: one tiny chart costs as much
as five. So the pages show their numbers first and draw charts in tabs opened on demand.

    PYTHONPATH=. .venv/bin/python bench/app.py [--micro] [--repeats 3] [--pages models,spectra] [--script-times]
    PYTHONPATH=. .venv/bin/python bench/app.py --micro --server-only   # script runs and figure JSON only
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ui import existing_pages, page_path, url_path  # noqa: E402

TARGET_S = 2.0
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
RENDERED_JS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
    if (!document.querySelector('[data-testid="stMain"] h1')) return false;
    const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
    const drawn = document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length;
    return drawn >= charts && !document.querySelector('[data-testid="stSkeleton"]');
}"""


# A click counts as rendered once the page shows another title than before the click (every page has its
# own), its script has finished and its charts are drawn. (Watching for the "running" script state missed
# runs that finish within one frame once Streamlit's post-run gc was turned off.)
TITLE_JS = "() => (document.querySelector('[data-testid=\"stMain\"] h1') || {}).innerText || ''"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_zoo(kind: str) -> None:
    from core import zoo

    if zoo.is_built(kind):
        return
    try:
        zoo.load_model_set(kind)
        print(f"note: the {kind} zoo in {zoo.cache_dir()} was built with an older recipe; benchmarking it as is")
        return
    except FileNotFoundError:
        pass
    print(f"the {kind} zoo is not built yet; building it into {zoo.cache_dir()} (once)", flush=True)
    last = [None]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != last[0] or done == total:
            print(f"  {stage}: {done}/{total}", flush=True)
            last[0] = stage

    zoo.build_zoo(kind=kind, progress=progress)


def serve(kind: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MERGESCOPE_DEFAULT_ZOO": kind}
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"streamlit exited ({proc.returncode}); log: {log_path}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise SystemExit(f"no health check answer from {url}; log: {log_path}")


def load_time(context, url: str, timeout_s: float) -> float:
    """Seconds from the request of `url` in a new tab (a new Streamlit session) to the rendered page.

    Tabs share one browser context, so the browser's HTTP cache is warm (static JS, as for
    a returning user) while every load is a fresh session on the server.
    """
    page = context.new_page()
    try:
        t0 = time.perf_counter()
        page.goto(url, wait_until="commit")
        page.wait_for_function(RENDERED_JS, timeout=timeout_s * 1000, polling=50)
        elapsed = time.perf_counter() - t0
        if page.locator('[data-testid="stException"]').count():
            raise RuntimeError(f"{url}: the page shows an exception")
        return elapsed
    finally:
        page.close()


def script_times(kind: str, pages: list[tuple[str, str]], repeats: int) -> dict[str, tuple[float, int, int]]:
    """Server-side share, load-independent: per page the median seconds of a warm script run (AppTest, in
    this process), the number of Plotly charts its first view draws and the bytes of their figure JSON."""
    from streamlit.testing.v1 import AppTest

    os.environ["MERGESCOPE_DEFAULT_ZOO"] = kind
    out = {}
    at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=900).run()
    for name, _ in pages:
        file = next((f for _, f, _, _ in existing_pages() if url_path(f) == name), None)
        if file is not None:
            at.switch_page(page_path(file))
        at.run()  # warm this process's caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
        charts = at.get("plotly_chart")
        out[name] = (statistics.median(times), len(charts), sum(len(c.proto.spec) for c in charts))
    return out


def print_script_times(kind: str, pages: list[tuple[str, str]], repeats: int) -> None:
    print("\nserver side per page, warm (AppTest in this process; load-independent apart from the seconds):")
    print(f"  {'page':14s} {'script':>8s} {'charts':>7s} {'figure JSON':>12s}", flush=True)
    for name, (t, n, size) in script_times(kind, pages, repeats).items():
        print(f"  {name:14s} {t:7.2f}s {n:7d} {size / 1024:9.1f} kB", flush=True)


def navigation_times(context, url: str, pages: list[tuple[str, str]], repeats: int) -> dict[str, list[float]]:
    """Seconds from a click on a page's sidebar link to its rendered page, within one session.

    This is how a visitor moves through the app: Streamlit's and Plotly's JavaScript are parsed once
    per tab, so a click costs the script run, the transfer and the drawing of the page's charts.
    """
    out: dict[str, list[float]] = {name: [] for name, _ in pages}
    page = context.new_page()
    try:
        page.goto(f"{url}/{pages[-1][1]}", wait_until="commit")  # start on the last page: every click navigates
        page.wait_for_function(RENDERED_JS, timeout=120_000, polling=50)
        for _ in range(repeats):
            for name, path in pages:
                link = page.locator(f'[data-testid="stSidebarNav"] a[href="{url}/{path}"]')
                if not link.count():
                    link = page.locator(f'[data-testid="stSidebarNav"] a[href$="/{path}"]').first
                before = page.evaluate(TITLE_JS)
                t0 = time.perf_counter()
                link.click()
                page.wait_for_function(
                    f"(before) => ({TITLE_JS})() !== before && ({RENDERED_JS})()",
                    arg=before,
                    timeout=120_000,
                    polling=20,
                )
                out[name].append(time.perf_counter() - t0)
                if page.locator('[data-testid="stException"]').count():
                    raise RuntimeError(f"{name}: the page shows an exception")
    finally:
        page.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro", action="store_true", help="use the micro zoo (seconds to build) instead of the demo zoo")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pages", default="", help="comma-separated url paths (default: every existing page)")
    ap.add_argument("--script-times", action="store_true", help="also time each page's script run alone (AppTest)")
    ap.add_argument("--server-only", action="store_true", help="only the server side (--script-times), no browser")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    kind = "micro" if args.micro else "demo"

    if args.server_only:
        ensure_zoo(kind)
        pages = [("home", "")] + [(url_path(f), url_path(f)) for _, f, _, _ in existing_pages()]
        if args.pages:
            pages = [p for p in pages if p[0] in set(args.pages.split(","))]
        print_script_times(kind, pages, args.repeats)
        return 0
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("playwright is not installed: pip install playwright")
        return 1
    if not Path(args.chromium).exists():
        print(f"no Chromium at {args.chromium}: apt-get install chromium (or make browser)")
        return 1
    ensure_zoo(kind)

    pages = [("home", "")] + [(url_path(f), url_path(f)) for _, f, _, _ in existing_pages()]
    if args.pages:
        wanted = set(args.pages.split(","))
        pages = [p for p in pages if p[0] in wanted]
    log = Path(tempfile.mkdtemp(prefix="mergescope-bench-")) / "streamlit.log"
    proc, url = serve(kind, log)
    rows, nav_rows = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(f"{os.cpu_count()} cores, load average {load:.1f} at start")
            print(f"{kind} zoo, {url}; warming the caches (first visits compute spectra, tables, ...)", flush=True)
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            for name, path in pages:
                try:
                    cold = load_time(context, f"{url}/{path}", timeout_s=900)
                    print(f"  first visit {name:14s} {cold:7.2f} s", flush=True)
                except Exception as e:
                    print(f"  first visit {name:14s} FAILED: {str(e).splitlines()[0][:150]}", flush=True)
            print(f"\nwarm cache, {args.repeats} fresh sessions per page (request -> fully rendered):")
            print(f"  {'page':14s} {'median':>8s} {'worst':>8s}")
            for name, path in pages:
                try:
                    times = [load_time(context, f"{url}/{path}", timeout_s=120) for _ in range(args.repeats)]
                except Exception as e:
                    print(f"  {name:14s} FAILED: {str(e).splitlines()[0][:150]}")
                    rows.append((name, float("nan"), float("nan")))
                    continue
                med, worst = statistics.median(times), max(times)
                rows.append((name, med, worst))
                flag = "" if worst < TARGET_S else f"  over the {TARGET_S:.0f} s target"
                print(f"  {name:14s} {med:7.2f}s {worst:7.2f}s{flag}", flush=True)
            print(
                f"\nin-app navigation, one session, {args.repeats} rounds (click on the sidebar link -> fully rendered):"
            )
            nav = navigation_times(context, url, pages, args.repeats)
            for name, times in nav.items():
                med, worst = statistics.median(times), max(times)
                flag = "" if worst < TARGET_S else f"  over the {TARGET_S:.0f} s target"
                print(f"  {name:14s} {med:7.2f}s {worst:7.2f}s{flag}", flush=True)
                nav_rows.append((name, med, worst))
            context.close()
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if args.script_times:
        print_script_times(kind, pages, args.repeats)
    for label, rs in (("fresh tab", rows), ("in-app navigation", nav_rows)):
        slow = [r[0] for r in rs if not r[2] < TARGET_S]
        print(
            f"{label}: {len(rs) - len(slow)}/{len(rs)} pages under {TARGET_S:.0f} s"
            + (f"; slow or failed: {slow}" if slow else "")
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
