"""Spectra opens on a Summary tab of numbers (no chart: a fresh browser tab then never waits for Plotly's
bundle); the numbers are the ones the "α over depth" chart draws."""

from __future__ import annotations

import numpy as np
from test_page_task_vectors import summary_app
from test_pages import ROOT, assert_clean, figure, test_ref, values  # noqa: F401


def test_spectra_summary_is_numbers_only_and_matches_the_depth_chart(test_ref):  # noqa: F811
    at = summary_app(test_ref)
    at.switch_page(str(ROOT / "pages/spectra.py")).run()
    assert_clean(at, "spectra summary")
    assert not at.get("plotly_chart")
    weights = at.table[0].value
    assert list(weights.index) == ["base θ₀", "fine-tuned colours", "fine-tuned digits"]
    assert weights.columns[0] == "in" and weights.columns[-1] == "out"
    at.session_state["spec_tab"] = "α over depth"
    at.run()
    line = figure(at, 0).data[0]
    np.testing.assert_allclose(values(line.y).astype(float), weights.iloc[0].to_numpy(dtype=float), rtol=1e-6)


def test_merge_spectra_tab_draws_the_spectra_and_the_interference(test_ref):  # noqa: F811
    at = summary_app(test_ref)
    at.switch_page(str(ROOT / "pages/spectra.py")).run()
    at.session_state["spec_tab"] = "Merge spectra"
    at.run()
    assert_clean(at, "merge spectra")
    sv = figure(at, 0)
    names = [t.name for t in sv.data]
    assert "merged" in names and len(names) >= 3  # every task's tau and the merged tau
    assert sv.layout.yaxis.type == "log"
    heat = figure(at, 1).data[0]
    raw = heat.z
    z = np.asarray(values(raw), dtype=float)
    if isinstance(raw, dict) and "shape" in raw:  # plotly's binary encoding keeps the shape apart
        z = z.reshape([int(n) for n in str(raw["shape"]).split(",")])
    elif z.ndim == 1:
        z = z.reshape(int(round(len(z) ** 0.5)), -1)
    np.testing.assert_allclose(np.diag(z), 1.0, atol=1e-6)  # a task's subspace overlaps itself fully
    assert len(at.get("download_button")) >= 3  # CSV export
