"""Browser smoke test: serve the app with `streamlit run`, open every page in headless Chromium,
assert Streamlit shows no exception, and save a screenshot per page to test-artifacts/browser/.

The server starts with a small model set preselected (the micro zoo when tests/conftest.py
provides it, else synthetic checkpoints), so the analysis pages draw real charts.
Needs Playwright and Chromium (`make browser` installs Debian's); skips loudly otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_pages import write_test_model_set

from ui import existing_pages, url_path

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = os.environ.get("MERGESCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run",
]  # fmt: skip
PAGE_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url}/_stcore/health did not answer 'ok' within {timeout}s")


@pytest.fixture(scope="module")
def chromium():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("SKIPPED LOUDLY: playwright is not installed; `pip install playwright` to run the browser test")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"SKIPPED LOUDLY: no Chromium at {CHROMIUM}; run `make browser` (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@contextlib.contextmanager
def serve_app(env: dict, log_dir: Path):
    """`streamlit run ui/app.py` on a free port with `env` (on top of this process's), until the block ends;
    yields the URL; a None value removes that variable. The server's log goes to log_dir/server.log (its
    tail is printed on a traceback)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env}
    env = {k: v for k, v in env.items() if v is not None}
    port = _free_port()
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(ROOT / "ui" / "app.py"), "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
    ]  # fmt: skip
    log = open(Path(log_dir) / "server.log", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read()[-3000:]
        log.close()
        if "Traceback" in tail:
            print("streamlit server log:\n" + tail)


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    env = {}
    try:
        ms = request.getfixturevalue("micro_zoo")
        env["MERGESCOPE_CACHE"] = str(Path(ms.zoo_dir).parent)
        env["MERGESCOPE_DEFAULT_ZOO"] = "micro"
    except pytest.FixtureLookupError:
        folder = tmp_path_factory.mktemp("browser-checkpoints")
        write_test_model_set(folder)
        env["MERGESCOPE_DEFAULT_MODEL_SET"] = str(folder / "model_set.json")
    with serve_app(env, tmp_path_factory.mktemp("streamlit-log")) as url:
        yield url


def wait_rendered(page, timeout_s: float = PAGE_TIMEOUT_S) -> None:
    """Until the script run is over and every plotly chart on the page has been drawn."""
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout_s * 1000)
    page.wait_for_function(
        """() => {
            const charts = document.querySelectorAll('[data-testid="stPlotlyChart"]').length;
            const drawn = document.querySelectorAll('[data-testid="stPlotlyChart"] .main-svg').length;
            return drawn >= charts && !document.querySelector('[data-testid="stSkeleton"]');
        }""",
        timeout=timeout_s * 1000,
    )
    page.wait_for_timeout(500)  # let plotly finish its transitions before the screenshot


# Models first: the first request after the server starts names a page URL directly; the app shell
# (ui/app.py: navigation and sidebar) must wrap it all the same.
PAGES = [(url_path(f), url_path(f)) for _, f, _, _ in existing_pages()]
PAGES.insert(1, ("home", ""))


@pytest.mark.parametrize("name,path", PAGES, ids=[p[0] for p in PAGES])
def test_page_renders_without_exception(chromium, server, name, path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{server}/{path}", wait_until="domcontentloaded")
        wait_rendered(page)
        # Streamlit scrolls inside its main container: grow the viewport to the content to capture it all.
        height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        page.set_viewport_size({"width": 1400, "height": min(max(900, int(height) + 40), 12000)})
        wait_rendered(page)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        exceptions = page.locator('[data-testid="stException"]')
        assert exceptions.count() == 0, f"{name}: {exceptions.first.inner_text()[:2000]}"
        assert page.locator('[data-testid="stMain"]').inner_text().strip(), f"{name}: the page is empty"
        sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
        assert "Active model set" in sidebar and "Task vectors" in sidebar, f"{name}: app.py's sidebar is missing"
    finally:
        context.close()
