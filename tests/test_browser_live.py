"""The LiNeS page in a real browser: serve the app on the micro zoo, move the α slider with the
keyboard, and wait for the new numbers (Playwright + Debian's chromium; skipped loudly without it)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"


def _skip_loudly(reason: str):
    warnings.warn(f"BROWSER TEST SKIPPED: {reason}", stacklevel=2)
    print(f"\n*** BROWSER TEST SKIPPED: {reason} ***", file=sys.stderr)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served_app(micro_zoo):
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        _skip_loudly(f"chromium not found at {CHROMIUM} (install it with `make browser`)")
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MERGESCOPE_CACHE": str(micro_zoo.zoo_dir.parent),
        "MERGESCOPE_DEFAULT_ZOO": "micro",
    }
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / "streamlit-live.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "ui/app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not come up on {url}; see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _metrics(page) -> list[str]:
    return [m.inner_text() for m in page.locator('[data-testid="stMetric"]').all()]


def test_lines_slider_updates_the_numbers_in_the_browser(served_app):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_loudly("playwright is not installed (pip install -r requirements-dev.txt)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(f"{served_app}/lines?zoo=micro", timeout=60_000)
            page.get_by_text("Target accuracy").first.wait_for(timeout=60_000)
            page.get_by_text("β = 1 − α = 0.50").wait_for(timeout=30_000)
            before = _metrics(page)
            slider = page.get_by_role("slider").first  # alpha: react-aria's <input type=range>
            slider.focus()
            page.keyboard.press("End")  # alpha = 1, beta = 0: the fine-tuned model itself
            page.get_by_text("β = 1 − α = 0.00").wait_for(timeout=30_000)
            # the numbers are anytime: wait for the exact ones for alpha = 1 (the page names their slider value)
            page.get_by_text("Numbers for LiNeS α=1.00").first.wait_for(timeout=60_000)
            deadline = time.time() + 30
            while _metrics(page) == before and time.time() < deadline:
                time.sleep(0.2)
            after = _metrics(page)
            assert after != before, f"the numbers did not change: {after}"
            # At alpha = 1 the target is the fine-tuned model: its delta to the fine-tuned row is ~0.
            target = next(m for m in after if m.startswith("Target accuracy"))
            delta = float(re.search(r"([+-−]?\d+\.\d)% vs fine-tuned", target).group(1).replace("−", "-"))
            assert abs(delta) <= 1.0, target
            for _ in range(3):
                page.keyboard.press("ArrowLeft")  # 0.95, 0.90, 0.85: one rerun per press
            page.get_by_text("β = 1 − α = 0.15").wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "browser-live-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
