import json
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
    assert "already built" in capsys.readouterr().out
    assert cli(["zoo", "build", "--micro", "--zoo", "demo", "--cache", cache]) == 1
    assert "contradicts" in capsys.readouterr().err
    assert cli(["zoo", "build", "--micro", "--cache", cache, "--set", "ft_steps"]) == 1
    assert "key=value" in capsys.readouterr().err
    assert cli(["zoo", "build", "--micro", "--cache", cache, "--set", "nope=1"]) == 1
    assert "unknown recipe fields" in capsys.readouterr().err
