"""Read and write state dicts; every loaded checkpoint comes back in open_clip names.

Supported inputs (detected from the file's content, not only its name):

- safetensors files, read through ``safetensors.safe_open`` (memory-mapped);
- torch files (``.pt/.pth/.bin/.ckpt``) read with ``torch.load(weights_only=True)``,
  unwrapped from ``{"state_dict": ...}``-style training checkpoints and stripped of
  ``module.`` (DDP) / ``model.`` (task_vectors ImageEncoder) prefixes;
- open_clip state dicts: the full CLIP model, or a bare ``model.visual`` tower;
- Hugging Face CLIP (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, ``CLIPModel``),
  as a file or as a ``save_pretrained`` directory, in both the ``vision_model.``-prefixed
  layout and the bare layout transformers 5 writes for ``CLIPVisionModel``.

HF names are translated by one table, ``HF_TOWER_MAP``, used in both directions: on load
(HF -> open_clip) and on export (``save_state_dict(..., hf_names=True)``).

Whole pickled modules (``torch.save(model)``) and TorchScript archives (OpenAI's original
CLIP files) are refused unless ``allow_pickle=True``: loading them can run code from the file.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open

from .layers import num_blocks

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "Issue",
    "load_state_dict",
    "save_state_dict",
    "detect_format",
    "checkpoint_info",
    "validate_checkpoints",
    "to_hf_names",
    "from_hf_names",
]


class CheckpointError(Exception):
    """A checkpoint could not be read: missing, corrupt, truncated, unsupported or unsafe."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint can only be loaded by running code from it; pass allow_pickle=True to trust it."""


# ----------------------------------------------------------------------------------------------
# Formats as data

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
SUPPORTED_SUFFIXES = SAFETENSORS_SUFFIXES + TORCH_SUFFIXES

# Weight files looked for inside a directory, in order of preference (HF save_pretrained
# and open_clip's hub layout). "*.index.json" files list the shards of a sharded checkpoint.
DIRECTORY_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)

# Training checkpoints wrap the weights in a dict; these keys lead to the weights.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")

# Prefixes added by wrappers: DDP (module.), task_vectors' ImageEncoder (model.), torch.compile.
# A prefix is stripped only when every key carries it.
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")

# Entries that are not weights and differ between libraries; dropped on load. HF stores
# position_ids buffers; OpenAI's original CLIP files carry three integer hyperparameters.
DROPPED_SUFFIXES = ("position_ids",)
DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size")

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip

# ----------------------------------------------------------------------------------------------
# The HF CLIP <-> open_clip name map. One table, read both ways.
#
# Each tower entry: (HF root, open_clip root, rows). A row is (HF name, open_clip name, how):
#   "copy"       same tensor;
#   "transpose"  HF nn.Linear weight (out, in) vs open_clip matrix used as x @ proj (in, out);
#   "qkv"        HF q_proj/k_proj/v_proj, concatenated in that order along dim 0 = in_proj.
# Placeholders: {i} block index, {wb} weight|bias, {qkv} q|k|v.

_BLOCK_ROWS = (
    ("encoder.layers.{i}.self_attn.{qkv}_proj.{wb}", "transformer.resblocks.{i}.attn.in_proj_{wb}", "qkv"),
    ("encoder.layers.{i}.self_attn.out_proj.{wb}", "transformer.resblocks.{i}.attn.out_proj.{wb}", "copy"),
    ("encoder.layers.{i}.layer_norm1.{wb}", "transformer.resblocks.{i}.ln_1.{wb}", "copy"),
    ("encoder.layers.{i}.layer_norm2.{wb}", "transformer.resblocks.{i}.ln_2.{wb}", "copy"),
    ("encoder.layers.{i}.mlp.fc1.{wb}", "transformer.resblocks.{i}.mlp.c_fc.{wb}", "copy"),
    ("encoder.layers.{i}.mlp.fc2.{wb}", "transformer.resblocks.{i}.mlp.c_proj.{wb}", "copy"),
)

HF_TOWER_MAP = {
    "vision": ("vision_model.", "visual.", (
        ("embeddings.class_embedding", "class_embedding", "copy"),
        ("embeddings.patch_embedding.weight", "conv1.weight", "copy"),
        ("embeddings.position_embedding.weight", "positional_embedding", "copy"),
        ("pre_layrnorm.{wb}", "ln_pre.{wb}", "copy"),
        *_BLOCK_ROWS,
        ("post_layernorm.{wb}", "ln_post.{wb}", "copy"),
    )),
    "text": ("text_model.", "", (
        ("embeddings.token_embedding.weight", "token_embedding.weight", "copy"),
        ("embeddings.position_embedding.weight", "positional_embedding", "copy"),
        *_BLOCK_ROWS,
        ("final_layer_norm.{wb}", "ln_final.{wb}", "copy"),
    )),
    # Top-level parameters of CLIPModel / *WithProjection (no tower root).
    "heads": ("", "", (
        ("visual_projection.weight", "visual.proj", "transpose"),
        ("text_projection.weight", "text_projection", "transpose"),
        ("logit_scale", "logit_scale", "copy"),
    )),
}  # fmt: skip

_PLACEHOLDERS = {"{i}": r"(?P<i>\d+)", "{wb}": r"(?P<wb>weight|bias)", "{qkv}": r"(?P<qkv>q|k|v)"}


def _template_regex(template: str) -> re.Pattern:
    rx = re.escape(template)
    for ph, group in _PLACEHOLDERS.items():
        rx = rx.replace(re.escape(ph), group)
    return re.compile(rx + "$")


class _Row(NamedTuple):
    hf: str  # full HF template, tower root included
    oc: str  # full open_clip template
    how: str
    hf_rx: re.Pattern
    oc_rx: re.Pattern


def _compile_rows() -> list[_Row]:
    rows = []
    for hf_root, oc_root, table in HF_TOWER_MAP.values():
        for hf, oc, how in table:
            rows.append(
                _Row(hf_root + hf, oc_root + oc, how, _template_regex(hf_root + hf), _template_regex(oc_root + oc))
            )
    return rows


_ROWS = _compile_rows()
# Bare HF layout (transformers 5 CLIPVisionModel, CLIPTextModel): tower keys without a root.
_HF_BARE_STARTS = ("embeddings.", "encoder.layers.", "pre_layrnorm.", "post_layernorm.", "final_layer_norm.")


def _fill(template: str, groups: Mapping[str, str]) -> str:
    out = template
    for name, value in groups.items():
        if value is not None:
            out = out.replace("{" + name + "}", value)
    return out


def _is_hf_layout(keys) -> bool:
    return any(
        k.startswith(("vision_model.", "text_model.", *_HF_BARE_STARTS))
        or k in ("visual_projection.weight", "text_projection.weight")
        for k in keys
    )


def from_hf_names(sd: Mapping[str, torch.Tensor], *, source: str = "state dict") -> dict[str, torch.Tensor]:
    """Translate a HF CLIP state dict (vision, text or full) into open_clip names.

    q/k/v projections are concatenated (q, k, v along dim 0) into ``attn.in_proj_*``;
    ``visual_projection.weight`` (embed, width) becomes ``visual.proj`` (width, embed).
    Works on meta tensors too, so checkpoint_info can map shapes without reading data.
    """
    keys = [k for k in sd if not k.endswith(DROPPED_SUFFIXES)]
    if keys and not any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        # Bare layout: a single tower without its root; it is the text tower only if it has token embeddings.
        root = "text_model." if "embeddings.token_embedding.weight" in sd else "vision_model."
        sd = {(k if k in ("visual_projection.weight", "text_projection.weight", "logit_scale") else root + k): sd[k]
              for k in keys}  # fmt: skip
        keys = list(sd)
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for k in keys:
        for row in _ROWS:
            m = row.hf_rx.match(k)
            if not m:
                continue
            how, target = row.how, _fill(row.oc, m.groupdict())
            t = sd[k]
            if how == "copy":
                out[target] = t
            elif how == "transpose":
                out[target] = t.t()
            else:  # qkv: collect, concatenate once all three are present
                if target not in qkv_parts:
                    out[target] = None  # reserve the position so key order follows the file
                    qkv_parts[target] = {}
                qkv_parts[target][m.group("qkv")] = t
            break
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(
            f"{source}: looks like a Hugging Face CLIP checkpoint, but {len(unknown)} key(s) have no open_clip "
            f"equivalent, e.g. {unknown[:3]}. Only CLIP ViT vision/text towers are supported."
        )
    for target, parts in qkv_parts.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"{source}: {target} needs q, k and v projections, but {missing} are missing")
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf_names(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of from_hf_names: open_clip names -> HF CLIP names (``vision_model.``/``text_model.`` roots).

    A visual-only state dict becomes a ``CLIPVisionModelWithProjection`` state dict
    (``visual_projection.weight`` when ``visual.proj`` is present).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, t in sd.items():
        if k == "attn_mask" or k.endswith(".attn_mask"):
            continue  # causal-mask buffer of the text tower; HF builds it on the fly
        for row in _ROWS:
            m = row.oc_rx.match(k)
            if not m:
                continue
            how, hf_full, groups = row.how, row.hf, m.groupdict()
            if how == "copy":
                out[_fill(hf_full, groups)] = t
            elif how == "transpose":
                out[_fill(hf_full, groups)] = t.t()
            else:
                for name, part in zip("qkv", t.chunk(3, dim=0)):
                    out[_fill(hf_full, {**groups, "qkv": name})] = part
            break
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"cannot export to Hugging Face CLIP names: no HF equivalent for {unknown[:5]}")
    return out


# ----------------------------------------------------------------------------------------------
# Reading files


def _sniff(path: Path) -> str:
    """Container type from the first bytes: "safetensors", "torch" (zip or legacy pickle); raises otherwise."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it was probably not written completely")
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # legacy (non-zip) torch.save, a pickle stream
    if len(head) == 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise CheckpointError(
                f"{path}: safetensors header says {header_len} bytes of metadata but the file has only {size} bytes; "
                "the file is truncated — copy or download it again"
            )
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a safetensors or torch checkpoint (unrecognized first bytes {head[:8]!r}); "
        "the file may be corrupt or in another format"
    )


def _read_safetensors(path: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if meta:  # shapes and dtypes from the header only; no tensor data is read
                out = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=_SAFETENSORS_DTYPES[sl.get_dtype()], device="meta")
                return out
            return {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types; the user needs the file and the reason
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is corrupt or truncated") from e


def _pickle_refusal(path: Path, detail: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path}: the file holds pickled Python objects, not only tensors ({detail}), e.g. a whole model saved "
        "with torch.save(model). Unpickling it can execute arbitrary code, so it is refused by default. If you "
        "trust the file, pass allow_pickle=True, or re-save it as a state dict (torch.save(model.state_dict(), ...))."
    )


def _disallowed_global(message: str) -> str:
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    return f"it contains {m.group(1)}" if m else message.strip().splitlines()[0][:200]


class _MissingClass:
    """Stand-in for a pickled class whose code is not importable here (e.g. task_vectors' src.modeling.ImageEncoder).

    nn.Module pickles as "new object + __dict__", so the stand-in keeps the __dict__ and
    _module_state_dict reads _parameters/_buffers/_modules from it like from a real module.
    """

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slots) form
            state = state[0] or {}
        if isinstance(state, dict):
            self.__dict__.update(state)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ModuleNotFoundError, AttributeError):
            return type(name, (_MissingClass,), {"__module__": module})


class _tolerant_pickle:  # noqa: N801 - passed to torch.load as a pickle *module*
    Unpickler = _TolerantUnpickler
    load = pickle.load
    __name__ = "pickle"


def _module_state_dict(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict of a real or stand-in module, read from its __dict__ (tolerates old pickles)."""
    d = getattr(obj, "__dict__", {})
    skip = d.get("_non_persistent_buffers_set", set())
    out = {}
    for store in ("_parameters", "_buffers"):
        for k, t in (d.get(store) or {}).items():
            if t is not None and k not in skip:
                out[prefix + k] = t.detach()
    for k, child in (d.get("_modules") or {}).items():
        if child is not None:
            out.update(_module_state_dict(child, prefix + k + "."))
    return out


def _torch_load(path: Path, **kwargs) -> object:
    if path.suffix.lower() == ".safetensors":
        # torch.load goes by the name and would read it as safetensors; the content said torch.
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", **{**kwargs, "mmap": False})
    return torch.load(path, map_location="cpu", **kwargs)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives (e.g. OpenAI's original CLIP .pt files) hold code next to the weights."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torchscript(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if not allow_pickle:
        raise _pickle_refusal(path, "it is a TorchScript archive, such as OpenAI's original CLIP files")
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as e:
        raise CheckpointError(f"{path}: cannot load TorchScript archive ({type(e).__name__}: {e})") from e


def _read_torch(path: Path, *, allow_pickle: bool) -> object:
    with open(path, "rb") as f:
        zip_format = f.read(4) == b"PK\x03\x04"
    if zip_format and _is_torchscript(path):
        return _read_torchscript(path, allow_pickle=allow_pickle)
    try:
        # mmap keeps large zip-format files lazy: tensor data is paged in on first use.
        return _torch_load(path, weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise CheckpointError(f"{path}: cannot read torch file ({e}); the file is corrupt") from e
        if not allow_pickle:
            raise _pickle_refusal(path, _disallowed_global(str(e))) from e
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot read torch file ({type(e).__name__}: {e}); it is corrupt or truncated"
        ) from e
    try:
        return _torch_load(path, weights_only=False, mmap=False, pickle_module=_tolerant_pickle)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot unpickle the file ({type(e).__name__}: {e})") from e


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside whatever torch.load returned."""
    for _ in range(8):  # wrappers nest at most a few levels
        if isinstance(obj, (torch.nn.Module, _MissingClass)):
            obj = _module_state_dict(obj)
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict (a mapping name -> tensor)")
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next(
            (obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (Mapping, torch.nn.Module, _MissingClass))), None
        )
        if inner is None:
            raise CheckpointError(
                f"{path}: no tensors found; top-level keys are {list(obj)[:10]}, expected a state dict or one of "
                f"the wrappers {list(WRAPPER_KEYS)}"
            )
        obj = inner
    nested = [k for k, v in obj.items() if isinstance(v, Mapping)]
    if nested:
        raise CheckpointError(f"{path}: state dict has nested dicts at {nested[:5]}; expected name -> tensor")
    # Non-tensor leaves (ints, strings left by some trainers) are not weights.
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = True
    while changed and sd:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def _canonicalize(sd: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """Strip wrappers' prefixes and map to open_clip names; returns (state dict, layout or None)."""
    sd = _strip_prefixes(sd)
    sd = {k: v for k, v in sd.items() if not k.endswith(DROPPED_SUFFIXES) and k not in DROPPED_KEYS}
    if _is_hf_layout(sd):
        return from_hf_names(sd, source=source), "hf_clip"
    if "conv1.weight" in sd and "token_embedding.weight" not in sd and not any(k.startswith("visual.") for k in sd):
        return {"visual." + k: v for k, v in sd.items()}, "open_clip_visual"  # a bare model.visual state dict
    if "token_embedding.weight" in sd and any(k.startswith("visual.") for k in sd):
        return sd, "open_clip"
    return sd, None


def _directory_weights(path: Path) -> list[Path]:
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


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file() and path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise CheckpointError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; supported are "
            f"{', '.join(SUPPORTED_SUFFIXES)} files and Hugging Face model directories"
        )


def _read_raw(path: Path, *, allow_pickle: bool, meta: bool = False) -> tuple[dict[str, torch.Tensor], str]:
    """Tensors as stored (no renaming) and the container: "safetensors", "torch" or "directory"."""
    _check_exists(path)
    if path.is_dir():
        sd: dict[str, torch.Tensor] = {}
        for f in _directory_weights(path):
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in the index is missing")
            sd.update(_read_raw(f, allow_pickle=allow_pickle, meta=meta)[0])
        return sd, "directory"
    container = _sniff(path)
    if container == "safetensors":
        return _read_safetensors(path, meta=meta), container
    sd = _unwrap(_read_torch(path, allow_pickle=allow_pickle), path)
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
    sd, _container = _read_raw(path, allow_pickle=allow_pickle)
    if not sd:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    sd, _layout = _canonicalize(sd, str(path))
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
    _check_exists(path)
    if path.is_file() and _sniff(path) == "torch" and _is_torchscript(path):
        return "torchscript"
    try:
        sd, container = _read_raw(path, allow_pickle=allow_pickle, meta=True)
    except UnsafeCheckpointError:
        return "pickled_module"
    _sd, layout = _canonicalize(sd, str(path))
    return _format_name(path, container, layout)


def _format_name(path: Path, container: str, layout: str | None) -> str:
    if layout is not None:
        return layout
    if container == "directory":
        return "safetensors" if any(f.suffix == ".safetensors" for f in _directory_weights(path)) else "torch"
    return container


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


def _architecture(sd: Mapping[str, torch.Tensor]) -> dict:
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
    sd, container = _read_raw(path, allow_pickle=allow_pickle, meta=True)
    canonical, layout = _canonicalize(sd, str(path))
    files = _directory_weights(path) if container == "directory" else [path]
    return {
        "path": str(path),
        "format": _format_name(path, container, layout),
        "file_size": sum(f.stat().st_size for f in files),
        "num_tensors": len(canonical),
        "num_params": sum(t.numel() for t in canonical.values()),
        "dtypes": sorted({_dtype(t) for t in canonical.values()}),
        "num_blocks": num_blocks(canonical, prefix="visual."),
        "has_text": "token_embedding.weight" in canonical,
        **_architecture(canonical),
    }


# ----------------------------------------------------------------------------------------------
# Writing


def _prepare_for_safetensors(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors; tensors sharing storage are copied (safetensors refuses aliases)."""
    out, seen = {}, set()
    for k, t in sd.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(t).__name__}, not a tensor")
        t = t.detach().to("cpu")
        storage = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) if t.numel() else None
        if storage is not None and storage in seen:
            t = t.clone()
        elif storage is not None:
            seen.add(storage)
        out[k] = t.contiguous()
    return out


_DTYPE_NAMES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}


def _write_safetensors(tensors: Mapping[str, torch.Tensor], path: str, meta: Mapping[str, str]) -> None:
    """Write the safetensors format tensor by tensor (header, then raw little-endian data).

    Unlike safetensors.torch.save_file, this never builds the whole file in memory, so
    saving a model costs one tensor of extra memory, not one model.
    """
    header: dict[str, object] = {"__metadata__": dict(meta)} if meta else {}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    off = 0
    for k in order:
        t = tensors[k]
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(f"cannot store {k!r}: dtype {t.dtype} has no safetensors equivalent")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for k in order:
            t = tensors[k]
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy())


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
    tensors = _prepare_for_safetensors(sd)
    meta = {"format": "pt"}  # transformers checks this key when loading safetensors
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        _write_safetensors(tensors, tmp, meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class Issue:
    """One problem found by validate_checkpoints; `level` is "error" (cannot merge) or "warning"."""

    level: str
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


def _tower(key: str) -> str:
    return "visual" if key.startswith("visual.") else "text"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _nonfinite_issues(sd: Mapping[str, torch.Tensor], file: str) -> list[Issue]:
    issues = []
    for k, t in sd.items():
        if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta" or torch.isfinite(t).all():
            continue
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        for count, what in ((n_nan, "NaN"), (n_inf, "Inf")):
            if count:
                issues.append(Issue("error", file, k, (
                    f"{file}: key '{k}' contains {count} {what} value(s) out of {t.numel()}; "
                    "expected finite numbers (the fine-tune diverged or the file is damaged)"
                )))  # fmt: skip
    return issues


def validate_checkpoints(
    base_sd: Mapping[str, torch.Tensor],
    finetuned: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    paths: Mapping[str, str | os.PathLike] | None = None,
) -> list[Issue]:
    """Check fine-tuned state dicts against the base before computing task vectors or merging.

    Errors: keys missing from a tower the fine-tune covers, floating-point keys the base
    lacks, shape mismatches, float vs non-float dtype mismatches, NaN/Inf entries (in any
    checkpoint, base included). Warnings: extra non-float buffers, precision mismatches
    within floats or within integers (castable).
    A tower absent altogether (a visual-only fine-tune of a full CLIP base) is not an issue:
    the base's tower passes through merges unchanged.
    `paths` maps names (and optionally "base") to file paths for the messages; else names are used.
    """
    paths = paths or {}
    base_file = str(paths.get("base", "base"))
    issues = _nonfinite_issues(base_sd, base_file)
    for name, sd in finetuned.items():
        file = str(paths.get(name, name))
        towers = {_tower(k) for k in sd}
        for k in base_sd:
            if k not in sd and _tower(k) in towers:
                issues.append(Issue("error", file, k, (
                    f"{file}: key '{k}' is missing; expected it as in the base checkpoint "
                    f"(shape {_shape(base_sd[k])}, {_dtype(base_sd[k])})"
                )))  # fmt: skip
        for k, t in sd.items():
            if k not in base_sd:
                # task_vector needs a base entry for every floating-point key; other buffers are skipped.
                level = "error" if t.is_floating_point() else "warning"
                issues.append(Issue(level, file, k, (
                    f"{file}: key '{k}' is not in the base checkpoint; expected only the base's keys "
                    "(no task vector can be computed for it — was it fine-tuned from a different base?)"
                )))  # fmt: skip
                continue
            b = base_sd[k]
            if tuple(t.shape) != tuple(b.shape):
                issues.append(Issue("error", file, k, (
                    f"{file}: key '{k}' has shape {_shape(t)}, expected {_shape(b)} as in the base "
                    "(a different architecture?)"
                )))  # fmt: skip
            if t.dtype != b.dtype:
                # float16 vs float32 is cast by task_vector; float vs integer means a different tensor.
                castable = t.is_floating_point() == b.is_floating_point()
                issues.append(Issue("warning" if castable else "error", file, k, (
                    f"{file}: key '{k}' has dtype {_dtype(t)}, expected {_dtype(b)} as in the base"
                    + (" (it will be cast)" if t.is_floating_point() and castable else "")
                )))  # fmt: skip
        issues.extend(_nonfinite_issues(sd, file))
    return issues


# ----------------------------------------------------------------------------------------------
# Streaming reads: one tensor at a time, no memory map.
#
# A memory-mapped file keeps every page it has touched resident (and counted in the process's
# RSS) until it is unmapped, so a merge that walks N fine-tuned files would end up holding all
# of them. `open_state_dict` instead reads each tensor with pread into its own buffer when asked
# for it; the merge code drops it as soon as the key is done.
class LazyStateDict(Mapping):
    """Read-only mapping over a safetensors file already in canonical (open_clip) names."""

    def __init__(self, path: Path, header: dict, data_start: int):
        self.path = path
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
        self._data_start = data_start
        self._fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._entries:
            raise KeyError(key)
        e = self._entries[key]
        start, end = e["data_offsets"]
        out = torch.empty(e["shape"], dtype=_SAFETENSORS_DTYPES[e["dtype"]])
        if end > start:
            view = out.reshape(-1).view(torch.uint8).numpy()
            got = os.preadv(self._fd, [view], self._data_start + start)
            if got != end - start:
                raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; the file is truncated")
        return out

    def __iter__(self):
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def __del__(self):
        try:
            os.close(self._fd)
        except Exception:
            pass


def open_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> Mapping[str, torch.Tensor]:
    """A state dict for streaming passes (merging large models file to file).

    Safetensors files whose keys are already canonical open_clip names are opened lazily
    (each access reads that tensor from disk); anything else is loaded with
    `load_state_dict` (memory-mapped where the format allows).
    """
    p = Path(path)
    _check_exists(p)
    if p.is_file() and _sniff(p) == "safetensors":
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            try:
                header = json.loads(f.read(n))
            except ValueError as e:
                raise CheckpointError(f"{p}: unreadable safetensors header ({e})") from e
        keys = [k for k in header if k != "__metadata__"]
        try:
            canonical, _ = _canonicalize({k: torch.empty(0) for k in keys}, str(p))
        except Exception:  # e.g. HF names, whose mapping needs the tensors
            canonical = {}
        if set(canonical) == set(keys):
            return LazyStateDict(p, header, 8 + n)
    return load_state_dict(p, allow_pickle=allow_pickle)
