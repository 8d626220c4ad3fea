"""What a checkpoint holds, from its headers: format, size, dtypes, blocks and the architecture.

`checkpoint_info` reads shapes only (safetensors headers, memory-mapped zip torch files), so the
Models page can describe multi-gigabyte checkpoints instantly. The architecture is read off the
image tower's shapes: width = conv1 output channels, patch = conv1 kernel, blocks = residual
blocks under ``visual.transformer.resblocks``, image size from the positional embedding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..layers import num_blocks
from .formats import dtype_name
from .load import canonicalize, directory_weights, format_name, read_raw

# Known open_clip image towers: (width, blocks, patch) -> model name.
KNOWN_ARCHITECTURES = {
    (768, 12, 32): "ViT-B-32",
    (768, 12, 16): "ViT-B-16",
    (1024, 24, 14): "ViT-L-14",
    (1024, 24, 16): "ViT-L-16",
    (1280, 32, 14): "ViT-H-14",
    (1408, 40, 14): "ViT-g-14",
    (1664, 48, 14): "ViT-bigG-14",
}


def architecture(sd: Mapping[str, torch.Tensor]) -> dict:
    conv = sd.get("visual.conv1.weight")
    if conv is None:
        return {
            "architecture": "unknown (no visual.conv1.weight)",
            "width": None,
            "patch_size": None,
            "image_size": None,
        }
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    blocks = num_blocks(sd, prefix="visual.")
    pos = sd.get("visual.positional_embedding")
    grid = math.isqrt(int(pos.shape[0]) - 1) if pos is not None else 0
    image = grid * patch if grid else None
    name = KNOWN_ARCHITECTURES.get((width, blocks, patch))
    if name is None:
        name = f"ViT (width {width}, {blocks} blocks, patch {patch}" + (f", {image}px)" if image else ")")
    return {"architecture": name, "width": width, "patch_size": patch, "image_size": image}


def checkpoint_info(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict:
    """Summary for the Models page, read from headers where the format allows (safetensors, zip torch).

    Keys: path, format (detect_format), file_size (bytes; summed over a directory's weight files),
    num_tensors, num_params (elements over all tensors), dtypes (sorted names, e.g. ["float32"]),
    num_blocks (visual residual blocks), has_text, architecture (e.g. "ViT-B-32"), width,
    patch_size, image_size.
    """
    path = Path(path)
    sd, container = read_raw(path, allow_pickle=allow_pickle, meta=True)
    canonical, layout = canonicalize(sd, str(path))
    files = directory_weights(path) if container == "directory" else [path]
    return {
        "path": str(path),
        "format": format_name(path, container, layout),
        "file_size": sum(f.stat().st_size for f in files),
        "num_tensors": len(canonical),
        "num_params": sum(t.numel() for t in canonical.values()),
        "dtypes": sorted({dtype_name(t) for t in canonical.values()}),
        "num_blocks": num_blocks(canonical, prefix="visual."),
        "has_text": "token_embedding.weight" in canonical,
        **architecture(canonical),
    }
