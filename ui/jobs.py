"""One way to show a background job on a page: a progress bar that refreshes itself, a Cancel button,
and the outcome (result handed back, error shown as one message, cancellation said plainly).

    job = jobs.current(KEY)                       # the session's job under KEY, or None
    if clicked and job is None: jobs.start(KEY, Job(work, name="sweep"))
    outcome = jobs.show(KEY, describe=lambda j: f"{j.done}/{j.total} evaluations")
    if outcome is not None: ...                   # the finished Job (result, error, cancelled)

The job itself is `core.runtime.jobs.Job`: the thread, progress and cancel live in core.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from core.runtime.jobs import Job


def current(key: str) -> Job | None:
    """The job this session started under `key` that is still running (None otherwise)."""
    job = st.session_state.get(key)
    return job if isinstance(job, Job) and job.running else None


def start(key: str, job: Job) -> Job:
    st.session_state[key] = job
    st.session_state.pop(f"{key}:shown", None)
    return job


def show(
    key: str, describe: Callable[[Job], str] | None = None, *, every: float = 1.0, cancel_key: str | None = None
) -> Job | None:
    """While the job under `key` runs: a self-refreshing progress bar and a Cancel button (returns None).
    When it has finished: shows its error or cancellation once and returns the finished Job."""
    job = st.session_state.get(key)
    if not isinstance(job, Job):
        return None
    if job.running:

        @st.fragment(run_every=every)
        def watch() -> None:
            text = describe(job) if describe else f"{job.label}: {job.done}/{job.total}"
            st.progress(job.fraction, text=f"{text} · {job.elapsed:.0f} s")
            if st.button("Cancel", key=cancel_key or f"{key}:cancel"):
                job.cancel.set()
                st.toast("Cancelling after the step in flight…")
            if not job.running:
                st.rerun()

        watch()
        return None
    if job.cancelled:
        st.warning(f"{job.name.capitalize()} cancelled after {job.elapsed:.0f} s.")
    elif job.error:
        st.error(f"{job.name.capitalize()} stopped: {job.error}")
    return job
