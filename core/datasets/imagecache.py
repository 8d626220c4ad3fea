"""Preprocessed images on disk: decoded once per (files, transform), uint8, memory-mapped.

`ImageTransform` is open_clip's evaluation transform for a model (resize, centre crop, mean/std)
split in two: the geometric part runs once per image when the cache is built and its uint8 result
is stored; the normalization runs per batch on the fly (`ImageTransform.normalize`), so no split is
ever held as float32. `cached_images` builds or reuses
``core.runtime.paths.cache_dir()/images/<key>/`` (``pixels.u8``: (N, 3, S, S) uint8, ``meta.json``)
where the key hashes the transform and every file's path, size and mtime; the folder appears
atomically (built under a temporary name, then renamed), so concurrent builders never see half a
cache. Unreadable or corrupt files are listed (`CachedImages.bad`), stored as zeros, and skipped by
the evaluator.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..runtime.paths import cache_dir
from ..runtime.threads import available_cpus

# OpenAI CLIP's normalization (open_clip's default, and the demo zoo's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_VERSION = 1

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ImageTransform:
    """open_clip's eval transform: `resize_mode` "shortest" (resize + centre crop), "longest"
    (resize + pad) or "squash"; `interpolation` "bicubic", "bilinear" or "nearest"."""

    size: int
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def key(self) -> str:
        return json.dumps({**asdict(self), "v": CACHE_VERSION}, sort_keys=True)

    def geometric(self) -> Callable[[Image.Image], Image.Image]:
        """The resize/crop steps of ``open_clip.image_transform`` (no ToTensor, no Normalize)."""
        import open_clip

        t = open_clip.image_transform(
            self.size,
            is_train=False,
            mean=self.mean,
            std=self.std,
            resize_mode=self.resize_mode,
            interpolation=self.interpolation,
        )
        steps = [s for s in t.transforms if type(s).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize")]

        def apply(img: Image.Image) -> Image.Image:
            for s in steps:
                img = s(img)
            return img

        return apply

    def decode(self, path: str | Path, geometric=None) -> np.ndarray:
        """uint8 (3, S, S): the file read as RGB (as torchvision's ImageFolder does) and resized/cropped."""
        with Image.open(path) as im:
            img = (geometric or self.geometric())(im.convert("RGB"))
        a = np.asarray(img, dtype=np.uint8)
        if a.shape != (self.size, self.size, 3):
            raise ValueError(f"transform gave shape {a.shape}, expected ({self.size}, {self.size}, 3)")
        return a.transpose(2, 0, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) -> float32 normalized (one batch)."""
        from ..models import preprocess

        return preprocess(pixels, self.size, mean=self.mean, std=self.std)


_HF_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


def transform_for(model, preprocessor_config: dict | None = None) -> ImageTransform:
    """The eval transform of an open_clip model: its image size and open_clip's preprocess config
    (mean, std, interpolation, resize mode), overridden by a HF ``preprocessor_config.json`` dict."""
    import open_clip

    from ..models import image_size_of

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = image_size_of(model)
    t = ImageTransform(
        size,
        tuple(float(v) for v in cfg.get("mean", CLIP_MEAN)),
        tuple(float(v) for v in cfg.get("std", CLIP_STD)),
        str(cfg.get("interpolation", "bicubic")),
        str(cfg.get("resize_mode", "shortest")),
    )
    if preprocessor_config:
        pc = preprocessor_config
        t = ImageTransform(
            size,
            tuple(float(v) for v in pc.get("image_mean", t.mean)),
            tuple(float(v) for v in pc.get("image_std", t.std)),
            pc.get("interpolation") or _HF_RESAMPLE.get(pc.get("resample"), t.interpolation),
            t.resize_mode,
        )
    return t


def drop_resident(pixels) -> None:
    """Unmap the pages of a memory-mapped array from this process (they stay in the OS page cache
    and fault back in on the next read): a pass over a big cache then costs one batch of resident
    memory, not the whole file. A no-op for in-memory arrays."""
    mm = getattr(pixels, "_mmap", None)  # numpy.memmap's mmap object
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


@dataclass
class CachedImages:
    """A memory-mapped (N, 3, S, S) uint8 array; `bad`: (index, path, reason) of unreadable files."""

    pixels: np.ndarray
    bad: list[tuple[int, str, str]]
    path: Path

    def release(self) -> None:
        """Drop this cache's pages from the process's resident memory (see `drop_resident`)."""
        drop_resident(self.pixels)

    @property
    def valid(self) -> np.ndarray:
        ok = np.ones(len(self.pixels), dtype=bool)
        ok[[i for i, _, _ in self.bad]] = False
        return ok

    def describe_bad(self, limit: int = 3) -> str:
        if not self.bad:
            return ""
        first = "; ".join(f"{p} ({r})" for _, p, r in self.bad[:limit])
        return f"{len(self.bad)} unreadable image(s) skipped: {first}" + (", ..." if len(self.bad) > limit else "")


def cache_key(paths: Sequence[str | Path], transform: ImageTransform) -> str:
    """Hash of the transform and every file's absolute path, size and mtime."""
    h = hashlib.sha256(transform.key().encode())
    for p in paths:
        p = Path(p).absolute()
        try:
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}\0missing\n".encode())
    return h.hexdigest()[:24]


def _open(folder: Path) -> CachedImages | None:
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    n, s = meta["n"], meta["size"]
    if n == 0:
        pixels = np.zeros((0, 3, s, s), dtype=np.uint8)
    else:  # copy-on-write map: torch can wrap it, nothing is ever written back
        pixels = np.memmap(folder / "pixels.u8", dtype=np.uint8, mode="c", shape=(n, 3, s, s))
    return CachedImages(pixels, [tuple(b) for b in meta["bad"]], folder)


def _tqdm(total: int, desc: str):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the CLI
        return None
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False, disable=None)


def cached_images(
    paths: Sequence[str | Path],
    transform: ImageTransform,
    *,
    progress: Progress | None = None,
    desc: str = "caching images",
    root: str | Path | None = None,
    workers: int | None = None,
) -> CachedImages:
    """The images of `paths` after `transform`'s geometric steps, cached on disk (built on first use,
    with a tqdm bar and `progress(done, total)` calls). `root`: the cache root (default
    ``cache_dir()/images``)."""
    root = Path(root) if root is not None else cache_dir() / "images"
    folder = root / cache_key(paths, transform)
    found = _open(folder)
    if found is not None:
        return found
    tmp = root / f"{folder.name}.tmp-{os.getpid()}-{id(paths)}"
    tmp.mkdir(parents=True, exist_ok=True)
    n, s = len(paths), transform.size
    bad: list[tuple[int, str, str]] = []
    try:
        if n:
            out = np.memmap(tmp / "pixels.u8", dtype=np.uint8, mode="w+", shape=(n, 3, s, s))
            geometric = transform.geometric()

            def one(i: int):
                try:
                    out[i] = transform.decode(paths[i], geometric)
                    return None
                except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
                    out[i] = 0
                    return (i, str(paths[i]), f"{type(e).__name__}: {e}"[:200])

            bar = _tqdm(n, desc)
            chunk = 64
            with ThreadPoolExecutor(max_workers=workers or available_cpus()) as pool:
                for start in range(0, n, chunk):
                    results = list(pool.map(one, range(start, min(n, start + chunk))))
                    bad += [r for r in results if r is not None]
                    drop_resident(out)  # written pages live on in the page cache, not in our RSS
                    done = min(n, start + chunk)
                    if bar is not None:
                        bar.update(done - bar.n)
                    if progress is not None:
                        progress(done, n)
            if bar is not None:
                bar.close()
            out.flush()
            del out
        meta = {"n": n, "size": s, "transform": json.loads(transform.key()), "bad": bad, "version": CACHE_VERSION}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result = _open(folder)
    if result is None:  # pragma: no cover - the folder was removed under us
        raise RuntimeError(f"image cache {folder} vanished while it was built")
    if result.bad:
        warnings.warn(result.describe_bad(), stacklevel=2)
    return result
