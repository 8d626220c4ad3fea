"""Every page, through the app shell (ui/app.py), on a broken model set that became active without the
Models page (a shared link, $MERGESCOPE_DEFAULT_MODEL_SET, files changed on disk): one clear message
naming the file or tensor, never an exception element or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_page_models import BLOCKS, WIDTH, finetune, write_set
from test_plots import tiny_visual

from core.spec import ModelSetRef
from ui import existing_pages

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "ui" / "app.py")
NEEDS_NO_MODEL = {"pages/models.py", "pages/runs.py"}
PAGES = [row[1] for row in existing_pages() if row[1] not in NEEDS_NO_MODEL]


def _nan():
    sd = finetune(1)
    sd["visual.transformer.resblocks.1.attn.out_proj.weight"][2, 3] = float("nan")
    return sd


CASES = {
    "text file renamed .safetensors": (lambda: b"remember to upload the real weights\n", "text file"),
    "another width": (lambda: tiny_visual(1, 2 * WIDTH, BLOCKS), "Shape mismatch"),
    "another architecture": (lambda: tiny_visual(1, WIDTH, BLOCKS + 4), "has 6 transformer blocks"),
    "a NaN": (_nan, "visual.transformer.resblocks.1.attn.out_proj.weight"),
}


@pytest.fixture(scope="module")
def bad_sets(tmp_path_factory):
    sets = {}
    for name, (make, _) in CASES.items():
        folder = tmp_path_factory.mktemp(name.replace(" ", "_").replace(".", ""))
        base, fts = write_set(folder, good=finetune(2), bad=make())
        sets[name] = ModelSetRef(zoo=None, base=str(base), finetuned=(("bad", str(fts[1])), ("good", str(fts[0]))))
    return sets


@pytest.mark.parametrize("case", list(CASES))
def test_every_page_refuses_a_broken_set_with_one_clear_message(case, bad_sets, monkeypatch):
    monkeypatch.delenv("MERGESCOPE_DEFAULT_ZOO", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_set_ref"] = bad_sets[case]
    at.run()
    needle = CASES[case][1]
    for page in PAGES:
        at.switch_page(str(ROOT / page)).run()
        assert not at.exception, f"{page} / {case}: {[e.value for e in at.exception]}"
        errors = [e.value for e in at.error]
        assert errors and "cannot be used" in errors[0], f"{page} / {case}: {errors}"
        assert any(needle in e for e in errors), f"{page} / {case}: {errors}"
        assert not any("Traceback" in e for e in errors)
        assert any(link.proto.page == "models" for link in at.get("page_link")), page


def test_the_error_boundary_turns_any_page_error_into_one_message():
    from core.errors import NonFiniteError
    from ui.errors import message

    m = message(NonFiniteError("fine-tuned 'svhn' (ft/svhn.safetensors)", "visual.proj", 3, 100))
    assert "Non-finite" in m and "visual.proj" in m and "allow_nonfinite" in m
    assert "File not found" in message(FileNotFoundError(2, "No such file", "/x/base.safetensors"))
    assert "/x/base.safetensors" in message(FileNotFoundError(2, "No such file", "/x/base.safetensors"))
    assert "Internal error" in message(ZeroDivisionError("division by zero"))
