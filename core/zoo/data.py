"""The demo tasks: offline image classification, generated deterministically.

Thirteen tasks ask different questions about scenes from one generator
(`core.zoo.scenes`): which shape, which colour, which digit, which letter, how
many objects, where, which arrow direction, which fill pattern. Five style-shifted
tasks (`core.zoo.styles`) ask the same kinds of question about looks pretraining
never showed; `DEMO_TASKS` are the eight the demo zoo fine-tunes. A `TaskSpec`
holds a task's class names and prompt templates (for the zero-shot head);
`load_split` returns its images and labels.

Splits are separate seeded streams (and separate source images for digits), so
train/val/test never share an image. User datasets on disk are not zoo tasks:
they are read by `core.datasets`.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .scenes import (
    COLOUR_NAMES,
    COUNTS,
    DIRECTIONS,
    LETTERS,
    PATTERNS,
    POSITION_NAMES,
    SHAPES,
    SPLITS,
    make_scene,
    make_styled_scene,
    render,
)

DEFAULT_SIZES = {"train": 3000, "val": 250, "test": 250}


# ---------------------------------------------------------------------------
# Tasks as data.
@dataclass(frozen=True)
class TaskSpec:
    """One classification task: class names, prompt templates (``{c}`` or callables), a description."""

    name: str
    classnames: list[str]
    templates: list[str | Callable[[str], str]]
    description: str
    attribute: str = ""  # scene attribute holding the label (demo tasks)
    sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZES))

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, classname: str) -> list[str]:
        return [t(classname) if callable(t) else t.format(c=classname) for t in self.templates]


_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "shapes",
            SHAPES,
            ["a photo of a {c}.", "a {c}.", "a drawing of a {c}.", "a {c} shape."],
            "Which shape is the main object (8 shapes, any colour, fill, position; small distractors).",
            "shape",
        ),
        TaskSpec(
            "colors",
            COLOUR_NAMES,
            ["a photo of a {c} object.", "something {c}.", "the big object is {c}.", "a {c} thing."],
            "Colour of the largest object among smaller distractors (8 colours).",
            "colour",
        ),
        TaskSpec(
            "digits",
            [str(i) for i in range(10)],
            ["a photo of the digit {c}.", "the number {c}.", "a handwritten {c}.", "the digit {c}."],
            "Handwritten digits from scikit-learn's load_digits (source images split by split).",
            "digit",
        ),
        TaskSpec(
            "letters",
            LETTERS,
            ["a photo of the letter {c}.", "the letter {c}.", "a {c} glyph.", "the character {c}."],
            "Which letter (10 capitals, four DejaVu typefaces).",
            "letter",
        ),
        TaskSpec(
            "counts",
            COUNTS,
            ["a photo of {c} objects.", "{c} shapes.", "there are {c} things.", "a picture of {c} items."],
            "How many small objects (1-5).",
            "count",
        ),
        TaskSpec(
            "position",
            POSITION_NAMES,
            ["an object in the {c}.", "a photo with something in the {c}.", "the object is in the {c}.", "{c}."],
            "Where the main object is (centre or one of four corners).",
            "position",
        ),
        TaskSpec(
            "arrows",
            DIRECTIONS,
            ["an arrow pointing {c}.", "a photo of an arrow pointing {c}.", "the arrow points {c}.", "{c} arrow."],
            "Direction of an arrow (8 directions).",
            "direction",
        ),
        TaskSpec(
            "patterns",
            PATTERNS,
            ["a {c} shape.", "a photo of a {c} object.", "something {c}.", "a {c} pattern."],
            "Fill of the main shape: solid, striped, dotted or outlined.",
            "pattern",
        ),
        # Style-shifted tasks (core.zoo.styles): classes pretraining's captions name, drawn in a look it never showed.
        TaskSpec(
            "digits_typed",
            [str(i) for i in range(10)],
            ["a photo of the digit {c}.", "the number {c}.", "a printed {c}.", "the digit {c}."],
            "Which digit, typeset in faces pretraining never saw (Computer Modern, STIX); textured backgrounds.",
            "digit",
        ),
        TaskSpec(
            "letters_novel",
            LETTERS,
            ["a photo of the letter {c}.", "the letter {c}.", "a {c} glyph.", "the character {c}."],
            "Which letter, in faces pretraining never saw, hollow half the time; textured backgrounds.",
            "letter",
        ),
        TaskSpec(
            "shapes_textured",
            SHAPES,
            ["a photo of a {c}.", "a {c}.", "a drawing of a {c}.", "a {c} shape."],
            "Which shape, filled with textures pretraining never saw (checker, grid, rings, speckle).",
            "shape",
        ),
        TaskSpec(
            "arrows_line",
            DIRECTIONS,
            ["an arrow pointing {c}.", "a photo of an arrow pointing {c}.", "the arrow points {c}.", "{c} arrow."],
            "Direction of a thin line arrow (pretraining drew block arrows only).",
            "direction",
        ),
        TaskSpec(
            "counts_mixed",
            COUNTS,
            ["a photo of {c} objects.", "{c} shapes.", "there are {c} things.", "a picture of {c} items."],
            "How many small objects (1-5), each of its own shape and colour (pretraining's groups were uniform).",
            "count",
        ),
    ]
}
TASK_NAMES: list[str] = list(_TASKS)
STYLED_TASKS: tuple[str, ...] = ("digits_typed", "letters_novel", "shapes_textured", "arrows_line", "counts_mixed")
# The demo zoo's tasks (the README's figures are measured on them).
DEMO_TASKS: tuple[str, ...] = ("shapes", "colors", "digits", "letters", "counts", "position", "arrows", "patterns")
# The style-shifted suite: the three tasks the base solves zero-shot (colors, position, arrows) replaced by
# style-shifted ones; it doubles the zero-shot -> fine-tuned window (docs/methods/zoo.md, "what was tried").
# Build it with `python -m core zoo build --set tasks=shapes,digits,letters,counts,patterns,digits_typed,...`.
STYLED_DEMO_TASKS: tuple[str, ...] = (
    "shapes",
    "digits",
    "letters",
    "counts",
    "patterns",
    "digits_typed",
    "letters_novel",
    "shapes_textured",
)
# The `styled` zoo's tasks: STYLED_DEMO_TASKS with patterns (zero-shot 0.86, a 6-point window) replaced by
# counts_mixed; with longer fine-tunes the merge methods separate on it (docs/methods/zoo.md, row L4).
STYLED_ZOO_TASKS: tuple[str, ...] = (
    "shapes",
    "digits",
    "letters",
    "counts",
    "counts_mixed",
    "digits_typed",
    "letters_novel",
    "shapes_textured",
)


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` of a demo task; raises KeyError naming the known tasks."""
    try:
        return _TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; demo tasks are {TASK_NAMES}") from None


# Task -> (scene kind or sampler of kinds, attribute). Kinds None = any single-object kind.
_TASK_KIND = {
    "shapes": "shape",
    "colors": None,
    "digits": "digit",
    "letters": "letter",
    "counts": "group",
    "position": None,
    "arrows": "arrow",
    "patterns": "shape",
}
_TASK_STYLE = {  # keys: STYLED_TASKS
    "digits_typed": "typed_digit",
    "letters_novel": "novel_letter",
    "shapes_textured": "textured_shape",
    "arrows_line": "line_arrow",
    "counts_mixed": "mixed_count",
}


def sample_task_scene(task: str, label: int, rng: np.random.Generator, split: str) -> dict:
    """A scene of demo task `task` whose answer is class `label`."""
    spec = get_task(task)
    if task in _TASK_STYLE:
        return make_styled_scene(rng, split, _TASK_STYLE[task], **{spec.attribute: label})
    kind = _TASK_KIND[task]
    if kind is None:
        kind = ["shape", "digit", "letter", "arrow"][int(rng.integers(4))]
    return make_scene(rng, split, kind, **{spec.attribute: label})


def _stream_seed(*parts) -> list[int]:
    return [zlib.crc32(str(p).encode()) for p in parts]


def generate_split(name: str, split: str, seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`load_split` without its in-process cache: renders the `n` images afresh (same bytes)."""
    spec = get_task(name)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"a split needs at least one image, got n={n}")
    rng = np.random.default_rng(_stream_seed("task", name, split, seed))
    labels = np.arange(n) % spec.num_classes
    rng.shuffle(labels)
    images = np.stack([render(sample_task_scene(name, int(y), rng, split)) for y in labels])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64))


_load_split_cached = functools.lru_cache(maxsize=64)(generate_split)


def load_split(name: str, split: str, *, seed: int = 0, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 3, 32, 32) and labels int64 (N,) of a demo task's split.

    Deterministic in (name, split, seed, n); classes balanced (label i % C,
    shuffled). Splits use separate random streams and, for digits, separate
    source images. Tensors are cached; do not modify them in place.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = get_task(name)
    return _load_split_cached(name, split, seed, int(n if n is not None else spec.sizes[split]))
