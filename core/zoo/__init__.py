"""The demo zoo: a small open_clip CLIP pretrained here, one fine-tuned visual tower per task.

    python -m core zoo build [--micro] [--force] [--cache DIR] [--set key=value ...]
    python -m core zoo pretrain [--out DIR] [--set key=value ...]
    python -m core zoo info [--micro]
    python -m core export --zoo demo|styled|micro --out DIR [--cache DIR]

Modules, one idea each (docs/methods/zoo.md describes the whole):

- `scenes`: the one image generator (vocabularies, object masks, `render`, `make_scene`);
- `data`: the eight demo tasks as data (`TaskSpec`, `get_task`) and their splits (`load_split`);
- `recipe`: `Recipe`, its hashes (which gate cache reuse), the demo and micro recipes;
- `pretrain`: contrastive pretraining with minimal pairs and auxiliary attribute heads;
- `finetune`: one task's fine-tune (visual tower only, frozen zero-shot head);
- `shipped`: the pretrained base shipped in core/assets/zoo-base;
- `build`: `build_zoo` into the cache, `is_built`, `manifest`, `load_model_set`;
- `export`: a built zoo as a self-contained model-set folder; `cli`: the `zoo` command.

The names below are re-exported lazily (importing `core.zoo.data` does not load the rest).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_zoo": "build",
    "load_model_set": "build",
    "is_built": "build",
    "manifest": "build",
    "zoo_path": "build",
    "evaluate_zoo": "build",
    "heads_of": "build",
    "cache_dir": "build",
    "Recipe": "recipe",
    "RECIPES": "recipe",
    "recipe_for": "recipe",
    "shipped_base": "shipped",
    "TaskSpec": "data",
    "TASK_NAMES": "data",
    "get_task": "data",
    "load_split": "data",
    "export_zoo": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'core.zoo' has no attribute {name!r}")
