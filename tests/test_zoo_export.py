import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from core.__main__ import main as cli
from core.evaluate import Evaluator
from core.zoo.data import get_task, load_split
from core.zoo.export import class_folder, export_zoo


@pytest.fixture(scope="module")
def exported(micro_zoo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "micro-set"
    assert cli(["export", "--zoo", "micro", "--cache", str(micro_zoo_dir.parent), "--out", str(out)]) == 0
    return out


def _read_split(folder, classnames):
    """(N, 3, H, W) uint8 and labels from <folder>/<class>/<index>.png, in index order."""
    items = []
    for label, c in enumerate(classnames):
        for p in (folder / class_folder(c)).glob("*.png"):
            items.append((int(p.stem), label, np.asarray(Image.open(p))))
    items.sort(key=lambda t: t[0])
    assert [i for i, _, _ in items] == list(range(len(items)))
    x = torch.from_numpy(np.stack([im for _, _, im in items])).permute(0, 3, 1, 2)
    return x, torch.tensor([lab for _, lab, _ in items])


def test_layout_and_modelset_json(exported, micro_zoo):
    doc = json.loads((exported / "modelset.json").read_text())
    tasks = micro_zoo.tasks
    assert list(doc) == ["base", "finetuned", "tasks", "arch"] and doc["arch"] is None
    assert doc["base"] == "base.safetensors" and (exported / doc["base"]).is_file()
    assert doc["finetuned"] == {t: f"finetuned/{t}.safetensors" for t in tasks}
    assert set(doc["tasks"]) == set(tasks)
    for t in tasks:
        entry, spec = doc["tasks"][t], get_task(t)
        assert entry == {
            "data": f"data/{t}",
            "head": f"heads/{t}.safetensors",
            "classnames": spec.classnames,
            "templates": spec.templates,
        }
        assert sorted(p.name for p in (exported / entry["data"]).iterdir()) == ["test", "val"]
        for split in ("val", "test"):
            folders = sorted(p.name for p in (exported / entry["data"] / split).iterdir())
            assert folders == sorted(c.replace(" ", "_") for c in spec.classnames)
    assert "top_left" in {p.name for p in (exported / "data/position/val").iterdir()}
    assert sorted(p.name for p in exported.iterdir()) == [
        "base.safetensors",
        "data",
        "finetuned",
        "heads",
        "modelset.json",
    ]


def test_weights_are_the_zoo_weights(exported, micro_zoo):
    base = load_file(exported / "base.safetensors")
    assert base.keys() == micro_zoo.base().keys() and all(torch.equal(base[k], micro_zoo.base()[k]) for k in base)
    assert "token_embedding.weight" in base  # the text tower too
    for t in micro_zoo.tasks:
        ft = load_file(exported / "finetuned" / f"{t}.safetensors")
        assert ft.keys() == micro_zoo.finetuned(t).keys()
        assert all(torch.equal(ft[k], micro_zoo.finetuned(t)[k]) for k in ft)


def test_pngs_round_trip_to_the_zoo_images_and_labels(exported, micro_zoo):
    for t in micro_zoo.tasks:
        for split in ("val", "test"):
            x, y = _read_split(exported / "data" / t / split, get_task(t).classnames)
            zx, zy = load_split(t, split)
            assert x.dtype == torch.uint8 and torch.equal(x, zx) and torch.equal(y, zy), (t, split)


def test_heads_are_the_evaluators_heads_with_the_logit_scale_folded_in(exported, micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test")
    scale = float(micro_zoo.base()["logit_scale"].exp())
    for t, head in ev.heads().items():
        path = exported / "heads" / f"{t}.safetensors"
        saved = load_file(path)
        assert list(saved) == ["head"] and saved["head"].shape == (get_task(t).num_classes, head.shape[1])
        assert torch.equal(saved["head"], head)
        assert torch.allclose(saved["head"].norm(dim=1), torch.full((len(head),), scale), rtol=1e-5)
        with safe_open(path, "pt") as f:
            assert f.metadata()["logit_scale_folded"] == "true"


def test_export_is_deterministic_and_refuses_to_overwrite(exported, micro_zoo_dir, tmp_path, capsys):
    again = export_zoo("micro", tmp_path / "again", micro_zoo_dir.parent)
    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((exported / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert cli(["export", "--zoo", "micro", "--cache", str(micro_zoo_dir.parent), "--out", str(again)]) == 1
    assert "--force" in capsys.readouterr().err
    assert export_zoo("micro", again, micro_zoo_dir.parent, force=True) == again
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an empty folder"):
        export_zoo("micro", tmp_path / "other", micro_zoo_dir.parent, force=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    assert cli(["export", "--zoo", "demo", "--cache", str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "python -m core zoo build" in capsys.readouterr().err
