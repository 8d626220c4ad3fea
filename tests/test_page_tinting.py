"""The Tinting page on the micro zoo (AppTest): a tiny run in the background, then the comparison.
(Without a model set the page links to Models: tests/test_pages.py checks every page.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import core.spec

PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "tinting.py")


@pytest.fixture
def micro(micro_zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # where ModelSetRef(zoo="micro") looks
    return micro_zoo


def test_a_tiny_run_and_its_ablation_show_comparison_and_lambda_heatmap(micro, tmp_path, monkeypatch):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_set_ref"] = core.spec.ModelSetRef(zoo="micro")
    at.run()
    assert not at.exception
    assert any("Transductive" in i.value for i in at.info)
    at.number_input(key="tint_steps").set_value(2)
    at.number_input(key="tint_every").set_value(1)
    at.number_input(key="tint_batch").set_value(8)
    at.toggle(key="tint_ablation").set_value(True)  # then the same run without the filter
    at.button[0].click().run()  # the form's submit button
    assert not at.exception
    job = at.session_state["tint_job"]
    job.join(90)
    assert job.error is None and job.result is not None
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert {"Tinting (head, filter on)", "Tinting (head, filter off)"} <= set(table.index)
    assert {"zero-shot", "TA", "TIES", "TA+LiNeS", "individual"} <= set(table.index)
    assert [m.label for m in at.metric][:2] == ["Trained parameters", "Fraction of the visual encoder"]
    assert [r.steps_done for r in job.results] == [2, 2] and [r["step"] for r in job.rows] == [1, 2]
    assert [r.config.filter for r in job.results] == [True, False]
    # the export: its bytes kept for the download button, no temp folder left behind
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    at.button(key="tint_export").click().run()
    assert not at.exception
    data = at.session_state["tint_export_bytes"]
    assert len(data) > 1000 and list(tmp.iterdir()) == []


def test_adamerging_is_a_method_choice_and_trains_only_lambda(micro):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_set_ref"] = core.spec.ModelSetRef(zoo="micro")
    at.run()
    at.radio(key="tint_method").set_value("adamerging")
    at.number_input(key="tint_steps").set_value(2)
    at.number_input(key="tint_every").set_value(1)
    at.number_input(key="tint_batch").set_value(8)
    at.button[0].click().run()
    assert not at.exception
    job = at.session_state["tint_job"]
    job.join(90)
    assert job.error is None and [r.config.method for r in job.results] == ["adamerging"]
    assert job.results[0].config.lr == 1e-3 and len(job.results[0].model.tint) == 0
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    assert "AdaMerging (layer-wise)" in table.index and not any(str(i).startswith("Tinting") for i in table.index)
    m = job.results[0].model
    assert at.metric[0].value == f"{m.lambdas_raw.numel():,}"
    assert any("none (AdaMerging" in c.value for c in at.caption)
