"""Sweeps: choose a merge's coefficients on the validation split, report the choice on test.

A grid over the global λ of a merge method, or over LiNeS (α, β), runs in the
background (core.sweeps through core.runtime.executors) while this page shows progress
and a Cancel button; the result is drawn, its best point re-evaluated on test,
and the whole sweep stored in the run log (see Runs). The same sweep runs
headless with the JSON offered below: `python -m core sweep --config sweep.json`.
"""

from __future__ import annotations

import streamlit as st

from core.merging import METHODS, lambda_methods
from core.plots.sweeps import sweep_figure
from core.runtime.executors import get_executor
from core.runtime.jobs import Job
from core.spec import EvalSpec, MergeSpec
from core.sweeps import SweepSpec, default_grid, parse_values, run_sweep
from ui import jobs
from ui import state as S

JOB_KEY = "sweep_job"
RESULT_KEY = "sweep_result"

st.title("Sweeps: choose on validation, report on test")
st.caption(
    "Each grid point is merged and evaluated on the **validation** split; the point with the best average "
    "normalized accuracy (accuracy / the task's fine-tuned accuracy) is then evaluated once on **test**. "
    "Test numbers never choose anything."
)
st.markdown(
    "**What to look for:** "
    "the value chosen on validation and its number on test; two settings closer than about one point are not told apart by this many images (each row says how many it rests on)."
)

ms = S.require_model_set()
ref = S.current_ref()


def start(spec: SweepSpec, processes: int, address: str | None) -> None:
    """Run the sweep as a background job; the page polls its progress."""

    def work(job: Job):
        with get_executor(address, processes) as ex:
            return run_sweep(spec, executor=ex, model_set=ms, cancel=job.cancel, progress=job.progress)

    jobs.start(JOB_KEY, Job(work, name="sweep"))


methods = list(lambda_methods())
c1, c2 = st.columns(2)
method = c1.selectbox("Merge method", methods, key="sweep_method")
kind = c2.radio("Grid", ["λ (global scale)", "LiNeS (α, β)"], horizontal=True, key="sweep_kind")
lines = kind.startswith("LiNeS")
grid0 = default_grid(method, lines)
with st.form("sweep_form"):
    if lines:
        alpha_txt = st.text_input(
            'α values ("auto" = the multi-task rule ‖Σ τ‖₁ / ‖τ_merged‖₁ / N)', "auto", key=f"sweep_alpha_{method}"
        )
        beta_txt = st.text_input("β values", ", ".join(f"{b:g}" for b in grid0["beta"]), key=f"sweep_beta_{method}")
    else:
        lam_txt = st.text_input("λ values", ", ".join(f"{v:g}" for v in grid0["lambda"]), key=f"sweep_lambda_{method}")
    e1, e2, e3 = st.columns(3)
    subsample = e1.selectbox("Validation images per task", [None, 50, 100, 200], index=2, key="sweep_sub",
                             format_func=lambda n: "all" if n is None else str(n))  # fmt: skip
    processes = e2.number_input("Worker processes (0 = in this process)", 0, 16, 0, key="sweep_procs")
    address = e3.text_input("Ray cluster address (optional)", "", key="sweep_ray").strip() or None
    bf16 = st.toggle("bf16 autocast", key="sweep_bf16")
    submitted = st.form_submit_button("Run sweep", type="primary", key="sweep_run")
st.caption(
    f"{METHODS[method].description} Other parameters of {method} stay at their defaults: {METHODS[method].defaults()}."
)

running = jobs.current(JOB_KEY) is not None
if submitted and not running:
    try:
        grid = (
            {"alpha": parse_values(alpha_txt, "α values", allow_auto=True), "beta": parse_values(beta_txt, "β values")}
            if lines
            else {"lambda": parse_values(lam_txt, "λ values")}
        )
        spec = SweepSpec.make(
            ref, MergeSpec.make(method), grid, EvalSpec(subsample=subsample, bf16=bf16, seed=S.seed())
        )
    except ValueError as e:
        st.error(f"Cannot run this grid: {e}")
    else:
        start(spec, int(processes), address)
        st.session_state.pop(RESULT_KEY, None)
        running = True

done = jobs.show(JOB_KEY, lambda j: f"{j.done}/{max(j.total, 1)} evaluations", cancel_key="sweep_cancel")
if done is not None:
    if done.result is not None:
        st.session_state[RESULT_KEY] = done.result
    del st.session_state[JOB_KEY]

res = st.session_state.get(RESULT_KEY)
if res is not None and not running:
    if res.cancelled:
        st.warning(
            f"Cancelled: {len(res.frame)} of {len(res.spec.points())} grid points evaluated; no test evaluation."
        )
    if res.best:  # the numbers first, the figure under them
        m1, m2, m3 = st.columns(3)
        m1.metric("Best on validation", res.best["point"])
        m2.metric("Val avg normalized", f"{res.best['avg_norm']:.1%}")
        if res.test:
            m3.metric("Test avg normalized", f"{res.test['avg_norm']:.1%}", help=f"absolute {res.test['avg_abs']:.1%}")
    if not res.frame.empty:
        st.plotly_chart(sweep_figure(res.frame, res.best, res.test, res.tasks), key="sweep_fig")
    if not res.frame.empty:
        shown = ["point", *res.tasks, "avg_abs", "avg_norm"]
        st.dataframe(res.frame[shown].style.format({c: "{:.3f}" for c in shown[1:]}), key="sweep_table")
    rests = ""
    if "images" in res.frame and not res.frame.empty:
        rests = f"Each validation number rests on {int(res.frame['images'].iloc[0]):,} images ({len(res.tasks)} tasks)"
        if res.test.get("images"):
            rests += f"; the test numbers on {res.test['images']:,}"
        rests += ". "
    st.caption(
        rests
        + (
            f"{res.executor}, {res.seconds:.1f} s. Stored in the run log as run {res.run_id}."
            if res.run_id
            else f"{res.executor}, {res.seconds:.1f} s."
        )
    )
    with st.expander("Reproduce headless"):
        st.code("python -m core sweep --config sweep.json", language="bash")
        st.download_button("Download sweep.json", res.spec.to_json(), "sweep.json", "application/json")
        st.code(res.spec.to_json(), language="json")
