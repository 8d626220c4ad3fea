"""LiNeS, single task: keep the target task, give the other tasks back what fine-tuning took.

One fine-tuned model, its task vector scaled block by block, λ(ℓ) = α + β·ℓ/(L−1)
(core.lines; official semantics: everything outside the blocks takes α). The
numbers follow every slider move (core.live: the direction is cached, a move
re-applies it and runs the forward passes); the α sweep chooses on validation
and reports on test.
"""

from __future__ import annotations

import streamlit as st

from core.layers import TOWER_LABELS, tower_depths
from core.lines import lines_curve
from core.live import (
    ALPHAS,
    SUBSAMPLE_CHOICES,
    default_subsample,
    single_task_spec,
    uniform_spec,
)
from core.live_report import best_alpha
from core.plots.merge import tradeoff_curve
from core.plots.svg import block_scale_svg
from core.runtime.threads import torch_threads
from ui import state as S

st.title("LiNeS: forget less by scaling shallow layers down")
st.caption(
    "Fine-tuning on one task (the *target*) costs accuracy on the others (the *controls*). LiNeS keeps the "
    "fine-tuned update in the deep blocks and shrinks it in the shallow ones: block ℓ of L gets "
    "λ(ℓ) = α + β·ℓ/(L−1) (β = 1 − α by default, so the last block keeps the full update; everything outside "
    "the blocks gets α). Normalized target = acc / fine-tuned acc; normalized control = acc / zero-shot acc, "
    "averaged over the controls; the paper's score is 2·target_norm + control_norm."
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
        **({} if "lines_sub" in st.session_state else {"index": SUBSAMPLE_CHOICES.index(default_subsample(ms))}),
        format_func=lambda n: "all" if n is None else str(n),
        key="lines_sub",
    )
    bf16 = st.toggle("bf16 autocast (about 2x faster on CPU, within ~1 point)", key="lines_bf16")


live = S.live_merger(ms, subsample, bf16)
# The lesson's default target: the task where LiNeS beats uniform scaling most clearly on validation,
# measured once (`python -m core zoo build` does it for the zoo; the button below for any model set).
lesson = S.lines_lesson(ms)
default = ms.tasks.index(lesson["target"]) if lesson and lesson["target"] in ms.tasks else 0
if "lines_target_next" in st.session_state:  # set by the measuring button below, applied before the widget
    st.session_state["lines_target"] = st.session_state.pop("lines_target_next")
target = st.selectbox(
    "Fine-tuned model (target task)",
    ms.tasks,
    key="lines_target",
    **({} if "lines_target" in st.session_state else {"index": default}),
)
st.markdown(
    "**What to look for:** move α down from 1. Uniform scaling (the row under LiNeS) gives the controls "
    "back their accuracy by shrinking the whole update, so the target falls with it; LiNeS shrinks the "
    "shallow blocks only, so at the same α the target keeps more of its accuracy and the score is higher. "
    "On the styled zoo this is clearest on digits_typed; there the α sweep's trade-off curve (control accuracy "
    "at equal target accuracy) favours uniform scaling by about 2 points, because a new look is learnt in the "
    'shallow blocks too; on the demo zoo LiNeS wins that comparison on every task (README, "The zoo, measured").'
)
if lesson:
    ahead = ", ".join(f"{a:g}" for a in lesson["wins"].get(target, [])) or "none of"
    st.caption(
        f"Measured on validation for this model set: the effect is clearest on **{lesson['target']}** "
        f"(LiNeS − uniform score {lesson['advantage'][lesson['target']]:+.3f} on average over α "
        f"{', '.join(f'{a:g}' for a in lesson['alphas'])}). On {target}: {lesson['advantage'][target]:+.3f}, "
        f"LiNeS ahead at α {ahead}."
        + (
            ""
            if lesson["advantage"][target] > 0
            else " Here uniform scaling does as well or better: this task does not show the paper's effect."
        )
    )
elif st.button("Find the task where LiNeS beats uniform scaling (6 validation passes per task)", key="lines_lesson"):
    cb = S.progress_callback("LiNeS vs uniform scaling on validation, per task")
    measured = S.measure_lines_lesson(ms, live, cb)
    cb.finish("Measured: the default target is now the task with the clearest effect")
    st.session_state["lines_target_next"] = measured["target"]
    st.rerun()
L = live.num_blocks
# A full CLIP task vector has two stacks of blocks; LiNeS scales each by its own depth (core.lines).
depths = tower_depths(S.analysis_keys(ms))


def show_numbers(result: dict, uniform: dict | None, target: str, alpha: float, beta: float) -> None:
    """Metrics, the table (LiNeS next to uniform scaling at the same α) and what the numbers rest on."""
    others = {f"uniform α={alpha:.2f}": uniform} if uniform is not None else None
    table = live.single_task_table(target, result, label=f"LiNeS α={alpha:.2f}, β={beta:.2f}", others=others)
    cur, ft = table.iloc[2], table.loc["fine-tuned"]
    m1, m2, m3 = st.columns(3)
    m1.metric("Target accuracy", f"{cur.iloc[0]:.1%}", f"{cur.iloc[0] - ft.iloc[0]:+.1%} vs fine-tuned")
    m2.metric("Control accuracy", f"{cur['control mean']:.1%}", f"{cur['control mean'] - ft['control mean']:+.1%}")
    m3.metric("Score", f"{cur['score']:.3f}", f"{cur['score'] - ft['score']:+.3f}", help="2·target_norm + control_norm")
    st.dataframe(table.style.format("{:.3f}"), key="lines_table")
    n, total = sum(result["n"].values()), sum(result["total"].values())
    if not result["final"]:
        half = max((hi - lo) / 2 for lo, hi in result["interval"].values())
        st.caption(
            f"Updating: estimate from {n:,} of {total:,} test images (95% intervals up to ±{half:.1%}); "
            "the exact numbers follow."
        )
        return
    timing = (
        "cached"
        if result["cached"]
        else f"merge {result['merge_seconds'] * 1e3:.0f} ms + evaluation {result['eval_seconds'] * 1e3:.0f} ms"
    )
    st.caption(
        f"Numbers for LiNeS α={alpha:.2f}, β={beta:.2f} on the {target} model · test split, {total:,} images "
        f"({'all' if subsample is None else subsample} per task); {timing}."
    )


def numbers(spec, target: str, alpha: float, beta: float, chart) -> None:
    """Anytime numbers for the latest slider position first, then the figure, then the uniform-scaling row.

    A newer slider position cancels the evaluation in flight between batches (S.newer_input), so a burst
    of presses evaluates only the last one. The block-curve figure is drawn after the numbers (its render
    in the browser would compete with the forward pass for the same cores), and the uniform-scaling row,
    an extra, runs on one thread so the server and the browser keep a core to show the numbers at once."""
    cancel = S.newer_input()
    note = st.empty()
    note.caption(f"Updating the numbers for α={alpha:.2f}, β={beta:.2f}…")
    body = st.empty()
    result = None
    for result in live.evaluate_rounds(spec, cancel=cancel):
        with body.container():
            show_numbers(result, None, target, alpha, beta)
    if result is None or not result["final"]:
        S.follow_newer_input()  # cancelled by a newer position: run for it now
    note.empty()
    chart()
    st.session_state["lines_result"] = (spec.key(), result)
    # Uniform scaling at the same α, the paper's baseline: after the LiNeS numbers, in the same table.
    uniform = None
    note.caption("Adding uniform scaling at the same α…")
    with torch_threads(1):
        for step in live.evaluate_rounds(uniform_spec(target, alpha), cancel=cancel):
            uniform = step
    if uniform is None or not uniform["final"]:
        S.follow_newer_input()
    note.empty()
    with body.container():
        show_numbers(result, uniform, target, alpha, beta)


@st.fragment
def live_panel() -> None:
    c1, c2 = st.columns([2, 3])
    with c1:
        alpha = st.slider(
            "α: scale of the shallowest block (and outside the blocks)", 0.0, 1.0, 0.5, 0.05, key="lines_alpha"
        )
        free = st.toggle("Set β freely (default β = 1 − α)", key="lines_free_beta")
        if free:
            beta = st.slider(
                "β: extra scale added linearly up to the last block", 0.0, 1.5, 0.5, 0.05, key="lines_beta"
            )
        else:
            beta = round(1.0 - alpha, 10)
            st.caption(f"β = 1 − α = {beta:.2f}")
        tower = (
            st.radio("Tower", list(depths), horizontal=True, key="lines_tower", format_func=TOWER_LABELS.get)
            if len(depths) > 1
            else None
        )
        chart_slot = st.empty()

    def chart() -> None:
        curve = lines_curve(alpha, beta, depths[tower] if tower else L)
        svg = block_scale_svg({"LiNeS": curve}, outside={"LiNeS": alpha}, tower=tower)
        chart_slot.markdown(svg, unsafe_allow_html=True)

    spec = single_task_spec(target, alpha, beta)
    with c2:
        numbers(spec, target, alpha, beta, chart)

    sweeps = st.session_state.setdefault("lines_sweeps", {})
    sweep_key = (target, subsample, bf16)
    if st.button("Run the α sweep {1.0, 0.9, …, 0.0} on validation", key="lines_sweep_btn"):
        cb = S.progress_callback("α sweep on the validation split (LiNeS and uniform scaling)")
        df = live.alpha_sweep(target, ALPHAS, split="val", progress=cb)
        best = best_alpha(df)
        report = live.evaluate(single_task_spec(target, best["alpha"]))
        cb.finish(f"Sweep done: α = {best['alpha']:.1f} is best on validation")
        sweeps[sweep_key] = {"df": df, "best": best, "report": report}
    sweep = sweeps.get(sweep_key)
    if sweep is not None:
        val_now = live.evaluate(spec, split="val")
        zs, ft_acc = live.single_task_table(target, val_now, split="val").iloc[:2].to_dict("index").values()
        refs = {
            "zero-shot": (zs["control mean"], zs[f"{target} (target)"]),
            "fine-tuned": (ft_acc["control mean"], ft_acc[f"{target} (target)"]),
        }
        fig = tradeoff_curve(
            sweep["df"], current=val_now, references=refs, chosen=sweep["best"], title="Trade-off on validation"
        )
        st.plotly_chart(fig, key="lines_tradeoff_fig")
        b, rep = sweep["best"], sweep["report"]
        uni = live.evaluate(uniform_spec(target, b["alpha"]))
        st.markdown(
            f"**Chosen on validation:** α = {b['alpha']:.1f}, β = {1 - b['alpha']:.1f} (score {b['score']:.3f}). "
            f"**On test:** target {rep['target_acc']:.1%}, control {rep['control_acc']:.1%}, score {rep['score']:.3f} "
            f"(uniform scaling at the same α: target {uni['target_acc']:.1%}, control {uni['control_acc']:.1%}, "
            f"score {uni['score']:.3f})."
        )
        st.button(
            "Move the sliders to the chosen α", on_click=set_alpha, args=(float(b["alpha"]),), key="lines_use_best"
        )


def set_alpha(alpha: float) -> None:
    st.session_state["lines_alpha"] = alpha
    st.session_state["lines_free_beta"] = False


live_panel()
