"""Runs: every evaluation, sweep and training run in the run log - filter, compare two, export.

The log is one SQLite file shared by every session and process (core.runtime.runlog); the
CLI and the training labs write to it too.
"""

from __future__ import annotations

import streamlit as st

from core.runtime.runlog import RunLog, headlines
from ui import state as S

st.title("Runs")
log = RunLog()
st.caption(f"Run log: `{log.path}`. Every evaluation, sweep and training run is recorded with its full config.")
st.markdown(
    "**What to look for:** "
    "every evaluation the live pages made is here with the config that reproduces it; pick two runs to see exactly what differs."
)
if S.get_model_set() is None:  # runs of every model set are listed; new ones need a loaded set
    st.page_link(S.MODELS_PAGE, label="Load a model set on Models to make new runs", icon=":material/inventory_2:")

c1, c2, c3 = st.columns([1, 2, 1])
kind = c1.selectbox("Kind", ["all", *log.kinds()], key="runs_kind")
text = c2.text_input("Search config and metrics", key="runs_text", placeholder="e.g. ties, digits, lines")
limit = c3.number_input("Show at most", 10, 10_000, 200, step=50, key="runs_limit")
runs = headlines(log.list(kind=None if kind == "all" else kind, text=text or None, limit=int(limit)))

if runs.empty:
    st.info("No runs yet. Evaluations from the CLI, sweeps and training runs appear here.")
    st.stop()

shown = [
    "id",
    "kind",
    "method",
    "status",
    "avg_abs",
    "avg_norm",
    "created",
    "duration_s",
    "seed",
    "model_set",
    "code_version",
]
st.dataframe(
    runs[shown].style.format({"avg_abs": "{:.3f}", "avg_norm": "{:.3f}", "duration_s": "{:.1f}"}, na_rep=""),
    hide_index=True,
    key="runs_table",
)
st.download_button(
    "Export these runs as CSV", runs.to_csv(index=False), "mergescope-runs.csv", "text/csv", key="runs_csv"
)

st.subheader("Compare two runs")
ids = runs["id"].tolist()
label = dict(zip(ids, (f"{r.id} · {r.kind} · {r.method or ''} · {r.created[:19]}" for r in runs.itertuples())))
a, b = st.columns(2)
scope = f"{kind}:{text}"  # new filters, new default pair (the two newest matching runs)
run_a = a.selectbox("Run A", ids, index=min(1, len(ids) - 1), format_func=label.get, key=f"runs_a:{scope}")
run_b = b.selectbox("Run B", ids, index=0, format_func=label.get, key=f"runs_b:{scope}")
if run_a == run_b:
    st.caption("Choose two different runs to see their differences.")
only_diff = st.toggle("Only fields that differ", value=True, key="runs_only_diff")
table = log.compare(run_a, run_b)
if only_diff:
    table = table[~table["same"]]
st.dataframe(table, key="runs_compare")

with st.expander(f"Run {run_b} in full"):
    st.json(log.get(run_b), expanded=False)
