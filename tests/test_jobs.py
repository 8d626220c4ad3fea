"""core.runtime.jobs.Job: the one background-job runner (result, error, cancel, and an identity that lasts)."""

from __future__ import annotations

import gc
import re
from pathlib import Path

from core.errors import Cancelled
from core.runtime.jobs import Job

PAGES = Path(__file__).resolve().parent.parent / "pages"


def _finished(job: Job) -> Job:
    job.join(10)
    assert not job.running
    return job


def test_result_error_and_cancel_are_kept():
    assert _finished(Job(lambda j: 42)).result == 42
    failed = _finished(Job(lambda j: 1 / 0))
    assert failed.error.startswith("ZeroDivisionError") and not failed.cancelled

    def cancelled(job):
        raise Cancelled("stop")

    stopped = _finished(Job(cancelled))
    assert stopped.cancelled and stopped.error is None


def test_serial_is_unique_even_where_an_id_is_reused():
    """Pages mark a finished job as shown by its serial: a freed job's id can be the next job's id."""
    serials = []
    for _ in range(50):
        job = _finished(Job(lambda j: None))
        serials.append(job.serial)
        del job
        gc.collect()
    assert len(set(serials)) == 50


def test_pages_never_mark_jobs_by_id():
    offenders = [p.name for p in PAGES.glob("*.py") if re.search(r"\bid\(job\)", p.read_text())]
    assert offenders == []
