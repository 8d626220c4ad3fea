import json
import sys
import threading

import pytest

from core import zoo
from core.__main__ import main as cli
from core.errors import Cancelled


def test_micro_zoo_finetuned_models_beat_zero_shot_on_their_tasks(micro_zoo):
    man = json.loads((micro_zoo.zoo_dir / "manifest.json").read_text())
    acc = man["accuracy"]["test"]
    for t in man["tasks"]:
        assert acc["finetuned"][t] > acc["zero_shot"][t], (t, acc["finetuned"][t], acc["zero_shot"][t])


def test_micro_zoo_layout_and_manifest(micro_zoo, micro_zoo_dir):
    assert micro_zoo.tasks == list(zoo.RECIPES["micro"].tasks) == micro_zoo.eval_tasks
    base, ft = micro_zoo.base(), micro_zoo.finetuned(micro_zoo.tasks[0])
    assert "token_embedding.weight" in base and all(k.startswith("visual.") for k in ft)
    assert set(ft) == {k for k in base if k.startswith("visual.")}
    man = json.loads((micro_zoo_dir / "manifest.json").read_text())
    for key in ("recipe", "recipe_hash", "seeds", "timings_seconds", "versions", "head_max_cosine"):
        assert key in man
    for split in ("val", "test"):
        a = man["accuracy"][split]
        assert set(a["zero_shot"]) == set(a["finetuned"]) == set(man["tasks"])
        assert "mean_forgetting" in a and all("control_normalized" in c for c in a["control"].values())
    assert zoo.is_built("micro", cache=micro_zoo_dir.parent)
    assert not zoo.is_built("demo", cache=micro_zoo_dir.parent)
    assert zoo.manifest("micro", micro_zoo_dir.parent)["recipe_hash"] == zoo.RECIPES["micro"].hash()


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path
    assert zoo.zoo_path("micro") == tmp_path / "zoo-micro"


def test_missing_zoo_names_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m core zoo build --zoo micro"):
        zoo.load_model_set("micro", tmp_path)
    with pytest.raises(ValueError, match="unknown zoo kind"):
        zoo.zoo_path("huge", tmp_path)


def test_a_cancelled_build_leaves_the_cache_as_it_was(tmp_path):
    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled):
        zoo.build_zoo("micro", cache=tmp_path, cancel=ev)
    assert list(tmp_path.iterdir()) == []


def test_zoo_cli_info_build_reuse_and_errors(micro_zoo_dir, capsys):
    cache = str(micro_zoo_dir.parent)
    assert cli(["zoo", "info", "--micro", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "current recipe: yes" in out and "fine-tuned" in out
    assert cli(["zoo", "build", "--zoo", "micro", "--cache", cache]) == 0
    out = capsys.readouterr().out
    assert "already built" in out and "LiNeS lesson: default target" in out and "Merge lesson (λ chosen on val" in out
    from core.analysis_cache import AnalysisCache
    from core.live_report import cached_lines_lesson, cached_merge_lesson
    from core.zoo import load_model_set

    ms, store = load_model_set("micro", cache), AnalysisCache(micro_zoo_dir.parent / "analysis")
    assert cached_lines_lesson(ms, cache=store, compute=False) is not None  # where an app on this cache looks
    assert cached_merge_lesson(ms, cache=store, compute=False) is not None
    assert cli(["zoo", "build", "--micro", "--zoo", "demo", "--cache", cache]) == 1
    assert "contradicts" in capsys.readouterr().err
    assert cli(["zoo", "build", "--micro", "--cache", cache, "--set", "ft_steps"]) == 1
    assert "key=value" in capsys.readouterr().err
    assert cli(["zoo", "build", "--micro", "--cache", cache, "--set", "nope=1"]) == 1
    assert "unknown recipe fields" in capsys.readouterr().err


def test_the_build_counts_fine_tuning_steps_in_worker_processes(tmp_path, monkeypatch):
    """The fine-tune bar counts optimizer steps (it sat at 0/8 tasks for the first half-minute), also when
    the fine-tunes run in a pool of worker processes, as the demo zoo's do. Built from a page (Streamlit
    makes the app script a hand-made __main__), the workers do not run the app script again."""
    import types

    from core.zoo import build_zoo
    from core.zoo.recipe import recipe_for

    marker = tmp_path / "app-ran"
    app = tmp_path / "app.py"
    app.write_text(f"open({str(marker)!r}, 'w').close()\n")
    page = types.ModuleType("__main__")
    page.__file__ = str(app)
    monkeypatch.setitem(sys.modules, "__main__", page)
    recipe = recipe_for("micro", {"workers": "2", "ft_steps": "40"})
    seen = []

    def progress(stage, done, total):
        if stage == "finetune":
            seen.append((done, total))

    build_zoo("micro", progress, cache=tmp_path, recipe=recipe)
    total = len(recipe.tasks) * recipe.ft_steps
    done = [d for d, _ in seen]
    assert {t for _, t in seen} == {total} and done == sorted(done) and done[0] == 0 and done[-1] == total
    assert not marker.exists()


def _micro_job(micro_zoo, tmp_path, steps):
    from core.zoo.build import build_model, heads_of
    from core.zoo.recipe import recipe_for

    recipe = recipe_for("micro", {"ft_steps": str(steps), "n_train": "64"})
    task = micro_zoo.tasks[0]
    head = heads_of(build_model(micro_zoo.base()), [task], lambda *a: None)[task]
    return (str(micro_zoo.base_path), task, head, recipe, str(tmp_path / "ft.safetensors"))


def test_finetune_reports_every_step_and_a_worker_adds_them_to_the_shared_counter(micro_zoo, tmp_path):
    import multiprocessing as mp

    from core.zoo import finetune as F

    base_path, task, head, recipe, out = _micro_job(micro_zoo, tmp_path, 5)
    steps = []
    F.finetune(micro_zoo.base(), task, head, recipe, on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5]
    import torch

    counter = mp.get_context("spawn").Value("q", 0)
    F.init_worker(counter)
    threads = torch.get_num_threads()
    try:  # what a worker process runs, here in this one (it sets one torch thread: restored below)
        assert F.finetune_job((base_path, task, head, recipe, out))[0] == task
    finally:
        F.init_worker(None)
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)
    assert counter.value == 5


def test_ft_seed_draws_other_training_images_and_another_batch_order(micro_zoo, tmp_path):
    import dataclasses

    import torch

    from core.zoo import finetune as F

    _, task, head, recipe, _ = _micro_job(micro_zoo, tmp_path, 3)
    a, _ = F.finetune(micro_zoo.base(), task, head, recipe)
    again, _ = F.finetune(micro_zoo.base(), task, head, recipe)
    other, _ = F.finetune(micro_zoo.base(), task, head, dataclasses.replace(recipe, ft_seed=1))
    assert all(torch.equal(a[k], again[k]) for k in a)  # deterministic for a recipe
    assert any(not torch.equal(a[k], other[k]) for k in a)
    shifted, _ = F.finetune(micro_zoo.base(), task, head, dataclasses.replace(recipe, seed=1))
    assert all(torch.equal(other[k], shifted[k]) for k in a)  # ft_seed 1 fine-tunes as seed 1 would
