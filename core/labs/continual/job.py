"""The Continual page's background job: `run_continual` on a `core.runtime.jobs.Job`."""

from __future__ import annotations

import numpy as np
import torch

from core.runtime.jobs import Job

from .config import ContinualConfig
from .result import ContinualResult
from .run import run_continual


class ContinualJob(Job):
    """`run_continual(source, cfg, **kw)` in a background thread: the page polls `stage` (the label),
    `done`, `total` (steps) and `acc` (filled after each task) and sets `cancel` to stop it.

    threads: torch threads while it runs (default 1, as the CLI's: with the process default of one
    thread per core, a run next to the Streamlit server stalled at OpenMP barriers). The worker
    thread also flushes denormals, as the CLI does (the mode is per thread). `first_step`: seconds
    from the start to the first training step.
    """

    def __init__(self, source, cfg: ContinualConfig, *, threads: int | None = 1, autostart: bool = True, **kw):
        super().__init__(name="continual", threads=threads, autostart=False)
        self.cfg = cfg
        self.source = source
        self.kw = kw
        self.total = len(cfg.tasks) * cfg.steps
        self.acc = np.full((len(cfg.tasks),) * 2, np.nan)
        self.result: ContinualResult | None = None
        self.first_step: float | None = None
        if autostart:
            self.start()

    @property
    def stage(self) -> str:
        return self.label

    def _progress(self, stage: str, done: int, total: int) -> None:
        if done > 0 and self.first_step is None:
            self.first_step = self.elapsed
        self.progress(done, total, stage)

    def _on_stage(self, j: int, acc: np.ndarray) -> None:
        self.acc = acc.copy()

    def run(self) -> ContinualResult:
        torch.set_flush_denormal(True)
        return run_continual(
            self.source, self.cfg, progress=self._progress, cancel=self.cancel, on_stage=self._on_stage, **self.kw
        )
