"""Executors: the process pool gives what the serial loop gives; cancel stops between items; workers
started from a Streamlit page do not run the page again."""

import multiprocessing as mp
import os
import sys
import threading
import time
import types
from concurrent.futures import ProcessPoolExecutor

import pytest

from core.runtime.executors import Cancelled, LocalExecutor, RayExecutor, get_executor, spawn_safe_main


def _square_and_pid(x):
    # OMP_NUM_THREADS is what a fresh worker's torch reads on import (no torch import here: slow).
    return x * x, os.environ.get("OMP_NUM_THREADS"), os.getpid()


def _slow(x):
    time.sleep(0.3)
    return x


@pytest.fixture(scope="module")
def pool():
    # One pool for the module: spawning workers is the slow part on a busy machine.
    with LocalExecutor(processes=2) as ex:
        yield ex


def test_process_pool_gives_the_serial_results_in_order(pool):
    items = list(range(7))
    serial = LocalExecutor(processes=0).map(_square_and_pid, items)
    seen = []
    pooled = pool.map(_square_and_pid, items, progress=lambda d, n: seen.append((d, n)))
    assert [r[0] for r in pooled] == [r[0] for r in serial] == [x * x for x in items]
    assert all(r[1] == "1" for r in pooled)  # one torch thread per worker
    assert {r[2] for r in serial} != {r[2] for r in pooled}  # really other processes
    assert seen[0] == (0, 7) and seen[-1] == (7, 7)


def test_serial_cancel_stops_between_items_and_keeps_finished_results():
    cancel = threading.Event()
    calls = []

    def fn(x):
        calls.append(x)
        if x == 2:
            cancel.set()
        return -x

    with pytest.raises(Cancelled) as info:
        LocalExecutor(processes=0).map(fn, range(10), cancel=cancel)
    assert calls == [0, 1, 2]
    assert info.value.results == {0: 0, 1: -1, 2: -2}
    assert info.value.total == 10


def test_pool_cancel_stops_early_and_the_pool_stays_usable(pool):
    cancel = threading.Event()

    def progress(done, total):
        if done >= 1:
            cancel.set()

    with pytest.raises(Cancelled) as info:
        pool.map(_slow, range(30), progress=progress, cancel=cancel)
    # At most the items in flight when the event was seen (processes + 1) finish after it.
    assert 1 <= len(info.value.results) <= 4
    assert all(info.value.results[i] == i for i in info.value.results)
    assert pool.map(_slow, [5]) == [5]


def test_get_executor_chooses_by_arguments():
    assert isinstance(get_executor(processes=0), LocalExecutor)
    assert get_executor(processes=3).processes == 3
    with pytest.raises(ValueError):
        LocalExecutor(processes=-1)


def test_ray_executor_without_ray_says_how_to_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RuntimeError, match="not installed"):
        RayExecutor("ray://nowhere:10001")


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance started (and stopped) by the test: no cluster needed, CI runs it."""
    ray = pytest.importorskip("ray", reason="ray is in requirements-dev.txt; install it")
    ex = RayExecutor("local")  # starts the private local Ray
    yield ex
    ray.shutdown()


def test_ray_executor_matches_the_process_pool_and_cancels(local_ray, pool):
    import math

    ex = local_ray  # Ray workers do not see tests/: map importable functions
    assert (
        ex.map(math.factorial, range(6)) == pool.map(math.factorial, range(6)) == [math.factorial(i) for i in range(6)]
    )
    assert "Ray at local" in ex.describe()
    cancel = threading.Event()
    with pytest.raises(Cancelled) as info:
        ex.map(time.sleep, [0.3] * 20, progress=lambda d, n: cancel.set() if d >= 1 else None, cancel=cancel)
    assert len(info.value.results) < 20


_SCRIPT = """
import os
with open({marker!r}, "a") as f:
    f.write(f"{{os.getpid()}} {{__name__}}\\n")
if __name__ == "__main__":
    import streamlit as st

    from core.runtime.executors import LocalExecutor

    with LocalExecutor(processes=1) as ex:
        st.write(f"pooled {{ex.map(abs, [-3, -4])}}")
"""


def _page_script(tmp_path):
    marker = tmp_path / "runs.txt"
    script = tmp_path / "page.py"
    script.write_text(_SCRIPT.format(marker=str(marker)))
    return script, marker


def test_workers_started_from_a_streamlit_page_do_not_rerun_the_page(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    script, marker = _page_script(tmp_path)
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # AppTest replaces it; put it back after
    at = AppTest.from_file(str(script)).run(timeout=120)
    assert not at.exception
    assert at.markdown[0].value == "pooled [3, 4]"
    # The page ran once, in the server's process: the worker did not run it again as __mp_main__.
    assert marker.read_text().split() == [str(os.getpid()), "__main__"]


def test_without_the_guard_a_spawned_worker_reruns_a_hand_made_main(tmp_path, monkeypatch):
    # What Streamlit does to __main__, and what the guard prevents: the control that shows the test above can fail.
    script, marker = _page_script(tmp_path)
    page = types.ModuleType("__main__")
    page.__file__ = str(script)
    monkeypatch.setitem(sys.modules, "__main__", page)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as raw:
        assert raw.submit(abs, -1).result(timeout=120) == 1
    assert marker.read_text().split()[1::2] == ["__mp_main__"]
    marker.unlink()
    with spawn_safe_main(), ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as guarded:
        assert guarded.submit(abs, -1).result(timeout=120) == 1
    assert not marker.exists()
    assert sys.modules["__main__"] is page  # put back after the block


def test_spawn_safe_main_leaves_a_real_main_alone_and_a_newer_page_run_in_place(monkeypatch):
    real = sys.modules["__main__"]
    with spawn_safe_main():
        assert sys.modules["__main__"] is real  # pytest's (has a spec) - and a script's (has a loader) - stay
    script = types.ModuleType("__main__")
    script.__file__ = "/x/script.py"
    script.__loader__ = object()  # `python script.py`: its own functions must still unpickle in the workers
    monkeypatch.setitem(sys.modules, "__main__", script)
    with spawn_safe_main():
        assert sys.modules["__main__"] is script
    page, newer = types.ModuleType("__main__"), types.ModuleType("__main__")
    page.__file__ = newer.__file__ = "/x/app.py"
    monkeypatch.setitem(sys.modules, "__main__", page)
    with spawn_safe_main():
        hidden = sys.modules["__main__"]
        assert hidden is not page and not hasattr(hidden, "__file__")
        sys.modules["__main__"] = newer  # another session's page run starts meanwhile
    assert sys.modules["__main__"] is newer
