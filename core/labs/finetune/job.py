"""The Fine-tune lab's background job: `run_grid` or `wsa_experiment` on a `core.runtime.jobs.Job`."""

from __future__ import annotations

import torch

from core.runtime.jobs import Job

from .run import LabResult, run_grid
from .wsa import wsa_experiment

KINDS = ("grid", "wsa")


class LabJob(Job):
    """`run_grid` (kind "grid", configs=[LabConfig, ...]) or `wsa_experiment` (kind "wsa", tasks=[...])
    in a background thread, for the app: the page polls it and may set `cancel` (honoured between
    steps; the current run is logged as cancelled).

    done/total/label: finished fine-tunes (the first report comes at once: "preparing ...");
    rows: one `LabResult.row()` per finished grid run; results: the finished `LabResult`s;
    current: the running fine-tune's config, step, history rows and hooks (its LayerBalancer's
    multipliers, its ScopeAlignment); result: the grid's DataFrame or the WSAResult; error: the
    exception text if it failed; first_step: seconds from the start to the first training step.
    threads: torch threads while it runs (default 1, as the CLI's: with the process default of one
    thread per core a run next to the Streamlit server stalls at OpenMP barriers on a busy machine).
    Keyword arguments go to `run_grid` / `wsa_experiment` (run_log included).
    """

    def __init__(self, kind: str, ms, *, threads: int | None = 1, autostart: bool = True, **kw):
        if kind not in KINDS:
            raise ValueError(f"kind must be 'grid' or 'wsa', got {kind!r}")
        if kind == "grid" and "configs" not in kw:
            raise ValueError("a grid job needs configs=[LabConfig, ...]")
        if kind == "wsa" and "tasks" not in kw:
            raise ValueError("a WSA job needs tasks=[task] or [task_a, task_b]")
        super().__init__(name=f"finetune-lab-{kind}", threads=threads, autostart=False)
        self.kind = kind
        self.ms = ms
        self.kw = kw
        self.total = len(kw["configs"]) if kind == "grid" else 4
        self.rows: list[dict] = []
        self.results: list[LabResult] = []
        self.current: dict = {}
        self.first_step: float | None = None
        if autostart:
            self.start()

    def _watch(self, hooks: dict) -> None:
        self.current = {**hooks, "history": []}

    def _step(self, step: int, total: int, row: dict) -> None:
        if self.first_step is None:
            self.first_step = self.elapsed
        cur = self.current
        cur["step"], cur["steps"] = step, total
        cur.setdefault("history", []).append(dict(row))

    def _on_result(self, r: LabResult) -> None:
        self.results.append(r)
        self.rows.append(r.row())

    def run(self):
        torch.set_flush_denormal(True)  # per thread: the worker's own denormal mode (the CLI sets its own)
        self.progress(0, self.total, "preparing the data and the model")
        kw = dict(self.kw)
        common = {"progress": self.progress, "cancel": self.cancel, "step_progress": self._step, "watch": self._watch}
        if self.kind == "grid":
            return run_grid(self.ms, kw.pop("configs"), on_result=self._on_result, **common, **kw)
        result = wsa_experiment(self.ms, kw.pop("tasks"), **common, **kw)
        self.results = list(result.results.values())
        return result
