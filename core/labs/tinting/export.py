"""Export a trained run: one safetensors file with the merged encoder, the per-task tints and λ."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .config import TintConfig
from .model import HEAD, TintedMerge

EXPORT_META_KEY = "mergescope_tinting"


def export_tinted(model: TintedMerge, path: str | Path, *, config: TintConfig | None = None, accuracy=None) -> Path:
    """One safetensors file: the merged visual encoder (``visual.*``), each task's tint
    (``tint.<task>.<name>``: the head's weight/bias, or the task's full copy of the tinted
    encoder layer; none for AdaMerging) and the effective λ (``tint.lambdas``, rows =
    manifest["keys"]), with a manifest in the metadata (key "mergescope_tinting")."""
    from ...checkpoints import save_state_dict

    sd = dict(model.visual_state_dict())
    merged = model.merged_params()
    tint_keys = {}
    with torch.no_grad():
        for t in model.tasks:
            if model.layer == HEAD:
                w, b = model.head(t)
                parts = {"weight": w, "bias": b}
            else:
                full = model.task_params(t, merged)
                parts = {k: full[k] for k in model.layer_keys}
            for name, v in parts.items():
                sd[f"tint.{t}.{name}"] = v.detach().clone()
            tint_keys[t] = list(parts)
        sd["tint.lambdas"] = model.lambdas().detach().clone()
    manifest = {
        "what": "MergeScope Model Tinting: merged visual encoder + one tinted layer per task"
        if model.tinted
        else "MergeScope layer-wise AdaMerging: merged visual encoder (zero-shot heads, no tint)",
        "layer": model.layer,
        "tasks": model.tasks,
        "keys": model.keys,
        "tint_keys": tint_keys,
        "usage": (
            "task t: load visual.* into the encoder; if layer == 'head', logits = normalize(feature) @ "
            "tint.<t>.weight.T + tint.<t>.bias; else replace the layer's keys with tint.<t>.<key> (if any) and use "
            "the task's zero-shot head"
        ),
        "config": config.to_dict() if config else None,
        "accuracy": accuracy,
    }
    save_state_dict(sd, path, metadata={EXPORT_META_KEY: manifest})
    return Path(path)


def read_tinted(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]], dict]:
    """(merged visual state dict, {task: tint tensors}, manifest) of an `export_tinted` file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if EXPORT_META_KEY not in meta:
            raise ValueError(f"{path} is not a Tinting export (no {EXPORT_META_KEY!r} manifest in its metadata)")
        manifest = json.loads(meta[EXPORT_META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    visual = {k: v for k, v in tensors.items() if k.startswith("visual.")}
    tints = {t: {k: tensors[f"tint.{t}.{k}"] for k in ks} for t, ks in manifest["tint_keys"].items()}
    return visual, tints, manifest
