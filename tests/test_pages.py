"""The app shell and the Models / Task vectors / Spectra pages, driven headless with AppTest.

A small synthetic model set (open_clip-named ViT tensors written as safetensors) stands in for
real checkpoints; when tests/conftest.py provides the `micro_zoo` fixture, the pages also run
on the micro zoo.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import plotly.io
import pytest
from streamlit.testing.v1 import AppTest
from test_plots import tiny_visual

from core.checkpoints import save_state_dict
from core.spec import ModelSetRef
from tests.fixtures import full_clip
from ui import PAGES, existing_pages

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "ui" / "app.py")
MINE = ["pages/models.py", "pages/task_vectors.py", "pages/spectra.py"]
TASKS = ("colours", "digits", "shapes")
TIMEOUT = 60
NEEDS_NO_MODEL = {"pages/models.py", "pages/runs.py"}  # pages useful before any model set is loaded


def write_test_model_set(folder: Path, width: int = 32, blocks: int = 4) -> ModelSetRef:
    """A base and three fine-tuned checkpoints (base + growing random task vectors) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    base = tiny_visual(0, width=width, blocks=blocks)
    save_state_dict(base, folder / "base.safetensors")
    ft = []
    for s, task in enumerate(TASKS, start=1):
        noise = tiny_visual(100 + s, width=width, blocks=blocks)
        path = folder / "finetuned" / f"{task}.safetensors"
        save_state_dict({k: base[k] + 0.02 * s * noise[k] for k in base}, path)
        ft.append((task, str(path)))
    ref = ModelSetRef(zoo=None, base=str(folder / "base.safetensors"), finetuned=tuple(ft))
    (folder / "model_set.json").write_text(json.dumps(ref.to_dict()))
    return ref


@pytest.fixture(scope="module")
def test_ref(tmp_path_factory) -> ModelSetRef:
    return write_test_model_set(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(autouse=True)
def _no_default_model(monkeypatch):
    monkeypatch.delenv("MERGESCOPE_DEFAULT_ZOO", raising=False)
    monkeypatch.delenv("MERGESCOPE_DEFAULT_MODEL_SET", raising=False)


def app(ref: ModelSetRef | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["tv_tab"] = "Norms by block"  # the chart tabs (the first tabs show numbers only)
    at.session_state["spec_tab"] = "α over depth"
    if ref is not None:
        at.session_state["model_set_ref"] = ref
    return at.run()


def charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def values(v) -> np.ndarray:
    """A trace's array, decoding plotly's binary {"dtype", "bdata"} encoding."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def figure(at: AppTest, i: int):
    """The i-th plotly figure on the page, decoded (plotly ships arrays as binary 'bdata')."""
    return plotly.io.from_json(at.get("plotly_chart")[i].proto.spec)


def assert_clean(at: AppTest, where: str) -> None:
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"
    assert not at.error, f"{where}: {[e.value for e in at.error]}"


def test_page_table_lists_every_planned_page_once():
    files = [row[1] for row in PAGES]
    assert len(files) == len(set(files)) == 10
    assert {row[0] for row in PAGES} == {"Models", "Analyse", "Steer", "Train", "Runs"}
    assert all(f in [r[1] for r in existing_pages()] for f in MINE)


def test_landing_points_a_first_visitor_to_the_zoo():
    at = app()
    assert_clean(at, "landing")
    assert at.title[0].value == "MergeScope"
    assert "Load the **zoo** on the Models page" in at.info[0].value
    assert at.get("page_link")[0].proto.page == "models"
    assert "None loaded" in at.sidebar.caption[0].value
    assert at.sidebar.number_input(key="seed").value == 0


@pytest.mark.parametrize("page", [row[1] for row in existing_pages()])
def test_every_page_without_a_model_says_what_to_load(page):
    at = app()
    at.switch_page(str(ROOT / page)).run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    if page not in NEEDS_NO_MODEL:
        links = [pl.proto.page for pl in at.get("page_link")]
        assert "models" in links, f"{page} does not link the Models page"


def test_models_page_summarises_and_validates(test_ref):
    at = app(test_ref)
    at.switch_page(str(ROOT / "pages/models.py")).run()
    assert_clean(at, "models")
    summary = at.dataframe[0].value
    assert list(summary["checkpoint"]) == ["base", *[f"fine-tuned: {t}" for t in TASKS]]
    assert set(summary["format"]) == {"safetensors"} and set(summary["status"]) == {"ok"}
    assert set(summary["blocks"]) == {4}
    assert "All checkpoints match the base" in at.success[0].value
    assert "Tasks: 3" in at.sidebar.caption[0].value  # ui/app.py wraps the page (navigation + sidebar)


def test_sidebar_shows_the_active_model_set(test_ref):
    at = app(test_ref)
    assert_clean(at, "landing with a model set")
    assert "Loaded" in at.success[0].value
    side = at.sidebar.caption[0].value
    assert "Tasks: 3" in side and "Device: cpu" in side and "ViT" in side


def test_models_page_reports_unreadable_files_as_messages(tmp_path):
    (tmp_path / "base.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "a.safetensors").write_bytes(b"")
    ref = ModelSetRef(
        zoo=None, base=str(tmp_path / "base.safetensors"), finetuned=(("a", str(tmp_path / "a.safetensors")),)
    )
    at = app(ref)
    at.switch_page(str(ROOT / "pages/models.py")).run()
    assert not at.exception
    status = list(at.dataframe[0].value["status"])
    assert status[0].startswith("cannot read") and "empty" in status[1]
    assert any("Could not read the checkpoints" in e.value for e in at.error)


def test_models_page_scans_a_folder_and_loads_it(test_ref, tmp_path):
    at = app()
    at.switch_page(str(ROOT / "pages/models.py")).run()
    at.text_input(key="paths_base").input(test_ref.base)
    at.text_area(key="paths_ft").input(str(Path(test_ref.finetuned[0][1]).parent))
    at.button(key="paths_scan").click().run()
    assert list(at.dataframe(key="paths_editor").value["task"]) == list(TASKS)
    at.button(key="paths_use").click().run()
    assert_clean(at, "models after load")
    assert at.session_state["model_set_ref"] == test_ref


def test_task_vectors_page_charts_and_widgets(test_ref):
    at = app(test_ref)
    at.switch_page(str(ROOT / "pages/task_vectors.py")).run()
    assert_clean(at, "task vectors")
    assert charts(at) == 3  # open tab "Norms by block": heatmap, profile, block drill-down
    heat = figure(at, 0).data[0]
    assert list(heat.y) == list(TASKS) and list(heat.x) == ["outside", "0", "1", "2", "3"]
    at.radio(key="tv_measure").set_value("relative_norm")
    at.radio(key="tv_kind").set_value("attention").run()
    assert_clean(at, "per-kind relative")
    assert list(figure(at, 0).data[0].x) == ["0", "1", "2", "3"]  # attention lives in the blocks only
    at.selectbox(key="tv_block").set_value("2").run()
    drill = at.dataframe[0].value
    assert set(drill["layer"]) == {2} and set(drill["task"]) == set(TASKS)

    at.session_state["tv_tab"] = "Agreement between tasks"
    at.run()
    assert_clean(at, "agreement tab")
    assert charts(at) == 2  # cosine, sign conflicts
    at.selectbox(key="tv_cos_scope").set_value("1").run()
    assert_clean(at, "cosine of block 1")
    cos = figure(at, 0).data[0]
    assert list(cos.x) == list(cos.y) == list(TASKS) and (cos.zmin, cos.zmax) == (-1, 1)

    at.session_state["tv_tab"] = "Tables"
    at.run()
    assert_clean(at, "tables tab")
    assert len(at.get("download_button")) == 3
    assert set(at.dataframe[0].value["block"]) == {"outside", "0", "1", "2", "3"}


def test_spectra_page_metrics_layers_and_lr_rules(test_ref):
    at = app(test_ref)
    at.switch_page(str(ROOT / "pages/spectra.py")).run()
    assert_clean(at, "spectra")
    assert charts(at) == 2  # open tab "α over depth": weights, task vectors
    assert [t.name for t in figure(at, 0).data] == ["base θ₀", "fine-tuned colours", "fine-tuned digits"]
    at.selectbox(key="spec_metric").set_value("stable_rank").run()
    assert "stable rank" in figure(at, 0).layout.yaxis.title.text

    at.session_state["spec_tab"] = "One layer: ESD"
    at.run()
    layer = "visual.transformer.resblocks.2.mlp.c_fc.weight"
    at.selectbox(key="spec_layer").set_value(layer)
    at.selectbox(key="spec_task").set_value("shapes").run()
    assert_clean(at, "one layer")
    esd = figure(at, 1)
    assert "shapes" in esd.layout.title.text and esd.layout.xaxis.type == "log"
    assert any("**32** eigenvalues" in m.value for m in at.markdown)  # a 128 x 32 matrix

    at.session_state["spec_tab"] = "TempBalance learning rates"
    at.run()
    at.slider(key="spec_s1s2").set_value((0.2, 2.0)).run()
    lr = values(figure(at, 0).data[0].y)
    assert min(lr) == pytest.approx(0.2) and max(lr) == pytest.approx(2.0)

    at.session_state["spec_tab"] = "Weight scopes"
    at.run()
    assert_clean(at, "weight scopes")
    assert {t.name for t in figure(at, 0).data} == {f"fine-tuned {t}" for t in TASKS}  # differences from base


def test_spectra_page_picks_up_a_merged_model(test_ref):
    from core.checkpoints import load_state_dict

    at = app(test_ref)
    merged = load_state_dict(test_ref.finetuned[0][1])
    at.session_state["merged_state_dict"] = ("spec-abc", merged)
    at.switch_page(str(ROOT / "pages/spectra.py")).run()
    assert_clean(at, "spectra with merge")
    names = [t.name for t in figure(at, 0).data]
    assert "merged" in names


def test_pages_run_on_the_micro_zoo(request):
    try:
        ms = request.getfixturevalue("micro_zoo")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no micro_zoo fixture in this checkout")
    ref = ModelSetRef(
        zoo=None, base=str(ms.base_path), finetuned=tuple((t, str(p)) for t, p in ms.finetuned_paths.items())
    )
    at = app(ref)
    for page in MINE:
        at.switch_page(str(ROOT / page)).run()
        assert_clean(at, f"{page} on the micro zoo")


def test_tower_selector_on_a_full_clip_model_set(tmp_path):
    """Fine-tunes of a full CLIP (both towers): the analysis pages show one tower at a time, image by default."""

    base = full_clip.open_clip_full()
    save_state_dict(base, tmp_path / "base.safetensors")
    ft = []
    for seed, task in enumerate(TASKS[:2], start=1):
        save_state_dict(full_clip.fine_tuned(base, seed), tmp_path / f"{task}.safetensors")
        ft.append((task, str(tmp_path / f"{task}.safetensors")))
    ref = ModelSetRef(zoo=None, base=str(tmp_path / "base.safetensors"), finetuned=tuple(ft))
    visual = ["outside", *map(str, range(full_clip.VISION_LAYERS))]
    text = ["outside", *map(str, range(full_clip.TEXT_LAYERS))]

    at = app(ref)
    at.switch_page(str(ROOT / "pages/task_vectors.py")).run()
    assert_clean(at, "task vectors, full CLIP")
    assert at.radio(key="tv_tower").value == "visual"
    assert list(figure(at, 0).data[0].x) == visual
    at.radio(key="tv_tower").set_value("text").run()
    assert_clean(at, "task vectors, text tower")
    assert list(figure(at, 0).data[0].x) == text

    at.switch_page(str(ROOT / "pages/spectra.py")).run()
    assert_clean(at, "spectra, full CLIP")
    xs = list(values(figure(at, 0).data[0].x))
    assert xs[0] == -1 and max(xs) == full_clip.VISION_LAYERS  # conv1 "in", blocks 0..3, proj "out"
    at.radio(key="spec_tower").set_value("text").run()
    assert_clean(at, "spectra, text tower")
    assert list(values(figure(at, 0).data[0].x)) == [*range(full_clip.TEXT_LAYERS), full_clip.TEXT_LAYERS]


def test_every_page_says_what_to_look_for():
    """Each page opens with one sentence on what to look at (issue: a class-ready demo)."""
    pages = sorted((Path(__file__).resolve().parent.parent / "pages").glob("*.py"))
    missing = [p.name for p in pages if "**What to look for:** " not in p.read_text()]
    assert pages and not missing, f"pages without a 'What to look for' sentence: {missing}"


def test_served_app_skips_streamlits_post_run_gc():
    """.streamlit/config.toml at the clone's root (where make run, the benchmarks and the tests start the
    server) turns off Streamlit's gc.collect after each run: 0.3 s per slider step with a zoo loaded."""
    import subprocess
    import sys

    code = (
        "from streamlit import config; config.get_config_options(force_reparse=True); "
        "print(config.get_option('runner.postScriptGC'))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
