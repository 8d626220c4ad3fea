"""The Runs page (AppTest): lists the run log, filters by kind and text, compares two runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runtime.runlog import RunLog

APP = Path(__file__).resolve().parents[1] / "ui" / "app.py"


@pytest.fixture
def log(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    log = RunLog()
    log.log("eval", {"merge": {"method": "ties", "params": {"k": 0.2}}}, {"avg_abs": 0.61, "avg_norm": 0.8})
    log.log("eval", {"merge": {"method": "ties", "params": {"k": 0.3}}}, {"avg_abs": 0.65, "avg_norm": 0.84})
    log.log("sweep", {"merge": {"method": "consensus"}}, {"test": {"avg_abs": 0.7, "avg_norm": 0.9}})
    return log


def page():
    # Through the app's navigation: without a model set the page links the Models page.
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    at.switch_page(str(APP.parents[1] / "pages" / "runs.py")).run()
    assert not at.exception, at.exception
    return at


def test_lists_runs_with_their_headline_numbers(log):
    at = page()
    table = at.dataframe[0].value
    assert table["id"].tolist() == [3, 2, 1]
    assert table["method"].tolist() == ["consensus", "ties", "ties"]
    assert table["avg_norm"].tolist() == pytest.approx([0.9, 0.84, 0.8])  # a sweep shows its test numbers


def test_kind_and_text_filters(log):
    at = page()
    at.selectbox(key="runs_kind").set_value("sweep").run()
    assert at.dataframe[0].value["id"].tolist() == [3]
    at.selectbox(key="runs_kind").set_value("all").run()
    at.text_input(key="runs_text").input('"k": 0.3').run()
    assert at.dataframe[0].value["id"].tolist() == [2]


def test_compare_shows_only_the_differences_by_default(log):
    at = page()
    at.selectbox(key="runs_kind").set_value("eval").run()
    cmp = at.dataframe[1].value
    assert "config.merge.params.k" in cmp.index
    assert "config.merge.method" not in cmp.index  # the same in both
    assert cmp.loc["metrics.avg_abs", "diff"] == pytest.approx(0.04)
    at.toggle(key="runs_only_diff").set_value(False).run()
    assert "config.merge.method" in at.dataframe[1].value.index


def test_empty_log_says_where_runs_come_from(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "empty.sqlite"))
    at = page()
    assert any("No runs yet" in i.value for i in at.info)
