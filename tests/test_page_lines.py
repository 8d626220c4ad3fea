"""The LiNeS page (AppTest on the micro zoo): sliders drive the numbers, and they are core's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.evaluate import Evaluator
from core.live import ALPHAS
from core.merging import merge
from core.spec import ModelSetRef
from tests.fixtures import full_clip
from tests.pagehelp import shown_curve

SUB = 50
PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "lines.py")


@pytest.fixture
def page(micro_zoo, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # where ModelSetRef(zoo="micro") looks
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at.session_state["lines_sub"] = SUB  # the page's "images per task" setting keeps the tests quick
    at.run()
    assert not at.exception, at.exception
    return at


def _core_accuracy(ms, target, alpha, beta):
    sd = merge(ms.base(), {target: ms.finetuned(target)}, "task_arithmetic", lines=(alpha, beta))
    return Evaluator.for_model_set(ms, split="test", subsample=SUB).accuracy(sd)


def test_alpha_slider_changes_the_numbers_and_they_equal_core(page, micro_zoo):
    target = page.selectbox(key="lines_target").value
    page.slider(key="lines_alpha").set_value(1.0).run()
    key_ft, at_ft = page.session_state["lines_result"]
    page.slider(key="lines_alpha").set_value(0.0).run()
    assert not page.exception
    key_0, at_0 = page.session_state["lines_result"]
    assert key_0 != key_ft
    assert at_0["accuracy"] != at_ft["accuracy"]  # alpha = 1 is the fine-tuned model, alpha = 0 removes most of it
    assert at_0["accuracy"] == _core_accuracy(micro_zoo, target, 0.0, 1.0)
    # The table's current row shows the same numbers.
    row = page.dataframe[0].value.iloc[2]
    assert row[f"{target} (target)"] == pytest.approx(at_0["accuracy"][target])
    assert row["score"] == pytest.approx(at_0["score"])


def test_beta_unlocks_and_moves_independently(page, micro_zoo):
    target = page.selectbox(key="lines_target").value
    page.toggle(key="lines_free_beta").set_value(True).run()
    page.slider(key="lines_alpha").set_value(0.3).run()
    page.slider(key="lines_beta").set_value(0.2).run()
    assert not page.exception
    _, result = page.session_state["lines_result"]
    assert result["accuracy"] == _core_accuracy(micro_zoo, target, 0.3, 0.2)


def test_target_select_switches_the_model(page, micro_zoo):
    other = micro_zoo.tasks[1]
    page.selectbox(key="lines_target").set_value(other).run()
    _, result = page.session_state["lines_result"]
    assert result["target"] == other
    assert result["accuracy"] == _core_accuracy(micro_zoo, other, 0.5, 0.5)


def test_alpha_sweep_chooses_on_val_and_reports_on_test(page):
    target = page.selectbox(key="lines_target").value
    page.button(key="lines_sweep_btn").click().run()
    assert not page.exception
    sweep = page.session_state["lines_sweeps"][(target, SUB, False)]
    df = sweep["df"]
    assert set(df["split"]) == {"val"} and len(df) == 2 * len(ALPHAS)
    lines = df[df["kind"] == "LiNeS"]
    assert sweep["best"]["score"] == lines["score"].max()
    assert sweep["report"]["split"] == "test"
    assert page.get("plotly_chart")  # the trade-off curve is drawn


def test_every_live_evaluation_is_in_the_run_log(page, micro_zoo):
    """The Runs page promises every evaluation: LiNeS slider positions are logged as reproducible RunConfigs."""
    from core.runtime.runlog import RunLog
    from core.spec import RunConfig

    page.slider(key="lines_alpha").set_value(0.65).run()  # a position no other test evaluates (not cached)
    runs = RunLog().list(kind="live")  # this test's own run log (conftest)
    assert len(runs) >= 1
    configs = [RunConfig.from_dict(RunLog().get(int(i))["config"]) for i in runs["id"]]
    assert all(c.model_set.zoo == "micro" and c.eval.split == "test" for c in configs)
    assert any(c.merge.lines is not None and c.merge.lines[0] == 0.65 for c in configs)


def test_tower_selector_draws_each_towers_own_line(micro_zoo, tmp_path, monkeypatch):

    from core.layers import num_blocks
    from core.lines import lines_curve

    full_clip.full_zoo_copy(micro_zoo.zoo_dir, tmp_path)
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at.session_state["lines_sub"] = SUB
    at.run()
    at.slider(key="lines_alpha").set_value(0.3).run()
    assert not at.exception and at.radio(key="lines_tower").value == "visual"
    for tower in ("visual", "text"):
        at.radio(key="lines_tower").set_value(tower).run()
        curve = shown_curve(at)
        assert curve == pytest.approx(lines_curve(0.3, 0.7, num_blocks(micro_zoo.base(), tower=tower)))


def test_the_lesson_picks_the_default_target_and_says_what_to_look_for(micro_zoo, monkeypatch, tmp_path):
    """Without a measured lesson the page offers to measure it; once measured, the target where LiNeS beats
    uniform scaling most is selected and the page says so (core.live_report.lines_lesson)."""
    from core.analysis_cache import AnalysisCache
    from core.live_report import cached_lines_lesson

    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))
    monkeypatch.setattr("ui.state.analysis_cache", lambda: AnalysisCache(tmp_path / "analysis"))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at.session_state["lines_sub"] = SUB
    at.run()
    assert not at.exception and "What to look for" in " ".join(m.value for m in at.markdown)
    at.button(key="lines_lesson").click().run()
    assert not at.exception
    lesson = cached_lines_lesson(micro_zoo, cache=AnalysisCache(tmp_path / "analysis"), compute=False)
    assert lesson is not None and at.selectbox(key="lines_target").value == lesson["target"]
    assert f"clearest on **{lesson['target']}**" in " ".join(c.value for c in at.caption)
    fresh = AppTest.from_file(PAGE, default_timeout=60)  # a new session reads the lesson back from disk
    fresh.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    fresh.session_state["lines_sub"] = SUB
    fresh.run()
    assert fresh.selectbox(key="lines_target").value == lesson["target"]
    assert all(b.key != "lines_lesson" for b in fresh.button)  # nothing left to measure
