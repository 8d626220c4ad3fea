"""ui.state helpers that read Streamlit's run context: `newer_input` sees a pending rerun request."""

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
