"""The Sweeps page (AppTest on the micro zoo): a grid runs in the background with progress,
the best val point is evaluated on test with core's numbers, the sweep lands in the run log,
and Cancel stops it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.evaluate import Evaluator
from core.merging import merge
from core.runtime.runlog import RunLog
from core.spec import ModelSetRef

PAGE = Path(__file__).resolve().parents[1] / "pages" / "sweeps.py"


@pytest.fixture
def page(micro_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    # ModelSetRef(zoo="micro") resolves through the cache dir: point it at the fixture's zoo.
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))
    at = AppTest.from_file(str(PAGE), default_timeout=60)
    at.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for_sweep(at, timeout=240):
    """Rerun the page until the background sweep has finished and its result is shown."""
    deadline = time.monotonic() + timeout
    while "sweep_job" in at.session_state and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception
    assert "sweep_job" not in at.session_state, "the sweep did not finish in time"


def test_lambda_sweep_picks_on_val_and_reports_core_test_numbers(page, micro_zoo):
    page.text_input(key="sweep_lambda_task_arithmetic").input("0.3, 1.0")
    page.selectbox(key="sweep_sub").set_value(50)
    page.button(key="sweep_run").click().run()
    assert not page.exception, page.exception
    wait_for_sweep(page)
    res = page.session_state["sweep_result"]
    assert res.frame["lambda"].tolist() == [0.3, 1.0]
    assert res.best["avg_norm"] == res.frame["avg_norm"].max()
    # The test number is core's: merge at the chosen lambda, full test split.
    sd = merge(micro_zoo.base(), micro_zoo.finetuned_all(), "task_arithmetic", coefficients=res.best["lambda"])
    assert res.test["accuracy"] == Evaluator.for_model_set(micro_zoo, split="test").accuracy(sd, res.tasks)
    assert page.get("plotly_chart")
    assert res.frame["images"].iloc[0] == 50 * len(res.tasks)  # each val number rests on 50 images per task
    assert any("rests on" in c.value for c in page.caption)
    runs = RunLog().list(kind="sweep")
    assert runs["id"].tolist() == [res.run_id] and runs["status"].tolist() == ["ok"]


def test_lines_grid_and_cancel(page):
    page.radio(key="sweep_kind").set_value("LiNeS (α, β)").run()
    page.text_input(key="sweep_beta_task_arithmetic").input(", ".join(str(0.1 * i) for i in range(1, 31)))
    page.selectbox(key="sweep_sub").set_value(50)
    page.button(key="sweep_run").click().run()
    page.button(key="sweep_cancel").click().run()
    wait_for_sweep(page)
    res = page.session_state["sweep_result"]
    assert res.cancelled and len(res.frame) < 30
    assert res.test == {}
    assert any("Cancelled" in w.value for w in page.warning)
    assert RunLog().list(kind="sweep")["status"].tolist() == ["cancelled"]


def test_a_grid_that_is_not_numbers_is_named_in_a_clear_message_and_nothing_runs(page):
    page.text_input(key="sweep_lambda_task_arithmetic").input("0.1, abc")
    page.button(key="sweep_run").click().run()
    assert not page.exception, page.exception
    assert [e.value for e in page.error] == [
        "Cannot run this grid: λ values: 'abc' is not a number; separate the values with commas"
    ]
    assert "sweep_job" not in page.session_state
