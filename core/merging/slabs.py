"""Slabs of the streaming merge and the reader thread that fills them ahead of the consumer.

`core.merging.streaming.TaskVectors._fill` fills [N, width] slabs in flat order; an inline pass refills
one slab (`same_slab`), a read-ahead pass (`TaskVectors.chunks(read_ahead=True)`) runs the filling on a
reader thread with two slabs (`ReadAhead`), each given back once its chunk has been consumed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Slab:
    tvs: torch.Tensor  # [N, size]
    base: torch.Tensor  # [size]
    finetuned: torch.Tensor | None  # [N, size] (with_finetuned)
    free: Callable[[], None] | None = None  # gives the slab back to a read-ahead reader


@dataclass
class Filled:
    """A slab as `TaskVectors._fill` leaves it: columns [start, start + width) of the flat vector; `raw`
    column ranges still hold fine-tuned values (the base not yet subtracted)."""

    slab: Slab
    start: int
    width: int
    segments: list[tuple[str, int, int]]
    raw: list[list[int]]
    to_check: list[tuple[str, bool]]

    def release(self) -> None:
        if self.slab.free is not None:
            self.slab.free()


def same_slab(slab: Slab) -> Callable[[], Slab]:
    """`acquire` of an inline pass: one slab, refilled once its chunk has been consumed."""
    return lambda: slab


class ReadAhead:
    """Iterate `fill(size, acquire)` on a reader thread, one slab ahead of the consumer: two slabs, each
    given back (`Filled.release`) once its chunk is consumed. The reader's exceptions are raised in the
    consumer at the slab where they happened; `close()` (the consumer stops early) stops the reader."""

    def __init__(self, fill, size: int, new_slab: Callable[[], Slab]):
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._free: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        for _ in range(2):
            slab = new_slab()
            slab.free = lambda slab=slab: self._free.put(slab)
            self._free.put(slab)
        self._fill = fill(size, self._acquire)
        self._thread = threading.Thread(target=self._run, daemon=True, name="mergescope-read-ahead")
        self._thread.start()

    def _acquire(self) -> Slab:
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        raise _Stopped

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            for f in self._fill:
                self._put(f)
                if self._stop.is_set():
                    return
            self._put(_END)
        except _Stopped:
            return
        except BaseException as e:  # raised in the consumer
            self._put(_Failed(e))

    def __iter__(self):
        return self

    def __next__(self) -> Filled:
        item = self._queue.get()
        if item is _END:
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._fill.close()


class _Stopped(Exception):
    pass


@dataclass
class _Failed:
    error: BaseException


_END = object()
