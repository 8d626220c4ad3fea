"""Slider to numbers in a real browser: the time from a key press on a slider to the new numbers on the page.

    python bench/browser_latency.py [--zoo demo] [--repeats 7] [--pages lines,merge_lab]

Serves the app (ui/app.py) on the demo zoo, opens each live page in headless Chromium, focuses its slider
and measures, from the key press:
  - "busy": until the page shows that its numbers are being updated (Streamlit's stale/running state or
    the page's own "updating" note);
  - "one step": until the numbers for the new slider value are on the page (one ArrowRight);
  - "burst of 5": five ArrowRight presses 60 ms apart, until the numbers for the *final* value are shown
    (stale positions must be dropped, not queued).
A page says which slider value its numbers are for in a caption ("Numbers for …"), which is what the
benchmark waits for. Targets on an idle 2-core machine: one step ≤ 1 s median, burst ≤ 1.5 s, on LiNeS
and the Merge lab. The load average is printed: on a loaded machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.app import serve  # noqa: E402 - the one way the benchmarks serve the app

CHROMIUM = os.environ.get("MERGESCOPE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
TARGETS = {"one step": 1.0, "burst of 5": 1.5}

# Each live page: its URL path, the label its slider carries, the slider's step, and how the page's
# "Numbers for ..." caption names a slider value.
PAGES = {
    "lines": {"label": "α: scale of the shallowest block", "step": 0.05, "expect": lambda v: f"α={v:.2f}"},
    "merge_lab": {"label": "coefficients", "step": 0.05, "expect": lambda v: f"λ={v:.2f}"},
}

SLIDER_VALUE_JS = """(label) => {
  const s = [...document.querySelectorAll('[data-testid="stSlider"]')].find(e => e.innerText.includes(label));
  const thumb = s && s.querySelector('input[type="range"], [role="slider"]');
  return thumb ? parseFloat(thumb.value ?? thumb.getAttribute('aria-valuenow')) : null;
}"""
NUMBERS_FOR_JS = """(text) => [...document.querySelectorAll('[data-testid="stCaptionContainer"], [data-testid="stMarkdownContainer"]')]
  .some(e => e.innerText.includes('Numbers for') && e.innerText.includes(text))"""
BUSY_JS = """() => !!document.querySelector('[data-stale="true"], [data-testid="stStatusWidget"]')
  || [...document.querySelectorAll('[data-testid="stCaptionContainer"]')].some(e => e.innerText.includes('Updating'))"""


def measure(page, cfg: dict, presses: int, timeout_s: float = 60.0) -> tuple[float, float | None]:
    """(seconds to the numbers for the final value, seconds to the first 'busy' sign) for `presses` presses."""
    label = cfg["label"]
    start = page.evaluate(SLIDER_VALUE_JS, label)
    if start is None:
        raise RuntimeError(f"no slider labelled {label!r} on {page.url}")
    up = start + presses * cfg["step"] <= 1.0 + 1e-9
    final = round(start + (presses if up else -presses) * cfg["step"], 6)
    thumb = page.locator('[data-testid="stSlider"]', has_text=label).locator('input[type="range"], [role="slider"]')
    thumb.focus()
    t0 = time.perf_counter()
    busy = None
    for i in range(presses):
        thumb.press("ArrowRight" if up else "ArrowLeft")
        if busy is None and page.evaluate(BUSY_JS):
            busy = time.perf_counter() - t0
        if i < presses - 1:
            time.sleep(0.06)
    expect = cfg["expect"](final)
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        if busy is None and page.evaluate(BUSY_JS):
            busy = time.perf_counter() - t0
        if page.evaluate(NUMBERS_FOR_JS, expect):
            return time.perf_counter() - t0, busy
        time.sleep(0.01)
    raise TimeoutError(f"{page.url}: no numbers for {expect!r} within {timeout_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default="demo", choices=("demo", "micro"))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--pages", default=",".join(PAGES), help="comma-separated: " + ", ".join(PAGES))
    ap.add_argument("--log", type=Path, default=Path("/tmp/mergescope-browser-latency.log"))
    args = ap.parse_args(argv)
    from core import zoo as Z

    Z.load_model_set(args.zoo)  # raises with a clear message when the zoo is not built
    from playwright.sync_api import sync_playwright

    print(f"load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); zoo {args.zoo}; chromium {CHROMIUM}")
    proc, url = serve(args.zoo, args.log)
    failed = False
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name in args.pages.split(","):
                cfg = PAGES[name]
                page.goto(f"{url}/{name}")
                page.wait_for_function(NUMBERS_FOR_JS, arg="", timeout=300_000)
                measure(page, cfg, 1)  # warm: the first move builds the direction and the evaluator
                rows = {"one step": [], "burst of 5": [], "busy": []}
                for _ in range(args.repeats):
                    t, busy = measure(page, cfg, 1)
                    rows["one step"].append(t)
                    rows["busy"].append(busy if busy is not None else float("nan"))
                    t, _ = measure(page, cfg, 5)
                    rows["burst of 5"].append(t)
                for what, values in rows.items():
                    med = statistics.median(values)
                    target = TARGETS.get(what)
                    ok = "" if target is None else (" ok" if med <= target else f" OVER the {target:g} s target")
                    failed |= target is not None and med > target
                    spread = f"min {min(values):.2f}, max {max(values):.2f}"
                    print(f"{name:10s} {what:11s} median {med:.2f} s ({spread}; n={len(values)}){ok}")
            browser.close()
    finally:
        proc.terminate()
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
