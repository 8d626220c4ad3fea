"""The zoo's scene generator: one deterministic renderer behind every image the zoo sees.

Every image — the zoo's pretraining pairs and every task split — comes from one
scene generator (`render`): a noisy coloured background, one main object (a
shape, a digit from scikit-learn's bundled `load_digits`, a letter rendered
from the DejaVu fonts matplotlib ships, or an arrow), small distractors, colour
jitter and rotation. Tasks (`core.zoo.data`) differ in *what is asked* about a
scene, not in pixel statistics; that is what lets shallow blocks stay general,
as in real CLIP.

A scene is a plain dict; `make_scene` draws one with some attributes fixed and
the rest random (re-running it from the same generator state with one attribute
changed gives a minimal pair, which pretraining uses). The attribute
vocabularies (`ATTRIBUTES`) are the one table used by tasks, captions and the
pretraining's auxiliary attribute heads.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from . import styles

IMAGE_SIZE = 32
_MASK = 48  # resolution of the object masks before scaling

# Size range (pixels) of a scene's main object, and of each object of a counted group.
MAIN_OBJECT_SIZE = (16.0, 19.0)
GROUP_OBJECT_SIZE = (6.0, 8.0)
# Bump when the images a seed produces change: the zoo's recipe hash includes it, so a cached
# zoo or a shipped base made with an older generator is never mistaken for a current one.
GENERATOR_VERSION = 2  # 2: main objects 16-19 px (were 12-15)

SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------------------
# Attribute vocabularies: one table, used by tasks, captions and the zoo's
# auxiliary attribute heads.
SHAPES = ["circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "semicircle"]
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 200),
    "orange": (250, 140, 20),
    "cyan": (40, 220, 230),
    "pink": (250, 120, 190),
}
COLOUR_NAMES = list(COLOURS)
PATTERNS = ["solid", "striped", "dotted", "outlined"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
LETTERS = ["A", "B", "E", "G", "H", "K", "M", "R", "S", "W"]
DIRECTIONS = ["right", "up right", "up", "up left", "left", "down left", "down", "down right"]  # 45° steps, CCW
POSITIONS = {
    "center": (16, 16),
    "top left": (9, 9),
    "top right": (23, 9),
    "bottom left": (9, 23),
    "bottom right": (23, 23),
}
POSITION_NAMES = list(POSITIONS)
COUNTS = ["one", "two", "three", "four", "five"]
KINDS = ["shape", "digit", "letter", "arrow", "group"]

# Attribute -> vocabulary; the order defines the auxiliary heads in core.zoo.pretrain.
ATTRIBUTES: dict[str, list[str]] = {
    "shape": SHAPES,
    "colour": COLOUR_NAMES,
    "pattern": PATTERNS,
    "digit": DIGITS,
    "letter": LETTERS,
    "direction": DIRECTIONS,
    "position": POSITION_NAMES,
    "count": COUNTS,
}

# Shape-colour pairs never shown in pretraining (compositional gap for the tasks).
HELD_OUT_PAIRS = {(0, 1), (1, 3), (2, 5), (3, 7), (4, 0), (5, 2), (6, 4), (7, 6), (0, 6), (3, 2)}


# ---------------------------------------------------------------------------
# Object masks (cached): float32 arrays in [0, 1] of size _MASK x _MASK.
def _polygon_mask(points: list[tuple[float, float]]) -> np.ndarray:
    im = Image.new("L", (_MASK, _MASK), 0)
    ImageDraw.Draw(im).polygon([(x * _MASK, y * _MASK) for x, y in points], fill=255)
    return np.asarray(im, np.float32) / 255


def _regular(n: int, r: float = 0.46, phase: float = -np.pi / 2) -> list[tuple[float, float]]:
    return [
        (0.5 + r * np.cos(phase + 2 * np.pi * k / n), 0.5 + r * np.sin(phase + 2 * np.pi * k / n)) for k in range(n)
    ]


@functools.cache
def _shape_masks() -> list[np.ndarray]:
    im = Image.new("L", (_MASK, _MASK), 0)
    ImageDraw.Draw(im).ellipse([2, 2, _MASK - 3, _MASK - 3], fill=255)
    circle = np.asarray(im, np.float32) / 255
    star = [
        (
            0.5 + (0.48 if k % 2 == 0 else 0.2) * np.cos(-np.pi / 2 + np.pi * k / 5),
            0.52 + (0.48 if k % 2 == 0 else 0.2) * np.sin(-np.pi / 2 + np.pi * k / 5),
        )
        for k in range(10)
    ]
    a, b = 0.32, 0.68
    cross = [
        (a, 0.04),
        (b, 0.04),
        (b, a),
        (0.96, a),
        (0.96, b),
        (b, b),
        (b, 0.96),
        (a, 0.96),
        (a, b),
        (0.04, b),
        (0.04, a),
        (a, a),
    ]
    semi = [(0.5 + 0.46 * np.cos(t), 0.3 + 0.46 * np.sin(t)) for t in np.linspace(0, np.pi, 24)]
    return [
        circle,
        _polygon_mask([(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)]),
        _polygon_mask([(0.5, 0.06), (0.96, 0.9), (0.04, 0.9)]),
        _polygon_mask(star),
        _polygon_mask(cross),
        _polygon_mask([(0.5, 0.02), (0.9, 0.5), (0.5, 0.98), (0.1, 0.5)]),
        _polygon_mask(_regular(6, 0.48, 0)),
        _polygon_mask(semi),
    ]


@functools.cache
def _pattern_masks() -> list[np.ndarray]:
    """Multiplicative fill patterns (solid, striped, dotted); 'outlined' is computed per mask."""
    yy, xx = np.mgrid[0:_MASK, 0:_MASK]
    stripes = (((xx + yy) // 5) % 2 == 0).astype(np.float32)
    dots = ((((xx % 8) - 3.5) ** 2 + ((yy % 8) - 3.5) ** 2) < 7).astype(np.float32)
    return [np.ones((_MASK, _MASK), np.float32), stripes, dots]


def _outline(mask: np.ndarray, width: int = 6) -> np.ndarray:
    inner = torch.from_numpy(mask)[None, None]
    eroded = -torch.nn.functional.max_pool2d(-inner, 2 * width + 1, stride=1, padding=width)
    return np.clip(mask - eroded[0, 0].numpy(), 0, 1)


@functools.cache
def _patterned(shape: int, pattern: int) -> np.ndarray:
    m = _shape_masks()[shape]
    if PATTERNS[pattern] == "outlined":
        return _outline(m)
    return m * _pattern_masks()[pattern]


@functools.cache
def _digit_source() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digit_indices(split: str) -> dict[int, np.ndarray]:
    """Source digit images of a split, by label: 60% pretrain/train, 20% val, 20% test (by index)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, y = _digit_source()
    bucket = np.arange(len(y)) % 5
    sel = {"train": bucket < 3, "val": bucket == 3, "test": bucket == 4}[split]
    return {c: np.flatnonzero(sel & (y == c)) for c in range(10)}


@functools.cache
def _digit_mask(index: int) -> np.ndarray:
    img = _digit_source()[0][index]
    pil = Image.fromarray((img * 255).astype(np.uint8)).resize((_MASK - 8, _MASK - 8), Image.BILINEAR)
    out = np.zeros((_MASK, _MASK), np.float32)
    out[4:-4, 4:-4] = np.asarray(pil, np.float32) / 255
    return out


FONT_FILES = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]


@functools.cache
def _font(idx: int, size: int):
    try:
        import matplotlib

        path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", FONT_FILES[idx])
        return ImageFont.truetype(path, size)
    except Exception:  # matplotlib missing: Pillow's built-in font (less variety)
        return ImageFont.load_default(size=size)


@functools.cache
def _letter_mask(letter: int, font: int) -> np.ndarray:
    im = Image.new("L", (_MASK, _MASK), 0)
    draw = ImageDraw.Draw(im)
    f = _font(font, 40)
    x0, y0, x1, y1 = draw.textbbox((0, 0), LETTERS[letter], font=f)
    draw.text(((_MASK - (x1 - x0)) / 2 - x0, (_MASK - (y1 - y0)) / 2 - y0), LETTERS[letter], font=f, fill=255)
    return np.asarray(im, np.float32) / 255


@functools.cache
def _arrow_mask() -> np.ndarray:  # pointing right; rotated at render time
    return _polygon_mask([(0.06, 0.4), (0.56, 0.4), (0.56, 0.16), (0.96, 0.5), (0.56, 0.84), (0.56, 0.6), (0.06, 0.6)])


def _object_mask(obj: dict) -> np.ndarray:
    if "glyph" in obj:  # style-shifted tasks only (core.zoo.styles): typeset in a novel face
        m = styles.glyph_mask(obj["glyph"], obj["font"], _MASK, obj.get("stroke", 0))
    elif obj.get("line"):
        m = styles.line_arrow_mask(_MASK)
    else:
        m = _plain_mask(obj)
    return m * styles.texture(obj["texture"], _MASK) if "texture" in obj else m


def _plain_mask(obj: dict) -> np.ndarray:
    kind = obj["kind"]
    if kind == "shape":
        return _patterned(obj["shape"], obj.get("pattern", 0))
    if kind == "digit":
        return _digit_mask(obj["source"])
    if kind == "letter":
        return _letter_mask(obj["letter"], obj.get("font", 0))
    if kind == "arrow":
        return _arrow_mask()
    raise ValueError(f"unknown object kind {kind!r}")


# ---------------------------------------------------------------------------
# Rendering.
def render(scene: dict) -> np.ndarray:
    """Draw a scene to a (IMAGE_SIZE, IMAGE_SIZE, 3) uint8 array. Deterministic in the scene dict.

    Object masks are drawn at 48 px, rotated, and resized down to the object's
    size with Pillow's area-aware filter (anti-aliased edges without supersampling).
    """
    S = IMAGE_SIZE
    rng = np.random.default_rng(scene["noise_seed"])
    bg = np.asarray(scene["bg"], np.float32)
    grad = rng.standard_normal((2, 3), dtype=np.float32) * 18
    lin = np.linspace(-1, 1, S, dtype=np.float32)
    canvas = bg + lin[None, :, None] * grad[0] + lin[:, None, None] * grad[1]
    canvas += rng.standard_normal((S, S, 3), dtype=np.float32) * scene.get("bg_noise", 12.0)
    if "bg_texture" in scene:  # style-shifted tasks only: (texture index, seed, amplitude)
        kind, seed, amp = scene["bg_texture"]
        canvas += styles.background_texture(kind, seed, S) * amp
    for obj in scene["objects"]:
        m = _object_mask(obj)
        size = max(2, int(round(obj["size"])))
        pil = Image.fromarray((m * 255).astype(np.uint8))
        angle = obj.get("angle", 0.0)
        if angle:
            pil = pil.rotate(angle, resample=Image.BILINEAR)
        mm = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float32) * (1 / 255)
        x0, y0 = int(round(obj["cx"] - size / 2)), int(round(obj["cy"] - size / 2))
        xa, ya, xb, yb = max(0, x0), max(0, y0), min(S, x0 + size), min(S, y0 + size)
        if xa >= xb or ya >= yb:
            continue
        mm = mm[ya - y0 : yb - y0, xa - x0 : xb - x0, None]
        col = np.asarray(obj["rgb"], np.float32)
        canvas[ya:yb, xa:xb] = canvas[ya:yb, xa:xb] * (1 - mm) + col * mm
    canvas += rng.standard_normal((S, S, 3), dtype=np.float32) * 4
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _jitter_colour(rng: np.random.Generator, colour: int) -> list[float]:
    base = np.asarray(COLOURS[COLOUR_NAMES[colour]], np.float32)
    return list(np.clip(base * rng.uniform(0.8, 1.1) + rng.normal(0, 12, 3), 0, 255))


def _background(rng: np.random.Generator, avoid: list[int]) -> list[float]:
    """A dull background colour far enough from the object colours."""
    for _ in range(50):
        grey = rng.uniform(50, 170)
        bg = np.clip(grey + rng.normal(0, 25, 3), 0, 255)
        if all(np.linalg.norm(bg - np.asarray(COLOURS[COLOUR_NAMES[c]])) > 110 for c in avoid):
            return list(bg)
    return list(bg)


def _object(rng: np.random.Generator, kind: str, split: str, size: float, cx: float, cy: float, **attrs) -> dict:
    """An object of `kind` with the given attributes; unspecified ones drawn at random."""
    colour = attrs.get("colour", int(rng.integers(len(COLOURS))))
    obj = {"kind": kind, "colour": colour, "rgb": _jitter_colour(rng, colour), "size": size, "cx": cx, "cy": cy}
    if kind == "shape":
        obj["shape"] = attrs.get("shape", int(rng.integers(len(SHAPES))))
        obj["pattern"] = attrs.get("pattern", int(rng.choice(len(PATTERNS), p=[0.55, 0.15, 0.15, 0.15])))
        obj["angle"] = float(rng.uniform(-25, 25))
    elif kind == "digit":
        digit = attrs.get("digit", int(rng.integers(10)))
        pool = digit_indices(split)[digit]
        obj["digit"], obj["source"] = digit, int(pool[rng.integers(len(pool))])
        obj["angle"] = float(rng.uniform(-12, 12))
    elif kind == "letter":
        obj["letter"] = attrs.get("letter", int(rng.integers(len(LETTERS))))
        obj["font"] = int(rng.integers(len(FONT_FILES)))
        obj["angle"] = float(rng.uniform(-12, 12))
    elif kind == "arrow":
        obj["direction"] = attrs.get("direction", int(rng.integers(len(DIRECTIONS))))
        obj["angle"] = 45.0 * obj["direction"] + float(rng.uniform(-8, 8))
    return obj


def _free_spot(rng: np.random.Generator, taken: list[tuple[float, float, float]], size: float) -> tuple[float, float]:
    best, best_d = (16.0, 16.0), -1.0
    for _ in range(20):
        x, y = rng.uniform(size / 2 + 1, IMAGE_SIZE - size / 2 - 1, 2)
        d = min([np.hypot(x - a, y - b) - (size + s) / 2 for a, b, s in taken], default=99.0)
        if d > 1.0:
            return float(x), float(y)
        if d > best_d:
            best, best_d = (float(x), float(y)), d
    return best


def make_scene(
    rng: np.random.Generator,
    split: str,
    kind: str | None = None,
    n_distractors: int | None = None,
    **attrs,
) -> dict:
    """A scene with a main object (or a group for counts); attributes given are fixed, the rest random.

    Returns a dict with ``objects`` (main first), ``attrs`` (the attribute labels
    this scene has, by ATTRIBUTES name), background and noise seed.
    """
    if kind is None:
        kind = KINDS[int(rng.integers(len(KINDS)))]
    # Defaults below are drawn even when an attribute is given (eager `.get` defaults), so
    # re-running with the same generator state and one attribute changed gives a minimal pair.
    noise_seed = int(rng.integers(2**31))
    labels: dict[str, int] = {}
    objects: list[dict] = []
    if kind == "group":
        n = attrs.get("count", int(rng.integers(5))) + 1
        shape = attrs.get("shape", int(rng.integers(len(SHAPES))))
        colour = attrs.get("colour", int(rng.integers(len(COLOURS))))
        size = float(rng.uniform(*GROUP_OBJECT_SIZE))
        taken: list[tuple[float, float, float]] = []
        for _ in range(n):
            x, y = _free_spot(rng, taken, size)
            taken.append((x, y, size))
            objects.append(_object(rng, "shape", split, size, x, y, shape=shape, colour=colour, pattern=0))
        labels.update(count=n - 1, shape=shape, colour=colour)
        n_distractors = 0
    else:
        pos = attrs.get("position", int(rng.integers(len(POSITIONS))))
        px, py = POSITIONS[POSITION_NAMES[pos]]
        size = float(rng.uniform(*MAIN_OBJECT_SIZE))
        main = _object(rng, kind, split, size, px + rng.uniform(-1.5, 1.5), py + rng.uniform(-1.5, 1.5), **attrs)
        objects.append(main)
        labels.update(position=pos, colour=main["colour"])
        for a in ("shape", "pattern", "digit", "letter", "direction"):
            if a in main:
                labels[a] = main[a]
    if n_distractors is None:
        n_distractors = int(rng.integers(3))
    taken = [(o["cx"], o["cy"], o["size"]) for o in objects]
    for _ in range(n_distractors):
        s = float(rng.uniform(4.5, 6.5))
        x, y = _free_spot(rng, taken, s)
        taken.append((x, y, s))
        colour, shift = int(rng.integers(len(COLOURS))), 1 + int(rng.integers(len(COLOURS) - 1))
        if colour == labels.get("colour"):  # distractors never share the main colour
            colour = (colour + shift) % len(COLOURS)
        objects.append(_object(rng, "shape", split, s, x, y, colour=colour, pattern=0))
    return {
        "kind": kind,
        "objects": objects,
        "attrs": labels,
        "bg": _background(rng, [o["colour"] for o in objects]),
        "noise_seed": noise_seed,
    }


# ---------------------------------------------------------------------------
# Style-shifted scenes: what pretraining's captions name, in a look it never showed.
# Style -> the scene kind it redraws.
STYLE_KIND = {
    "typed_digit": "digit",
    "novel_letter": "letter",
    "textured_shape": "shape",
    "line_arrow": "arrow",
    "mixed_count": "group",
}


def make_styled_scene(rng: np.random.Generator, split: str, style: str, bg_prob: float = 0.5, **attrs) -> dict:
    """A `make_scene` scene redrawn in a look pretraining never used (`styles`); same attrs and labels.

    typed_digit: the digit typeset in a novel face; novel_letter: the letter in a novel face, hollow half
    the time; textured_shape: a shape filled with a novel texture; line_arrow: a thin line arrow;
    mixed_count: each counted object gets its own shape and colour. With probability `bg_prob` the
    background gets a texture (stripes, checker or blobs) of amplitude 15-30.
    """
    if style not in STYLE_KIND:
        raise ValueError(f"unknown style {style!r}; styles are {list(STYLE_KIND)}")
    if style == "textured_shape":
        attrs.setdefault("pattern", 0)
    scene = make_scene(rng, split, STYLE_KIND[style], **attrs)
    main = scene["objects"][0]
    if style == "typed_digit":
        main.update(glyph=str(main["digit"]), font=int(rng.integers(len(styles.NOVEL_FONT_FILES))))
    elif style == "novel_letter":
        stroke = 3 if rng.random() < 0.5 else 0
        main.update(glyph=LETTERS[main["letter"]], font=int(rng.integers(len(styles.NOVEL_FONT_FILES))), stroke=stroke)
    elif style == "textured_shape":
        main["texture"] = int(rng.integers(len(styles.TEXTURES)))
    elif style == "line_arrow":
        main["line"] = True
    elif style == "mixed_count":
        for obj in scene["objects"]:
            obj["shape"] = int(rng.integers(len(SHAPES)))
            obj["colour"] = int(rng.integers(len(COLOURS)))
            obj["rgb"] = _jitter_colour(rng, obj["colour"])
        scene["bg"] = _background(rng, [o["colour"] for o in scene["objects"]])
    if rng.random() < bg_prob:
        scene["bg_texture"] = (
            int(rng.integers(len(styles.BG_TEXTURES))),
            int(rng.integers(2**31)),
            float(rng.uniform(15, 30)),
        )
    scene["style"] = style
    return scene
