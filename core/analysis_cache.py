"""Per-model analysis tables kept on disk, keyed by the fingerprints of the files they were computed from.

The Task vectors and Spectra pages compute per-block tables (spectral tables, task-vector statistics,
weight scopes) that take minutes on a ViT-L/14 set. `AnalysisCache` stores each table as JSON under
`core.runtime.paths.cache_dir() / "analysis"`, keyed by

* what was computed (`kind`, e.g. "spectra") and its parameters (tower, keys, ...), and
* the fingerprint of every input file: absolute path, size and mtime (ns) of the file, or of every
  file directly inside a checkpoint directory (`file_fingerprint`).

Reopening the app reads the table back instead of recomputing it. When an input file changes (a new
size or mtime), its fingerprint changes, the lookup misses, the table is recomputed, and the stale entry
for the same kind, paths and parameters is deleted. Entries are plain JSON (no pickle): reading a cache
file never runs code.

`StreamedTaskVector` gives the tables a task vector without holding it: each tensor is ft - base of one
key, read from the two files on access (`core.checkpoints.open_state_dict`), so a 20-task ViT-L/14 set
is analysed one tensor at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

FORMAT_VERSION = 1  # bump when a stored table's meaning changes: older entries are then never read


def file_fingerprint(path: str | os.PathLike) -> list[list]:
    """[[absolute path, size, mtime_ns], ...] of a file, or of every file directly inside a directory."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        return [file_fingerprint(f)[0] for f in sorted(p.iterdir()) if f.is_file()]
    st = p.stat()
    return [[str(p), st.st_size, st.st_mtime_ns]]


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _encode_table(df: pd.DataFrame) -> dict:
    """A DataFrame as JSON-able columns with their dtypes; tuples (shapes) are marked so they come back."""
    cols = []
    for name in df.columns:
        s = df[name]
        values = s.tolist()
        kind = str(s.dtype)
        if kind == "object" and any(isinstance(v, tuple) for v in values):
            kind = "tuple"
            values = [list(v) if isinstance(v, tuple) else v for v in values]
        values = [None if v is pd.NA else v for v in values]
        cols.append({"name": name, "dtype": kind, "values": values})
    index = df.index.tolist() if not isinstance(df.index, pd.RangeIndex) else None
    return {"columns": cols, "index": index, "length": len(df)}


def _decode_table(data: dict) -> pd.DataFrame:
    out = {}
    for col in data["columns"]:
        kind, values = col["dtype"], col["values"]
        if kind == "tuple":
            out[col["name"]] = pd.Series([tuple(v) if isinstance(v, list) else v for v in values], dtype=object)
        elif kind == "Int64":
            out[col["name"]] = pd.array(values, dtype="Int64")
        elif kind == "object":
            out[col["name"]] = pd.Series(values, dtype=object)
        elif kind.startswith(("float", "int", "uint", "bool", "complex")):
            out[col["name"]] = pd.Series(np.array([np.nan if v is None else v for v in values], dtype=kind))
        else:  # pandas extension dtypes ("str", "string", "boolean", ...)
            out[col["name"]] = pd.Series(values, dtype=kind)
    df = pd.DataFrame(out, columns=[c["name"] for c in data["columns"]])
    if len(df) != data["length"]:
        df = pd.DataFrame(index=range(data["length"]), columns=df.columns)
    if data.get("index") is not None:
        df.index = data["index"]
    return df


def encode(value) -> dict:
    """A table, a dict of tables (str -> DataFrame) or a plain JSON record (a dict of JSON values, e.g. the
    LiNeS lesson) as JSON-able data."""
    if isinstance(value, pd.DataFrame):
        return {"table": _encode_table(value)}
    if isinstance(value, Mapping) and value and all(isinstance(v, pd.DataFrame) for v in value.values()):
        return {"tables": {str(k): _encode_table(v) for k, v in value.items()}}
    if isinstance(value, Mapping):
        try:
            return {"record": json.loads(json.dumps(value, allow_nan=False))}
        except (TypeError, ValueError):
            pass
    raise TypeError(f"the analysis cache stores DataFrames, dicts of them or JSON records, not {type(value).__name__}")


def decode(data: dict):
    if "table" in data:
        return _decode_table(data["table"])
    if "record" in data:
        return data["record"]
    return {k: _decode_table(v) for k, v in data["tables"].items()}


class AnalysisCache:
    """Tables on disk under `root` (default: `core.runtime.paths.cache_dir() / "analysis"`).

    `get_or_compute(kind, files, params, compute)` returns the stored value when every file in `files`
    still has the size and mtime it had when the value was stored, else runs `compute()`, stores and
    returns its result. `files` are the checkpoints the value depends on; `params` anything else that
    changes it (JSON-able). Unreadable or corrupt entries count as misses.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        if root is None:
            from core.runtime.paths import cache_dir

            root = cache_dir() / "analysis"
        self.root = Path(root)

    def _paths(self, kind: str, files: Sequence, params) -> tuple[str, Path]:
        ident = _digest([FORMAT_VERSION, kind, [str(Path(f).expanduser().resolve()) for f in files], params])
        stamp = _digest([file_fingerprint(f) for f in files])
        safe_kind = "".join(c if c.isalnum() or c in "-_" else "_" for c in kind)[:40]
        return ident, self.root / f"{safe_kind}-{ident}-{stamp}.json"

    def get(self, kind: str, files: Sequence, params=None):
        """The stored value, or None when there is none for the files as they are now."""
        _ident, path = self._paths(kind, files, params)
        try:
            return decode(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, kind: str, files: Sequence, params, value) -> Path:
        """Store `value` (atomically) and delete entries of the same kind, files and params with older stamps."""
        ident, path = self._paths(kind, files, params)
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(encode(value))
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        for old in self.root.glob(f"*-{ident}-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
        return path

    def get_or_compute(self, kind: str, files: Sequence, params, compute: Callable[[], object]):
        value = self.get(kind, files, params)
        if value is None:
            value = compute()
            self.put(kind, files, params, value)
        return value

    def entries(self) -> list[Path]:
        return sorted(self.root.glob("*.json")) if self.root.exists() else []


class _KeyedView(Mapping):
    """A read-only mapping over a fixed key list (iteration, length and membership from the list alone)."""

    def __init__(self, keys: Sequence[str]):
        self._keys = list(keys)
        self._set = set(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._set


class StreamedTaskVector(_KeyedView):
    """tau = ft - base of one task, one tensor at a time: `core.task_vectors.task_vector` without holding it.

    `base` and `finetuned` are state dicts (typically lazy ones from `core.checkpoints.open_state_dict`,
    which read a tensor from disk on access). Keys: the floating-point keys of `finetuned`, sorted,
    as in `task_vector`; each value is computed on access, in float32 for half-precision checkpoints,
    and not kept. A key missing from the base raises KeyError; a shape mismatch ValueError.
    """

    def __init__(self, base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], keys=None):
        super().__init__(sorted(keys if keys is not None else finetuned.keys()))
        self.base, self.finetuned = base, finetuned

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.finetuned:
            raise KeyError(key)
        if key not in self.base:
            raise KeyError(f"fine-tuned key {key!r} is not in the base checkpoint")
        ft, b = self.finetuned[key], self.base[key]
        if b.shape != ft.shape:
            raise ValueError(f"shape mismatch for {key!r}: base {tuple(b.shape)} vs fine-tuned {tuple(ft.shape)}")
        return _f32(ft) - _f32(b)


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def header_dtypes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.dtype | None] | None:
    """{key: dtype} of a lazy safetensors state dict, from its header (no tensor is read; None for a dtype
    torch cannot hold); None when `state_dict` is not lazy (its tensors are in memory: ask them)."""
    from core.checkpoints.formats import SAFETENSORS_DTYPES, LazyStateDict, read_safetensors_header

    if not isinstance(state_dict, LazyStateDict):
        return None
    header, _ = read_safetensors_header(Path(state_dict.path))
    return {k: SAFETENSORS_DTYPES.get(e.get("dtype")) for k, e in header.items() if k != "__metadata__"}


def float_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The floating-point keys of a state dict, in its order; for a lazy one from its header (nothing is read)."""
    dtypes = header_dtypes(state_dict)
    if dtypes is not None:
        return [k for k in state_dict if dtypes.get(k) is not None and dtypes[k].is_floating_point]
    return [k for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]


def tensor_shape(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Size:
    """Shape of one tensor; for a lazy safetensors state dict from its header (the tensor is not read)."""
    shape = getattr(state_dict, "shape", None)
    if callable(shape):
        return torch.Size(shape(key))
    return state_dict[key].shape


def tensor_dtype(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.dtype | None:
    """Dtype of one tensor; for a lazy safetensors state dict from its header (the tensor is not read)."""
    dtypes = header_dtypes(state_dict)
    return dtypes.get(key) if dtypes is not None else state_dict[key].dtype


class _Restricted(_KeyedView):
    def __init__(self, state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]):
        super().__init__(keys)
        self._sd = state_dict

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._set:
            raise KeyError(key)
        return self._sd[key]

    def __getattr__(self, name: str):
        # read_into / nbytes / shape of a lazy state dict pass through (core.merging.streaming's pooled reads)
        if name in ("read_into", "read_range", "nbytes", "shape", "dtype"):
            return getattr(self._sd, name)
        raise AttributeError(name)


def restrict(state_dict: Mapping[str, torch.Tensor], keys: Sequence[str]) -> Mapping[str, torch.Tensor]:
    """A view of `state_dict` with only `keys` (in that order); values are read through it on access."""
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise KeyError(f"{missing[0]!r} is not in the state dict ({len(missing)} keys missing)")
    return _Restricted(state_dict, keys)
