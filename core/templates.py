"""Zero-shot prompt templates for well-known datasets, kept as data.

A model set's task without `templates` gets the list found here by its name (`templates_for`):
the task-vector / task-arithmetic releases' templates for the eight datasets of that benchmark
(mlfoundations/task_vectors, src/datasets/templates.py: Cars, DTD, EuroSAT, GTSRB, MNIST,
RESISC45, SUN397, SVHN), CLIP_benchmark's English templates for the others
(LAION-AI/CLIP_benchmark, clip_benchmark/datasets/en_zeroshot_classification_templates.json), and
OpenAI's 80 ImageNet templates from open_clip's `zero_shot_metadata`. Any other name gets
`GENERIC_TEMPLATES`. Templates are ``str.format`` strings with one ``{c}`` field.
"""

from __future__ import annotations

import re

GENERIC_TEMPLATES = ["a photo of a {c}.", "a photo of the {c}.", "a {c}."]

_CIFAR = [
    "a photo of a {c}.",
    "a blurry photo of a {c}.",
    "a black and white photo of a {c}.",
    "a low contrast photo of a {c}.",
    "a high contrast photo of a {c}.",
    "a bad photo of a {c}.",
    "a good photo of a {c}.",
    "a photo of a small {c}.",
    "a photo of a big {c}.",
    "a photo of the {c}.",
    "a blurry photo of the {c}.",
    "a black and white photo of the {c}.",
    "a low contrast photo of the {c}.",
    "a high contrast photo of the {c}.",
    "a bad photo of the {c}.",
    "a good photo of the {c}.",
    "a photo of the small {c}.",
    "a photo of the big {c}.",
]
_OBJECTS = [
    "a photo of a {c}.",
    "a painting of a {c}.",
    "a plastic {c}.",
    "a sculpture of a {c}.",
    "a sketch of a {c}.",
    "a tattoo of a {c}.",
    "a toy {c}.",
    "a rendition of a {c}.",
    "a embroidered {c}.",
    "a cartoon {c}.",
    "a {c} in a video game.",
    "a plushie {c}.",
    "a origami {c}.",
    "art of a {c}.",
    "graffiti of a {c}.",
    "a drawing of a {c}.",
    "a doodle of a {c}.",
    "a photo of the {c}.",
    "a painting of the {c}.",
    "the plastic {c}.",
    "a sculpture of the {c}.",
    "a sketch of the {c}.",
    "a tattoo of the {c}.",
    "the toy {c}.",
    "a rendition of the {c}.",
    "the embroidered {c}.",
    "the cartoon {c}.",
    "the {c} in a video game.",
    "the plushie {c}.",
    "the origami {c}.",
    "art of the {c}.",
    "graffiti of the {c}.",
    "a drawing of the {c}.",
    "a doodle of the {c}.",
]
_ROTATION = ["an object rotated at {c}", "something rotated at {c}", "{c} rotation", "something at a {c} angle"]

# Keyed by a normalized dataset name (lowercase letters and digits only).
DATASET_TEMPLATES: dict[str, list[str]] = {
    # task arithmetic's eight (task_vectors' templates)
    "cars": [
        "a photo of a {c}.",
        "a photo of the {c}.",
        "a photo of my {c}.",
        "i love my {c}!",
        "a photo of my dirty {c}.",
        "a photo of my clean {c}.",
        "a photo of my new {c}.",
        "a photo of my old {c}.",
    ],
    "dtd": [
        "a photo of a {c} texture.",
        "a photo of a {c} pattern.",
        "a photo of a {c} thing.",
        "a photo of a {c} object.",
        "a photo of the {c} texture.",
        "a photo of the {c} pattern.",
        "a photo of the {c} thing.",
        "a photo of the {c} object.",
    ],
    "eurosat": [
        "a centered satellite photo of {c}.",
        "a centered satellite photo of a {c}.",
        "a centered satellite photo of the {c}.",
    ],
    "gtsrb": [
        'a zoomed in photo of a "{c}" traffic sign.',
        'a centered photo of a "{c}" traffic sign.',
        'a close up photo of a "{c}" traffic sign.',
    ],
    "mnist": ['a photo of the number: "{c}".'],
    "resisc45": [
        f"{kind} {what} {art}{{c}}."
        for art in ("", "a ", "the ")
        for kind, what in (
            ("satellite", "imagery of"),
            ("aerial", "imagery of"),
            ("satellite", "photo of"),
            ("aerial", "photo of"),
            ("satellite", "view of"),
            ("aerial", "view of"),
        )
    ],
    "sun397": ["a photo of a {c}.", "a photo of the {c}."],
    "svhn": ['a photo of the number: "{c}".'],
    # CLIP_benchmark
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "food101": ["a photo of {c}, a type of food."],
    "fgvcaircraft": ["a photo of a {c}, a type of aircraft.", "a photo of the {c}, a type of aircraft."],
    "pets": ["a photo of a {c}, a type of pet."],
    "caltech101": _OBJECTS,
    "flowers": ["a photo of a {c}, a type of flower."],
    "stl10": ["a photo of a {c}.", "a photo of the {c}."],
    "country211": [
        "a photo i took in {c}.",
        "a photo i took while visiting {c}.",
        "a photo from my home country of {c}.",
        "a photo from my visit to {c}.",
        "a photo showing the country of {c}.",
    ],
    "renderedsst2": ["a {c} review of a movie."],
    "voc2007": ["a photo of a {c}."],
    "fer2013": [
        "a photo of a {c} looking face.",
        "a photo of a face showing the emotion: {c}.",
        "a photo of a face looking {c}.",
        "a face that looks {c}.",
        "they look {c}.",
        "look at how {c} they are.",
    ],
    "pcam": ["a histopathology slide showing {c}", "histopathology image of {c}"],
    "clevrcountall": ["a picture of {c} objects"],
    "clevrclosestobjectdistance": ["{c} shapes."],
    "kitticlosestvehicledistance": ["{c}"],
    "smallnorblabelazimuth": _ROTATION,
    "smallnorblabelelevation": _ROTATION,
    "dspriteslabelorientation": _ROTATION,
    "dspriteslabelxposition": ["an object located at position {c}% on the horizontal axis"],
    "dmlab": ["{c}"],
    "diabeticretinopathy": ["a retinal image with {c}"],
    "fairface": ["a photo of {c}"],
}

ALIASES = {
    "stanfordcars": "cars",
    "eurosatrgb": "eurosat",
    "oxfordpets": "pets",
    "oxfordiiitpet": "pets",
    "flowers102": "flowers",
    "oxfordflowers102": "flowers",
    "fgvcaircraft": "fgvcaircraft",
    "aircraft": "fgvcaircraft",
    "imagenet": "imagenet1k",
    "ilsvrc2012": "imagenet1k",
    "sst2": "renderedsst2",
    "resisc": "resisc45",
}


def normalize_name(name: str) -> str:
    """Lowercase letters and digits only; a trailing "val" (task_vectors' "MNISTVal") is dropped."""
    n = re.sub(r"[^a-z0-9]", "", name.lower())
    if n.endswith("val") and n[:-3] in {**DATASET_TEMPLATES, **ALIASES}:
        n = n[:-3]
    return ALIASES.get(n, n)


def imagenet_templates() -> list[str]:
    """OpenAI's 80 ImageNet templates as open_clip ships them (callables turned into format strings)."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [t("{c}") for t in OPENAI_IMAGENET_TEMPLATES]


def known_templates(name: str) -> list[str] | None:
    """The templates of a well-known dataset named `name` (any case / separators), else None."""
    n = normalize_name(name)
    if n == "imagenet1k":
        return imagenet_templates()
    found = DATASET_TEMPLATES.get(n)
    return list(found) if found is not None else None


def templates_for(name: str) -> list[str]:
    """Templates for a task: the well-known dataset's list, else `GENERIC_TEMPLATES`."""
    return known_templates(name) or list(GENERIC_TEMPLATES)
