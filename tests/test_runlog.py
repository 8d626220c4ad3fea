"""The run log: round trip, WAL, concurrent writers from two processes, compare, CSV export."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from core.runtime.runlog import RunLog


@pytest.fixture
def log(tmp_path):
    return RunLog(tmp_path / "runs.sqlite")


def test_start_finish_get_round_trip_keeps_config_metrics_and_seed(log):
    config = {"merge": {"method": "ties", "params": {"k": 0.2}}, "eval": {"split": "val", "seed": 7}}
    rid = log.start("eval", config, model_set_fingerprint="abc123")
    assert log.get(rid)["status"] == "running"
    log.finish(rid, {"avg_abs": 0.71, "accuracy": {"digits": 0.9, "shapes": 0.52}})
    run = log.get(rid)
    assert run["config"] == config
    assert run["metrics"] == {"avg_abs": 0.71, "accuracy": {"digits": 0.9, "shapes": 0.52}}
    assert (run["kind"], run["status"], run["model_set"], run["seed"]) == ("eval", "ok", "abc123", 7)
    assert run["finished"] >= run["created"]
    assert run["code_version"]


def test_log_one_shot_and_list_filters_by_kind_text_and_where(log):
    a = log.log("eval", {"merge": {"method": "ties"}}, {"avg_abs": 0.5})
    b = log.log("sweep", {"merge": {"method": "consensus"}}, {"avg_abs": 0.6}, seed=3)
    c = log.log("train", {"lr": 1e-4}, {"loss": float("nan")}, status="error")
    assert list(log.list()["id"]) == [c, b, a]  # newest first
    assert list(log.list(kind="sweep")["id"]) == [b]
    assert list(log.list(text="CONSENSUS")["id"]) == [b]
    assert list(log.list(where={"status": "error"})["id"]) == [c]
    assert list(log.list(where={"seed": 3})["id"]) == [b]
    assert log.get(c)["metrics"] == {}  # a NaN field is left out (never invalid JSON, never "nan" on the page)
    assert list(log.list(limit=1)["id"]) == [c]
    with pytest.raises(ValueError, match="cannot filter"):
        log.list(where={"config": "x"})
    assert log.kinds() == ["eval", "sweep", "train"]


def test_finish_unknown_run_is_a_clear_error(log):
    with pytest.raises(KeyError, match="no run with id 999"):
        log.finish(999, {})


def test_journal_mode_is_wal(log):
    assert log.journal_mode() == "wal"


_WRITER = """
import sys
from core.runtime.runlog import RunLog
log = RunLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    rid = log.start("eval", {"writer": sys.argv[2], "i": i})
    log.finish(rid, {"i": i})
"""


def test_two_processes_writing_at_once_lose_no_rows(tmp_path):
    # Separate interpreters, as two app servers or a CLI run beside the app would be (not multiprocessing
    # children: those start from whatever this process's __main__ is, and after a page test that is the page).
    path = tmp_path / "runs.sqlite"
    RunLog(path)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, "40"], stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b", "c")
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    runs = RunLog(path).list(limit=None)
    assert len(runs) == 120
    assert (runs["status"] == "ok").all()
    writers = runs["config"].map(lambda c: json.loads(c)["writer"]).value_counts()
    assert writers.to_dict() == {"a": 40, "b": 40, "c": 40}


def test_compare_puts_config_and_metric_differences_side_by_side(log):
    a = log.log("eval", {"merge": {"method": "ties", "k": 0.2}}, {"avg_abs": 0.5, "acc": {"x": 0.4}})
    b = log.log("eval", {"merge": {"method": "ties", "k": 0.3}}, {"avg_abs": 0.6, "acc": {"x": 0.4}})
    cmp = log.compare(a, b)
    assert list(cmp.columns) == [f"run {a}", f"run {b}", "same", "diff"]
    assert cmp.loc["config.merge.method", "same"]
    assert not cmp.loc["config.merge.k", "same"]
    assert cmp.loc["config.merge.k", "diff"] == pytest.approx(0.1)
    assert cmp.loc["metrics.avg_abs", "diff"] == pytest.approx(0.1)
    assert cmp.loc["metrics.acc.x", "same"]


def test_export_csv_writes_every_run(log, tmp_path):
    for i in range(3):
        log.log("eval", {"i": i}, {"acc": i / 10})
    out = log.export_csv(tmp_path / "runs.csv")
    df = pd.read_csv(out)
    assert len(df) == 3
    assert {"id", "kind", "config", "metrics", "code_version"} <= set(df.columns)
    assert json.loads(df["config"].iloc[0]) == {"i": 2}


def test_default_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "x" / "log.sqlite"))
    assert RunLog().path == tmp_path / "x" / "log.sqlite"
    assert (tmp_path / "x" / "log.sqlite").exists()


def test_fields_without_a_value_are_left_out_and_training_runs_have_headlines(tmp_path):
    """A fine-tune run without WSA has no scope distance and a cancelled one may have no loss: such
    fields are not stored (the Runs page never shows None or nan); its method and accuracy headline it."""
    import math

    import numpy as np

    from core.runtime.runlog import RunLog, headlines

    log = RunLog(tmp_path / "runs.sqlite")
    rid = log.start("finetune", {"lab": {"method": "tempbalance", "task": "digits"}, "seed": 3})
    log.finish(rid, {"accuracy": 0.91, "scope_kl": None, "final_loss": float("nan"), "x": np.float32("nan"), "n": 5})
    got = log.get(rid)
    metrics = got["metrics"] if isinstance(got["metrics"], dict) else __import__("json").loads(got["metrics"])
    assert metrics == {"accuracy": 0.91, "n": 5}
    row = headlines(log.list()).iloc[0]
    assert row["method"] == "tempbalance" and math.isclose(row["avg_abs"], 0.91)
    lid = log.log("live", {"merge": {"method": "ties"}}, {"mean": 0.8, "score": None})
    runs = headlines(log.list())
    assert runs.set_index("id").loc[lid, "method"] == "ties"
    assert "None" not in runs.astype(str).to_string() and "nan" not in runs[["method"]].astype(str).to_string()
