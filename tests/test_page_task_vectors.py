"""Task vectors opens on a Summary tab of numbers (no chart: a fresh browser tab then never waits for Plotly's
bundle); the numbers are the ones the chart tabs draw."""

from __future__ import annotations

import numpy as np
from streamlit.testing.v1 import AppTest
from test_pages import APP, ROOT, TASKS, TIMEOUT, assert_clean, figure, test_ref, values  # noqa: F401


def summary_app(ref) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["model_set_ref"] = ref
    return at.run()


def test_task_vectors_summary_is_numbers_only_and_matches_the_heatmap(test_ref):  # noqa: F811
    at = summary_app(test_ref)
    at.switch_page(str(ROOT / "pages/task_vectors.py")).run()
    assert_clean(at, "task vectors summary")
    assert not at.get("plotly_chart")
    grid, conflicts = at.table[0].value, at.table[1].value
    assert list(grid.index) == list(TASKS) and list(grid.columns) == ["outside", "0", "1", "2", "3"]
    assert list(conflicts.columns) == ["outside", "0", "1", "2", "3"]
    assert len(at.metric) == len(TASKS)
    at.session_state["tv_tab"] = "Norms by block"
    at.run()
    at.radio(key="tv_measure").set_value("relative_norm").run()
    heat = figure(at, 0).data[0]
    np.testing.assert_allclose(values(heat.z).astype(float).reshape(grid.shape), grid.to_numpy(dtype=float), rtol=1e-6)
