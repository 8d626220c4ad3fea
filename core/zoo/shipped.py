"""The shipped pretrained base: core/assets/zoo-base/{base.safetensors, recipe.json}.

`python -m core zoo pretrain` writes it (fp16, with its pretraining recipe, that recipe's hash and
the file's sha256); `build_zoo` uses it instead of pretraining when its `pretrain_hash` equals the
current demo recipe's, after checking the sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import save_state_dict
from .recipe import Recipe

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "zoo-base"  # the shipped base (package data)


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_base(recipe: Recipe, assets: Path = ASSETS) -> Path | None:
    """The shipped fp16 base when it exists, its hash verifies and it was made with this recipe's pretraining part."""
    f, meta = assets / "base.safetensors", assets / "recipe.json"
    if not (f.exists() and meta.exists()):
        return None
    info = json.loads(meta.read_text())
    if info.get("pretrain_hash") != recipe.pretrain_hash():
        return None
    if sha256_of(f) != info.get("sha256"):
        raise RuntimeError(
            f"{f}: sha256 does not match {meta}; the shipped base is corrupt (re-run `python -m core zoo pretrain`)"
        )
    return f


def versions() -> dict:
    """Library versions recorded in manifests and in the shipped base's recipe.json."""
    import open_clip

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "numpy": np.__version__,
    }


def write_shipped_base(sd: dict, recipe: Recipe, stats: dict, out: Path = ASSETS) -> Path:
    """Write a pretrained base as fp16 safetensors plus recipe.json (recipe, hash, sha256, stats)."""
    out.mkdir(parents=True, exist_ok=True)
    f = out / "base.safetensors"
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    save_state_dict(half, f, metadata={"recipe": recipe.pretrain_part()})
    info = {
        "what": "MergeScope demo zoo base: open_clip CLIP pretrained by `python -m core zoo pretrain` (fp16)",
        "pretrain_recipe": recipe.pretrain_part(),
        "pretrain_hash": recipe.pretrain_hash(),
        "seed": recipe.seed,
        "sha256": sha256_of(f),
        "bytes": f.stat().st_size,
        "stats": stats,
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "recipe.json").write_text(json.dumps(info, indent=2) + "\n")
    return f
