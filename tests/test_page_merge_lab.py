"""The Merge lab (AppTest on the micro zoo): generic controls, live numbers equal core's, URL state, export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.checkpoints import load_state_dict
from core.evaluate import Evaluator
from core.layers import num_blocks
from core.lines import infer_num_blocks, lines_curve
from core.merging import merge
from core.spec import MergeSpec, ModelSetRef, RunConfig
from tests.fixtures import full_clip
from tests.pagehelp import shown_curve, svg_markup

SUB = 50
PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "merge_lab.py")


@pytest.fixture(autouse=True)
def _micro_cache(micro_zoo, monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))  # where ModelSetRef(zoo="micro") looks
    from core.analysis_cache import AnalysisCache

    # an empty analysis cache: no merge lesson unless a test measures one (`zoo build` may have stored one)
    monkeypatch.setattr("ui.state.analysis_cache", lambda: AnalysisCache(tmp_path / "empty-analysis"))


def _page(query: dict | None = None, **state) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_set_ref"] = ModelSetRef(zoo="micro")
    at.session_state["ml_sub"] = SUB  # the page's "images per task" setting keeps the tests quick
    for k, v in state.items():
        at.session_state[k] = v
    for k, v in (query or {}).items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, at.exception
    return at


def _core(ms, **kw) -> dict[str, float]:
    tasks = kw.pop("tasks", ms.tasks)
    sd = merge(ms.base(), {t: ms.finetuned(t) for t in tasks}, **kw)
    return Evaluator.for_model_set(ms, split="test", subsample=SUB).accuracy(sd)


def _query(at) -> dict[str, str]:
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def _result(at) -> dict:
    return at.session_state["ml_result"][1]


def test_default_is_task_arithmetic_and_equals_core(micro_zoo):
    at = _page()
    assert at.selectbox(key="ml_method").value == "task_arithmetic"
    assert _result(at)["accuracy"] == _core(micro_zoo, method="task_arithmetic", coefficients=0.3)
    key, sd = at.session_state["merged_state_dict"]  # for the Spectra page
    assert key == at.session_state["ml_result"][0] and "visual.conv1.weight" in sd


def test_lambda_slider_and_lines_move_the_numbers(micro_zoo):
    at = _page()
    at.slider(key="ml_task_arithmetic_coefficients").set_value(1.0).run()
    r1 = _result(at)
    assert r1["accuracy"] == _core(micro_zoo, method="task_arithmetic", coefficients=1.0)
    at.toggle(key="ml_lines").set_value(True).run()
    at.slider(key="ml_beta").set_value(1.0).run()
    r2 = _result(at)
    assert r2["accuracy"] != r1["accuracy"]
    assert r2["accuracy"] == _core(micro_zoo, method="task_arithmetic", lines=("auto", 1.0))


def test_controls_come_from_the_param_spec(micro_zoo):
    at = _page()
    at.selectbox(key="ml_method").set_value("ties").run()
    assert not at.exception
    # TIES declares k (float), agg (choice) and per-task coefficients: one generic widget each.
    at.slider(key="ml_ties_k").set_value(0.5).run()
    at.selectbox(key="ml_ties_agg").set_value("sum").run()
    at.slider(key="ml_ties_coefficients").set_value(0.5).run()
    assert _result(at)["accuracy"] == _core(micro_zoo, method="ties", k=0.5, agg="sum", coefficients=0.5)
    at.selectbox(key="ml_method").set_value("dare").run()
    assert at.number_input(key="ml_dare_seed").value == 0  # an int over a huge range: a number input
    assert not at.exception


def test_per_task_coefficients_and_task_subset(micro_zoo):
    tasks = micro_zoo.tasks[:2]
    at = _page()
    at.multiselect(key="ml_tasks").set_value(tasks).run()
    at.toggle(key="ml_task_arithmetic_coefficients__per_task").set_value(True).run()
    at.slider(key=f"ml_task_arithmetic_coefficients__{tasks[0]}").set_value(0.8).run()
    r = _result(at)
    assert r["tasks"] == tasks
    assert r["accuracy"] == _core(micro_zoo, method="task_arithmetic", coefficients=[0.8, 0.3], tasks=tasks)


def test_block_curve_editor(micro_zoo):
    n = infer_num_blocks(micro_zoo.finetuned(micro_zoo.tasks[0]))
    curve = [round(0.3 * i, 2) for i in range(n)]  # any curve; the editor starts from it
    at = _page(ml_curve_base=curve, ml_outside=0.1, ml_curve_exp=True)  # the user opens the expander
    at.toggle(key="ml_curve_on").set_value(True).run()
    assert not at.exception
    r = _result(at)
    assert r["accuracy"] == _core(micro_zoo, method="task_arithmetic", curve=curve, outside=0.1)
    assert _query(at)["curve"] == ",".join(str(float(x)) for x in curve) and "lines" not in _query(at)


def test_url_round_trip_reproduces_the_merge(micro_zoo):
    at = _page()
    at.selectbox(key="ml_method").set_value("ties").run()
    at.toggle(key="ml_lines").set_value(True).run()
    at.toggle(key="ml_alpha_auto").set_value(False).run()
    at.slider(key="ml_alpha").set_value(0.4).run()
    q = _query(at)
    assert q["method"] == "ties" and q["lines"] == "0.4,0.5" and json.loads(q["params"])["k"] == 0.2
    key, r = at.session_state["ml_result"]
    again = _page(query=q)
    assert again.selectbox(key="ml_method").value == "ties"
    assert again.session_state["ml_result"][0] == key
    assert _result(again)["accuracy"] == r["accuracy"]
    assert r["accuracy"] == _core(micro_zoo, method="ties", lines=(0.4, 0.5))


def test_cli_config_and_export(micro_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_EXPORT_DIR", str(tmp_path))  # the app writes only into its export folder
    at = _page()
    cfg = RunConfig.from_dict(json.loads(at.code[1].value))
    assert cfg.merge == MergeSpec.make("task_arithmetic") and cfg.model_set.zoo == "micro"
    assert cfg.eval.subsample == SUB and cfg.eval.split == "test"
    assert at.code[0].value == "python -m core eval --config spec.json"
    # The command reproduces the page's numbers (core.cli.commands evaluation path, in process).
    from core.cli.commands import evaluate_config

    assert evaluate_config(cfg, ms=micro_zoo)["accuracy"] == _result(at)["accuracy"]
    out = tmp_path / "merged.safetensors"
    at.text_input(key="ml_save_path").input(str(out)).run()
    at.button(key="ml_save_btn").click().run()
    assert not at.exception
    saved = load_state_dict(out)
    _, sd = at.session_state["merged_state_dict"]
    assert all(torch.equal(saved[k], sd[k]) for k in sd)
    table = at.session_state["ml_table"]
    assert set(table["model"]) == {"zero-shot", "merged", "task arithmetic", "fine-tuned"}


def test_saving_is_confined_to_the_export_folder_and_never_overwrites_unasked(micro_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_EXPORT_DIR", str(tmp_path / "exports"))
    monkeypatch.delenv("MERGESCOPE_ALLOW_ANY_PATH", raising=False)
    at = _page()
    at.text_input(key="ml_save_path").input(str(tmp_path / "nonexistent" / "dir" / "m.safetensors")).run()
    at.button(key="ml_save_btn").click().run()
    assert not at.exception and "outside the export folder" in at.error[0].value
    assert not (tmp_path / "nonexistent").exists()
    at.text_input(key="ml_save_path").input("m.safetensors").run()
    at.button(key="ml_save_btn").click().run()
    target = (tmp_path / "exports" / "m.safetensors").resolve()
    assert target.is_file() and str(target) in at.success[0].value
    at.button(key="ml_save_btn").click().run()
    assert "already exists" in at.error[0].value
    at.checkbox(key="ml_save_overwrite").check().run()
    at.button(key="ml_save_btn").click().run()
    assert not at.error and str(target) in at.success[0].value


def test_lines_curve_shown_is_the_lines_line(micro_zoo):
    at = _page()
    at.toggle(key="ml_lines").set_value(True).run()
    at.toggle(key="ml_alpha_auto").set_value(False).run()
    at.slider(key="ml_alpha").set_value(0.2).run()
    at.slider(key="ml_beta").set_value(0.6).run()
    curve = shown_curve(at)
    n = len(curve)
    assert curve == pytest.approx(lines_curve(0.2, 0.6, n))


def test_an_impossible_merge_is_explained_not_crashed(micro_zoo):
    at = _page()
    at.selectbox(key="ml_method").set_value("consensus").run()
    at.slider(key="ml_consensus_k").set_value(20).run()  # no entry is used by 20 of 4 tasks: tau_merged = 0
    at.toggle(key="ml_lines").set_value(True).run()  # the auto alpha divides by ||tau_merged||_1
    assert not at.exception
    assert "cannot be computed" in at.error[0].value and "all zeros" in at.error[0].value


def test_controls_that_do_not_apply_are_disabled(micro_zoo):
    at = _page()
    assert not at.slider(key="ml_task_arithmetic_coefficients").disabled
    at.toggle(key="ml_lines").set_value(True).run()
    assert at.slider(key="ml_task_arithmetic_coefficients").disabled  # LiNeS sets every block's scale
    assert "not applied with LiNeS" in at.slider(key="ml_task_arithmetic_coefficients").help


def test_tower_selector_for_a_zoo_exported_with_both_towers(micro_zoo, tmp_path, monkeypatch):

    full_clip.full_zoo_copy(micro_zoo.zoo_dir, tmp_path)
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path))
    at = _page()
    assert at.radio(key="ml_tower").value == "visual"
    at.toggle(key="ml_lines").set_value(True).run()
    at.toggle(key="ml_alpha_auto").set_value(False).run()
    at.slider(key="ml_alpha").set_value(0.2).run()
    at.slider(key="ml_beta").set_value(0.6).run()
    assert not at.exception
    curve = shown_curve(at)
    assert curve == pytest.approx(lines_curve(0.2, 0.6, infer_num_blocks(micro_zoo.base())))
    at.radio(key="ml_tower").set_value("text").run()
    curve = shown_curve(at)
    n_text = num_blocks(micro_zoo.base(), tower="text")
    assert curve == pytest.approx(lines_curve(0.2, 0.6, n_text))
    assert "block ℓ of the text tower" in svg_markup(at)


def test_numbers_first_and_the_bars_only_in_their_tab(micro_zoo):
    """On load the page draws no Plotly figure (a fresh tab would load the chart library before the
    numbers); the per-task table is there, and the bars appear when their tab is opened."""
    at = _page()
    assert not at.get("plotly_chart") and at.dataframe
    assert all(b.key != "ml_curve_reset" for b in at.button)  # the closed curve editor is not built
    assert svg_markup(at).startswith("<svg")  # the block curve, drawn as SVG
    at = _page(ml_tab="Bars")
    bars = at.get("plotly_chart")
    assert len(bars) == 1 and "Accuracy per task" in bars[0].proto.spec


def test_each_method_opens_at_the_lambda_its_merge_lesson_chose_on_val(micro_zoo, monkeypatch, tmp_path):
    """With a measured merge lesson (what `zoo build` stores) the lab opens task arithmetic at its val λ and
    says so; switching method presets that method's own λ; a link's λ wins over the lesson."""
    from core.analysis_cache import AnalysisCache
    from core.live_report import cached_merge_lesson

    cache = AnalysisCache(tmp_path / "analysis")
    monkeypatch.setattr("ui.state.analysis_cache", lambda: cache)
    les = cached_merge_lesson(micro_zoo, cache=cache)
    at = _page()
    lam = les["lambda"]["task_arithmetic"]
    assert at.slider(key="ml_task_arithmetic_coefficients").value == pytest.approx(lam)
    assert _result(at)["accuracy"] == _core(micro_zoo, method="task_arithmetic", coefficients=lam)
    assert any(f"λ chosen on validation for this model set: {lam}" in c.value for c in at.caption)
    assert at.number_input(key="ml_ta_lambda").value == pytest.approx(lam)  # the baseline at its val λ too
    at.selectbox(key="ml_method").set_value("tsv_m").run()
    assert not at.exception
    assert at.session_state["ml_tsv_m_coefficients"] == pytest.approx(les["lambda"]["tsv_m"])
    linked = _page(query={"method": "task_arithmetic", "params": '{"coefficients": 0.7}'})
    assert linked.slider(key="ml_task_arithmetic_coefficients").value == pytest.approx(0.7)


def test_without_a_lesson_the_lab_offers_to_measure_it_and_then_opens_there(micro_zoo, monkeypatch, tmp_path):
    from core.analysis_cache import AnalysisCache
    from core.live_report import cached_merge_lesson

    cache = AnalysisCache(tmp_path / "analysis")
    monkeypatch.setattr("ui.state.analysis_cache", lambda: cache)
    at = _page()
    assert at.slider(key="ml_task_arithmetic_coefficients").value == pytest.approx(0.3)  # the registry default
    at.button(key="ml_lesson_btn").click().run()
    assert not at.exception
    les = cached_merge_lesson(micro_zoo, cache=cache, compute=False)
    assert les is not None
    assert at.slider(key="ml_task_arithmetic_coefficients").value == pytest.approx(les["lambda"]["task_arithmetic"])
    assert all(b.key != "ml_lesson_btn" for b in at.button)  # nothing left to measure
