"""Checkpoint containers as data: what a file is (from its first bytes), and the safetensors format.

- `sniff` tells a safetensors file from a torch file (zip or legacy pickle) by content, not by
  name, and says what a file that is neither actually is (text, a Git LFS pointer, HTML, ...).
- safetensors is read through ``safetensors.safe_open`` (whole tensors, or shapes only from the
  header) or, for streaming passes, tensor by tensor with pread (`LazyStateDict`), and written
  tensor by tensor (`write_safetensors`), never holding the whole file in memory.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError

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

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
DTYPE_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}

# Files that are not checkpoints but often sit where one should: (first bytes, what it is, what to do).
_KNOWN_MAGIC = (
    (b"version https://git-lfs", "a Git LFS pointer, not the weights", "run `git lfs pull` in its repository"),
    (b"\x93NUMPY", "a NumPy .npy array", "save the weights with save_state_dict or safetensors"),
    (b"\x89HDF", "an HDF5 file (e.g. Keras weights)", "convert it to a PyTorch state dict"),
    (b"\x1f\x8b", "gzip-compressed data", "decompress it first"),
    (b"\x08", "possibly an ONNX / protobuf model", "export a PyTorch state dict instead"),
)


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe_content(head: bytes) -> str:
    """What a file that is not a checkpoint looks like from its first bytes, and what to do.

    E.g. "it is a text file starting 'hello world'" for a text file renamed to .safetensors.
    """
    for magic, what, todo in _KNOWN_MAGIC:
        if head.startswith(magic):
            return f"it is {what}; {todo}"
    if head[:2] == b"PK":
        return "it is a zip archive without a PyTorch data.pkl; unpack it, the weights may be inside"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"unrecognized first bytes {head[:8]!r}; the file may be corrupt or in another format"
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        start = " ".join(text.split())[:40]
        low = start.lower()
        kind = (
            "an HTML page (a failed download?)"
            if low.startswith(("<!doctype html", "<html"))
            else "a JSON file"
            if low.startswith(("{", "["))
            else "a text file"
        )
        return f"it is {kind} starting {start!r}, not model weights; point to the weights file instead"
    return f"unrecognized first bytes {head[:8]!r}; the file may be corrupt or in another format"


def sniff(path: Path) -> str:
    """Container type from the first bytes: "safetensors", "torch" (zip or legacy pickle); raises otherwise."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes); it was probably not written completely")
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04" and not _is_plain_zip(path):
        return "torch"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch"  # legacy (non-zip) torch.save, a pickle stream
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len <= size:
            return "safetensors"
        if b"\x00" in head[:8]:  # a real length prefix (little-endian, high bytes zero), not text
            raise CheckpointError(
                f"{path}: safetensors header says {header_len} bytes of metadata but the file has only {size} "
                "bytes; the file is truncated — copy or download it again"
            )
    raise CheckpointError(f"{path}: not a safetensors or torch checkpoint ({describe_content(head)})")


def _is_plain_zip(path: Path) -> bool:
    """A zip archive that torch.save did not write (no "<name>/data.pkl" entry)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return not any(n.endswith("data.pkl") or n.endswith("constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False  # a damaged torch zip: torch.load will say so


def read_safetensors(path: Path, meta: bool = False) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; `meta=True` gives shapes and dtypes only (header, no data)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            if meta:
                out = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    out[k] = torch.empty(sl.get_shape(), dtype=SAFETENSORS_DTYPES[sl.get_dtype()], device="meta")
                return out
            return {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types; the user needs the file and the reason
        raise CheckpointError(f"{path}: cannot read safetensors file ({e}); the file is corrupt or truncated") from e


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header as parsed JSON, offset where tensor data starts) of a safetensors file."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from e
    return header, 8 + n


def prepare_for_safetensors(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str, meta: Mapping[str, str]) -> None:
    """Write the safetensors format tensor by tensor (header, then raw little-endian data).

    Unlike safetensors.torch.save_file, this never builds the whole file in memory, so
    saving a model costs one tensor of extra memory, not one model.
    """
    header: dict[str, object] = {"__metadata__": dict(meta)} if meta else {}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    off = 0
    for k in order:
        t = tensors[k]
        if t.dtype not in DTYPE_NAMES:
            raise TypeError(f"cannot store {k!r}: dtype {t.dtype} has no safetensors equivalent")
        n = t.numel() * t.element_size()
        header[k] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + n]}
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


# Streaming reads: one tensor at a time, no memory map.
#
# A memory-mapped file keeps every page it has touched resident (and counted in the process's
# RSS) until it is unmapped, so a merge that walks N fine-tuned files would end up holding all
# of them. `LazyStateDict` instead reads each tensor with pread into its own buffer when asked
# for it; the caller drops it as soon as the key is done.
PREFETCH_STEP = 1 << 20  # bytes per readahead advice (LazyStateDict.prefetch)


class LazyStateDict(Mapping):
    """Read-only mapping over a safetensors file, reading each tensor from disk when it is accessed."""

    def __init__(self, path: Path, header: dict, data_start: int):
        self.path = path
        self._entries = {k: v for k, v in header.items() if k != "__metadata__"}
        self._data_start = data_start
        self._fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.read_into(key, None)

    def dtype(self, key: str) -> torch.dtype | None:
        """The torch dtype of tensor `key` from the header (None when torch cannot hold it)."""
        return SAFETENSORS_DTYPES.get(self._entries[key]["dtype"])

    def nbytes(self, key: str) -> int:
        """Bytes of tensor `key` in the file (from the header; nothing is read)."""
        start, end = self._entries[key]["data_offsets"]
        return end - start

    def read_range(self, key: str, start: int, out: torch.Tensor) -> torch.Tensor:
        """Elements [start, start + out.numel()) of tensor `key` (flattened), read with pread straight into
        `out` (contiguous, of the tensor's dtype): a streaming pass reads a slice into its slab, no copy."""
        e = self._entries[key]
        dtype = SAFETENSORS_DTYPES.get(e["dtype"])
        if out.dtype != dtype or not out.is_contiguous():
            raise ValueError(f"read_range of {key!r} needs a contiguous {dtype} buffer, got {out.dtype}")
        size = out.element_size()
        first, end = e["data_offsets"]
        offset = first + start * size
        nbytes = out.numel() * size
        if start < 0 or offset + nbytes > end:
            raise ValueError(f"elements [{start}, {start + out.numel()}) are outside tensor {key!r}")
        if nbytes:
            got = os.preadv(self._fd, [out.view(torch.uint8).numpy()], self._data_start + offset)
            if got != nbytes:
                raise CheckpointError(f"{self.path}: tensor {key!r} is cut short; the file is truncated")
        return out

    def prefetch(self, key: str) -> None:
        """Ask the OS to read tensor `key` into the page cache in the background (posix_fadvise WILLNEED),
        so a later `read_into` copies from memory instead of waiting for the disk. A hint only: nothing
        happens where the call does not exist, and the pages are the page cache's, not this process's.

        Linux reads at most the device's readahead window per advice (read_ahead_kb: 8 MB here, 128 KB on
        many systems; one advice over a 64 MB range cached 8 MB, measured with fincore), so the range is
        advised in PREFETCH_STEP pieces; each returns once its reads are queued (~0.5 ms per 4 MB here)."""
        e = self._entries.get(key)
        if e is None or not hasattr(os, "posix_fadvise"):
            return
        start, end = e["data_offsets"]
        try:
            for off in range(self._data_start + start, self._data_start + end, PREFETCH_STEP):
                n = min(PREFETCH_STEP, self._data_start + end - off)
                os.posix_fadvise(self._fd, off, n, os.POSIX_FADV_WILLNEED)
        except OSError:  # e.g. a file system that refuses the advice: reads stay as they were
            pass

    def read_into(self, key: str, buffer: torch.Tensor | None) -> torch.Tensor:
        """Tensor `key`, read with pread into the front of `buffer` (a contiguous tensor of at least
        `nbytes(key)` bytes, any dtype; reused by streaming passes so no pass allocates per tensor), or
        into a new tensor when `buffer` is None. The result is a view of `buffer`: valid until it is reused."""
        if key not in self._entries:
            raise KeyError(key)
        e = self._entries[key]
        start, end = e["data_offsets"]
        dtype = SAFETENSORS_DTYPES.get(e["dtype"])
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has dtype {e['dtype']}, which is not supported")
        if buffer is None:
            out = torch.empty(e["shape"], dtype=dtype)
        else:
            raw = buffer.view(-1).view(torch.uint8)
            if raw.numel() < end - start:
                raise ValueError(f"buffer of {raw.numel()} bytes is too small for {key!r} ({end - start} bytes)")
            out = raw[: end - start].view(dtype).view(e["shape"])
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

    def __contains__(self, key) -> bool:  # Mapping's default would read the tensor
        return key in self._entries

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def __del__(self):
        try:
            os.close(self._fd)
        except Exception:
            pass
