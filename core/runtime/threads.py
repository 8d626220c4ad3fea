"""How many torch threads a run should use.

On a busy 2-core machine a 2-thread OpenMP process waits at every barrier for its descheduled twin:
measured on this project's machines, a fine-tune step ran 10-50x slower with two threads than with
one. So: up to 2 threads on an idle machine, 1 when the cores are already busy.
"""

from __future__ import annotations

import contextlib
import os
import threading


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_threads(max_threads: int = 2) -> int:
    """Torch threads for a run: up to `max_threads` on an idle machine, 1 when the cores are busy."""
    cpus = available_cpus()
    busy = os.getloadavg()[0] > max(0.5, cpus - 1.5)
    return 1 if busy or cpus < 2 else max(1, min(max_threads, cpus))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` intra-op torch threads (None: leave as is); the old setting is restored.

    Process-wide (torch has no per-thread setting): a background job that sets it also affects the
    page's own forward passes while it runs, which is what we want on 2 cores.
    """
    import torch

    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


_fewer_lock = threading.Lock()
_fewer_active = 0
_fewer_saved = 1


@contextlib.contextmanager
def one_thread_fewer():
    """Run a block with one intra-op torch thread fewer (at least one), for a pass that keeps a core busy
    on its own thread (`core.merging.streaming.TaskVectors.chunks(read_ahead=True)`'s reader).

    Counted: passes that overlap (two sessions' merges in the app) lower the setting once, and the last
    one out restores it; nested `torch_threads` save/restore pairs that interleave across threads could
    otherwise leave the process at the lowered setting for good."""
    import torch

    global _fewer_active, _fewer_saved
    with _fewer_lock:
        if _fewer_active == 0:
            _fewer_saved = torch.get_num_threads()
            torch.set_num_threads(max(1, _fewer_saved - 1))
        _fewer_active += 1
    try:
        yield
    finally:
        with _fewer_lock:
            _fewer_active -= 1
            if _fewer_active == 0:
                torch.set_num_threads(_fewer_saved)
