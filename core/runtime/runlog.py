"""The run log: every evaluation, sweep and training run, with its full config and results.

One SQLite file (``$MERGESCOPE_RUNLOG``, else ``<cache dir>/runs.sqlite``) in WAL
mode, so several browser sessions and processes can append at once: each call
opens its own short-lived connection, writes in one short transaction and
waits (busy timeout) rather than failing when another writer holds the lock.

    log = RunLog()
    rid = log.start("eval", spec.to_dict(), model_set_fingerprint=ms.fingerprint())
    ...
    log.finish(rid, {"avg_abs": 0.71, "acc": {...}})
    log.log("tint", config, metrics)        # one shot: start + finish
    log.list(kind="sweep")                  # pandas DataFrame, newest first
    log.compare(a, b)                       # config and metrics side by side

A row: id, kind, created/finished (UTC ISO-8601), status ("running", "ok",
"error", "cancelled"), config (JSON), metrics (JSON), model_set (fingerprint),
code_version (``git describe``), seed.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from .paths import runlog_path

COLUMNS = ["id", "kind", "status", "created", "finished", "model_set", "code_version", "seed", "config", "metrics"]
_FILTERABLE = {"id", "kind", "status", "model_set", "code_version", "seed"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    created      TEXT NOT NULL,
    finished     TEXT,
    model_set    TEXT,
    code_version TEXT,
    seed         INTEGER,
    config       TEXT NOT NULL,
    metrics      TEXT
);
CREATE INDEX IF NOT EXISTS runs_kind ON runs(kind, id);
"""


def default_path() -> Path:
    """$MERGESCOPE_RUNLOG, else runs.sqlite in the cache directory (`core.runtime.paths`)."""
    return runlog_path()


@functools.cache
def code_version() -> str:
    """`git describe --always --dirty` of the source tree, or "unknown" outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _present(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics that have a value: a field that is None or NaN (e.g. a weight-scope distance of a run
    without Weight Scope Alignment, the loss of a run cancelled before its first step) does not apply to
    the run and is left out, so the Runs page never shows "None" or "nan" for it."""

    def missing(v) -> bool:
        if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            v = v.item()
        return v is None or (isinstance(v, float) and not math.isfinite(v))

    return {k: v for k, v in metrics.items() if not missing(v)}


def _to_json(obj: Any) -> str:
    """JSON that never fails on numpy scalars, tuples, paths or NaN (NaN becomes null)."""

    def clean(v):
        if isinstance(v, Mapping):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set)):
            return [clean(x) for x in v]
        if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        if hasattr(v, "to_dict"):
            return clean(v.to_dict())
        return str(v)

    return json.dumps(clean(obj), sort_keys=True)


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class RunLog:
    """The SQLite run log (see module docstring). Cheap to construct; holds no open connection."""

    def __init__(self, path: str | os.PathLike | None = None, timeout_s: float = 30.0):
        self.path = Path(path) if path is not None else default_path()
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)

    # -- connection: one per call, short transactions, waits on a busy database
    def _connect(self) -> _Closing:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        con.execute("PRAGMA synchronous=NORMAL")
        return _Closing(con)

    def _write(self, sql: str, args: tuple) -> tuple[int | None, int]:
        """Run one statement in its own write transaction; returns (lastrowid, rowcount)."""
        # BEGIN IMMEDIATE takes the write lock up front, so the busy timeout applies to it
        # (a deferred transaction that upgrades later can fail with SQLITE_BUSY at once).
        for attempt in range(5):
            try:
                with self._connect() as con:
                    con.execute("BEGIN IMMEDIATE")
                    cur = con.execute(sql, args)
                    con.execute("COMMIT")
                    return cur.lastrowid, cur.rowcount
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e) or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def journal_mode(self) -> str:
        with self._connect() as con:
            return con.execute("PRAGMA journal_mode").fetchone()[0]

    # -- writing
    def start(
        self,
        kind: str,
        config: Mapping[str, Any],
        model_set_fingerprint: str | None = None,
        seed: int | None = None,
    ) -> int:
        """Record a run as "running" and return its id. `seed` defaults to config["seed"] or
        config["eval"]["seed"] when present."""
        if seed is None:
            seed = _find_seed(config)
        rid, _ = self._write(
            "INSERT INTO runs (kind, status, created, model_set, code_version, seed, config, metrics)"
            " VALUES (?, 'running', ?, ?, ?, ?, ?, NULL)",
            (str(kind), _now(), model_set_fingerprint, code_version(), seed, _to_json(config)),
        )
        return int(rid)

    def finish(self, run_id: int, metrics: Mapping[str, Any], status: str = "ok") -> None:
        """Store the run's metrics and final status ("ok", "error", "cancelled", ...)."""
        _, n = self._write(
            "UPDATE runs SET status = ?, finished = ?, metrics = ? WHERE id = ?",
            (status, _now(), _to_json(_present(metrics)), int(run_id)),
        )
        if n == 0:
            raise KeyError(f"no run with id {run_id} in {self.path}")

    def log(
        self,
        kind: str,
        config: Mapping[str, Any],
        metrics: Mapping[str, Any],
        model_set_fingerprint: str | None = None,
        seed: int | None = None,
        status: str = "ok",
    ) -> int:
        """One-shot: a finished run in a single call. Returns its id."""
        now = _now()
        if seed is None:
            seed = _find_seed(config)
        rid, _ = self._write(
            "INSERT INTO runs (kind, status, created, finished, model_set, code_version, seed, config, metrics)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(kind),
                status,
                now,
                now,
                model_set_fingerprint,
                code_version(),
                seed,
                _to_json(config),
                _to_json(_present(metrics)),
            ),
        )
        return int(rid)

    # -- reading
    def list(
        self,
        kind: str | None = None,
        limit: int | None = 500,
        where: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> pd.DataFrame:
        """Runs, newest first. `kind`: one kind; `where`: {column: value} equality filters
        (columns: id, kind, status, model_set, code_version, seed); `text`: substring
        searched in kind, config and metrics (case-insensitive). Config and metrics stay
        JSON strings; `duration_s` is added."""
        conds, args = [], []
        filters = dict(where or {})
        if kind is not None:
            filters["kind"] = kind
        for col, val in filters.items():
            if col not in _FILTERABLE:
                raise ValueError(f"cannot filter runs on {col!r}; use one of {sorted(_FILTERABLE)}")
            conds.append(f"{col} IS NULL" if val is None else f"{col} = ?")
            if val is not None:
                args.append(val)
        if text:
            conds.append("(lower(kind) LIKE ? OR lower(config) LIKE ? OR lower(coalesce(metrics, '')) LIKE ?)")
            args += [f"%{text.lower()}%"] * 3
        sql = f"SELECT {', '.join(COLUMNS)} FROM runs"
        if conds:
            sql += " WHERE " + " AND ".join(conds)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            rows = con.execute(sql, args).fetchall()
        df = pd.DataFrame(rows, columns=COLUMNS)
        created = pd.to_datetime(df["created"], utc=True, format="ISO8601")
        finished = pd.to_datetime(df["finished"], utc=True, format="ISO8601")
        df.insert(5, "duration_s", (finished - created).dt.total_seconds())
        return df

    def kinds(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT kind FROM runs ORDER BY kind")]

    def get(self, run_id: int) -> dict[str, Any]:
        """One run as a dict, with config and metrics parsed from JSON. KeyError if absent."""
        with self._connect() as con:
            row = con.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise KeyError(f"no run with id {run_id} in {self.path}")
        d = dict(zip(COLUMNS, row))
        d["config"] = json.loads(d["config"]) if d["config"] else {}
        d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
        return d

    def compare(self, a: int, b: int) -> pd.DataFrame:
        """Two runs side by side: one row per field (run fields, then config.*, then metrics.*,
        flattened with dots), columns = the two run ids, `same` and - for numbers - `diff` (b - a).
        Long lists (sweep grids) are summarised by their length."""
        ra, rb = self.get(a), self.get(b)

        def fields(r):
            top = {k: r[k] for k in ("kind", "status", "model_set", "code_version", "seed")}
            return {**top, **flatten(r["config"], "config."), **flatten(r["metrics"], "metrics.")}

        fa, fb = fields(ra), fields(rb)
        keys = list(fa) + [k for k in fb if k not in fa]
        rows = []
        for k in keys:
            va, vb = _cell(fa.get(k)), _cell(fb.get(k))
            num = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (va, vb))
            rows.append(
                {
                    "field": k,
                    f"run {a}": va,
                    f"run {b}": vb,
                    "same": va == vb,
                    "diff": (vb - va) if num else None,
                }
            )
        df = pd.DataFrame(rows).set_index("field")
        # Mixed types per column would break Arrow (st.dataframe); show values as text, diff as number.
        for c in (f"run {a}", f"run {b}"):
            df[c] = df[c].map(lambda v: "" if v is None else (v if isinstance(v, str) else json.dumps(v)))
        df["diff"] = pd.to_numeric(df["diff"], errors="coerce")
        return df

    def export_csv(self, path: str | os.PathLike, kind: str | None = None, limit: int | None = None) -> Path:
        """Write the runs (all columns, config/metrics as JSON text) to CSV; returns the path."""
        path = Path(path)
        self.list(kind=kind, limit=limit).to_csv(path, index=False)
        return path

    def delete(self, run_id: int) -> None:
        self._write("DELETE FROM runs WHERE id = ?", (int(run_id),))


def headlines(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` (from RunLog.list) with the columns a table of runs shows first: method (config
    merge.method; for a training run its lab's method, e.g. the Fine-tune lab's lr rule), avg_abs and
    avg_norm (the test numbers of a sweep, else the run's own; a training run's "accuracy" when it has one)."""

    def pick(row):
        cfg = json.loads(row["config"]) if row["config"] else {}
        met = json.loads(row["metrics"]) if isinstance(row["metrics"], str) and row["metrics"] else {}
        src = met.get("test") if isinstance(met.get("test"), Mapping) and met.get("test") else met
        merge = cfg.get("merge") if isinstance(cfg.get("merge"), Mapping) else {}
        lab = cfg.get("lab") if isinstance(cfg.get("lab"), Mapping) else {}
        method = merge.get("method") or lab.get("method") or cfg.get("method") or ""
        acc = src.get("avg_abs", src.get("accuracy") if isinstance(src.get("accuracy"), (int, float)) else None)
        return pd.Series({"method": method, "avg_abs": acc, "avg_norm": src.get("avg_norm")})

    if runs.empty:
        return runs.assign(method=None, avg_abs=None, avg_norm=None)
    extra = runs.apply(pick, axis=1)
    out = runs.copy()
    out.insert(2, "method", extra["method"])
    out.insert(3, "avg_abs", pd.to_numeric(extra["avg_abs"], errors="coerce"))
    out.insert(4, "avg_norm", pd.to_numeric(extra["avg_norm"], errors="coerce"))
    return out


def _cell(v):
    if isinstance(v, list) and len(v) > 20:
        return f"[{len(v)} items]"
    return v


def _find_seed(config: Mapping[str, Any]) -> int | None:
    for path in (("seed",), ("eval", "seed"), ("merge", "params", "seed")):
        v: Any = config
        for p in path:
            v = v.get(p) if isinstance(v, Mapping) else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


class _Closing:
    """sqlite3's connection context manager commits but does not close; this one closes."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        return self.con

    def __exit__(self, *exc) -> None:
        self.con.close()

    def execute(self, *a):
        return self.con.execute(*a)


def resolve_run_log(run_log: RunLog | bool | None) -> RunLog | None:
    """The one meaning of a ``run_log=`` argument, everywhere in core.

    A RunLog: log there. True or None (the default): log to the default run log, so every run's
    full config is recorded. False: do not log.
    """
    if run_log is False:
        return None
    if run_log is None or run_log is True:
        return RunLog()
    return run_log
