"""The on-disk uint8 image cache: open_clip's transform exactly, built once, corrupt files reported."""

from __future__ import annotations

import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from test_datasets import write_image  # tests/ is on sys.path

from core.datasets import ImageTransform, cached_images, transform_for
from core.datasets.imagecache import cache_key


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "cache"))


def test_cached_pixels_normalized_equal_open_clips_preprocess(tmp_path):
    paths = [write_image(tmp_path / "a.png", 0, (50, 30)), write_image(tmp_path / "b.jpg", 1, (23, 61), "JPEG")]
    t = ImageTransform(24)
    got = cached_images(paths, t, workers=1)
    assert isinstance(got.pixels, np.memmap) and got.pixels.dtype == np.uint8 and got.pixels.shape == (2, 3, 24, 24)
    ref = open_clip.image_transform(24, is_train=False)
    for i, p in enumerate(paths):
        want = ref(Image.open(p).convert("RGB"))
        torch.testing.assert_close(t.normalize(torch.from_numpy(np.array(got.pixels[i : i + 1])))[0], want)
    assert got.path.parent == tmp_path / "cache" / "images"


def test_cache_is_built_once_and_follows_file_changes(tmp_path, monkeypatch):
    paths = [write_image(tmp_path / f"{i}.png", i) for i in range(5)]
    t = ImageTransform(16)
    calls = []
    first = cached_images(paths, t, progress=lambda d, n: calls.append((d, n)))
    assert calls[-1] == (5, 5)

    def boom(*a, **k):
        raise AssertionError("decoded again")

    with monkeypatch.context() as m:
        m.setattr(ImageTransform, "decode", boom)
        again = cached_images(paths, t)
    assert again.path == first.path and np.array_equal(np.asarray(again.pixels), np.asarray(first.pixels))
    key = cache_key(paths, t)
    write_image(paths[2], 99, (30, 30))
    assert cache_key(paths, t) != key
    assert cache_key(paths, ImageTransform(16, interpolation="bilinear")) != cache_key(paths, t)
    assert not list((tmp_path / "cache" / "images").glob("*.tmp-*"))  # no half-built folder left


def test_corrupt_and_unreadable_files_are_reported_and_skipped(tmp_path):
    good = [write_image(tmp_path / f"{i}.png", i) for i in range(3)]
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    text = tmp_path / "text.jpg"
    text.write_text("this is not a jpeg")
    missing = tmp_path / "gone.png"
    paths = [good[0], truncated, good[1], text, missing, good[2]]
    with pytest.warns(UserWarning, match="3 unreadable image"):
        got = cached_images(paths, ImageTransform(8))
    assert [i for i, _, _ in got.bad] == [1, 3, 4]
    assert [p for _, p, _ in got.bad] == [str(truncated), str(text), str(missing)]
    assert got.valid.tolist() == [True, False, True, False, False, True]
    assert "trunc.png" in got.describe_bad() and "..." not in got.describe_bad(limit=3)
    assert cached_images(paths, ImageTransform(8)).bad == got.bad  # remembered with the cache


def test_transform_follows_the_model_and_a_hf_preprocessor_config():
    with torch.device("meta"):
        m = open_clip.create_model("ViT-B-32", pretrained=None, device="meta")
    t = transform_for(m)
    assert (t.size, t.interpolation, t.resize_mode) == (224, "bicubic", "shortest")
    hf = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "resample": 2}
    t2 = transform_for(m, hf)
    assert t2.mean == (0.5, 0.5, 0.5) and t2.std == (0.25, 0.25, 0.25) and t2.interpolation == "bilinear"


def _resident_kb(path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_a_pass_over_the_cache_does_not_stay_resident(tmp_path):
    paths = [write_image(tmp_path / f"{i}.png", i, (64, 64)) for i in range(40)]
    got = cached_images(paths, ImageTransform(64))
    file = got.path / "pixels.u8"
    assert int(np.asarray(got.pixels).sum()) > 0  # touch every page
    assert _resident_kb(file) >= 40 * 3 * 64 * 64 // 1024 - 8
    got.release()
    assert _resident_kb(file) == 0
    assert int(np.asarray(got.pixels[3]).sum()) > 0  # still readable: pages fault back in from the file
