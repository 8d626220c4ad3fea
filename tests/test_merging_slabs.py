"""core.merging.slabs: the reader thread that fills the next slab while a read-ahead pass computes (task
arithmetic), with the bits of the inline pass, its errors raised in the merge, and nothing left running."""

import threading

import pytest
import torch

from core.checkpoints import load_state_dict, open_state_dict
from core.checkpoints.formats import LazyStateDict
from core.merging import TaskVectors, merge, merged_direction
from tests.test_merging_streaming import write_tower_files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tower_files(tmp_path_factory.mktemp("slabs"))


def _reader_threads() -> list:

    return [t for t in threading.enumerate() if t.name == "mergescope-read-ahead" and t.is_alive()]


def test_read_ahead_fills_slabs_on_a_reader_thread_with_the_same_bits(files, monkeypatch):
    """Task arithmetic reads its slabs on a reader thread (chunks(read_ahead=True)) while it sums the
    previous one on one torch thread fewer; the bits are those of the inline pass, the thread ends with the
    pass and the torch thread setting is restored."""
    import core.merging.slabs as slabs
    import core.merging.streaming as streaming

    monkeypatch.setattr(streaming, "CHUNK", 97)  # many slabs, tensors cut across them
    base = open_state_dict(files / "base.safetensors")
    fts = [open_state_dict(files / f"t{t}.safetensors") for t in range(4)]
    started = []
    real = slabs.ReadAhead.__init__

    def spy(self, *a, **k):
        started.append(torch.get_num_threads())
        real(self, *a, **k)

    monkeypatch.setattr(slabs.ReadAhead, "__init__", spy)
    threads = torch.get_num_threads()
    ahead = merge(base, fts, "task_arithmetic", coefficients=[0.3, 0.5, 0.2, 0.7], lines=("auto", 0.5))
    assert started and torch.get_num_threads() == threads and not _reader_threads()
    monkeypatch.setattr(streaming, "READ_AHEAD", False)
    started.clear()
    inline = merge(base, fts, "task_arithmetic", coefficients=[0.3, 0.5, 0.2, 0.7], lines=("auto", 0.5))
    assert not started
    eager = merge(
        load_state_dict(files / "base.safetensors"),
        [load_state_dict(f.path) for f in fts],
        "task_arithmetic",
        coefficients=[0.3, 0.5, 0.2, 0.7],
        lines=("auto", 0.5),
    )
    for k in eager:
        assert torch.equal(ahead[k], inline[k]) and torch.equal(ahead[k], eager[k]), k


def test_a_read_error_on_the_reader_thread_is_raised_in_the_merge(files, monkeypatch):

    import core.merging.streaming as streaming
    from core.errors import CheckpointError

    monkeypatch.setattr(streaming, "CHUNK", 97)
    calls = []
    real = LazyStateDict.read_range

    def failing(self, key, start, out):
        if threading.current_thread().name == "mergescope-read-ahead":
            calls.append(key)
            if len(calls) == 40:
                raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; the file is truncated")
        return real(self, key, start, out)

    monkeypatch.setattr(LazyStateDict, "read_range", failing)
    threads = torch.get_num_threads()
    base = open_state_dict(files / "base.safetensors")
    fts = [open_state_dict(files / f"t{t}.safetensors") for t in range(4)]
    with pytest.raises(CheckpointError, match="cut short"):
        merged_direction(base, fts, "task_arithmetic")
    assert len(calls) == 40 and not _reader_threads() and torch.get_num_threads() == threads


def test_a_consumer_that_stops_early_stops_the_reader(files, monkeypatch):
    import core.merging.streaming as streaming

    monkeypatch.setattr(streaming, "CHUNK", 64)
    threads = torch.get_num_threads()
    tvs = TaskVectors(open_state_dict(files / "base.safetensors"), [open_state_dict(files / "t0.safetensors")])
    it = tvs.chunks(read_ahead=True)
    first = next(it)
    assert first.tvs.shape[1] == 64 and _reader_threads()
    it.close()
    assert not _reader_threads() and torch.get_num_threads() == threads
