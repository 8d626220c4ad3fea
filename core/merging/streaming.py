"""Task vectors, streamed: the one place where merge inputs are read.

Methods never stack N full models. They walk the (possibly lazy) state dicts key by key
(`TaskVectors.get`) or in chunks of a virtual flat vector (`TaskVectors.chunks`) and write their
result back with a `FlatWriter`. Every tensor is checked for NaN/Inf the first time it is read
(`core.task_vectors.check_finite`): a merge refuses non-finite inputs with a `NonFiniteError`
naming the checkpoint and the tensor, unless allow_nonfinite=True - no extra pass over the data.

Chunks: the reference implementations flatten every checkpoint into one vector (keys sorted by
name), stack the N task vectors into an [N, d] matrix and reduce over the task axis. torch's
reduction order over that axis depends on the column block a value falls in, so to be
bit-identical we walk the same virtual flat vector in chunks aligned to its start: each
[N, CHUNK] slab sums exactly like the corresponding columns of the full matrix (measured for
N = 2..20 and d up to 3M, 1 and 2 threads), while memory stays at one slab.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..analysis_cache import float_keys, tensor_dtype, tensor_shape
from ..task_vectors import check_finite

StateDict = Mapping[str, torch.Tensor]

CHUNK = 1 << 20
MMAP_THRESHOLD = 256 * 1024  # bytes: larger blocks get their own mapping, returned to the OS when freed

_heap_bounded = False


def bound_heap() -> bool:
    """Make glibc serve blocks over MMAP_THRESHOLD from their own mappings, for the rest of the process.

    Streaming passes allocate and free thousands of tensors of a few MB. glibc's default raises its
    mmap threshold each time such a block is freed, after which same-sized blocks come from the heap,
    where freed memory stays resident: measured, a TIES merge of 8 files then kept ~3 model sizes of
    freed memory (RssAnon), against ~1 with a fixed threshold. Fixing the threshold (mallopt
    M_MMAP_THRESHOLD, which also turns the dynamic adjustment off) keeps a stream's memory at what it
    holds. Returns whether the setting applies (glibc only; elsewhere nothing changes).
    """
    global _heap_bounded
    if _heap_bounded:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _heap_bounded = bool(libc.mallopt(-3, MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False
    return _heap_bounded


def as_compute(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors upcast to float32; float32/float64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


@dataclass
class Chunk:
    """Columns [start, start+width) of the virtual flat vector."""

    start: int
    segments: list[tuple[str, int, int]]  # (key, offset inside the key, length), in flat order
    tvs: torch.Tensor  # [N, width] task vectors
    base: torch.Tensor  # [width] pretrained weights
    finetuned: torch.Tensor | None = None  # [N, width], when asked for


class TaskVectors:
    """The N task vectors tau_t = theta_t - theta_0, computed on demand from
    (possibly lazy) state dicts, optionally preprocessed per (task, key) (DARE).

    Keys: the floating-point keys of the fine-tuned checkpoints, sorted by
    name (the flattening order of the reference implementations).
    allow_nonfinite: False (default) raises NonFiniteError on the first NaN/Inf tensor read;
    True warns and merges anyway.
    """

    def __init__(
        self,
        base: StateDict,
        finetuned: Sequence[StateDict],
        names: Sequence[str] | None = None,
        *,
        allow_nonfinite: bool = False,
    ):
        if len(finetuned) == 0:
            raise ValueError("merging needs at least one fine-tuned checkpoint")
        bound_heap()
        self.base = base
        self.finetuned = list(finetuned)
        self.names = list(names) if names is not None else [f"task{i}" for i in range(len(finetuned))]
        self.allow_nonfinite = allow_nonfinite
        self._checked: set[tuple[int, str]] = set()  # (source, key) already checked; -1 is the base
        # Keys, shapes and dtypes come from the headers of lazy checkpoints: no tensor is read before the merge.
        first = self.finetuned[0]
        self.keys = sorted(float_keys(first))
        ref = set(self.keys)
        for name, sd in zip(self.names, self.finetuned):
            ks = set(float_keys(sd)) if sd is not first else ref
            if ks != ref:
                missing, extra = sorted(ref - ks)[:3], sorted(ks - ref)[:3]
                raise ValueError(
                    f"fine-tuned checkpoint {name!r} has different parameters from {self.names[0]!r}"
                    f" (missing {missing}, extra {extra})"
                )
        self.shapes: dict[str, torch.Size] = {}
        for k in self.keys:
            if k not in base:
                raise KeyError(f"parameter {k!r} of the fine-tuned checkpoints is not in the base checkpoint")
            self.shapes[k] = tensor_shape(base, k)
        self.preprocess: Callable[[int, str, torch.Tensor], torch.Tensor] | None = None
        # Compute dtype: float32 (half-precision inputs are upcast), float64 when any input is float64,
        # so a float64 model set merges at the reference's own precision.
        k0 = self.keys[0] if self.keys else None
        wide = k0 is not None and any(tensor_dtype(sd, k0) == torch.float64 for sd in (base, *self.finetuned))
        self.dtype = torch.float64 if wide else torch.float32

    def __len__(self) -> int:
        return len(self.finetuned)

    def numel(self) -> int:
        return sum(s.numel() for s in self.shapes.values())

    def read(self, source: int, key: str) -> torch.Tensor:
        """Tensor `key` of fine-tuned checkpoint `source` (-1: the base), upcast from half precision,
        checked for NaN/Inf on its first read."""
        sd = self.base if source < 0 else self.finetuned[source]
        t = sd[key]
        if (source, key) not in self._checked:
            check_finite(t, "base" if source < 0 else self.names[source], key, self.allow_nonfinite)
            self._checked.add((source, key))
        return as_compute(t)

    def base_f(self, key: str) -> torch.Tensor:
        return self.read(-1, key)

    def raw(self, key: str) -> list[torch.Tensor]:
        b = self.base_f(key)
        out = []
        for t, name in enumerate(self.names):
            f = self.read(t, key)
            if f.shape != b.shape:
                raise ValueError(
                    f"shape mismatch for {key!r}: base {tuple(b.shape)} vs fine-tuned {name!r} {tuple(f.shape)}"
                )
            out.append(f - b)
        return out

    def get(self, key: str) -> list[torch.Tensor]:
        tvs = self.raw(key)
        if self.preprocess is not None:
            tvs = [self.preprocess(t, key, v) for t, v in enumerate(tvs)]
        return tvs

    def chunks(self, *, with_finetuned: bool = False, size: int | None = None):
        """Yield Chunks covering the flat vector in order, each `size` wide (the last may be shorter).

        The chunk's tensors are reused buffers, valid until the next chunk is requested.
        Task vectors are written straight into the [N, size] buffer (one pass per input).
        """
        size = size or CHUNK
        n_tasks = len(self)
        buf = torch.empty(n_tasks, size, dtype=self.dtype)
        bbuf = torch.empty(size, dtype=self.dtype)
        fbuf = torch.empty(n_tasks, size, dtype=self.dtype) if with_finetuned else None
        pos, start, segments = 0, 0, []

        def chunk(width):
            if width == size:
                return Chunk(start, segments, buf, bbuf, fbuf)
            # the last, partial chunk: contiguous copies so reductions see a plain [N, width] matrix
            return Chunk(
                start,
                segments,
                buf[:, :width].contiguous(),
                bbuf[:width].clone(),
                None if fbuf is None else fbuf[:, :width].contiguous(),
            )

        for key in self.keys:
            b = self.base_f(key).to(self.dtype).reshape(-1)
            fts = [self.read(t, key).to(self.dtype).reshape(-1) for t in range(n_tasks)]
            for t, f in enumerate(fts):
                if f.numel() != b.numel():
                    raise ValueError(
                        f"shape mismatch for {key!r}: base {tuple(self.shapes[key])} vs fine-tuned "
                        f"{self.names[t]!r} {tuple(self.finetuned[t][key].shape)}"
                    )
            tvs = None
            if self.preprocess is not None:
                tvs = [
                    self.preprocess(t, key, (f - b).reshape(self.shapes[key])).reshape(-1) for t, f in enumerate(fts)
                ]
            n, off = b.numel(), 0
            while off < n:
                take = min(size - pos, n - off)
                bbuf[pos : pos + take] = b[off : off + take]
                for t in range(n_tasks):
                    if tvs is None:
                        torch.sub(fts[t][off : off + take], b[off : off + take], out=buf[t, pos : pos + take])
                    else:
                        buf[t, pos : pos + take] = tvs[t][off : off + take]
                    if fbuf is not None:
                        fbuf[t, pos : pos + take] = fts[t][off : off + take]
                segments.append((key, off, take))
                pos += take
                off += take
                if pos == size:
                    yield chunk(size)
                    start, pos, segments = start + size, 0, []
        if pos:
            yield chunk(pos)


class FlatWriter:
    """Collects per-chunk results back into tensors shaped like the parameters."""

    def __init__(self, shapes: Mapping[str, torch.Size], dtype=torch.float32):
        self.out = {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}

    def write(self, chunk: Chunk, values: torch.Tensor) -> None:
        pos = 0
        for key, off, ln in chunk.segments:
            self.out[key].view(-1)[off : off + ln] = values[pos : pos + ln]
            pos += ln

    def write_at(self, segments: list[tuple[str, int, int]], columns: torch.Tensor, values: torch.Tensor) -> None:
        """Write values at a few columns of a chunk whose segments are given (columns ascending)."""
        pos = 0
        for key, off, ln in segments:
            sel = (columns >= pos) & (columns < pos + ln)
            if sel.any():
                self.out[key].view(-1)[columns[sel] - pos + off] = values[sel]
            pos += ln
