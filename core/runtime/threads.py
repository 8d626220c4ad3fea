"""How many torch threads a run should use.

On a busy 2-core machine a 2-thread OpenMP process waits at every barrier for its descheduled twin:
measured on this project's machines, a fine-tune step ran 10-50x slower with two threads than with
one. So: up to 2 threads on an idle machine, 1 when the cores are already busy.
"""

from __future__ import annotations

import contextlib
import os


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
