"""Continual (NTK-CL): tasks in sequence with adapters on the frozen backbone; forgetting, feature
orthogonality and the empirical NTK, with each of NTK-CL's three terms switchable.

Thin page: widgets -> core.labs.continual.job.ContinualJob (a background thread this page polls and can
cancel) -> figures from core.plots.continual. Finished runs stay in the session; every run is in
the run log, and any logged runs can be compared side by side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.labs.continual.config import SETTINGS, ContinualConfig
from core.labs.continual.job import ContinualJob
from core.labs.continual.result import ContinualResult, load_logged, runs_table
from core.plots import continual as P
from core.zoo import data as D
from ui import state as S

JOB, RUNS = "continual_job", "continual_runs"

st.title("Continual: parameter-efficient continual learning through the NTK lens")
st.caption(
    "A frozen backbone (the model set's pretrained visual encoder) learns tasks one after another through "
    "small adapters parallel to each block's MLP, with a prototype cosine classifier (class means, fixed once "
    "computed). NTK-CL's three answers to forgetting can be switched on one by one: **feature expansion** "
    "(several PEFT paths per sample: adapters, prompts and their fusion), **EMA + orthogonality** (a running "
    "mean of past tasks' adapters and a loss pushing new features off the span of old prototypes), and **L2** "
    "toward the previous task's adapters. All off is plain sequential adapter tuning."
)
st.markdown(
    "**What to look for:** "
    "the accuracy on earlier tasks after each new one (forgetting) and how the NTK view of the adapted layers explains it."
)

ms = S.require_model_set()
job: ContinualJob | None = st.session_state.get(JOB)
running = job is not None and job.running
d = ContinualConfig()
defaults = [t for t in d.tasks if t in D.TASK_NAMES]

with st.form("continual_form"):
    tasks = st.multiselect("Tasks, in training order (the order you pick them)", D.TASK_NAMES, defaults, key="cl_tasks")
    c1, c2, c3 = st.columns(3)
    setting = c1.radio(
        "Setting",
        SETTINGS,
        format_func=lambda s: {"class": "class-incremental", "task": "task-incremental"}[s],
        key="cl_setting",
        help="Class-incremental: one classifier over every class seen so far (the task must be "
        "recognised too). Task-incremental: the task is given, prediction among its own classes.",
    )
    steps = c2.number_input("Steps per task", 1, 2000, d.steps, key="cl_steps")
    seed = c3.number_input("Seed", 0, 10_000, S.seed(), key="cl_seed")
    c1, c2, c3 = st.columns(3)
    expansion = c1.toggle("Feature expansion", True, key="cl_expansion")
    ortho = c2.toggle("EMA + orthogonality", True, key="cl_ortho")
    l2 = c3.toggle("L2 to previous task", True, key="cl_l2")
    ortho_w = c2.number_input("Orthogonality weight", 0.0, 100.0, d.ortho_weight, key="cl_ortho_w")
    l2_w = c3.number_input("L2 weight", 0.0, 1000.0, d.l2_weight, key="cl_l2_w")
    with st.expander("Training details"):
        c1, c2, c3, c4 = st.columns(4)
        batch = c1.number_input("Batch", 2, 512, d.batch, key="cl_batch")
        lr = c2.number_input("Learning rate", 1e-5, 1.0, d.lr, format="%.4f", key="cl_lr")
        n_train = c3.number_input("Training images per task", 10, 3000, d.n_train, key="cl_n_train")
        lora = c4.number_input("LoRA rank on attention (0 = off)", 0, 64, d.lora_rank, key="cl_lora")
        ntk = c1.number_input("NTK probe images per task (0 = skip)", 0, 256, d.ntk_samples, key="cl_ntk")
    start = st.form_submit_button("Run", type="primary", disabled=running)

if start and not running:
    if len(tasks) < 2:
        st.warning("Pick at least two tasks: forgetting needs a sequence.")
    else:
        cfg = ContinualConfig(
            tasks=tuple(tasks),
            setting=setting,
            expansion=expansion,
            ortho=ortho,
            l2=l2,
            ortho_weight=float(ortho_w),
            l2_weight=float(l2_w),
            steps=int(steps),
            batch=int(batch),
            lr=float(lr),
            n_train=int(n_train),
            lora_rank=int(lora),
            ntk_samples=int(ntk),
            seed=int(seed),
        )
        job = st.session_state[JOB] = ContinualJob(ms, cfg, run_log=True)
        running = True


@st.fragment(run_every=1.0 if running else None)
def live_panel() -> None:
    job = st.session_state.get(JOB)
    if job is None:
        return
    st.progress(
        min(job.done / max(job.total, 1), 1.0), text=f"{job.cfg.label()}: {job.stage} ({job.done}/{job.total} steps)"
    )
    if job.running:
        if st.button("Cancel", key="cl_cancel"):
            job.cancel.set()
        # The matrix changes once per task: build its figure only then, not on every 1-s refresh.
        acc = job.acc
        stamp = (job.serial, int(np.isfinite(acc).sum()))
        live = st.session_state.get("_cl_live_fig")
        if live is None or live[0] != stamp:
            cols = [f"after {t}" for t in job.cfg.tasks]
            frame = pd.DataFrame(acc, index=list(job.cfg.tasks), columns=cols)
            live = st.session_state["_cl_live_fig"] = (stamp, P.accuracy_heatmap(frame, "Accuracy so far"))
        st.plotly_chart(live[1], key="cl_live_acc")
    if job.error:
        st.error(f"The run failed: {job.error}")
    if not job.running and job.result is not None and st.session_state.get("_cl_seen") != job.serial:
        st.session_state["_cl_seen"] = job.serial
        res = job.result
        label = f"{res.config.label()} · {res.config.setting} · seed {res.config.seed}" + (
            " (cancelled)" if res.cancelled else ""
        )
        if res.run_id is not None:
            label += f" · run {res.run_id}"
        st.session_state.setdefault(RUNS, {})[label] = res
        st.session_state["cl_inspect"] = label  # inspect the new run
        if res.run_id is not None:  # show the new run next to the previous one in the comparison
            st.session_state["cl_compare_ids"] = [res.run_id, *st.session_state.get("cl_compare_ids", [])[:1]]
        st.rerun()


live_panel()

runs: dict[str, ContinualResult] = st.session_state.get(RUNS, {})
if runs:
    label = st.selectbox("Run to inspect", list(runs), key="cl_inspect")
    res = runs[label]
    c1, c2, c3 = st.columns(3)
    c1.metric("Average accuracy (after the last task)", f"{res.average_accuracy():.1%}")
    c2.metric("Average forgetting", f"{res.average_forgetting() * 100:.1f} pts")
    c3.metric(
        "Wall time",
        f"{res.seconds:.0f} s",
        f"train {res.timings.get('train', 0):.0f} s · NTK {res.timings.get('ntk', 0):.0f} s",
        delta_color="off",
    )
    c1, c2 = st.columns(2)
    c1.plotly_chart(P.accuracy_heatmap(res.acc_frame()), key="cl_acc_fig")
    c2.plotly_chart(P.forgetting_bars({res.config.label(): res.forgetting()}), key="cl_forget_fig")
    c1, c2 = st.columns(2)
    c1.plotly_chart(P.angle_heatmap(res.angle_frame()), key="cl_angle_fig")
    c2.plotly_chart(P.angle_stages({res.config.label(): res.angle_summary()}), key="cl_angle_stage_fig")
    if res.ntk:
        stages = [r["after"] for r in res.ntk]
        at = st.select_slider("NTK after", stages, value=stages[-1], key="cl_ntk_stage")
        c1, c2 = st.columns(2)
        c1.plotly_chart(P.ntk_block_heatmap(res.ntk_blocks(stages.index(at))), key="cl_ntk_fig")
        c2.plotly_chart(P.ntk_stages({res.config.label(): res.ntk_frame()}), key="cl_ntk_stage_fig")
    st.plotly_chart(P.training_curves(res.history), key="cl_train_fig")

st.subheader("Compare logged runs")
try:
    table = runs_table()
except Exception as e:  # an unreadable run log should not take the page down
    st.info(f"The run log cannot be read: {e}")
    st.stop()
if table.empty:
    st.caption("No continual runs in the run log yet.")
    st.stop()
st.dataframe(
    table.style.format({"avg_acc": "{:.1%}", "avg_forgetting": "{:.3f}", "seconds": "{:.0f}"}),
    key="cl_runs_table",
    hide_index=True,
)
by_id = table.set_index("id")
known = [i for i in st.session_state.get("cl_compare_ids", by_id.index[:2].tolist()) if i in by_id.index]
st.session_state["cl_compare_ids"] = known
ids = st.multiselect(
    "Runs side by side",
    by_id.index.tolist(),
    key="cl_compare_ids",
    format_func=lambda i: f"run {i}: {by_id.loc[i, 'label']} · {by_id.loc[i, 'setting']} · seed {by_id.loc[i, 'seed']}",
)
if ids:
    chosen = {f"run {i}: {by_id.loc[i, 'label']}": load_logged(i) for i in ids}
    cols = st.columns(len(chosen))
    for col, (name, r) in zip(cols, chosen.items()):
        col.plotly_chart(P.accuracy_heatmap(r.acc_frame(), name), key=f"cl_cmp_acc_{name}")
    sub = by_id.loc[ids]
    sub.index = list(chosen)
    c1, c2 = st.columns(2)
    c1.plotly_chart(P.summary_bars(sub), key="cl_cmp_summary")
    c2.plotly_chart(P.forgetting_bars({n: r.forgetting() for n, r in chosen.items()}), key="cl_cmp_forget")
    c1, c2 = st.columns(2)
    c1.plotly_chart(P.angle_stages({n: r.angle_summary() for n, r in chosen.items()}), key="cl_cmp_angles")
    with_ntk = {n: r.ntk_frame() for n, r in chosen.items() if r.ntk}
    if with_ntk:
        c2.plotly_chart(P.ntk_stages(with_ntk), key="cl_cmp_ntk")
