"""Fine-tune lab: low-data fine-tuning with layer-wise learning rates (TempBalance, Model Balancing) and
Weight Scope Alignment (WSA).

Thin page: widgets -> core.labs.finetune.job.LabJob (runs in a background thread; this page polls it and
can cancel it) -> figures from core.plots.training. Finished runs stay in the session; they can be
saved and added to the active model set for the Merge lab.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.labs.finetune.compare import markdown_table, summary_table
from core.labs.finetune.config import LR_RULES, METHOD_LABELS, METHODS, lab_tasks, recipe_defaults
from core.labs.finetune.export import lab_dir, model_name, save_lab_model, with_lab_models
from core.labs.finetune.job import LabJob
from core.labs.finetune.run import LabResult, grid_configs
from core.labs.finetune.wsa import WSAResult, wsa_markdown
from core.plots import analysis as PA
from core.plots import training as P
from ui import state as S

GRID_JOB, WSA_JOB, RUNS, WSA_RESULTS = "ft_grid_job", "ft_wsa_job", "ft_runs", "ft_wsa_results"
FRACTIONS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]

st.title("Fine-tune lab")
st.caption(
    "Fine-tune the pretrained visual tower on one task (its zero-shot head frozen, cross-entropy, AdamW with "
    "warmup + cosine) on a seeded fraction of the training set. **TempBalance** gives each weight matrix "
    "lr·[s1 + (s2 − s1)(α − α_min)/(α_max − α_min)] from its heavy-tailed α (larger α = less trained = faster); "
    "**Model Balancing** averages α per block and uses lr·10^(s·(σ(T(ᾱ_b − mean)) − ½)); both recompute every K "
    "steps. **WSA** adds w·Σℓ KL(N(μℓ, σℓ²) ‖ N(μ̃ℓ, σ̃ℓ²)), pulling each layer's weight mean and spread toward a "
    "target scope (the pretrained model's) so fine-tunes merge better."
)
st.markdown(
    "**What to look for:** "
    "TempBalance / Model Balancing against one uniform learning rate, by data fraction and over seeds: on both zoos (digits_typed on the styled zoo, 80 and 300 steps; digits on the demo zoo) the differences stay inside the seeds' spread, so the papers' effect does not show here (README, \"Fine-tune lab\")."
)
ms = S.require_model_set()
tasks = lab_tasks(ms)
defaults = recipe_defaults(ms)
grid_job: LabJob | None = st.session_state.get(GRID_JOB)
wsa_job: LabJob | None = st.session_state.get(WSA_JOB)
busy = any(j is not None and j.running for j in (grid_job, wsa_job))


def method_settings(prefix: str) -> dict:
    with st.expander("Method settings"):
        c1, c2, c3, c4 = st.columns(4)
        every = c1.number_input("Recompute α every K steps", 1, 1000, 25, key=f"{prefix}_every")
        s1, s2 = c2.slider("TempBalance s1, s2", 0.0, 3.0, (0.5, 1.5), 0.05, key=f"{prefix}_s1s2")
        s = c3.select_slider("Model Balancing s", [0.25, 0.5, 0.75, 1.0, 1.25], 1.25, key=f"{prefix}_s")
        weight = c4.number_input("WSA weight w", 0.0, 1e5, 100.0, key=f"{prefix}_weight")
        lr = c1.number_input("Learning rate", 1e-6, 1e-1, float(defaults["lr"]), format="%.5f", key=f"{prefix}_lr")
        batch = c2.number_input("Batch size", 4, 256, 32, key=f"{prefix}_batch")
    return {
        "every": int(every),
        "s1": s1,
        "s2": s2,
        "s": float(s),
        "wsa_weight": float(weight),
        "lr": float(lr),
        "batch_size": int(batch),
        "weight_decay": defaults["weight_decay"],
        "warmup": defaults["warmup"],
        "n_train": int(defaults["n_train"]),
    }


def live(job: LabJob | None, what: str) -> None:
    """Progress, cancel, and the running fine-tune's loss and multipliers (or scope distance)."""
    if job is None:
        return
    cur = job.current or {}
    step, steps = cur.get("step", 0), cur.get("steps") or 1
    frac = min((job.done + step / steps) / max(job.total, 1), 1.0)
    st.progress(frac, text=f"{what}: {job.done}/{job.total} fine-tunes done" + (f" — {job.label}" if job.label else ""))
    if job.running and st.button("Cancel", key=f"{what}_cancel"):
        job.cancel.set()
    if job.error:
        st.error(f"The run failed: {job.error}")
    if job.running and not cur:
        st.caption("Preparing the data and the model (the first run in a session also loads the libraries)…")
    if job.running and cur:
        cfg = cur.get("config")
        h = pd.DataFrame(list(cur.get("history", [])))  # a snapshot: the job appends while we read
        c1, c2 = st.columns(2)
        c1.plotly_chart(
            P.loss_curves({"now": h}, title=f"{cfg.method}, fraction {cfg.fraction:g}, seed {cfg.seed}"),
            key=f"{what}_loss",
        )
        bal = cur.get("balancer")
        if bal is not None and bal.history:
            c2.plotly_chart(P.current_multipliers(bal.table()), key=f"{what}_mult")
        else:
            c2.plotly_chart(
                P.loss_curves({"now": h}, y="scope_kl", title="distance to the target scope"), key=f"{what}_kl"
            )


grid_tab, wsa_tab = st.tabs(["Low-data fine-tuning", "Weight Scope Alignment"])

# ---------------------------------------------------------------------------------- low-data grid
with grid_tab:
    with st.form("ft_grid_form"):
        c1, c2, c3 = st.columns([2, 3, 3])
        task = c1.selectbox("Task", tasks, key="ft_task")
        fractions = c2.multiselect("Data fractions", FRACTIONS, [0.01, 0.05, 0.2], key="ft_fractions")
        methods = c3.multiselect(
            "Methods",
            METHODS,
            ["uniform", "tempbalance", "model_balancing"],
            format_func=METHOD_LABELS.get,
            key="ft_methods",
        )
        c1, c2 = st.columns(2)
        seeds = c1.slider("Seeds", 1, 5, 1, key="ft_seeds", help=f"seeds {S.seed()}, {S.seed()} + 1, … (sidebar)")
        steps = c2.number_input("Steps per fine-tune", 1, 5000, 60, key="ft_steps")
        settings = method_settings("ft")
        start = st.form_submit_button("Run", type="primary", disabled=busy, key="ft_run")
    if start and not busy and fractions and methods:
        configs = grid_configs(
            task, sorted(fractions), methods, [S.seed() + i for i in range(seeds)], steps=int(steps), **settings
        )
        grid_job = st.session_state[GRID_JOB] = LabJob("grid", ms, configs=configs)
        busy = True
    elif start:
        st.warning("Choose at least one fraction and one method.")

    @st.fragment(run_every=1.0 if grid_job is not None and grid_job.running else None)
    def grid_panel() -> None:
        job = st.session_state.get(GRID_JOB)
        live(job, "grid")
        if job is not None and not job.running and st.session_state.get("_ft_grid_seen") != job.serial:
            st.session_state["_ft_grid_seen"] = job.serial
            runs = st.session_state.setdefault(RUNS, {})
            for r in job.results:
                runs[model_name(r.config)] = r
            st.rerun()

    grid_panel()
    runs: dict[str, LabResult] = st.session_state.get(RUNS, {})
    if runs:
        table = pd.DataFrame([r.row() for r in runs.values()])
        shown = st.selectbox("Results for task", list(dict.fromkeys(table["task"])), key="ft_result_task")
        summary = summary_table(table[table["task"] == shown])
        st.plotly_chart(
            P.accuracy_vs_fraction(summary, title=f"{shown}: test accuracy vs data fraction", labels=METHOD_LABELS),
            key="ft_acc_fig",
        )
        st.markdown(markdown_table(summary))
        label = st.selectbox("Run to inspect", list(runs), index=len(runs) - 1, key="ft_inspect")
        r = runs[label]
        c1, c2, c3 = st.columns(3)
        c1.metric("Test accuracy", f"{r.accuracy:.1%}", f"{r.accuracy - r.zero_shot:+.1%} vs zero-shot")
        c2.metric("Training images", r.train_size)
        c3.metric("Σ KL to the pretrained scopes", f"{r.scope_kl:.3g}")
        c1, c2 = st.columns(2)
        c1.plotly_chart(
            P.alpha_before_after(r.alpha_before, r.alpha_after, title="α per weight matrix"), key="ft_alpha_fig"
        )
        c2.plotly_chart(P.loss_curves({label: r.history}, title="training loss"), key="ft_run_loss")
        if len(r.multipliers):
            st.plotly_chart(P.multiplier_heatmap(r.multipliers, title="lr multipliers over time"), key="ft_heat")
        with st.expander("All runs"):
            st.dataframe(table, hide_index=True, key="ft_table")
            st.download_button("Download (CSV)", table.to_csv(index=False), "finetune_lab.csv", "text/csv")

# ---------------------------------------------------------------------------------------- WSA
with wsa_tab:
    st.caption(
        "Fine-tune two models — two tasks, or two disjoint data shards of one task — once without and once with "
        "WSA toward the same target scope, then walk the straight line between them: a lower loss barrier and a "
        "better merge (task arithmetic, λ chosen on validation) mean the aligned models sit in a shared basin."
    )
    with st.form("ft_wsa_form"):
        c1, c2, c3 = st.columns(3)
        mode = c1.radio("Two models from", ["two tasks", "one task, two data shards"], key="wsa_mode")
        task_a = c2.selectbox("Task A", tasks, key="wsa_task_a")
        task_b = c3.selectbox("Task B (two tasks only)", tasks, index=min(1, len(tasks) - 1), key="wsa_task_b")
        c1, c2, c3, c4 = st.columns(4)
        target = c1.radio(
            "Target scope",
            ["base", "fused"],
            key="wsa_target",
            format_func={"base": "pretrained", "fused": "fused (from the runs without WSA)"}.get,
        )
        rule = c2.selectbox("Learning rates", LR_RULES, key="wsa_rule", format_func=METHOD_LABELS.get)
        fraction = c3.select_slider("Data fraction per model", FRACTIONS[:-1] + [1.0], 0.2, key="wsa_fraction")
        wsteps = c4.number_input("Steps per fine-tune", 1, 5000, 60, key="wsa_steps")
        wsettings = method_settings("wsa")
        wstart = st.form_submit_button("Run", type="primary", disabled=busy, key="wsa_run")
    if wstart and not busy:
        pair = [task_a] if mode != "two tasks" or task_a == task_b else [task_a, task_b]
        if len(pair) == 1 and fraction > 0.5:
            st.warning("Two disjoint shards need a fraction of at most 0.5; using 0.5.")
            fraction = 0.5
        weight = wsettings.pop("wsa_weight")
        wsa_job = st.session_state[WSA_JOB] = LabJob(
            "wsa",
            ms,
            tasks=pair,
            weight=weight,
            target=target,
            rule=rule,
            fraction=float(fraction),
            steps=int(wsteps),
            seed=S.seed(),
            **wsettings,
        )
        busy = True

    @st.fragment(run_every=1.0 if wsa_job is not None and wsa_job.running else None)
    def wsa_panel() -> None:
        job = st.session_state.get(WSA_JOB)
        live(job, "wsa")
        if (
            job is not None
            and not job.running
            and job.result is not None
            and st.session_state.get("_ft_wsa_seen") != job.serial
        ):
            st.session_state["_ft_wsa_seen"] = job.serial
            st.session_state[WSA_RESULTS] = job.result
            st.rerun()

    wsa_panel()
    res: WSAResult | None = st.session_state.get(WSA_RESULTS)
    if res is not None and len(res.summary):
        show = res.summary.set_index("variant")
        st.dataframe(show, key="wsa_table")
        st.markdown(wsa_markdown(res))
        c1, c2 = st.columns(2)
        c1.plotly_chart(P.barrier_curves(res.curves, title="along the line from A to B (test)"), key="wsa_curve")
        c2.plotly_chart(P.wsa_merge_bars(res.summary, title="models, midpoint and merge"), key="wsa_bars")
        st.plotly_chart(PA.weight_scopes_figure(res.scopes, title="weight scopes per layer"), key="wsa_scopes")

# -------------------------------------------------------------------------- into the model set
finished = {**st.session_state.get(RUNS, {})}
if res := st.session_state.get(WSA_RESULTS):
    finished.update({f"wsa-{model_name(r.config)}": r for r in res.results.values() if r.state_dict})
if finished:
    st.subheader("Use lab models in the Merge lab")
    chosen = st.multiselect("Fine-tunes to add to the active model set", list(finished), key="ft_add_choice")
    if st.button("Save and add to the model set", key="ft_add", disabled=not chosen):
        paths = {name: save_lab_model(finished[name], name) for name in chosen}
        S.set_model_set(with_lab_models(ms, paths))
        st.success(
            f"Saved {len(paths)} visual towers under {lab_dir()} and added them to the active model set: "
            "open the Merge lab to merge them."
        )
