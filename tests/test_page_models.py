"""The Models page (AppTest): a model set is validated before it becomes active, and refused with a grouped report.

Checkpoints are tiny open_clip-named ViT image towers written here (tests/test_plots.tiny_visual);
each bad set is entered in "Files on the server" and must be refused with one box per kind of
problem (errors first, counts, a few examples), never an exception on the page.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest
from test_plots import tiny_visual

from core.checkpoints import save_state_dict
from core.spec import ModelSetRef

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "models.py")
WIDTH, BLOCKS = 16, 2


@pytest.fixture(autouse=True)
def _no_default_model_set(monkeypatch):
    monkeypatch.delenv("MERGESCOPE_DEFAULT_ZOO", raising=False)
    monkeypatch.delenv("MERGESCOPE_DEFAULT_MODEL_SET", raising=False)


def finetune(seed: int) -> dict[str, torch.Tensor]:
    base, noise = tiny_visual(0, WIDTH, BLOCKS), tiny_visual(seed, WIDTH, BLOCKS)
    return {k: base[k] + 0.01 * noise[k] for k in base}


def write_set(folder: Path, **finetuned) -> tuple[Path, list[Path]]:
    """base.safetensors plus one file per task: a state dict, or bytes written as they are."""
    base = folder / "base.safetensors"
    save_state_dict(tiny_visual(0, WIDTH, BLOCKS), base)
    paths = []
    for task, sd in finetuned.items():
        path = folder / f"{task}.safetensors"
        if isinstance(sd, bytes):
            path.write_bytes(sd)
        else:
            save_state_dict(sd, path)
        paths.append(path)
    return base, paths


def use_files(base: Path, finetuned: list[Path]) -> AppTest:
    """Enter the files under "Files on the server", scan, press "Use these checkpoints"."""
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.text_input(key="paths_base").input(str(base))
    at.text_area(key="paths_ft").input("\n".join(str(p) for p in finetuned))
    at.button(key="paths_scan").click().run()
    at.button(key="paths_use").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def active(at: AppTest) -> ModelSetRef | None:
    return at.session_state["model_set_ref"] if "model_set_ref" in at.session_state else None


def refused(at: AppTest, *titles: str) -> list[str]:
    """Assert the set was refused with one error box per title, in that order; returns the boxes."""
    assert active(at) is None
    assert not [h for h in at.subheader if h.value.startswith("Loaded")]  # no summary of an active set
    boxes = [e.value for e in at.error]
    assert boxes[0].startswith("**Not loaded: these checkpoints.**"), boxes
    assert [b.split(":", 1)[0].lstrip("*") for b in boxes[1:]] == list(titles), boxes
    return boxes


def test_a_good_set_is_accepted_and_shows_all_clear(tmp_path):
    base, fts = write_set(tmp_path, a=finetune(1), b=finetune(2))
    at = use_files(base, fts)
    assert active(at) == ModelSetRef(zoo=None, base=str(base), finetuned=(("a", str(fts[0])), ("b", str(fts[1]))))
    assert not at.error and "All checkpoints match the base (3 checkpoints)" in at.success[0].value


def test_text_file_renamed_safetensors_is_refused_saying_what_it_is(tmp_path):
    base, fts = write_set(tmp_path, a=finetune(1), notes=b"remember to upload the real weights\n")
    boxes = refused(use_files(base, fts), "Could not read the checkpoints")
    assert "Could not read the checkpoints: 1 file." in boxes[1]
    assert "it is a text file starting 'remember to upload" in boxes[1] and str(fts[1]) in boxes[1]


def test_truncated_safetensors_is_refused(tmp_path):
    base, fts = write_set(tmp_path, cut=finetune(1))
    data = fts[0].read_bytes()
    fts[0].write_bytes(data[: len(data) // 2])
    boxes = refused(use_files(base, fts), "Could not read the checkpoints")
    assert "truncated" in boxes[1] and "do it again" in boxes[1]  # what, which file, what to do


def test_fine_tune_of_another_width_is_refused_as_a_shape_mismatch(tmp_path):
    wide = tiny_visual(1, 2 * WIDTH, BLOCKS)
    base, fts = write_set(tmp_path, a=finetune(1), wide=wide)
    boxes = refused(use_files(base, fts), "Shape mismatch")
    assert f"Shape mismatch: {len(wide)} tensors in 1 file." in boxes[1] and "another size (width)" in boxes[1]
    assert boxes[1].count("\n- ") == 3 and f"… and {len(wide) - 3} more of this kind." in boxes[1]


def test_another_architecture_is_refused_with_one_line_per_file(tmp_path):
    base, fts = write_set(tmp_path, deep=tiny_visual(1, WIDTH, BLOCKS + 4))
    boxes = refused(use_files(base, fts), "Another architecture than the base")
    assert "has 6 transformer blocks, the base's 2" in boxes[1] and boxes[1].count("\n- ") == 1
    assert "more of this kind" not in boxes[1]


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_values_are_refused_naming_the_tensor(tmp_path, value, word):
    sd = finetune(1)
    sd["visual.transformer.resblocks.1.attn.out_proj.weight"][2, 3] = value
    base, fts = write_set(tmp_path, diverged=sd)
    boxes = refused(use_files(base, fts), "Non-finite values (NaN/Inf)")
    assert f"'visual.transformer.resblocks.1.attn.out_proj.weight' contains 1 {word} value(s)" in boxes[1]
    assert str(fts[0]) in boxes[1] and "re-export or re-train" in boxes[1]


def test_a_big_set_is_accepted_from_its_headers_and_its_values_are_checked_on_request(tmp_path, monkeypatch):
    """Over AUTO_CHECK_BYTES a set is accepted from its headers (no tensor read: seconds for 25 GB of L/14
    files); the NaN/Inf pass runs only when asked. It used to run right after "Use these checkpoints"
    anyway (45 s for a 20-task L/14 set, bench/bigset.py)."""
    import ui.state
    from core.checkpoints.formats import LazyStateDict

    monkeypatch.setattr(ui.state, "AUTO_CHECK_BYTES", 1)  # every set is big
    sd = finetune(1)
    sd["visual.transformer.resblocks.1.attn.out_proj.weight"][2, 3] = float("nan")
    base, fts = write_set(tmp_path, good=finetune(2), diverged=sd)
    reads = []
    original = LazyStateDict.read_into
    monkeypatch.setattr(LazyStateDict, "read_into", lambda self, *a: reads.append(self.path) or original(self, *a))
    at = use_files(base, fts)
    assert active(at) is not None and reads == []  # accepted from the headers: no value read
    assert any("checked from the headers" in c.value for c in at.caption)
    assert not at.error
    at.button(key="models_check_values").click().run()
    assert reads  # now every tensor is read once
    assert [e.value.split(":", 1)[0].lstrip("*") for e in at.error] == ["Non-finite values (NaN/Inf)"]


def test_zero_blocks_is_accepted_with_a_warning(tmp_path):
    stem = {k: v for k, v in tiny_visual(0, WIDTH, BLOCKS).items() if ".resblocks." not in k}
    save_state_dict(stem, tmp_path / "base.safetensors")
    save_state_dict({k: v + 1 for k, v in stem.items()}, tmp_path / "a.safetensors")
    at = use_files(tmp_path / "base.safetensors", [tmp_path / "a.safetensors"])
    assert active(at).base == str(tmp_path / "base.safetensors")
    assert not at.error and not at.success
    assert [w.value.split(".", 1)[0] for w in at.warning] == ["**No transformer blocks found: 2 files"]


def test_errors_come_first_grouped_and_counted(tmp_path):
    base = tiny_visual(0, WIDTH, BLOCKS)
    missing = {k: v for k, v in finetune(1).items() if not k.startswith("visual.ln_post")}
    nan = finetune(2)
    nan["visual.proj"][0, 0] = float("nan")
    extra = finetune(3) | {"visual.step": torch.tensor(3)}
    wide = tiny_visual(4, 2 * WIDTH, BLOCKS)
    half = finetune(5) | {"visual.proj": base["visual.proj"].half()}
    b, fts = write_set(tmp_path, a_missing=missing, b_nan=nan, c_extra=extra, d_wide=wide, e_half=half)
    at = use_files(b, fts)
    boxes = refused(at, "Shape mismatch", "Non-finite values (NaN/Inf)", "Missing tensors")
    assert "Found: Shape mismatch; Non-finite values (NaN/Inf); Missing tensors." in boxes[0]
    assert "Missing tensors: 2 tensors in 1 file." in boxes[3]
    warnings = [w.value for w in at.warning]
    assert [w.split(":", 1)[0].lstrip("*") for w in warnings] == ["Extra buffers", "Different precision"]


def test_a_refused_set_is_not_kept_and_a_good_one_replaces_the_message(tmp_path):
    base, fts = write_set(tmp_path, notes=b"not weights")
    at = use_files(base, fts)
    assert at.error and active(at) is None
    save_state_dict(finetune(1), fts[0])
    at.button(key="paths_use").click().run()
    assert not at.exception and not at.error
    assert active(at).finetuned == (("notes", str(fts[0])),)


def test_the_micro_zoo_is_validated_and_loaded(micro_zoo, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(micro_zoo.zoo_dir.parent))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    at.radio(key="zoo_kind").set_value("micro").run()
    at.button(key="zoo_load").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert active(at) == ModelSetRef(zoo="micro")
    assert "All checkpoints match the base" in at.success[0].value


def test_an_active_set_with_problems_shows_the_grouped_report(tmp_path):
    base, fts = write_set(tmp_path, wide=tiny_visual(1, 2 * WIDTH, BLOCKS), empty=b"")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["model_set_ref"] = ModelSetRef(
        zoo=None, base=str(base), finetuned=(("empty", str(fts[1])), ("wide", str(fts[0])))
    )
    at.run()
    assert not at.exception
    titles = [e.value.split(":", 1)[0].lstrip("*") for e in at.error]
    assert titles == ["Could not read the checkpoints", "Shape mismatch"]
    assert any("Other pages will fail on this set" in c.value for c in at.caption)


def test_the_styled_zoo_is_preselected_and_each_zoo_says_when_it_is_not_built(tmp_path, monkeypatch):
    from core.cli.options import DEFAULT_ZOO

    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path))  # an empty cache: nothing built
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    radio = at.radio(key="zoo_kind")
    assert radio.value == DEFAULT_ZOO == "styled"
    assert radio.options == ["demo (the first recipe: easier tasks, methods within a point; ~2.5 min to build)",
                             "styled (the default: style-shifted tasks, the merge methods separate; ~3.5 min to build)",
                             "micro (tiny, seconds)"]  # fmt: skip
    assert at.button(key="zoo_build").label == "Build the styled zoo"
    radio.set_value("demo").run()
    assert not at.exception
    assert at.button(key="zoo_build").label == "Build the demo zoo"
    assert any("Not built yet" in c.value for c in at.caption)
