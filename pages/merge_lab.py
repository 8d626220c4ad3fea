"""Merge lab: pick a merge method, steer it (its own parameters, LiNeS, a per-block curve), see accuracy live.

Controls are drawn from the method's declared `Param`s (core.merging registry): one
generic widget per kind, no per-method code. Results come from core.live (cached
direction, cached results by the spec's hash). The spec lives in the URL, so a
link reproduces the merge; "copy as CLI command" gives the same run as RunConfig JSON.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import MergeScopeError
from core.layers import TOWER_LABELS, tower_depths
from core.lines import resample_curve
from core.live import (
    SUBSAMPLE_CHOICES,
    default_subsample,
)
from core.live_report import LESSON_METHODS, comparison_table
from core.merging import METHODS, get_method
from core.plots.merge import accuracy_bars
from core.plots.svg import block_scale_svg
from core.runtime.paths import allow_any_path, export_dir, resolve_export_path
from core.spec import MergeSpec, RunConfig
from core.urlstate import QUERY_KEYS, spec_from_query, spec_to_query
from ui import state as S
from ui.widgets import param_widget

st.title("Merge lab")
st.caption(
    "Merge the fine-tuned models into one and measure it on every task, live. θ = θ₀ + λ·τ_merged, or with "
    "LiNeS / a block curve θ = θ₀ + λ(ℓ)·τ_merged (no extra global λ). Normalized accuracy = accuracy / the "
    "task's own fine-tuned accuracy. Results are on the test split: tune on validation (Sweeps) before trusting them."
)
st.markdown(
    "**What to look for:** "
    'each method opens at the λ chosen on validation when the zoo was built (the caption under its sliders says which). Switch from task arithmetic to TSV-M or Iso-C and watch the normalized accuracy: on the styled zoo TSV-M is about 2 points above task arithmetic (69.8 vs 67.8 % normalized on validation, at λ 0.6 and 0.1) and Iso-C about 1, while TIES falls 3 points below it. Then turn LiNeS on: here it moves task arithmetic by under a point, where the paper reports +5 on ViT-B/32 (the README\'s "The zoo, measured" has the measured gaps; on the demo zoo every method lands within a point).'
)
ms = S.require_model_set()
if not ms.eval_tasks:
    st.info(
        f"Live evaluation needs tasks with test images and zero-shot heads; the model set {ms.name!r} has none. "
        "Load the zoo on the Models page to steer merges live."
    )
    st.stop()

with st.expander("Evaluation settings"):
    subsample = st.selectbox(
        "Images per task (seeded subsample; 'all' refines)",
        SUBSAMPLE_CHOICES,
        **({} if "ml_sub" in st.session_state else {"index": SUBSAMPLE_CHOICES.index(default_subsample(ms))}),
        format_func=lambda n: "all" if n is None else str(n),
        key="ml_sub",
    )
    bf16 = st.toggle("bf16 autocast (about 2x faster on CPU, within ~1 point)", key="ml_bf16")


live = S.live_merger(ms, subsample, bf16)
L = live.num_blocks
# A full CLIP direction has two stacks of blocks; a curve is given for the image tower and carried to the
# text tower by relative depth (core.lines.tower_curves), which is LiNeS per tower for a LiNeS line.
depths = tower_depths(S.analysis_keys(ms))


# Each method opens at the λ its merge lesson chose on validation (`zoo build` measures it for the zoo, the
# button under the sliders for any model set; core.live_report.merge_lesson); a link's or the user's own
# value always wins.
LESSON = S.merge_lesson(ms) or {}


def lesson_preset(method: str) -> float | None:
    """Preset `method`'s global λ to its lesson value when the user has not set it; returns that value."""
    lam = LESSON.get("lambda", {}).get(method)
    key = f"ml_{method}_coefficients"
    if lam is not None and key not in st.session_state and not st.session_state.get(key + "__per_task"):
        st.session_state[key] = float(lam)
    return lam


# --------------------------------------------------------------------------- URL -> widgets (once per session)
def load_spec_into_widgets(spec: MergeSpec) -> None:
    ss = st.session_state
    ss["ml_method"] = spec.method
    ss["ml_tasks"] = [t for t in (spec.tasks or ms.tasks) if t in ms.tasks]
    for name, value in spec.param_dict.items():
        key = f"ml_{spec.method}_{name}"
        if isinstance(value, list):
            ss[key + "__per_task"] = True
            for t, v in zip(ss["ml_tasks"], value):
                ss[f"{key}__{t}"] = v
        else:
            ss[key] = value
    ss["ml_lines"] = spec.lines is not None
    if spec.lines is not None:
        ss["ml_alpha_auto"] = spec.lines[0] == "auto"
        if spec.lines[0] != "auto":
            ss["ml_alpha"] = float(spec.lines[0])
        ss["ml_beta"] = float(spec.lines[1])
    ss["ml_curve_on"] = spec.curve is not None
    if spec.curve is not None:
        ss["ml_curve_base"] = list(spec.curve)
        ss["ml_outside"] = float(spec.outside if spec.outside is not None else spec.curve[0])


if not st.session_state.get("ml_url_loaded"):
    st.session_state["ml_url_loaded"] = True
    if "method" in st.query_params:
        try:
            load_spec_into_widgets(spec_from_query(st.query_params.to_dict()))
        except ValueError as e:
            st.warning(f"The link's merge settings could not be read ({e}); starting from the defaults.")


def _value_kw(key: str, default, arg: str = "value") -> dict:
    return {} if key in st.session_state else {arg: default}


def reset_curve(curve: list[float], outside: float) -> None:
    st.session_state["ml_curve_base"] = curve
    st.session_state["ml_outside"] = outside
    st.session_state.pop("ml_curve_editor", None)


def curve_editor(line_spec: MergeSpec) -> tuple[tuple[float, ...], float] | None:
    """Per-block scales as an editable table, starting from `line_spec`'s LiNeS line or λ; None unless in use."""
    start, start_out = live.block_scales(line_spec)
    st.button(
        "Reset to the current LiNeS / λ line", on_click=reset_curve, args=(start, start_out), key="ml_curve_reset"
    )
    base = list(st.session_state.get("ml_curve_base") or start)
    base = (base + [base[-1]] * L)[:L]
    edited = st.data_editor(
        pd.DataFrame({"block": range(L), "scale": base}), disabled=["block"], hide_index=True, key="ml_curve_editor"
    )
    out = st.number_input(
        "Scale outside the blocks (embeddings, ln_pre/ln_post, proj)",
        step=0.05,
        key="ml_outside",
        **_value_kw("ml_outside", start_out),
    )
    if st.toggle("Use this curve (replaces LiNeS and λ)", key="ml_curve_on"):
        return tuple(float(x) for x in edited["scale"]), float(out)
    return None


# --------------------------------------------------------------------------- the lab
@st.fragment
def lab() -> None:
    try:
        lab_body()
    except ValueError as e:  # e.g. an all-zero merged direction (LiNeS alpha undefined), a bad DARE p
        st.error(f"This merge cannot be computed: {e}")


def lab_body() -> None:
    left, right = st.columns([2, 3], gap="large")
    with left:
        method = st.selectbox(
            "Method",
            list(METHODS),
            key="ml_method",
            **_value_kw("ml_method", list(METHODS).index("task_arithmetic"), "index"),
        )
        m = get_method(method)
        st.caption(f"{m.description} — {m.reference}")
        tasks = st.multiselect("Tasks to merge", ms.tasks, key="ml_tasks", **_value_kw("ml_tasks", ms.tasks, "default"))
        if not tasks:
            st.warning("Pick at least one task to merge.")
            return
        lines_on = bool(st.session_state.get("ml_lines"))
        chosen = lesson_preset(method)
        params = {
            p.name: param_widget(
                p,
                f"ml_{method}_{p.name}",
                tasks,
                disabled=lines_on and p.name == "coefficients",
                note="not applied with LiNeS on (LiNeS sets every block's scale)" if lines_on else None,
            )
            for p in m.params
        }
        if chosen is not None:
            st.caption(
                f"λ chosen on validation for this model set: {chosen} "
                f"({100 * LESSON['normalized'][method]:.1f} % normalized on val)."
            )
        elif not LESSON and method in LESSON_METHODS:
            if st.button(
                f"Choose λ on validation for the {len(LESSON_METHODS)} methods with a global λ (a grid per method)",
                key="ml_lesson_btn",
            ):
                cb = S.progress_callback("Each method's λ on the validation split")
                S.measure_merge_lesson(ms, live, cb)
                cb.finish("Measured: each method now opens at its λ")
                for m in LESSON_METHODS:  # let the presets apply (a user's own value is kept by a link only)
                    st.session_state.pop(f"ml_{m}_coefficients", None)
                st.rerun(scope="app")
        lines = None
        if st.toggle("LiNeS: scale τ_merged by block, λ(ℓ) = α + β·ℓ/(L−1)", key="ml_lines"):
            auto = st.toggle(
                "α = (‖Σ τ‖₁ / ‖τ_merged‖₁) / N, the multi-task rule",
                key="ml_alpha_auto",
                **_value_kw("ml_alpha_auto", True),
            )
            alpha = (
                "auto" if auto else st.slider("α", 0.0, 1.5, step=0.01, key="ml_alpha", **_value_kw("ml_alpha", 0.3))
            )
            lines = (alpha, st.slider("β", 0.0, 1.5, step=0.05, key="ml_beta", **_value_kw("ml_beta", 0.5)))
            st.caption("With LiNeS the method's global λ is not applied (official LiNeS).")
        subset = tuple(tasks) if tasks != ms.tasks else None
        spec = MergeSpec.make(method, params, lines=lines, tasks=subset)
        # The editor only while its expander is open (or its curve is in use): a closed expander's table was
        # re-sent and rebuilt by the browser on every slider move (the Merge lab's slowest burst).
        curve_exp = st.expander(
            "Per-block coefficient curve (advanced)",
            expanded=bool(st.session_state.get("ml_curve_on")),
            key="ml_curve_exp",
            on_change="rerun",
        )
        edited = None
        if curve_exp.open or st.session_state.get("ml_curve_on"):
            with curve_exp:
                edited = curve_editor(spec)
        if edited is not None:
            spec = MergeSpec.make(method, params, curve=edited[0], outside=edited[1], tasks=subset)
        scales, outside = live.block_scales(spec)
        tower = (
            st.radio("Tower", list(depths), horizontal=True, key="ml_tower", format_func=TOWER_LABELS.get)
            if len(depths) > 1
            else None
        )
        if tower is not None and tower != "visual":
            scales = resample_curve(scales, depths[tower])
        chart_slot = st.empty()
    sync_url(spec)
    with right:
        results(spec)
    # The figure after the numbers: its render in the browser would compete with the forward pass.
    svg = block_scale_svg({"merged": scales}, outside={"merged": outside}, tower=tower)
    chart_slot.markdown(svg, unsafe_allow_html=True)
    export(spec)


def sync_url(spec: MergeSpec) -> None:
    """Keep the spec (and the zoo) in the URL: a copied link reproduces this merge."""
    q = spec_to_query(spec)
    ref = S.current_ref()
    if ref is not None and ref.zoo:
        q["zoo"] = ref.zoo
    for k in (*QUERY_KEYS, "zoo"):
        if k in q and st.query_params.get(k) != q[k]:
            st.query_params[k] = q[k]
        elif k not in q and k in st.query_params and k != "zoo":
            del st.query_params[k]


def describe(spec: MergeSpec) -> str:
    """What the numbers are for, in words a slider shows: the method, LiNeS α/β or a curve, else λ."""
    if spec.curve is not None:
        return f"{spec.method} with a block curve"
    if spec.lines is not None:
        a = spec.lines[0]
        return f"{spec.method} + LiNeS α={'auto' if a == 'auto' else f'{float(a):.2f}'}, β={float(spec.lines[1]):.2f}"
    c = spec.param_dict.get("coefficients")
    lam = f"λ={float(c):.2f}" if isinstance(c, int | float) else f"λ per task {c}"
    return f"{spec.method} {lam}"


def results(spec: MergeSpec) -> None:
    """Anytime numbers: rounds of test images redraw an estimate with 95% intervals. A newer slider position
    cancels the evaluation in flight between batches (S.newer_input), so only the latest position is
    evaluated to the end (the cancelled run hands over to it at once, S.follow_newer_input)."""
    base_lam = float(LESSON.get("lambda", {}).get("task_arithmetic", 0.3))  # the baseline at its own val λ too
    ta_lam = st.number_input(
        "λ of the plain task-arithmetic baseline",
        0.0,
        2.0,
        step=0.05,
        key="ml_ta_lambda",
        help="Preset to task arithmetic's λ chosen on validation when the model set has a merge lesson, else 0.3.",
        **_value_kw("ml_ta_lambda", base_lam),
    )
    note = st.empty()
    note.caption(f"Updating the numbers for {describe(spec)}…")
    body = st.empty()
    r = None
    for r in live.evaluate_rounds(spec, cancel=S.newer_input()):
        if not r["final"]:
            with body.container():
                partial(r, spec)
    if r is None or not r["final"]:
        S.follow_newer_input()
    note.caption(f"Adding task arithmetic at λ = {ta_lam:g} for comparison…")
    delta = live.delta_to_task_arithmetic(spec, ta_lam)
    note.empty()
    st.session_state["ml_result"] = (spec.key(), r)
    entry = st.session_state.get(S.MERGED_KEY)
    if not (isinstance(entry, tuple) and entry[0] == spec.key()):  # the Spectra page analyses it as "merged"
        st.session_state[S.MERGED_KEY] = (spec.key(), live.merged_state_dict(spec))
    with body.container():
        final(r, spec, delta, ta_lam)


def partial(r: dict, spec: MergeSpec) -> None:
    n, total = sum(r["n"].values()), sum(r["total"].values())
    half = max((hi - lo) / 2 for lo, hi in r["interval"].values())
    c1, c2 = st.columns(2)
    c1.metric("Absolute (estimate)", f"{r['mean']:.1%}", help="95% Wilson intervals per task below")
    c2.metric("Normalized (estimate)", f"{r['normalized_mean']:.1%}")
    rows = [
        {"task": t, "accuracy": a, "low": r["interval"][t][0], "high": r["interval"][t][1], "images": r["n"][t]}
        for t, a in r["accuracy"].items()
    ]
    st.dataframe(pd.DataFrame(rows).set_index("task").style.format("{:.3f}", subset=["accuracy", "low", "high"]))
    st.caption(f"Updating {describe(spec)}: estimate from {n:,} of {total:,} test images (±{half:.1%} at most).")


def final(r: dict, spec: MergeSpec, delta: dict, ta_lam: float) -> None:
    # Two metrics side by side: three did not fit a 1000 px window (the values were cut to "22.…").
    c1, c2 = st.columns(2)
    c1.metric("Absolute", f"{r['mean']:.1%}", f"{delta['mean']:+.1%} vs TA", help="mean accuracy over the merged tasks")
    c2.metric(
        "Normalized",
        f"{r['normalized_mean']:.1%}",
        f"{delta['normalized_mean']:+.1%} vs TA",
        help="mean of accuracy / the task's fine-tuned accuracy",
    )
    st.caption(
        f"Plain task arithmetic at λ = {ta_lam:g}: {delta['task_arithmetic']['mean']:.1%} absolute, "
        f"{delta['task_arithmetic']['normalized_mean']:.1%} normalized."
    )
    table = comparison_table(r, live.reference_rows(), {"task arithmetic": delta["task_arithmetic"]["accuracy"]})
    st.session_state["ml_table"] = table
    # The table first; the bars in a second tab, computed and drawn only while it is open (on_change="rerun"):
    # a fresh tab from a shared link then loads no chart library before the numbers are complete.
    tab_table, tab_bars = st.tabs(["Per task", "Bars"], key="ml_tab", on_change="rerun")
    if tab_table.open:
        wide = table.pivot(index="task", columns="model", values="accuracy")
        wide = wide.reindex(index=list(r["accuracy"]), columns=list(dict.fromkeys(table["model"])))
        tab_table.dataframe(wide.style.format("{:.3f}"), key="ml_wide")
    if tab_bars.open:
        tab_bars.plotly_chart(
            accuracy_bars(table, "Accuracy per task: merged vs zero-shot vs fine-tuned"), key="ml_bars"
        )
    how = (
        "cached" if r["cached"] else f"merge {r['merge_seconds'] * 1e3:.0f} ms + eval {r['eval_seconds'] * 1e3:.0f} ms"
    )
    total = sum(r["total"].values())
    st.caption(
        f"Numbers for {describe(spec)} · test split, {total:,} images "
        f"({'all' if subsample is None else subsample} per task); {how}. Spec {spec.key()}."
    )


def export(spec: MergeSpec) -> None:
    st.subheader("Export")
    c1, c2, c3 = st.columns(3)
    hf = c1.toggle("Hugging Face CLIP names", key="ml_hf_names")
    mb = live.model_megabytes()
    if mb <= 500:  # larger models: save to a path instead of holding the file in memory for a download
        data = lambda: live.safetensors_bytes(spec, hf_names=hf)  # noqa: E731 - deferred until clicked
        c1.download_button(f"Merged model ({mb:.0f} MB)", data, f"merged-{spec.key()}.safetensors", key="ml_dl_model")
    folder = export_dir()
    anywhere = allow_any_path()
    path = c2.text_input(
        "…or save on the server",
        key="ml_save_path",
        placeholder=f"merged-{spec.key()}.safetensors",
        help=f"A file name inside the export folder {folder}"
        + (" (this server also allows absolute paths)" if anywhere else "")
        + ". Set MERGESCOPE_EXPORT_DIR to move the folder; MERGESCOPE_ALLOW_ANY_PATH=1 allows any path.",
    )
    c2.caption(f"Export folder: `{folder}`")
    overwrite = c2.checkbox("Overwrite if it exists", key="ml_save_overwrite")
    if c2.button("Save", key="ml_save_btn", disabled=not path):
        try:
            target = resolve_export_path(path, overwrite=overwrite)
            c2.success(f"Saved to `{live.save(spec, target, hf_names=hf)}`")
        except MergeScopeError as e:
            c2.error(str(e))
    table = st.session_state.get("ml_table")
    if table is not None:
        c3.download_button("Results (CSV)", table.to_csv(index=False), f"results-{spec.key()}.csv", key="ml_dl_csv")
    ref = S.current_ref()
    if ref is not None:
        with st.expander("Copy as CLI command"):
            st.code("python -m core eval --config spec.json", language="bash")
            st.code(RunConfig(model_set=ref, merge=spec, eval=live.eval_spec).to_json(), language="json")


lab()
