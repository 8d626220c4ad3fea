"""Every registered merge method, the 2024-25 ones included, gets working controls in the Merge lab
and the page's numbers equal core's (AppTest on the micro zoo)."""

from __future__ import annotations

import pytest
from test_page_merge_lab import _core, _page, _result  # tests/ is on sys.path

from core.merging import METHODS


@pytest.fixture(autouse=True)
def _micro_cache(micro_zoo, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))


@pytest.mark.parametrize("method", ["tsv_m", "iso_c", "iso_cts", "cart", "breadcrumbs", "magmax", "pcb"])
def test_new_methods_render_and_equal_core(micro_zoo, method):
    at = _page()
    at.selectbox(key="ml_method").set_value(method).run()
    assert not at.exception, at.exception
    assert _result(at)["accuracy"] == _core(micro_zoo, method=method, **METHODS[method].defaults())
