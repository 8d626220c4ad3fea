"""ui.state helpers that read Streamlit's run context: `newer_input` sees a pending rerun request."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequestType

from ui import state as S


@pytest.mark.parametrize(
    "pending, cancels",
    [(ScriptRequestType.CONTINUE, False), (ScriptRequestType.RERUN, True), (ScriptRequestType.STOP, True)],
)
def test_newer_input_cancels_once_streamlit_holds_a_rerun_or_stop(monkeypatch, pending, cancels):
    requests = SimpleNamespace(_state=ScriptRequestType.CONTINUE)
    ctx = SimpleNamespace(script_requests=requests)
    monkeypatch.setattr("streamlit.runtime.scriptrunner.get_script_run_ctx", lambda *a, **k: ctx)
    cancel = S.newer_input()
    assert cancel() is False
    requests._state = pending  # the browser sent a newer slider value while the evaluation runs
    assert cancel() is cancels


def test_newer_input_never_cancels_outside_a_script_run(monkeypatch):
    monkeypatch.setattr("streamlit.runtime.scriptrunner.get_script_run_ctx", lambda *a, **k: None)
    assert S.newer_input()() is False


def test_the_app_warms_ties_kernel_once_on_a_background_thread(monkeypatch):
    """ui/app.py calls warm_kernels: one thread per process (cache_resource) loads the kernel, so the first
    TIES merge does not pay numba's import."""
    from core.merging import fused

    calls = []
    monkeypatch.setattr(fused, "warm", lambda: calls.append(1) or "TIES kernel ready (0.0 s)")
    S.warm_kernels.clear()
    try:
        th = S.warm_kernels()
        assert S.warm_kernels() is th and th.daemon
        th.join(5)
        assert calls == [1]
    finally:
        S.warm_kernels.clear()
    assert "S.warm_kernels()" in Path(S.__file__).with_name("app.py").read_text()
