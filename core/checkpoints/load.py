"""Load, save and stream state dicts; every loaded checkpoint comes back in open_clip names.

Inputs are recognized by content (`formats.sniff`): safetensors files, torch files
(``.pt/.pth/.bin/.ckpt``, unwrapped from training checkpoints and stripped of ``module.`` /
``model.`` / ``_orig_mod.`` prefixes), and ``save_pretrained`` directories (sharded or not).
Names are canonicalized once (`canonicalize`): HF CLIP names through `hf_names`, a bare
``model.visual`` tower gets its ``visual.`` prefix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .formats import (
    DIRECTORY_WEIGHT_FILES,
    DROPPED_KEYS,
    DROPPED_SUFFIXES,
    STRIP_PREFIXES,
    SUPPORTED_SUFFIXES,
    LazyStateDict,
    prepare_for_safetensors,
    read_safetensors,
    read_safetensors_header,
    sniff,
    write_safetensors,
)
from .hf_names import from_hf_names, is_hf_layout, to_hf_names
from .pickles import is_torchscript, read_torch, unwrap


def strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def canonicalize(sd: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """Strip wrappers' prefixes and map to open_clip names; returns (state dict, layout or None)."""
    sd = strip_prefixes(sd)
    sd = {k: v for k, v in sd.items() if not k.endswith(DROPPED_SUFFIXES) and k not in DROPPED_KEYS}
    if is_hf_layout(sd):
        return from_hf_names(sd, source=source), "hf_clip"
    if "conv1.weight" in sd and "token_embedding.weight" not in sd and not any(k.startswith("visual.") for k in sd):
        return {"visual." + k: v for k, v in sd.items()}, "open_clip_visual"  # a bare model.visual state dict
    if "token_embedding.weight" in sd and any(k.startswith("visual.") for k in sd):
        return sd, "open_clip"
    return sd, None


def directory_weights(path: Path) -> list[Path]:
    for name in DIRECTORY_WEIGHT_FILES:
        f = path / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            try:
                shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{f}: unreadable shard index ({e})") from e
            return [path / s for s in shards]
        return [f]
    raise CheckpointError(
        f"{path}: directory holds no checkpoint; expected one of {list(DIRECTORY_WEIGHT_FILES)} "
        "(as written by save_pretrained)"
    )


def check_exists(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_SUFFIXES)} files and Hugging Face model directories"
        )


def read_raw(path: Path, *, allow_pickle: bool, meta: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors as stored (no renaming) and the container: "safetensors", "torch" or "directory"."""
    check_exists(path)
    if path.is_dir():
        sd: dict[str, torch.Tensor] = {}
        for f in directory_weights(path):
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in the index is missing")
            sd.update(read_raw(f, allow_pickle=allow_pickle, meta=meta)[0])
        return sd, "directory"
    container = sniff(path)
    if container == "safetensors":
        return read_safetensors(path, meta=meta), container
    sd = unwrap(read_torch(path, allow_pickle=allow_pickle), path)
    if meta:
        sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sd.items()}
    return sd, container


def load_state_dict(
    path: str | os.PathLike, *, allow_pickle: bool = False, keep_text: bool = True
) -> dict[str, torch.Tensor]:
    """Load a checkpoint in any supported format, with canonical open_clip parameter names.

    `keep_text=False` keeps only the image tower (``visual.*``). `allow_pickle=True` opts
    in to unpickling whole saved modules (runs code from the file; trusted files only).
    Raises CheckpointError, naming the file, for anything it cannot read.
    """
    path = Path(path)
    sd, _container = read_raw(path, allow_pickle=allow_pickle)
    if not sd:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    sd, _layout = canonicalize(sd, str(path))
    if not keep_text:
        sd = {k: v for k, v in sd.items() if k.startswith("visual.")}
    return sd


def detect_format(path: str | os.PathLike, *, allow_pickle: bool = False) -> str:
    """What kind of checkpoint `path` is.

    "hf_clip" (Hugging Face CLIP names, file or directory), "open_clip" (a full open_clip
    CLIP, image and text towers), "open_clip_visual" (a bare ``model.visual`` state dict),
    "pickled_module" (a whole pickled model, refused without allow_pickle), "torchscript"
    (a TorchScript archive such as OpenAI's original CLIP files), else the
    container of a state dict already in canonical or unknown names: "safetensors" or "torch".
    """
    path = Path(path)
    check_exists(path)
    if path.is_file() and sniff(path) == "torch" and is_torchscript(path):
        return "torchscript"
    try:
        sd, container = read_raw(path, allow_pickle=allow_pickle, meta=True)
    except UnsafeCheckpointError:
        return "pickled_module"
    _sd, layout = canonicalize(sd, str(path))
    return format_name(path, container, layout)


def format_name(path: Path, container: str, layout: str | None) -> str:
    if layout is not None:
        return layout
    if container == "directory":
        return "safetensors" if any(f.suffix == ".safetensors" for f in directory_weights(path)) else "torch"
    return container


def save_state_dict(
    sd: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    hf_names: bool = False,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Write `sd` as safetensors, atomically (temp file in the same directory, then os.replace).

    `hf_names=True` exports Hugging Face CLIP names (in_proj split into q/k/v, proj transposed
    back to ``visual_projection.weight``); keys with no HF equivalent raise ValueError.
    `metadata` values that are not strings are stored as JSON.
    """
    path = Path(path)
    if hf_names:
        sd = to_hf_names(sd)
    tensors = prepare_for_safetensors(sd)
    meta = {"format": "pt"}  # transformers checks this key when loading safetensors
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write_safetensors(tensors, tmp, meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """A state dict for streaming passes (merging large models file to file).

    Safetensors files whose keys are already canonical open_clip names are opened lazily
    (each access reads that tensor from disk); anything else is loaded with
    `load_state_dict` (memory-mapped where the format allows).
    """
    p = Path(path)
    check_exists(p)
    if p.is_file() and sniff(p) == "safetensors":
        header, data_start = read_safetensors_header(p)
        keys = [k for k in header if k != "__metadata__"]
        try:
            canonical, _ = canonicalize({k: torch.empty(0) for k in keys}, str(p))
        except Exception:  # e.g. HF names, whose mapping needs the tensors
            canonical = {}
        if set(canonical) == set(keys):
            return LazyStateDict(p, header, data_start)
    return load_state_dict(p, allow_pickle=allow_pickle)


def iter_tensors(path: str | os.PathLike, *, allow_pickle: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name as stored in the file, tensor), one tensor at a time, for passes over every value.

    Safetensors files (and shards) are read tensor by tensor with pread (`LazyStateDict`), so
    only one tensor is in memory; torch files come from `read_torch` (memory-mapped when zip).
    """
    p = Path(path)
    check_exists(p)
    files = directory_weights(p) if p.is_dir() else [p]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{f}: shard listed in the index is missing")
        if sniff(f) == "safetensors":
            header, data_start = read_safetensors_header(f)
            lazy = LazyStateDict(f, header, data_start)
            for k in lazy:
                yield k, lazy[k]
        else:
            yield from unwrap(read_torch(f, allow_pickle=allow_pickle), f).items()
