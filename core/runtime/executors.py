"""Executors: one way to run a list of independent jobs (sweep points, evaluations).

    ex = get_executor()                      # local worker processes
    ex = get_executor(processes=0)           # in-process, serial (tests; model sets held only in memory)
    ex = get_executor(address="ray://host:10001")   # a Ray cluster (ray is optional)
    results = ex.map(fn, items, progress=lambda done, total: ..., cancel=threading.Event())

`fn` must be a module-level function (it is pickled by reference) and `items`
small picklable descriptions of the work - specs, not state dicts: workers load
what they need themselves and cache it across items (see core.sweeps).

Cancellation is cooperative: `cancel` (a threading.Event) is checked between
items; no new item starts once it is set, items already running finish, and
map raises `Cancelled` holding the results that did complete.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

from .. import errors

Progress = Callable[[int, int], None]


class Cancelled(errors.Cancelled):
    """Raised by Executor.map when the cancel event was set. `results` maps item index -> result
    for the items that completed; `total` is the number of items asked for."""

    def __init__(self, results: dict[int, Any], total: int):
        super().__init__(f"cancelled after {len(results)} of {total} items")
        self.results = results
        self.total = total


class Executor:
    """map(fn, items) -> [fn(item) for item in items], in order, with progress and cancel."""

    workers: int = 1

    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> list:
        raise NotImplementedError

    def close(self) -> None:
        """Release workers (a no-op for executors without any)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return type(self).__name__


def _worker_init() -> None:
    # One thread per worker: N single-thread workers beat N workers fighting over cores,
    # and flush-to-zero avoids the denormal slowdowns measured with small fine-tunes on this project's machines.
    # torch reads OMP_NUM_THREADS when it is first imported, so a fresh (spawned) worker
    # does not pay for importing torch before its first item needs it.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(1)
        torch.set_flush_denormal(True)


@contextmanager
def spawn_safe_main() -> Iterator[None]:
    """Start `spawn` processes inside this block so that they do not re-run a page script (`spawn_context`
    starts every child under it).

    A spawned child re-runs the parent's ``__main__`` file (as ``__mp_main__``) when that module has a
    ``__file__`` but no import spec, so that functions defined in a script unpickle. Streamlit installs
    every run of a page as such a module - made by hand, with ``__file__`` set to the app script and no
    loader - so a pool started from a page (the Models page's zoo build, a sweep) would run the whole app
    again, in bare mode, in every worker: warnings, wasted seconds, and at exit the abort one CI run of
    this suite caught (``terminate called without an active exception``). Work sent to core's workers is always a
    module-level function of an importable module, so while processes start, a ``__main__`` that neither
    the interpreter nor runpy made (no ``__spec__``, no ``__loader__``) is replaced by an empty one. A
    script run with ``python file.py`` keeps its ``__main__``: its own functions still unpickle."""
    main = sys.modules.get("__main__")
    made_by_hand = (
        main is not None
        and getattr(main, "__file__", None) is not None
        and getattr(main, "__spec__", None) is None
        and getattr(main, "__loader__", None) is None
    )
    if not made_by_hand:
        yield
        return
    placeholder = types.ModuleType("__main__")
    sys.modules["__main__"] = placeholder
    try:
        yield
    finally:
        if sys.modules.get("__main__") is placeholder:  # else a page run that began meanwhile installed its own
            sys.modules["__main__"] = main


class _PageSafeSpawnProcess(mp.context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):  # multiprocessing's hook that starts the child: under the guard
        with spawn_safe_main():
            return mp.context.SpawnProcess._Popen(process_obj)


class _PageSafeSpawnContext(mp.context.SpawnContext):
    Process = _PageSafeSpawnProcess


def spawn_context() -> mp.context.SpawnContext:
    """The one multiprocessing context core starts processes from: `spawn` (safe with torch and with
    Streamlit's threads), each child started under `spawn_safe_main`, whoever starts it - a pool's
    constructor, a `ProcessPoolExecutor.submit` that wants one more worker, a pool replacing a worker."""
    return _PageSafeSpawnContext()


def default_processes() -> int:
    """Worker processes when none are asked for: the usable cores, at most 4 (each holds a model set)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class LocalExecutor(Executor):
    """Local execution. processes=0: in this process, one item after another (nothing is
    pickled, so in-memory model sets work). processes=N >= 1: a pool of N worker processes
    started with `spawn` (safe with torch and with Streamlit's threads), one torch thread
    each. The pool is created on first use and kept until close(), so workers keep their
    caches (loaded model sets, merged directions) across several map calls."""

    def __init__(self, processes: int | None = None, start_method: str = "spawn"):
        self.processes = default_processes() if processes is None else int(processes)
        if self.processes < 0:
            raise ValueError(f"processes must be >= 0, got {processes}")
        self.workers = max(1, self.processes)
        self.start_method = start_method
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        return "in-process (serial)" if self.processes == 0 else f"{self.processes} local worker processes"

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=spawn_context() if self.start_method == "spawn" else mp.get_context(self.start_method),
                initializer=_worker_init,
            )
        return self._pool

    def map(self, fn, items, progress=None, cancel=None) -> list:
        items = list(items)
        total = len(items)
        if progress is not None:
            progress(0, total)
        if self.processes == 0:
            return _serial_map(fn, items, progress, cancel)
        pool = self._get_pool()
        results: dict[int, Any] = {}
        running: dict[Future, int] = {}
        nxt = 0
        # Keep only a few items in flight, so a cancel stops the queue promptly.
        in_flight = self.processes + 1
        try:
            while nxt < total or running:
                while nxt < total and len(running) < in_flight and not (cancel is not None and cancel.is_set()):
                    running[pool.submit(fn, items[nxt])] = nxt
                    nxt += 1
                if not running:
                    break
                done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                for f in done:
                    i = running.pop(f)
                    results[i] = f.result()
                    if progress is not None:
                        progress(len(results), total)
        except BaseException:
            for f in running:
                f.cancel()
            raise
        if len(results) < total:
            raise Cancelled(results, total)
        return [results[i] for i in range(total)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _serial_map(fn, items, progress, cancel) -> list:
    results: dict[int, Any] = {}
    for i, item in enumerate(items):
        if cancel is not None and cancel.is_set():
            raise Cancelled(results, len(items))
        results[i] = fn(item)
        if progress is not None:
            progress(i + 1, len(items))
    return [results[i] for i in range(len(items))]


class RayExecutor(Executor):
    """Runs items as Ray tasks on a cluster (`address` as for ray.init: "auto", "ray://host:port",
    or "local" to start a private local Ray). Ray is optional and imported only here.
    Worker nodes need this repository on their PYTHONPATH and the model-set files (or the
    zoo cache) at the same paths."""

    def __init__(self, address: str, num_cpus_per_item: float = 1.0):
        try:
            import ray
        except ImportError as e:
            raise RuntimeError(
                "a Ray cluster address was given but the 'ray' package is not installed here; "
                "install it (pip install 'ray[default]') or run without --ray to use local processes"
            ) from e
        self._ray = ray
        self.address = address
        self.num_cpus = num_cpus_per_item
        if not ray.is_initialized():
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = {"PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
            # Workers resolve zoo model sets and the run log through the same cache paths.
            env.update({k: os.environ[k] for k in ("MERGESCOPE_CACHE",) if k in os.environ})
            runtime_env = {"env_vars": env}
            if address == "local":  # a private Ray on this machine, no dashboard
                ray.init(runtime_env=runtime_env, include_dashboard=False, num_cpus=os.cpu_count() or 1)
            else:
                ray.init(address=address, runtime_env=runtime_env)
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1) // max(num_cpus_per_item, 1e-9)))

    def describe(self) -> str:
        return f"Ray at {self.address} ({self.workers} slots)"

    def map(self, fn, items, progress=None, cancel=None) -> list:
        ray = self._ray
        items = list(items)
        total = len(items)
        if progress is not None:
            progress(0, total)
        remote = ray.remote(num_cpus=self.num_cpus)(_ray_call)
        results: dict[int, Any] = {}
        running: dict[Any, int] = {}
        nxt = 0
        in_flight = self.workers * 2
        try:
            while nxt < total or running:
                while nxt < total and len(running) < in_flight and not (cancel is not None and cancel.is_set()):
                    running[remote.remote(fn, items[nxt])] = nxt
                    nxt += 1
                if not running:
                    break
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for ref in done:
                    i = running.pop(ref)
                    results[i] = ray.get(ref)
                    if progress is not None:
                        progress(len(results), total)
        except BaseException:
            for ref in running:
                ray.cancel(ref)
            raise
        if len(results) < total:
            raise Cancelled(results, total)
        return [results[i] for i in range(total)]


def _ray_call(fn, item):
    _worker_init()
    return fn(item)


def get_executor(address: str | None = None, processes: int | None = None) -> Executor:
    """RayExecutor(address) when a cluster address is given, else LocalExecutor(processes)."""
    if address:
        return RayExecutor(address)
    return LocalExecutor(processes)
