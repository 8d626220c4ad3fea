"""The Fine-tune lab page on the micro zoo (AppTest): nothing loaded -> a link; a tiny grid -> results;
then the runs are added to the model set."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import core.spec

ROOT = Path(__file__).resolve().parent.parent
APP, PAGE = str(ROOT / "ui" / "app.py"), str(ROOT / "pages" / "finetune_lab.py")


@pytest.fixture
def micro(request, monkeypatch, tmp_path):
    monkeypatch.delenv("MERGESCOPE_DEFAULT_ZOO", raising=False)
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "cache"))  # lab models are saved under <cache>/lab
    try:
        zoo_dir = request.getfixturevalue("micro_zoo_dir")  # tests/conftest.py, when it is there
        monkeypatch.setenv("MERGESCOPE_CACHE", str(zoo_dir.parent))
    except pytest.FixtureLookupError:
        from core.zoo import is_built

        monkeypatch.undo()
        if not is_built("micro"):
            pytest.skip("micro zoo not built (python -m core zoo build --micro)")
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))


def test_without_a_model_set_the_page_points_to_models():
    at = AppTest.from_file(APP, default_timeout=120).run()  # page links need the app's navigation
    at.switch_page(PAGE).run()
    assert not at.exception
    assert any("No model set is loaded" in i.value for i in at.info)


def test_a_tiny_grid_shows_accuracy_vs_fraction_heatmap_and_adds_models(micro):
    at = AppTest.from_file(str(ROOT / PAGE), default_timeout=120)
    at.session_state["model_set_ref"] = core.spec.ModelSetRef(zoo="micro")
    at.run()
    assert not at.exception
    at.multiselect(key="ft_fractions").set_value([0.1])
    at.multiselect(key="ft_methods").set_value(["uniform", "tempbalance"])
    at.number_input(key="ft_steps").set_value(3)
    at.number_input(key="ft_every").set_value(1)
    at.number_input(key="ft_batch").set_value(8)
    at.button(key="ft_run").click().run()
    assert not at.exception
    job = at.session_state["ft_grid_job"]
    job.join(90)
    assert job.error is None and len(job.rows) == 2
    at.run()
    assert not at.exception
    runs = at.session_state["ft_runs"]
    assert len(runs) == 2
    tb = next(r for r in runs.values() if r.config.method == "tempbalance")
    assert sorted(tb.multipliers["step"].unique()) == [0, 1, 2]  # recomputed every step
    assert any("TempBalance" in m.value for m in at.markdown)  # the accuracy table
    # save two runs and make them part of the active model set
    names = list(runs)[:2]
    at.multiselect(key="ft_add_choice").set_value(names).run()
    at.button(key="ft_add").click().run()
    assert not at.exception
    ref = at.session_state["model_set_ref"]
    assert ref.zoo is None and {n for n, _ in ref.finetuned} >= set(names)
    assert len(ref.finetuned) == 4 + 2  # the zoo's own fine-tunes stay
