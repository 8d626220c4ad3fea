"""Shared fixtures: threads pinned low (the CPU is shared), and the micro zoo built once per test run."""

from __future__ import annotations

import pytest
import torch

# One thread: on a shared machine a 2-thread process stalls at OpenMP barriers (see core.runtime.threads.auto_threads).
torch.set_num_threads(1)
torch.set_flush_denormal(True)


@pytest.fixture(autouse=True)
def _private_run_log(tmp_path, monkeypatch):
    """Every test writes its runs to its own run log (never the user's ~/.cache/mergescope/runs.sqlite)."""
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))


@pytest.fixture(scope="session")
def micro_zoo_dir(tmp_path_factory):
    """Directory of a micro zoo built into a temp cache (seconds; plumbing-grade accuracy)."""
    from core.zoo import build_zoo

    cache = tmp_path_factory.mktemp("mergescope-cache")
    return build_zoo("micro", cache=cache)


@pytest.fixture(scope="session")
def micro_zoo(micro_zoo_dir):
    """The micro zoo as a core.modelset.ModelSet (base + 4 fine-tuned visual towers)."""
    from core.zoo import load_model_set

    return load_model_set("micro", cache=micro_zoo_dir.parent)
