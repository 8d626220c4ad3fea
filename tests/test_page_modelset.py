"""Your own models on your own data, in the app: the demo zoo exported as a model set folder is loaded
through the Models page's JSON tab (validated: checkpoints and task data), and the Merge lab then shows
exactly the numbers of the zoo path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.spec import ModelSetRef

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "ui" / "app.py")


@pytest.fixture(scope="module")
def exported(micro_zoo, tmp_path_factory):
    from core.zoo.export import export_zoo

    out = tmp_path_factory.mktemp("export") / "micro-set"
    export_zoo("micro", out, cache=micro_zoo.zoo_dir.parent)
    moved = out.parent / "moved-set"  # relative paths: the folder can be moved
    shutil.move(str(out), str(moved))
    return moved / "modelset.json"


def _app(monkeypatch, micro_zoo):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))
    monkeypatch.delenv("MERGESCOPE_DEFAULT_ZOO", raising=False)
    at = AppTest.from_file(APP, default_timeout=300).run()
    at.switch_page(str(ROOT / "pages/models.py")).run()
    return at


def test_json_model_set_is_validated_loaded_and_gives_the_zoo_numbers(exported, micro_zoo, monkeypatch):
    at = _app(monkeypatch, micro_zoo)
    at.text_input(key="ms_json_path").input(str(exported)).run()
    at.button(key="ms_json_use").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["model_set_ref"] == ModelSetRef(zoo=None, path=str(exported))
    assert not at.error, [e.value for e in at.error]
    at.switch_page(str(ROOT / "pages/merge_lab.py")).run()
    assert not at.exception, [e.value for e in at.exception]
    _, r = at.session_state["ml_result"]
    assert r["final"] and sum(r["n"].values()) > 0
    # the same merge on the zoo path
    at2 = AppTest.from_file(APP, default_timeout=300)
    at2.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at2.run()
    at2.switch_page(str(ROOT / "pages/merge_lab.py")).run()
    _, z = at2.session_state["ml_result"]
    assert r["accuracy"] == z["accuracy"]


def test_a_task_with_a_wrong_head_is_refused_naming_task_and_file(exported, micro_zoo, monkeypatch, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(exported.parent, folder)
    spec = json.loads((folder / "modelset.json").read_text())
    first = list(spec["tasks"])[0]
    import torch

    from core.checkpoints import load_state_dict, save_state_dict

    head = load_state_dict(folder / spec["tasks"][first]["head"])["head"]
    save_state_dict({"head": torch.cat([head, head[:1]])}, folder / "heads" / "wrong.safetensors")
    spec["tasks"][first]["head"] = "heads/wrong.safetensors"  # one class too many
    (folder / "modelset.json").write_text(json.dumps(spec))
    at = _app(monkeypatch, micro_zoo)
    at.text_input(key="ms_json_path").input(str(folder / "modelset.json")).run()
    at.button(key="ms_json_use").click().run()
    assert not at.exception
    assert "model_set_ref" not in at.session_state or at.session_state["model_set_ref"] is None
    assert any(first in e.value and "rows but the data has" in e.value for e in at.error)
