"""Torch files and pickle safety: state dicts come out, code from the file does not run unless asked.

``torch.load(weights_only=True)`` reads plain state dicts (also wrapped in ``{"state_dict": ...}``
training checkpoints). Whole pickled modules (``torch.save(model)``) and TorchScript archives
(OpenAI's original CLIP files) need arbitrary code from the file, so they are refused with
`UnsafeCheckpointError` unless ``allow_pickle=True``; then a tolerant unpickler stands in for
classes whose code is not importable here (task_vectors' ``src.modeling.ImageEncoder``) and the
weights are read from the modules' ``__dict__``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, UnsafeCheckpointError
from .formats import WRAPPER_KEYS


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


def is_torchscript(path: Path) -> bool:
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


def read_torch(path: Path, *, allow_pickle: bool) -> object:
    with open(path, "rb") as f:
        zip_format = f.read(4) == b"PK\x03\x04"
    if zip_format and is_torchscript(path):
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


def unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
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
