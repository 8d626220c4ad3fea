"""core.runtime.threads: the torch thread settings a run uses, and that they come back."""

from __future__ import annotations

import threading

import torch

from core.runtime.threads import one_thread_fewer, torch_threads


def test_torch_threads_sets_and_restores():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_overlapping_passes_lower_the_setting_once_and_the_last_one_out_restores_it():
    """Two read-ahead passes in two threads (two sessions' merges) that start and end interleaved: with
    save/restore pairs the first one out would restore the lowered value of the second one's save."""
    with torch_threads(2):
        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        seen = {}

        def first():
            with one_thread_fewer():
                seen["first"] = torch.get_num_threads()
                first_in.set()
                second_in.wait(5)
            first_out.set()

        def second():
            first_in.wait(5)
            with one_thread_fewer():
                seen["second"] = torch.get_num_threads()
                second_in.set()
                first_out.wait(5)
                seen["after first left"] = torch.get_num_threads()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert seen == {"first": 1, "second": 1, "after first left": 1}
        assert torch.get_num_threads() == 2
    with torch_threads(1), one_thread_fewer():
        assert torch.get_num_threads() == 1  # never below one
