"""The Continual page on the micro zoo (AppTest): a tiny run in the background, its figures, then the
side-by-side comparison of logged runs. (Without a model set the page links to Models:
tests/test_pages.py checks every page.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

import core.spec
from core.labs.continual.config import TERMS

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "continual.py")


@pytest.fixture
def micro(micro_zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # where ModelSetRef(zoo="micro") looks
    return micro_zoo


def _tiny(at: AppTest, tasks: list[str], **toggles) -> None:
    at.multiselect(key="cl_tasks").set_value(tasks)
    at.number_input(key="cl_steps").set_value(2)
    at.number_input(key="cl_batch").set_value(8)
    at.number_input(key="cl_n_train").set_value(16)
    at.number_input(key="cl_ntk").set_value(2)
    for key, value in toggles.items():
        at.toggle(key=key).set_value(value)


def _run(at: AppTest):
    at.button[0].click().run()  # the form's submit button
    assert not at.exception, at.exception
    job = at.session_state["continual_job"]
    job.join(100)
    assert job.error is None and job.result is not None
    at.run()
    assert not at.exception, at.exception
    return job.result


def test_a_tiny_run_shows_its_matrices_and_two_logged_runs_compare(micro):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_set_ref"] = core.spec.ModelSetRef(zoo="micro")
    at.run()
    assert not at.exception
    assert any("No continual runs" in c.value for c in at.caption)

    _tiny(at, ["digits", "arrows"], cl_expansion=False, cl_ortho=False, cl_l2=False)
    base = _run(at)
    assert base.config.terms == () and base.config.tasks == ("digits", "arrows") and base.config.steps == 2
    assert np.isfinite(base.acc[0, 1]) and np.isnan(base.acc[1, 0])
    assert at.metric[0].value == f"{base.average_accuracy():.1%}"
    assert "Average forgetting" in [m.label for m in at.metric]

    _tiny(at, ["digits", "arrows"], cl_expansion=True, cl_ortho=True, cl_l2=True)
    full = _run(at)
    assert full.config.terms == TERMS
    assert len(at.session_state["continual_runs"]) == 2
    table = at.dataframe[0].value
    assert list(table["label"]) == ["all terms", "baseline (sequential adapters)"]
    assert table["avg_acc"].tolist() == pytest.approx([full.average_accuracy(), base.average_accuracy()])
    assert at.multiselect(key="cl_compare_ids").value == table["id"].tolist()  # both, side by side
