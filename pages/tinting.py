"""Model Tinting: merge layer-wise, then tint one layer per task with pseudo-labels from the experts
(or layer-wise AdaMerging: the same coefficients without a tint, by entropy minimization).

Thin page: widgets -> core.labs.tinting.job.TintJob (training in a background thread; this page polls
it and can cancel it) -> figures from core.plots.tinting. Finished runs stay in the session for
the comparison with zero-shot, TA, TIES, TA+LiNeS (chosen on validation) and the experts.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from core.labs.tinting.baselines import baselines, comparison_table
from core.labs.tinting.config import ADAMERGING, DEFAULT_LR, TINTING, TintConfig
from core.labs.tinting.export import export_tinted
from core.labs.tinting.job import TintJob
from core.labs.tinting.model import tint_layer_choices
from core.labs.tinting.run import TintResult
from core.plots import tinting as P
from ui import state as S

JOB, RUNS = "tint_job", "tint_runs"

st.title("Model Tinting: merge, then tint one layer per task")
st.caption(
    "Train layer-wise merging coefficients λ(layer, task) (start 0.3, kept in [0, 1]) and one task-specific "
    "*tint* layer per task — by default each task's classification head, started from its zero-shot head — "
    "with cross-entropy against the hard labels of each task's fine-tuned expert. The confidence filter drops a "
    "sample when the expert and the merged model disagree and the merged model is more confident. Each step "
    "shuffles the tasks and takes one Adam step per task on one batch (Why Train Everything? Tint a Single "
    "Layer for Multi-task Model Merging). **AdaMerging** (layer-wise, Yang et al., ICLR 2024) is the same "
    "machinery without the tint: only λ trains, by minimizing the entropy of the merged model's predictions."
)
st.markdown(
    "**What to look for:** "
    "after one tinted layer per task, each task comes back to within a few points of its own fine-tuned model, where the plain merge lost more."
)

ms = S.require_model_set()
if not ms.eval_tasks:
    st.warning("Tinting trains on each task's images, and this model set has none: load the zoo (Models page).")
    st.stop()

keys = [k for k in S.analysis_keys(ms) if k.startswith("visual.")]
job: TintJob | None = st.session_state.get(JOB)
running = job is not None and job.running

METHOD_LABELS = {
    TINTING: "Model Tinting",
    ADAMERGING: "AdaMerging (layer-wise)",
    "both": "both, side by side",
}

with st.form("tint_form"):
    method = st.radio(
        "Method",
        list(METHOD_LABELS),
        format_func=METHOD_LABELS.get,
        horizontal=True,
        key="tint_method",
        help="AdaMerging trains only λ (no tinted layer, frozen zero-shot heads) by minimizing the entropy of "
        "the merged model's predictions, one Adam step per step over all tasks.",
    )
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Tinted layer (one copy per task)", tint_layer_choices(keys), key="tint_layer")
    steps = c2.number_input("Steps (each: one Adam step per task)", 1, 2000, 100, key="tint_steps")
    lr = c3.number_input("Learning rate (Tinting)", 1e-4, 1.0, DEFAULT_LR[TINTING], format="%.4f", key="tint_lr")
    ada_lr = c3.number_input(
        "Learning rate (AdaMerging)", 1e-5, 1.0, DEFAULT_LR[ADAMERGING], format="%.4f", key="tint_ada_lr"
    )
    batch = c1.number_input("Batch per task", 4, 256, 32, key="tint_batch")
    every = c2.number_input("Evaluate every … steps", 1, 500, 25, key="tint_every")
    use_filter = c3.toggle(
        "Confidence filter",
        True,
        key="tint_filter",
        help="Drops a sample when the merged model disagrees with the expert and is more confident. It assumes "
        "confident, accurate experts: with weak experts it drops many samples and can lock in the merged "
        "model's confident mistakes (watch 'kept' in the training chart).",
    )
    ablation = c3.toggle("Then the same Tinting run with the filter switched", False, key="tint_ablation")
    data = st.radio(
        "Unlabeled images to train on",
        ["test", "val"],
        format_func=lambda s: {"test": "test images (transductive, as in the paper)", "val": "validation images"}[s],
        horizontal=True,
        key="tint_data",
    )
    start = st.form_submit_button("Run", type="primary", disabled=running)
if data == "test":
    st.info(
        "**Transductive:** training sees each task's *test* images — never their labels; the targets come "
        "from the fine-tuned experts — and the accuracies below are measured on those same images, as in "
        "the paper. Choose validation images for an inductive run."
    )

if start and not running:
    common = dict(steps=int(steps), batch=int(batch), data=data, seed=S.seed(), eval_every=int(every))
    cfgs = []
    if method in (TINTING, "both"):
        cfg = TintConfig(layer=layer, lr=float(lr), filter=use_filter, **common)
        cfgs += [cfg, dataclasses.replace(cfg, filter=not use_filter)] if ablation else [cfg]
    if method in (ADAMERGING, "both"):
        cfgs.append(TintConfig(method=ADAMERGING, lr=float(ada_lr), **common))
    job = st.session_state[JOB] = TintJob(ms, cfgs)
    running = True


@st.fragment(run_every=1.0 if running else None)
def live_panel() -> None:
    job = st.session_state.get(JOB)
    if job is None:
        return
    n, done = job.cfg.steps, job.step
    which = f" (run {len(job.results) + 1} of {len(job.cfgs)})" if len(job.cfgs) > 1 and job.running else ""
    where = f"step {done}/{n}" if job.rows or not job.running else f"{job.label} ({job.elapsed:.0f} s)"
    st.progress(min(done / max(n, 1), 1.0), text=f"{job.cfg.label()}{which}: {where}")
    if job.running and st.button("Cancel", key="tint_cancel"):
        job.cancel.set()
    # The figures are rebuilt only when the job has new rows (not on every 1-s poll).
    fig_key = (job.serial, id(job.rows), len(job.rows), len(job.evals))
    figs = st.session_state.get("_tint_figs")
    if figs is None or figs[0] != fig_key:
        figs = (fig_key, P.training_curves(pd.DataFrame(job.rows)), P.accuracy_curves(pd.DataFrame(job.evals)))
        st.session_state["_tint_figs"] = figs
    c1, c2 = st.columns(2)
    c1.plotly_chart(figs[1], key="tint_train_fig")
    c2.plotly_chart(figs[2], key="tint_acc_fig")
    if job.error:
        st.error(f"Tinting failed: {job.error}")
    if not job.running and job.results and st.session_state.get("_tint_seen") != job.serial:
        st.session_state["_tint_seen"] = job.serial
        for res in job.results:
            label = res.config.label() + (" (cancelled)" if res.cancelled else "")
            st.session_state.setdefault(RUNS, {})[label] = res
        if running:  # finished while polling: draw the results below
            st.rerun()


live_panel()

runs: dict[str, TintResult] = st.session_state.get(RUNS, {})
if not runs:
    st.stop()

st.subheader("Comparison (test split)")
base = S.memo(
    ms, "tint:baselines", lambda cb: baselines(ms, progress=cb), "Zero-shot, TA, TIES, TA+LiNeS (λ, β on val)"
)
table = comparison_table(base, {label: r.accuracy for label, r in runs.items()})
tasks = list(base["individual"]["accuracy"])
st.dataframe(table.style.format({c: "{:.1%}" for c in [*tasks, "avg_abs", "avg_norm"]}), key="tint_table")
c1, c2 = st.columns(2)
c1.plotly_chart(P.normalized_bars(table), key="tint_norm_fig")
c2.plotly_chart(P.task_bars(table, tasks), key="tint_task_fig")

label = st.selectbox("Run to inspect", list(runs), index=len(runs) - 1, key="tint_inspect")
res = runs[label]
m = res.model
c1, c2, c3 = st.columns(3)
c1.metric("Trained parameters", f"{m.num_trainable():,}")
c2.metric("Fraction of the visual encoder", f"{m.num_trainable() / m.num_encoder_params():.2%}")
c3.metric("Wall time", f"{res.seconds:.0f} s", f"{res.steps_done} steps")
tints = (
    f"{m.num_trainable() - m.lambdas_raw.numel():,} parameters ({m.layer}, one copy per task)"
    if m.tinted
    else "none (AdaMerging: frozen zero-shot heads)"
)
st.caption(
    f"λ: {m.lambdas_raw.numel():,} coefficients ({len(m.keys)} tensors × {len(m.tasks)} tasks); tints: {tints}"
    + (f"; run {res.run_id} in the run log" if res.run_id is not None else "")
)
by = st.radio("λ heatmap rows", ["block", "tensor"], horizontal=True, key="tint_lambda_by")
st.plotly_chart(P.lambda_heatmap(m.lambda_frame(by)), key="tint_lambda_fig")

if st.button("Prepare export (merged encoder + per-task tints, safetensors)", key="tint_export"):
    with tempfile.TemporaryDirectory(prefix="mergescope-tint-") as tmp:  # the bytes are kept, not the file
        path = Path(tmp) / "tinted.safetensors"
        export_tinted(m, path, config=res.config, accuracy=res.accuracy)
        st.session_state["tint_export_bytes"] = path.read_bytes()
if st.session_state.get("tint_export_bytes"):
    st.download_button("Download tinted.safetensors", st.session_state["tint_export_bytes"], "tinted.safetensors")
