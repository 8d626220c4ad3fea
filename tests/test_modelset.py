"""Model set JSON: reading, clear errors, spec refs, and the exported demo zoo evaluating exactly like the zoo."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core import ModelSet
from core.checkpoints import save_state_dict
from core.errors import ModelSetError
from core.evaluate import Evaluator
from core.merging import merge
from core.models import build_model, zero_shot_head
from core.runtime.runlog import RunLog
from core.spec import ModelSetRef, RunConfig
from core.zoo import data as zoo_data


def export_zoo(ms, out, splits=("val", "test")):
    """A minimal exporter with the layout of `python -m core export` (used until that command lands
    here): base, visual-only fine-tunes, PNG folders per split and class, the zoo's exact heads."""
    out.mkdir(parents=True)
    save_state_dict(ms.base(), out / "base.safetensors")
    model = build_model(ms.base())
    tasks = {}
    for t in ms.eval_tasks:
        spec = zoo_data.get_task(t)
        if t in ms.tasks:
            save_state_dict(ms.finetuned(t), out / "finetuned" / f"{t}.safetensors")
        for split in splits:
            x, y = zoo_data.load_split(t, split)
            for i, (img, label) in enumerate(zip(x, y)):
                d = out / "data" / t / split / spec.classnames[int(label)].replace(" ", "_")
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img.permute(1, 2, 0).numpy()).save(d / f"{i}.png")
        (out / "heads").mkdir(exist_ok=True)
        head = zero_shot_head(model, spec.classnames, spec.templates)
        save_file({"head": head.contiguous()}, str(out / "heads" / f"{t}.safetensors"))
        tasks[t] = {"data": f"data/{t}", "head": f"heads/{t}.safetensors", "classnames": list(spec.classnames)}
    doc = {
        "base": "base.safetensors",
        "finetuned": {t: f"finetuned/{t}.safetensors" for t in ms.tasks},
        "tasks": tasks,
        "arch": None,
    }
    (out / "modelset.json").write_text(json.dumps(doc, indent=1))
    return out / "modelset.json"


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "cache"))


def test_exported_zoo_moved_elsewhere_evaluates_exactly_like_the_zoo(micro_zoo, tmp_path, cache_in_tmp):
    export_zoo(micro_zoo, tmp_path / "export")
    moved = tmp_path / "elsewhere" / "zoo-copy"
    moved.parent.mkdir()
    shutil.move(tmp_path / "export", moved)
    ms = ModelSet.from_json(moved / "modelset.json")
    assert ms.eval_tasks == micro_zoo.eval_tasks and ms.tasks == micro_zoo.tasks
    assert ms.base_path == moved / "base.safetensors"
    for split in ("test", "val"):
        zoo = Evaluator.for_model_set(micro_zoo, split)
        ours = Evaluator.for_model_set(ms, split)
        assert ours.model is not zoo.model
        assert ours.num_images() == zoo.num_images()
        for t in ms.eval_tasks:
            assert isinstance(ours.tasks[t].pixels.numpy(), np.ndarray)
            assert ours.tasks[t].head_source.endswith(f"{t}.safetensors")
        assert ours.accuracy() == zoo.accuracy(), split  # zero-shot
        for t in ms.tasks:
            assert ours.accuracy(ms.finetuned(t)) == zoo.accuracy(micro_zoo.finetuned(t)), (split, t)
        ta = merge(micro_zoo.base(), micro_zoo.finetuned_all(), "task_arithmetic", coefficients=0.3)
        ta2 = merge(ms.base(), ms.finetuned_all(), "task_arithmetic", coefficients=0.3)
        assert ours.accuracy(ta2) == zoo.accuracy(ta)


def test_from_json_resolves_paths_and_reports_every_bad_entry(tmp_path):
    (tmp_path / "ck").mkdir()
    base = tmp_path / "ck" / "base.safetensors"
    save_file({"w": torch.zeros(1)}, str(base))
    save_file({"w": torch.ones(1)}, str(tmp_path / "ck" / "a.safetensors"))
    (tmp_path / "data" / "a" / "test" / "x").mkdir(parents=True)
    doc = {
        "base": "ck/base.safetensors",
        "finetuned": {"a": "ck/a.safetensors"},
        "tasks": {"a": {"data": "data/a", "templates": ["a {c}."]}, "b": {"classnames": ["p", "q"]}},
    }
    (tmp_path / "modelset.json").write_text(json.dumps(doc))
    ms = ModelSet.from_json(tmp_path)  # a folder holding modelset.json
    assert ms.base_path == base and ms.finetuned_paths["a"] == tmp_path / "ck" / "a.safetensors"
    assert ms.eval_tasks == ["a"] and ms.task_configs["a"].templates == ("a {c}.",)
    assert ms.source == tmp_path / "modelset.json"
    assert ModelSet.from_json({**doc, "tasks": {}}, root=tmp_path).eval_tasks == []
    assert ModelSet.from_json({"base": str(base)}).tasks == []  # analysis-only sets need no tasks
    fp = ms.fingerprint()
    doc2 = {**doc, "tasks": {**doc["tasks"], "a": {"data": "data/a", "templates": ["b {c}."]}}}
    assert ModelSet.from_json(doc2, root=tmp_path).fingerprint() != fp  # templates change the numbers
    bad = [
        ({"finetuned": {}}, 'missing "base"'),
        ({**doc, "base": "ck/nope.safetensors"}, "base checkpoint .*nope.safetensors does not exist"),
        ({**doc, "finetuned": {"a": "ck/zz.pt"}}, "finetuned.a checkpoint"),
        ({**doc, "tasks": {"a": {"data": "data/zz"}}}, "tasks.a.data .* does not exist"),
        ({**doc, "tasks": {"a": {"data": "data/a", "heads": "x"}}}, "unknown key"),
        ({**doc, "tasks": {"a": {"data": "data/a", "templates": ["no field"]}}}, "must contain"),
        ({**doc, "tasks": {"a": {"classnames": "abc"}}}, "list of strings"),
        ({**doc, "extra": 1}, "unknown key"),
        ({**doc, "arch": 3}, "arch must be"),
    ]
    for d, match in bad:
        with pytest.raises(ModelSetError, match=match):
            ModelSet.from_json(d, root=tmp_path)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ModelSetError, match="not valid JSON"):
        ModelSet.from_json(tmp_path / "broken.json")
    with pytest.raises(ModelSetError, match="does not exist"):
        ModelSet.from_json(tmp_path / "none.json")


def test_spec_takes_the_model_set_by_path_or_inline_and_old_refs_are_unchanged(tmp_path, monkeypatch):
    save_file({"w": torch.zeros(1)}, str(tmp_path / "base.safetensors"))
    (tmp_path / "modelset.json").write_text(json.dumps({"base": "base.safetensors"}))
    by_path = RunConfig.from_dict({"model_set": {"path": str(tmp_path / "modelset.json")}})
    assert by_path.model_set.to_dict() == {"path": str(tmp_path / "modelset.json")}
    assert by_path.model_set.load().base_path == tmp_path / "base.safetensors"
    inline = {"base": "base.safetensors", "finetuned": {}, "tasks": {}, "arch": None}
    rc = RunConfig.from_dict({"model_set": inline})
    assert rc.model_set.inline is not None and rc.model_set.to_dict() == inline
    assert RunConfig.from_dict(json.loads(rc.to_json())) == rc
    monkeypatch.chdir(tmp_path)  # inline paths resolve against the current directory
    assert rc.model_set.load().base_path == tmp_path / "base.safetensors"
    old = {"zoo": None, "base": "/x/b.safetensors", "finetuned": {"a": "/x/a.safetensors"}}
    assert ModelSetRef.from_dict(old).to_dict() == old
    assert ModelSetRef.from_dict({"zoo": "demo"}).to_dict() == {"zoo": "demo", "base": None, "finetuned": {}}
    with pytest.raises(ValueError, match="no other key"):
        ModelSetRef.from_dict({"path": "x.json", "base": "b"})


def tiny_model_set(root, corrupt=False):
    """A random micro-architecture base, two perturbed visual fine-tunes, generated PNG folders."""
    torch.manual_seed(0)
    base = build_model(arch="mergescope-micro").state_dict()
    save_state_dict(base, root / "ck" / "base.safetensors")
    rng = np.random.default_rng(0)
    tasks = {}
    for t in ["alpha", "beta"]:
        ft = {k: v + 0.01 * torch.randn_like(v) for k, v in base.items() if k.startswith("visual.")}
        save_state_dict(ft, root / "ck" / f"{t}.safetensors")
        for split in ("val", "test"):
            for c in ("red", "blue"):
                d = root / "data" / t / split / c
                d.mkdir(parents=True)
                for i in range(5):
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
        tasks[t] = {"data": f"data/{t}", "templates": ["a {c} thing."]}
    if corrupt:
        (root / "data" / "alpha" / "test" / "red" / "9.png").write_bytes(b"\x89PNG broken")
    doc = {"base": "ck/base.safetensors", "finetuned": {t: f"ck/{t}.safetensors" for t in tasks}, "tasks": tasks}
    (root / "modelset.json").write_text(json.dumps(doc))
    return root / "modelset.json"


def test_cli_eval_and_analyze_read_a_model_set_json(tmp_path, monkeypatch, capsys, cache_in_tmp):
    from core.cli.commands import main

    monkeypatch.setenv("MERGESCOPE_RUNLOG", str(tmp_path / "runs.sqlite"))
    path = tiny_model_set(tmp_path / "set", corrupt=True)
    spec = {"model_set": {"path": str(path)}, "merge": {"method": "task_arithmetic"}, "eval": {"split": "test"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["eval", "--config", str(tmp_path / "spec.json"), "--json", "--no-log"]) == 0
    cap = capsys.readouterr()
    j = json.loads(cap.out)
    assert {"accuracy", "avg_abs", "avg_norm", "references", "split", "n_images"} <= set(j)
    assert j["n_images"] == {"alpha": 10, "beta": 10}  # the corrupt file is skipped, not counted
    assert "1 unreadable image(s) skipped" in cap.err and "9.png" in cap.err
    refs = {r["task"]: r for r in j["references"]}
    assert refs["alpha"]["n_images"] == 10 and 0 <= refs["beta"]["zero_shot"] <= 1
    ms = ModelSet.from_json(path)
    ev = Evaluator.for_model_set(ms, "test")
    ta = merge(ms.base(), ms.finetuned_all(), "task_arithmetic")
    assert j["accuracy"] == ev.accuracy(ta)
    assert main(["eval", "--config", str(tmp_path / "spec.json")]) == 0  # logged: the set as it resolved
    capsys.readouterr()
    logged = json.loads(RunLog().list(kind="eval")["metrics"].iloc[0])
    assert logged["model_set"]["base"] == str(tmp_path / "set" / "ck" / "base.safetensors")
    assert logged["model_set"]["tasks"]["alpha"]["data"] == str(tmp_path / "set" / "data" / "alpha")
    assert main(["analyze", "--model-set", str(path.parent), "--what", "norms", "--out", str(tmp_path / "n.csv")]) == 0
    assert (tmp_path / "n.csv").read_text().count("alpha") > 0
    bad = {**spec, "model_set": {"path": str(tmp_path / "missing.json")}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["eval", "--config", str(tmp_path / "bad.json")]) == 1
    assert "missing.json does not exist" in capsys.readouterr().err


def test_preprocessing_comes_from_the_checkpoint_folder(tmp_path):
    from core.datasets import transform_for

    save_file({"w": torch.zeros(1)}, str(tmp_path / "open_clip_model.safetensors"))
    cfg = {"model_cfg": {}, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    ms = ModelSet.from_json({"base": str(tmp_path / "open_clip_model.safetensors")})
    t = transform_for(build_model(arch="mergescope-micro"), ms.preprocessor_config())
    assert t.mean == (0.5, 0.5, 0.5) and t.std == (0.5, 0.5, 0.5) and t.size == 32
    assert ms.build_arch() is None  # no HF config.json: shapes decide
