"""`TintJob`: Tinting / AdaMerging runs in a background `core.runtime.jobs.Job`, for the app.

The page polls the job while it runs and sets `cancel` to stop it (honoured between steps; the run
is logged as cancelled). The job runs with the CLI's thread setting (`auto_threads()`: 1 torch
thread when the machine is busy), so a run started from the page costs what it costs on the
command line; it reports progress from its first second (each preparation stage is a progress
report), and several configs share one prepared set of images.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...runtime.jobs import Job
from ...runtime.threads import auto_threads
from .config import TintConfig
from .data import TaskImages, prepare_data, tint_tasks
from .run import TintResult, tint


class TintJob(Job):
    """`tint` for one or several configs in a background thread.

    cfgs: one TintConfig or several run one after the other on the same prepared images (e.g.
    with and without the filter, or Tinting then AdaMerging). For the run in progress: `cfg`,
    `rows` (one dict per finished step: step, loss, kept, agreement), `evals` (long rows: step,
    task, accuracy) and `step`; `results`: the finished TintResults; `result`: the last one (set
    when the job ends); `error`: the exception text if a run failed. `done`/`total`/`label`
    (from `Job`) follow the run in progress, `label` naming the preparation stage before step 0.
    threads: torch threads while the job runs (default `auto_threads()`, as the CLI). Other
    keywords go to `tint` (run_log, state_dir).
    """

    def __init__(self, ms, cfgs: TintConfig | Sequence[TintConfig], *, threads: int | None = None, **kw):
        self.cfgs = [cfgs] if isinstance(cfgs, TintConfig) else list(cfgs)
        if not self.cfgs:
            raise ValueError("TintJob needs at least one TintConfig")
        self.ms, self.kw = ms, kw
        self.cfg = self.cfgs[0]
        self.rows: list[dict] = []
        self.evals: list[dict] = []
        self.step = 0
        self.results: list[TintResult] = []
        super().__init__(name="tinting", threads=auto_threads() if threads is None else threads)

    def _progress(self, step: int, total: int, row: dict) -> None:
        self.step = step
        if "loss" in row:
            self.rows.append({k: v for k, v in row.items() if k != "accuracy"})
        for t, a in (row.get("accuracy") or {}).items():
            self.evals.append({"step": step, "task": t, "accuracy": a})
        self.progress(step, total, row.get("stage") or f"step {step}/{total}")

    def run(self) -> TintResult | None:
        tasks = tint_tasks(self.ms, self.cfg.tasks)
        data: dict[str, dict[str, TaskImages]] = {}
        for cfg in self.cfgs:
            if self.cancel.is_set():
                break
            self.cfg, self.rows, self.evals, self.step = cfg, [], [], 0
            for split in [s for s in dict.fromkeys((cfg.data, "test")) if s not in data]:

                def report(done: int, n: int, split=split, steps=cfg.steps) -> None:
                    self.progress(0, steps, f"expert pseudo-labels ({split}) {done}/{n}")

                report(0, len(tasks))
                data[split] = prepare_data(self.ms, tasks, split, report)
            res = tint(
                self.ms,
                cfg,
                progress=self._progress,
                cancel=self.cancel,
                data=data[cfg.data],
                eval_data=data["test"],
                **self.kw,
            )
            self.results.append(res)
        return self.results[-1] if self.results else None
