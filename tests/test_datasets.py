"""Image folder and CSV readers: classes, splits, a carved val, empty classes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.datasets import carve_val, open_dataset, read_csv, read_image_folder
from core.datasets.readers import SplitFiles
from core.errors import ModelSetError


def write_image(path, seed, size=(20, 14), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(path, format=fmt)
    return path


def make_folder(root, splits=("train", "val", "test"), classes=("cat", "big_dog", "emu"), n=4, ext=".png"):
    for s in splits:
        for ci, c in enumerate(classes):
            for i in range(n):
                write_image(root / s / c / f"{i}{ext}", hash((s, ci, i)) % 2**32)
    return root


def test_image_folder_reads_splits_classes_and_labels(tmp_path):
    root = make_folder(tmp_path / "pets", ext=".jpg")
    (root / "test" / "emu" / "notes.txt").write_text("not an image")
    ds = read_image_folder(root)
    assert ds.name == "pets" and ds.classnames == ["big dog", "cat", "emu"]  # sorted folders, _ read as space
    test = ds.split("test")
    assert len(test) == 12 and all(p.suffix == ".jpg" for p in test.paths)
    for p, y in zip(test.paths, test.labels):
        assert ds.classnames[y].replace(" ", "_") == p.parent.name
    assert ds.notes == []


def test_given_classnames_set_the_head_row_order(tmp_path):
    root = make_folder(tmp_path / "d", splits=("test",))
    ds = read_image_folder(root, classnames=["emu", "cat", "big dog"])
    assert ds.classnames == ["emu", "cat", "big dog"]
    t = ds.split("test")
    assert {p.parent.name: int(y) for p, y in zip(t.paths, t.labels)} == {"emu": 0, "cat": 1, "big_dog": 2}
    with pytest.raises(ModelSetError, match="2 classes but .* has 3"):
        read_image_folder(root, classnames=["emu", "cat"])


def test_missing_val_is_carved_from_train_stratified_and_said(tmp_path):
    root = make_folder(tmp_path / "d", splits=("train", "test"), n=10)
    ds = read_image_folder(root, seed=3)
    tr, va = ds.split("train"), ds.split("val")
    assert len(tr) + len(va) == 30 and np.bincount(va.labels).tolist() == [1, 1, 1]
    assert not set(tr.paths) & set(va.paths)
    assert any("carved" in n for n in ds.notes)
    again = read_image_folder(root, seed=3).split("val")
    assert again.paths == va.paths  # seeded
    assert read_image_folder(root, seed=4).split("val").paths != va.paths


def test_carve_val_keeps_one_image_per_class_in_train():
    split = SplitFiles(tuple(f"{i}.png" for i in range(5)), np.array([0, 0, 1, 1, 2]))
    tr, va = carve_val(split, 0.5, seed=0)
    assert sorted(np.bincount(tr.labels, minlength=3).tolist()) == [1, 1, 1]
    assert np.bincount(va.labels, minlength=3).tolist() == [1, 1, 0]


def test_missing_split_and_empty_class_are_reported(tmp_path):
    root = make_folder(tmp_path / "d", splits=("val",), n=2)
    (root / "val" / "ghost").mkdir()
    ds = read_image_folder(root)
    assert "ghost" in ds.classnames and len(ds.classnames) == 4  # the head keeps a row for it
    assert any("without images" in n and "ghost" in n for n in ds.notes)
    with pytest.raises(ModelSetError, match="no 'test' split"):
        ds.split("test")
    with pytest.raises(ModelSetError, match="no split folder"):
        read_image_folder(root / "val")
    with pytest.raises(ModelSetError, match="does not exist"):
        open_dataset(tmp_path / "nope")


def test_csv_reader_paths_relative_to_the_csv_labels_and_splits(tmp_path):
    a = write_image(tmp_path / "img" / "a.png", 1)
    b = write_image(tmp_path / "img" / "b.jpeg", 2, fmt="JPEG")
    c = write_image(tmp_path / "img" / "c.png", 3)
    (tmp_path / "data.csv").write_text(
        f"path,label,split\nimg/a.png,banded,test\nimg/b.jpeg,woven_fabric,test\n{c},banded,train\n"
    )
    ds = read_csv(tmp_path / "data.csv")
    assert ds.name == "data" and ds.classnames == ["banded", "woven fabric"]
    assert ds.split("test").paths == (a, b) and ds.split("test").labels.tolist() == [0, 1]
    assert ds.split("train").paths == (c,)
    assert "val" in ds.splits  # carved from train
    (tmp_path / "nosplit.csv").write_text("path,label\nimg/a.png,x\nimg/b.jpeg,y\n")
    ds = open_dataset(tmp_path / "nosplit.csv")
    assert len(ds.split("test")) == 2
    with pytest.raises(ModelSetError, match="no 'val' split.*split column"):
        ds.split("val")
    (tmp_path / "bad.csv").write_text("file,class\nimg/a.png,x\n")
    with pytest.raises(ModelSetError, match="columns path,label"):
        read_csv(tmp_path / "bad.csv")
    (tmp_path / "badsplit.csv").write_text("path,label,split\nimg/a.png,x,holdout\n")
    with pytest.raises(ModelSetError, match="unknown split"):
        read_csv(tmp_path / "badsplit.csv")
