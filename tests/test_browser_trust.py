"""Issue "Trust and feel", items 1, 2, 4 and 5 in real Chromium (items 3 and the slider: test_browser_live.py).

- 1: a zoo whose fine-tuned files are full open_clip CLIP files (both towers): LiNeS shows the visual
  tower by default and offers the text tower, with per-tower depth;
- 2 and 5: a model set with a NaN in one fine-tuned checkpoint, active from the start (a shared link): every
  page shows one clear message naming the tensor, never Streamlit's exception box; the Models page groups
  the problems by kind;
- 4: "save on the server" with a path outside the export folder is refused by name and creates nothing.
"""

from __future__ import annotations

import json

import pytest
from test_browser import chromium, serve_app, wait_rendered  # noqa: F401

from core.layers import TOWER_LABELS
from tests.fixtures import full_clip
from ui import existing_pages, url_path

NAN_KEY = "visual.transformer.resblocks.1.attn.out_proj.weight"


@pytest.fixture(scope="module")
def nan_server(tmp_path_factory):
    from test_page_models import finetune, write_set

    from core.spec import ModelSetRef

    folder = tmp_path_factory.mktemp("nan-set")
    bad = finetune(1)
    bad[NAN_KEY][2, 3] = float("nan")
    base, fts = write_set(folder, good=finetune(2), bad=bad)
    ref = ModelSetRef(zoo=None, base=str(base), finetuned=(("bad", str(fts[1])), ("good", str(fts[0]))))
    (folder / "ref.json").write_text(json.dumps(ref.to_dict()))
    env = {"MERGESCOPE_DEFAULT_MODEL_SET": str(folder / "ref.json"), "MERGESCOPE_DEFAULT_ZOO": None}
    with serve_app(env, folder) as url:
        yield url


@pytest.fixture(scope="module")
def full_clip_server(micro_zoo, tmp_path_factory):
    cache = tmp_path_factory.mktemp("full-clip-cache")
    full_clip.full_zoo_copy(micro_zoo.zoo_dir, cache)
    exports = tmp_path_factory.mktemp("exports")
    env = {"MERGESCOPE_CACHE": str(cache), "MERGESCOPE_DEFAULT_ZOO": "micro", "MERGESCOPE_EXPORT_DIR": str(exports)}
    env["MERGESCOPE_RUNLOG"] = str(tmp_path_factory.mktemp("runlog") / "runs.sqlite")
    with serve_app(env, cache) as url:
        yield url, exports


def _text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


PAGES_WITH_MODEL = [url_path(f) for _, f, _, _ in existing_pages() if url_path(f) not in ("models", "runs")]


@pytest.mark.parametrize("path", PAGES_WITH_MODEL)
def test_a_set_with_a_nan_gives_one_clear_message_on_every_page(chromium, nan_server, path):  # noqa: F811
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{nan_server}/{path}", wait_until="domcontentloaded")
        wait_rendered(page)
        assert page.locator('[data-testid="stException"]').count() == 0, _text(page)[:2000]
        alerts = page.locator('[data-testid="stAlert"]')
        assert alerts.count() >= 1
        text = " ".join(alerts.nth(i).inner_text() for i in range(alerts.count()))
        assert NAN_KEY in text and "Traceback" not in _text(page)
    finally:
        page.close()


def test_the_models_page_groups_the_problems_of_a_broken_set(chromium, nan_server):  # noqa: F811
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{nan_server}/models", wait_until="domcontentloaded")
        wait_rendered(page)
        text = _text(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "non-finite" in text.lower() and NAN_KEY in text
    finally:
        page.close()


def test_a_full_clip_set_shows_the_visual_tower_and_offers_the_text_tower(chromium, full_clip_server):  # noqa: F811
    url, _ = full_clip_server
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/lines", wait_until="domcontentloaded")
        wait_rendered(page)
        radio = page.locator('[data-testid="stRadio"]', has_text="Tower")
        assert radio.count() == 1, _text(page)[:1500]
        checked = radio.locator("input:checked").evaluate("e => e.closest('label').innerText")
        assert checked.strip() == TOWER_LABELS["visual"]  # the image tower by default
        svg = page.locator('[data-testid="stMain"] svg[aria-label^="Per-block scale"]')
        assert f"block ℓ of the {TOWER_LABELS['visual']}" in svg.first.inner_html()
        radio.get_by_text(TOWER_LABELS["text"]).click()
        page.wait_for_function(
            """() => [...document.querySelectorAll('svg[aria-label^="Per-block scale"]')]
                 .some(s => s.innerHTML.includes('of the """
            + TOWER_LABELS["text"]
            + """'))""",
            timeout=60_000,
        )
    finally:
        page.close()


def test_saving_outside_the_export_folder_is_refused_and_creates_nothing(chromium, full_clip_server, tmp_path):  # noqa: F811
    url, exports = full_clip_server
    target = tmp_path / "nonexistent" / "dir" / "merged.safetensors"
    page = chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/merge_lab", wait_until="domcontentloaded")
        wait_rendered(page)
        box = page.locator('[data-testid="stTextInput"]', has_text="save on the server").locator("input")
        box.fill(str(target))
        box.press("Enter")
        page.wait_for_timeout(500)
        wait_rendered(page)
        page.get_by_role("button", name="Save", exact=True).click()
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stAlert"]')].some(a => /export folder|outside/i.test(a.innerText))""",
            timeout=60_000,
        )
        assert not target.parent.exists()  # no directory the user did not ask for
        assert str(exports) in _text(page)  # the page names the folder it writes to
    finally:
        page.close()
