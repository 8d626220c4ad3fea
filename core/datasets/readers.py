"""A user's image classification data: an image folder or a CSV, as file lists per split.

Image folder: ``root/<split>/<class>/*.{png,jpg,jpeg,webp,bmp}`` with splits train, val, test.
CSV: columns ``path,label[,split]``, paths relative to the CSV file (``~`` expanded); without a
split column every row is a test image. A dataset without val gets a seeded, stratified val carved
from train (`carve_val`), and says so in `ImageDataset.notes`.

Nothing here decodes an image: `core.datasets.imagecache` does that once per (files, transform) and
reports unreadable files by path.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelSetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SPLITS = ("train", "val", "test")
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class SplitFiles:
    """The files of one split and their class indices (same order)."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray) -> SplitFiles:
        return SplitFiles(tuple(self.paths[i] for i in idx), self.labels[idx])


@dataclass
class ImageDataset:
    """A classification dataset as file lists: class names (head row order) and files per split."""

    name: str
    source: Path
    classnames: list[str]
    splits: dict[str, SplitFiles]
    notes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> SplitFiles:
        if name not in self.splits:
            raise ModelSetError(
                f"task {self.name!r}: {self.source} has no {name!r} split (found {sorted(self.splits)})"
                + ("; add a split column to the CSV" if self.source.suffix.lower() == ".csv" else "")
            )
        return self.splits[name]


def display_name(folder: str) -> str:
    """A class folder's name as a class name: underscores read as spaces."""
    return folder.replace("_", " ")


def _match_classes(task: str, source: Path, found: list[str], classnames: list[str] | None) -> tuple[list[str], dict]:
    """(class names, {found name -> index}). `found` are folder names or CSV labels (sorted)."""
    if classnames is None:
        return [display_name(f) for f in found], {f: i for i, f in enumerate(found)}
    classnames = [str(c) for c in classnames]
    if len(classnames) != len(found):
        raise ModelSetError(
            f"task {task!r}: classnames lists {len(classnames)} classes but {source} has {len(found)} "
            f"({', '.join(found[:6])}{', ...' if len(found) > 6 else ''})"
        )
    index = {}
    for i, c in enumerate(classnames):
        for key in (c, c.replace(" ", "_"), str(i)):
            index.setdefault(key, i)
    if all(f in index or display_name(f) in index for f in found):
        return classnames, {f: index[f] if f in index else index[display_name(f)] for f in found}
    # names that do not match the data's: the sorted data order is the class order
    return classnames, {f: i for i, f in enumerate(found)}


def _sort_key(name: str):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def carve_val(train: SplitFiles, fraction: float = VAL_FRACTION, seed: int = 0) -> tuple[SplitFiles, SplitFiles]:
    """A seeded, stratified val split carved from train: `fraction` of each class (at least one
    image of every class with two or more). Returns (train without val, val), both in file order."""
    rng = np.random.default_rng(seed)
    take = []
    for c in np.unique(train.labels):
        idx = np.flatnonzero(train.labels == c)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        take.append(rng.permutation(idx)[:k])
    val = np.sort(np.concatenate(take)) if take else np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(len(train)), val)
    return train.subset(keep), train.subset(val)


def _finish(ds: ImageDataset, seed: int) -> ImageDataset:
    if "val" not in ds.splits and "train" in ds.splits:
        tr, va = carve_val(ds.splits["train"], VAL_FRACTION, seed)
        ds.splits["train"], ds.splits["val"] = tr, va
        ds.notes.append(
            f"no val split: carved a stratified {VAL_FRACTION:.0%} of train as val (seed {seed}; "
            f"{len(va)} val, {len(tr)} train images)"
        )
    for split, files in ds.splits.items():
        counts = np.bincount(files.labels, minlength=ds.num_classes)
        empty = [ds.classnames[i] for i in np.flatnonzero(counts == 0)]
        if empty and len(files):
            ds.notes.append(f"{split}: {len(empty)} class(es) without images ({', '.join(empty[:5])})")
    return ds


def read_image_folder(
    root: str | Path, *, name: str | None = None, classnames: list[str] | None = None, seed: int = 0
) -> ImageDataset:
    """An image folder ``root/<split>/<class>/*``; classes = the union of class folders over splits."""
    root = Path(root).expanduser()
    name = name or root.name
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if not splits:
        raise ModelSetError(
            f"task {name!r}: {root} holds no split folder; expected {root}/<split>/<class>/<image> "
            f"with <split> one of {', '.join(SPLITS)}"
        )
    folders = sorted({p.name for s in splits for p in (root / s).iterdir() if p.is_dir()}, key=_sort_key)
    if not folders:
        raise ModelSetError(f"task {name!r}: no class folders under {root}/{{{','.join(splits)}}}")
    names, index = _match_classes(name, root, folders, classnames)
    out: dict[str, SplitFiles] = {}
    for s in splits:
        paths, labels = [], []
        for f in folders:
            d = root / s / f
            if d.is_dir():
                files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
                paths += files
                labels += [index[f]] * len(files)
        out[s] = SplitFiles(tuple(paths), np.asarray(labels, dtype=np.int64))
    return _finish(ImageDataset(name, root, names, out), seed)


def read_csv(
    path: str | Path, *, name: str | None = None, classnames: list[str] | None = None, seed: int = 0
) -> ImageDataset:
    """A CSV ``path,label[,split]`` (header row required); paths relative to the CSV's folder."""
    path = Path(path).expanduser()
    name = name or path.stem
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "path" not in cols or "label" not in cols:
            raise ModelSetError(f"task {name!r}: {path} needs a header with columns path,label[,split]; got {cols}")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k is not None} for r in reader]
    if not rows:
        raise ModelSetError(f"task {name!r}: {path} has no rows")
    has_split = "split" in cols
    bad = sorted({r["split"] for r in rows if has_split and r["split"] not in SPLITS})
    if bad:
        raise ModelSetError(f"task {name!r}: {path}: unknown split value(s) {bad}; use {', '.join(SPLITS)}")
    found = sorted({r["label"] for r in rows}, key=_sort_key)
    names, index = _match_classes(name, path, found, classnames)
    out: dict[str, tuple[list, list]] = {}
    for r in rows:
        p = Path(r["path"]).expanduser()
        p = p if p.is_absolute() else path.parent / p
        paths, labels = out.setdefault(r["split"] if has_split else "test", ([], []))
        paths.append(p)
        labels.append(index[r["label"]])
    splits = {s: SplitFiles(tuple(p), np.asarray(y, dtype=np.int64)) for s, (p, y) in out.items()}
    ds = ImageDataset(name, path, names, splits)
    if not has_split:
        ds.notes.append("no split column: every row is a test image (no val to choose on)")
    return _finish(ds, seed)


def open_dataset(
    path: str | Path, *, name: str | None = None, classnames: list[str] | None = None, seed: int = 0
) -> ImageDataset:
    """An image folder or a CSV file, by what `path` is."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelSetError(f"task {name or p.name!r}: data {p} does not exist")
    if p.is_dir():
        return read_image_folder(p, name=name, classnames=classnames, seed=seed)
    if p.suffix.lower() == ".csv":
        return read_csv(p, name=name, classnames=classnames, seed=seed)
    raise ModelSetError(f"task {name or p.stem!r}: data {p} must be an image folder or a .csv file")
