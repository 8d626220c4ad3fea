"""Looks that the zoo's pretraining never shows: the masks and textures behind the style-shifted tasks.

Pretraining (`core.zoo.pretrain`) sees handwritten digits, letters in four DejaVu faces, shapes that
are solid, striped, dotted or outlined, block arrows and plain noisy backgrounds. The style-shifted
tasks (`core.zoo.data`) ask the same questions — its captions name every class — about objects drawn
in a look it never saw: digits and letters typeset in the Computer Modern and STIX faces that
matplotlib ships, shapes filled with other textures, thin line arrows, and textured backgrounds.
Nothing here changes how a pretraining scene renders (`core.zoo.scenes.render` uses these only for
scene keys that pretraining never sets), so the shipped base stays valid.

Pure functions of small integer arguments, cached; every mask is float32 in [0, 1] of size `size` x `size`.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Bump when the images of a style-shifted task change: the hash of a recipe with such a task includes it
# (the pretraining hash does not: these looks never reach pretraining).
STYLE_VERSION = 1

# Faces pretraining never used (it uses DejaVuSans, -Bold, DejaVuSerif, DejaVuSansMono).
NOVEL_FONT_FILES = [
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
    "cmb10.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBol.ttf",
    "DejaVuSerif-BoldItalic.ttf",
]
# Fills pretraining never used (its fills: solid, striped, dotted, outlined).
TEXTURES = ["checker", "grid", "rings", "speckle"]
# Background textures (pretraining backgrounds are a gradient plus white noise).
BG_TEXTURES = ["stripes", "checker", "blobs"]


@functools.cache
def _novel_font(idx: int, size: int):
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", NOVEL_FONT_FILES[idx])
    try:
        return ImageFont.truetype(path, size)
    except OSError:  # a stripped matplotlib install: fall back to a face pretraining used, said in the mask's name
        return ImageFont.load_default(size=size)


@functools.cache
def glyph_mask(text: str, font: int, size: int, stroke: int = 0) -> np.ndarray:
    """`text` typeset in novel face `font`, centred on a `size` square; `stroke` > 0 draws it hollow (outline only)."""
    if not 0 <= font < len(NOVEL_FONT_FILES):
        raise ValueError(f"font index {font} outside 0..{len(NOVEL_FONT_FILES) - 1}")
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    f = _novel_font(font, int(size * 0.8))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=f)
    xy = ((size - (x1 - x0)) / 2 - x0, (size - (y1 - y0)) / 2 - y0)
    # Emboldened by a 2 px stroke (the Computer Modern faces are thin at 16-19 px); hollow: the outer
    # `stroke` px ring around the plain glyph.
    draw.text(xy, text, font=f, fill=255, stroke_width=stroke or 2, stroke_fill=255)
    if stroke:
        inner = Image.new("L", (size, size), 0)
        ImageDraw.Draw(inner).text(xy, text, font=f, fill=255)
        return np.clip(np.asarray(im, np.float32) - np.asarray(inner, np.float32), 0, 255) / 255
    return np.asarray(im, np.float32) / 255


@functools.cache
def texture(idx: int, size: int) -> np.ndarray:
    """Multiplicative fill texture `TEXTURES[idx]` (1 = ink)."""
    yy, xx = np.mgrid[0:size, 0:size]
    name = TEXTURES[idx]
    if name == "checker":
        return (((xx // 8) + (yy // 8)) % 2 == 0).astype(np.float32)
    if name == "grid":
        return (((xx % 11) < 3) | ((yy % 11) < 3)).astype(np.float32)
    if name == "rings":
        r = np.hypot(xx - size / 2, yy - size / 2)
        return ((r // 6) % 2 == 0).astype(np.float32)
    if name == "speckle":
        return (np.random.default_rng(7).random((size, size)) < 0.45).astype(np.float32)
    raise ValueError(f"unknown texture {name!r}")


@functools.cache
def line_arrow_mask(size: int, width: int = 3) -> np.ndarray:
    """A thin line arrow pointing right (shaft plus an open chevron head), unlike pretraining's block arrow."""
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    s = size
    d.line([(0.08 * s, 0.5 * s), (0.92 * s, 0.5 * s)], fill=255, width=width)
    d.line([(0.92 * s, 0.5 * s), (0.62 * s, 0.2 * s)], fill=255, width=width)
    d.line([(0.92 * s, 0.5 * s), (0.62 * s, 0.8 * s)], fill=255, width=width)
    return np.asarray(im, np.float32) / 255


def background_texture(kind: int, seed: int, size: int) -> np.ndarray:
    """A zero-mean texture in [-1, 1] of shape (size, size, 1) for a scene background (deterministic in seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    name = BG_TEXTURES[kind]
    if name == "stripes":
        theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
        t = np.sign(np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period))
    elif name == "checker":
        c = int(rng.integers(3, 6))
        t = np.where(((xx // c) + (yy // c)) % 2 == 0, 1.0, -1.0)
    elif name == "blobs":
        low = rng.standard_normal((5, 5)).astype(np.float32)
        im = Image.fromarray(low).resize((size, size), Image.BICUBIC)
        t = np.asarray(im, np.float32)
        t = np.clip(t / (np.abs(t).max() + 1e-6), -1, 1)
    else:
        raise ValueError(f"unknown background texture {name!r}")
    return t.astype(np.float32)[:, :, None]
