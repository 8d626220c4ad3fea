"""One background-job runner for every long task the app starts (tinting, fine-tune lab, continual,
sweeps, zoo builds): a daemon thread, progress, cancel, result, error.

    job = Job(lambda job: work(progress=job.progress, cancel=job.cancel), name="sweep")
    job.running, job.done, job.total, job.label, job.result, job.error
    job.cancel.set()     # honoured by the work function between steps

A lab subclasses Job only to add the live fields its page draws (rows of a training curve, an
accuracy matrix); the thread, the cancel event, the thread setting and the error capture live here.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import Cancelled, MergeScopeError
from .threads import torch_threads


class Job:
    """Runs ``fn(job)`` in a daemon thread and keeps what a page polls.

    fn: receives this Job; it reports with ``job.progress(done, total, label)`` and checks
    ``job.cancel`` (a threading.Event) or calls ``job.check_cancel()``. Its return value becomes
    ``job.result``. An exception becomes ``job.error`` (text, "Type: message") and
    ``job.exception``; `Cancelled` marks the job ``cancelled`` instead of failed.
    threads: torch intra-op threads while the job runs (None: leave as is).
    serial: unique in the process, for "have I shown this job yet" marks (an ``id()`` is reused once a
    finished job is freed, so a second job could be taken for the first and its results never shown).
    """

    _serials = itertools.count(1)

    def __init__(
        self,
        fn: Callable[[Job], Any] | None = None,
        *,
        name: str = "job",
        threads: int | None = None,
        autostart: bool = True,
    ):
        self.name = name
        self.serial = next(Job._serials)
        self.threads = threads
        self.cancel = threading.Event()
        self.done, self.total, self.label = 0, 0, "starting"
        self.result: Any = None
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.cancelled = False
        self.started = time.time()
        self.first_progress: float | None = None  # seconds from start to the first progress report
        self.finished: float | None = None
        self._fn = fn
        self._thread = threading.Thread(target=self._main, daemon=True, name=f"mergescope-{name}")
        if autostart:
            self.start()

    # -- what the work function calls ------------------------------------------------------
    def progress(self, done: int, total: int, label: str = "") -> None:
        if self.first_progress is None:
            self.first_progress = time.time() - self.started
        self.done, self.total = int(done), int(total)
        if label:
            self.label = label

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise Cancelled(f"{self.name} cancelled")

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Job:
        self.started = time.time()
        self._thread.start()
        return self

    def run(self) -> Any:
        """The work; subclasses override this instead of passing `fn`."""
        if self._fn is None:
            raise NotImplementedError("pass fn or override run()")
        return self._fn(self)

    def _main(self) -> None:
        try:
            with torch_threads(self.threads):
                self.result = self.run()
        except Cancelled:
            self.cancelled = True
        except BaseException as e:  # kept for the page; never lost in a thread
            self.exception = e
            self.error = str(e) if isinstance(e, MergeScopeError) else f"{type(e).__name__}: {e}"
        finally:
            if self.cancel.is_set():
                self.cancelled = True
            self.finished = time.time()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)
