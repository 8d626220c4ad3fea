"""The outcome of a continual run (`ContinualResult`) and the logged runs (kind "continual")."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.runtime.runlog import RunLog

from .config import ContinualConfig
from .metrics import average_accuracy, average_forgetting, forgetting
from .model import ContinualModel


@dataclass
class ContinualResult:
    config: ContinualConfig
    acc: np.ndarray  # (T, T) A[i, j]
    ntk: list[dict] = field(default_factory=list)  # per stage: stage, blocks (T, T), intra, inter, ...
    angles: list[np.ndarray] = field(default_factory=list)  # per stage: (T, T) mean principal angle
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    seconds: float = 0.0
    cancelled: bool = False
    run_id: int | None = None
    timings: dict = field(default_factory=dict)
    model: ContinualModel | None = field(default=None, repr=False)  # the trained model (not logged)

    @property
    def tasks(self) -> list[str]:
        return list(self.config.tasks)

    def average_accuracy(self) -> float:
        return average_accuracy(self.acc)

    def average_forgetting(self) -> float:
        return average_forgetting(self.acc)

    def forgetting(self) -> pd.Series:
        return pd.Series(forgetting(self.acc), index=self.tasks, name="forgetting")

    def acc_frame(self) -> pd.DataFrame:
        """A[i, j] as a DataFrame: rows = evaluated task, columns = after training task."""
        return pd.DataFrame(self.acc, index=self.tasks, columns=[f"after {t}" for t in self.tasks])

    def angle_frame(self, stage: int = -1) -> pd.DataFrame:
        a = self.angles[stage] if self.angles else np.full((len(self.tasks),) * 2, np.nan)
        return pd.DataFrame(a, index=self.tasks, columns=self.tasks)

    def ntk_frame(self) -> pd.DataFrame:
        """One row per stage ("init", then each task): intra, inter, inter/intra, drift."""
        return pd.DataFrame([{k: v for k, v in r.items() if k != "blocks"} for r in self.ntk])

    def ntk_blocks(self, stage: int = -1) -> pd.DataFrame:
        b = self.ntk[stage]["blocks"] if self.ntk else np.full((len(self.tasks),) * 2, np.nan)
        return pd.DataFrame(b, index=self.tasks, columns=self.tasks)

    def angle_summary(self) -> pd.DataFrame:
        """Mean inter-task principal angle per stage (over the seen tasks)."""
        rows = []
        for j, a in enumerate(self.angles):
            seen = a[: j + 1, : j + 1]
            off = seen[~np.eye(j + 1, dtype=bool)]
            rows.append(
                {"stage": j, "after": self.tasks[j], "mean_angle": float(off.mean()) if off.size else float("nan")}
            )
        return pd.DataFrame(rows)

    def metrics(self) -> dict:
        """JSON-able summary for the run log (everything the page redraws)."""

        def clean(a):
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in np.asarray(a)]

        return {
            "avg_acc": self.average_accuracy(),
            "avg_forgetting": self.average_forgetting(),
            "acc": clean(self.acc),
            "forgetting": {t: (None if not np.isfinite(v) else float(v)) for t, v in self.forgetting().items()},
            "ntk": [{**{k: v for k, v in r.items() if k != "blocks"}, "blocks": clean(r["blocks"])} for r in self.ntk],
            "angles": [clean(a) for a in self.angles],
            "seconds": self.seconds,
            "timings": self.timings,
            "cancelled": self.cancelled,
        }

    @staticmethod
    def from_log(config: Mapping, metrics: Mapping, run_id: int | None = None) -> ContinualResult:
        """Rebuild a (history-less) result from a run-log row's config and metrics."""

        def arr(a):
            return np.array([[np.nan if v is None else v for v in row] for row in a], dtype=float)

        ntk = [{**r, "blocks": arr(r["blocks"])} for r in metrics.get("ntk", [])]
        return ContinualResult(
            config=ContinualConfig.from_dict(config),
            acc=arr(metrics["acc"]),
            ntk=ntk,
            angles=[arr(a) for a in metrics.get("angles", [])],
            seconds=float(metrics.get("seconds", 0.0)),
            cancelled=bool(metrics.get("cancelled", False)),
            run_id=run_id,
            timings=dict(metrics.get("timings", {})),
        )


def runs_table(log=None, limit: int = 200) -> pd.DataFrame:
    """Logged continual runs, one row each: id, label, setting, tasks, steps, seed, average
    accuracy and forgetting, seconds, status (newest first)."""
    df = (log or RunLog()).list(kind="continual", limit=limit)
    rows = []
    for r in df.itertuples():
        c = json.loads(r.config) if r.config else {}
        m = json.loads(r.metrics) if r.metrics else {}
        if "acc" not in m:
            continue
        cfg = ContinualConfig.from_dict(c)
        rows.append(
            {
                "id": int(r.id),
                "label": cfg.label(),
                "setting": cfg.setting,
                "tasks": ",".join(cfg.tasks),
                "steps": cfg.steps,
                "seed": cfg.seed,
                "avg_acc": m.get("avg_acc"),
                "avg_forgetting": m.get("avg_forgetting"),
                "seconds": m.get("seconds"),
                "status": r.status,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["id", "label", "setting", "tasks", "steps", "seed", "avg_acc", "avg_forgetting", "seconds", "status"],
    )


def load_logged(run_id: int, log=None) -> ContinualResult:
    r = (log or RunLog()).get(run_id)
    return ContinualResult.from_log(r["config"], r["metrics"], run_id=run_id)
