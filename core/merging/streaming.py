"""Task vectors, streamed: the one place where merge inputs are read.

Methods never stack N full models. They walk the (possibly lazy) state dicts key by key
(`TaskVectors.get`, `TaskVectors.keywise`) or in chunks of a virtual flat vector (`TaskVectors.chunks`) and write their
result back with a `FlatWriter`. Every tensor is checked for NaN/Inf the first time it is read
(`core.task_vectors.check_finite`): a merge refuses non-finite inputs with a `NonFiniteError`
naming the checkpoint and the tensor, unless allow_nonfinite=True - no extra pass over the data.

Chunks: the reference implementations flatten every checkpoint into one vector (keys sorted by
name), stack the N task vectors into an [N, d] matrix and reduce over the task axis. torch's
reduction order over that axis depends on the column block a value falls in, so to be
bit-identical we walk the same virtual flat vector in chunks aligned to its start: each
[N, width] slab (width a power of two, `chunk_columns`) sums exactly like the corresponding columns of the full matrix (measured for
N = 2..20 and d up to 3M, 1 and 2 threads), while memory stays at one slab.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..analysis_cache import float_keys, tensor_dtype, tensor_shape
from ..runtime.devices import resolve_device
from ..runtime.threads import one_thread_fewer
from ..task_vectors import check_finite
from .slabs import Filled, ReadAhead, Slab, same_slab

StateDict = Mapping[str, torch.Tensor]

CHUNK: int | None = None  # columns per chunk; None: chunk_columns(N) (tests set small values to cut tensors)
PREFETCH_BYTES = 32 << 20  # key-wise passes ask the OS for the next keys up to this many bytes of each file
TRIM_BYTES = 256 << 20  # release freed heap memory after every 256 MB of task-vector slabs or keys read whole
CHUNK_BYTES = 5 << 19  # one [N, width] float32 temporary: 2.5 MB, so a chunk's temporaries stay in L2/L3


def chunk_columns(n_tasks: int) -> int:
    """Columns per chunk for N tasks: the largest power of two (>= 2^14) whose [N, width] float32 slab fits
    CHUNK_BYTES. Measured on this machine's 2 cores (TIES' merge arithmetic on 8 tasks), 64K-wide slabs
    run 3x faster than 1M-wide ones, whose temporaries spill to memory; widths are powers of two so the
    chunks stay aligned with torch's reduction blocks (bit-identical sums, see above)."""
    if CHUNK:
        return CHUNK
    w = 1 << 14
    while w * 2 * max(1, n_tasks) * 4 <= CHUNK_BYTES:
        w *= 2
    return w


_LIBC = None


def release_freed_memory() -> None:
    """Hand memory freed by a streaming pass back to the OS (glibc malloc_trim; elsewhere nothing).

    A pass frees a few tensors of chunk size, which glibc may keep in its heap; trimming after the pass
    keeps the process's resident memory at what it holds. It changes no allocator setting: an earlier
    release fixed glibc's mmap threshold for the whole process instead, which made every later large
    allocation a fresh mapping (page faults on each): the live loop's forward passes ran 2.6x slower
    after the first merge (measured 0.29 -> 0.74 s per evaluation on the demo zoo).
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


class ReadPool:
    """One reusable read buffer per source: tensors of lazy checkpoints are read into it with pread
    (core.checkpoints.formats.LazyStateDict.read_into), so a pass allocates nothing per tensor.
    In-memory state dicts are returned as they are (no copy)."""

    def __init__(self):
        self._buffers: dict[int, torch.Tensor] = {}

    def read(self, source: int, sd: StateDict, key: str) -> torch.Tensor:
        read_into = getattr(sd, "read_into", None)
        if read_into is None:
            return sd[key]
        need = sd.nbytes(key)
        buf = self._buffers.get(source)
        if buf is None or buf.numel() < need:
            buf = torch.empty(max(need, 64), dtype=torch.uint8)
            self._buffers[source] = buf
        return read_into(key, buf)


def any_true(mask: torch.Tensor) -> bool:
    """Whether a bool tensor holds a True, as a uint8 max: torch's bool `any` took 40 us on a 64K-entry row
    on an idle 2-core machine and up to 300 us on a busy one, the max 8 us (one call per TIES slab)."""
    return mask.numel() > 0 and bool(mask.view(torch.uint8).max())


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
    unchecked: list | None = None  # chunks(check="columns"): keys the consumer checks (TaskVectors.check_columns)


class TaskVectors:
    """The N task vectors tau_t = theta_t - theta_0, computed on demand from
    (possibly lazy) state dicts, optionally preprocessed per (task, key) (DARE).

    Keys: the floating-point keys of the fine-tuned checkpoints, sorted by
    name (the flattening order of the reference implementations).
    allow_nonfinite: False (default) raises NonFiniteError on the first NaN/Inf tensor read;
    True warns and merges anyway.
    device: where the methods compute ("auto": CUDA when torch sees a GPU, else the CPU). Inputs are read
    on the CPU; each slab (`chunks`) or key's tensors (`get`) move to the device, results come back to
    the CPU through `FlatWriter` (or `merged_direction`), so a GPU only ever holds one slab or one key.
    On the CPU every move is a no-op: the code path is the same.
    """

    def __init__(
        self,
        base: StateDict,
        finetuned: Sequence[StateDict],
        names: Sequence[str] | None = None,
        *,
        allow_nonfinite: bool = False,
        device: str | torch.device | None = "auto",
    ):
        self.device = resolve_device(device)
        if len(finetuned) == 0:
            raise ValueError("merging needs at least one fine-tuned checkpoint")
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

    def read(self, source: int, key: str, pool: ReadPool | None = None, check: bool = True) -> torch.Tensor:
        """Tensor `key` of fine-tuned checkpoint `source` (-1: the base), upcast from half precision,
        checked for NaN/Inf on its first read (check=False: the caller checks, as `keywise` does). With a
        `pool`, a lazy checkpoint's tensor is read into the pool's buffer for this source (valid until the
        next read from it)."""
        sd = self.base if source < 0 else self.finetuned[source]
        t = sd[key] if pool is None else pool.read(source, sd, key)
        if check and (source, key) not in self._checked:
            check_finite(t, "base" if source < 0 else self.names[source], key, self.allow_nonfinite)
            self._checked.add((source, key))
        return as_compute(t)

    def sample(self, every: int, spans: int = 4) -> torch.Tensor:
        """About one entry in `every` of each task vector, as an [N, m] tensor (compute dtype, CPU).

        Each key contributes ceil(numel / every) entries in `spans` evenly placed runs (small keys whole),
        read with `read_range` from lazy inputs (a few small preads per file and key; nothing else is
        read). Raw task vectors, not preprocessed and not checked for NaN/Inf: an estimate's input (TIES's
        threshold bins, `core.merging.kselect.topk_thresholds`), never a merge's."""
        parts = []
        for key in self.keys:
            n = self.shapes[key].numel()
            run = max(1, -(-n // (every * spans)))
            if run * spans >= n:
                runs = [(0, n)]
            else:
                runs = [(min(n - run, (n * (2 * i + 1)) // (2 * spans)), run) for i in range(spans)]
            for start, length in runs:
                b = self._slice(self.base, key, start, length)
                parts.append(torch.stack([self._slice(sd, key, start, length) - b for sd in self.finetuned]))
        return torch.cat(parts, dim=1) if parts else torch.empty(len(self), 0, dtype=self.dtype)

    def _slice(self, sd: StateDict, key: str, start: int, length: int) -> torch.Tensor:
        """Flat elements [start, start + length) of `sd[key]` in the compute dtype (lazy inputs: one pread)."""
        if hasattr(sd, "read_range") and sd.dtype(key) is not None:
            out = torch.empty(length, dtype=sd.dtype(key))
            return sd.read_range(key, start, out).to(self.dtype)
        return sd[key].reshape(-1)[start : start + length].to(self.dtype)

    def raw(self, key: str, pool: ReadPool | None = None, check: bool = True) -> list[torch.Tensor]:
        """The N raw task vectors of `key`. With a `pool`, lazy checkpoints' tensors are read into its
        buffers and the base is subtracted in place (valid until the pool's next read of `key`'s sources):
        reads into reused memory, not fresh allocations whose pages fault in on every read. check: `read`'s."""
        b = self.read(-1, key, pool, check)
        out = []
        for t, name in enumerate(self.names):
            f = self.read(t, key, pool, check)
            if f.shape != b.shape:
                raise ValueError(
                    f"shape mismatch for {key!r}: base {tuple(b.shape)} vs fine-tuned {name!r} {tuple(f.shape)}"
                )
            owned = pool is not None and hasattr(self.finetuned[t], "read_into")  # the pool's buffer, or an upcast
            out.append(f.sub_(b) if owned and f.dtype == torch.result_type(f, b) else f - b)
        return out

    def get(self, key: str, pool: ReadPool | None = None, check: bool = True) -> list[torch.Tensor]:
        """The N task vectors of `key` (preprocessed, e.g. DARE), on the compute device (`raw`'s pool and
        check)."""
        tvs = self.raw(key, pool, check)
        if self.preprocess is not None:
            tvs = [self.preprocess(t, key, v) for t, v in enumerate(tvs)]
        return [v.to(self.device) for v in tvs]

    def keywise(self):
        """Yield (key, task vectors of `key` as `get` returns them, their sum in task order, the sum's L1
        norm ||sum_t tau_t||_1 as `l1` computes it), key by key.

        The NaN/Inf check rides on that norm (no preprocessing): a NaN or an infinity in the base or a
        fine-tuned tensor makes its task vectors, their sum and the sum's norm non-finite (IEEE sums and
        differences never turn a non-finite value finite), so a finite norm proves the key's N + 1 inputs
        finite, and the N + 1 sums that checked each tensor on its read are not taken (0.19 s of Iso-C's
        2.2 s outside its SVDs at ViT-B/32 x 8). A non-finite norm reads the key's tensors again one by one,
        base first, and their check names the tensor (NonFiniteError, or a warning with allow_nonfinite);
        finite inputs whose sum overflowed pass. With a preprocessing step (DARE), which could mask a bad
        value away, every tensor is checked on its read as elsewhere.

        Once a key is read, the next keys' tensors (up to PREFETCH_BYTES of each file, counted in float32)
        are requested from the OS (`prefetch`: posix_fadvise WILLNEED, no thread), so from a cold page cache
        the disk reads them while the caller decomposes this one. Iso-C at ViT-B/32 x 8 from a cold cache
        (`bench/merge.py --cache cold`, fresh processes, interleaved): 15.3-17.4 s without, 13.4-14.0 s
        with (about 11 s from a warm cache); asking for one key ahead only: 13.9-14.9 s.

        Tried, not kept: reading the next key on a worker thread while the caller decomposes the current
        one. On two cores torch.linalg.svd keeps both busy, and the worker's reads and subtractions
        stalled its OpenMP threads: Iso-C on ViT-B/32 x 8 took 21.3-22.5 s instead of 15.8-16.1 s (its
        SVDs 18 s instead of 12.5 s), measured interleaved in fresh processes. Nor trimming freed memory
        after every 64 MB of keys instead of 256 MB: Iso-C at B/32 x 8 13.3 vs 12.1 s (the trimmed pages
        fault back in), no less memory; what bounds the SVD methods' memory is allocating their outputs
        first (core.merging.direction.keywise_direction)."""
        since_trim = 0
        pool = ReadPool()  # every key's tensors read into the same buffers: the caller is done with a key first
        by_norm = self.preprocess is None
        sources = range(-1, len(self))
        ahead = asked = 0  # keys[:ahead] have been asked for; `asked`: float32 bytes of those after this key
        for i, key in enumerate(self.keys):
            ts = self.get(key, pool, check=not by_norm)
            # the disk fetches the next keys (PREFETCH_BYTES of each file) while the caller works on this one
            if i < ahead:
                asked -= self.shapes[key].numel() * 4
            ahead = max(ahead, i + 1)
            while ahead < len(self.keys) and asked < PREFETCH_BYTES:
                self.prefetch(self.keys[ahead])
                asked += self.shapes[self.keys[ahead]].numel() * 4
                ahead += 1
            tot = total(ts)
            norm = l1(tot)
            if by_norm and not all((s, key) in self._checked for s in sources):
                if not math.isfinite(norm):
                    for s in sources:  # unpooled reads: ts stay as they are
                        self.read(s, key)
                self._checked.update((s, key) for s in sources)
            yield key, ts, tot, norm
            since_trim += (len(ts) + 1) * ts[0].numel() * ts[0].element_size()
            ts = tot = None
            if since_trim >= TRIM_BYTES:  # what the caller freed meanwhile: back to the OS
                release_freed_memory()
                since_trim = 0
        release_freed_memory()

    def prefetch(self, key: str) -> None:
        """Ask the OS to fetch `key`'s tensors of every lazy input into the page cache in the background
        (LazyStateDict.prefetch); in-memory inputs need nothing."""
        for sd in (self.base, *self.finetuned):
            hint = getattr(sd, "prefetch", None)
            if hint is not None:
                hint(key)

    def _direct(self, key: str) -> bool:
        """Whether every fine-tuned tensor `key` can be read in slices straight into a slab."""
        return all(
            hasattr(sd, "read_range") and sd.dtype(key) == self.dtype and sd.shape(key) == tuple(self.shapes[key])
            for sd in self.finetuned
        )

    def _check_slab(self, slab: torch.Tensor, keys: list[tuple[str, bool]]) -> None:
        """NaN/Inf check of the slices read straight into a slab, on the first pass: one sum per task
        over the slab (a non-finite entry of a fine-tuned tensor makes its task vector's sum non-finite).
        A non-finite sum re-reads each of that task's tensors in the slab whole, whose check names the
        tensor and counts its bad values (NonFiniteError, or a warning with allow_nonfinite).
        keys: (key, whether its last slice is in this slab) for the unchecked keys read in slices."""
        if not keys:
            return
        sums = slab.sum(dim=1)
        bad = (~torch.isfinite(sums)).nonzero().flatten().tolist()
        if bad:  # the base first: read in slices too, a non-finite base entry spoils every task's sum
            for key, _ in keys:
                self.read(-1, key)
        for t in bad:
            for key, _ in keys:
                self.read(t, key)
        for key, done in keys:
            if done:
                self._checked.update((t, key) for t in range(-1, len(self)))

    def _load(self, key: str, pool: ReadPool | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(flat base tensor, flat fine-tuned tensors) of `key` in the compute dtype, shapes checked."""
        b = self.read(-1, key, pool).to(self.dtype).reshape(-1)
        fts = [self.read(t, key, pool).to(self.dtype).reshape(-1) for t in range(len(self))]
        for t, f in enumerate(fts):
            if f.numel() != b.numel():
                raise ValueError(
                    f"shape mismatch for {key!r}: base {tuple(self.shapes[key])} vs fine-tuned "
                    f"{self.names[t]!r} {tuple(self.finetuned[t][key].shape)}"
                )
        return b, fts

    def check_columns(self, chunk: Chunk, column_sums: torch.Tensor) -> None:
        """The NaN/Inf check of a chunk from chunks(check="columns"), from the consumer's own sums over the
        tasks of chunk.tvs (before any change to it): a non-finite entry makes its column's sum, and so
        the sum of the sums, non-finite, so one reduction over the width checks the whole slab. Only
        when that fails (or a float32 sum overflows) does the per-task check run and name the tensor."""
        keys, chunk.unchecked = chunk.unchecked, None
        if not keys:
            return
        if not bool(torch.isfinite(column_sums.sum())):
            self._check_slab(chunk.tvs, keys)
            return
        for key, done in keys:
            if done:
                self._checked.update((t, key) for t in range(-1, len(self)))

    def chunks(
        self, *, with_finetuned: bool = False, size: int | None = None, check: str = "slab", read_ahead: bool = False
    ):
        """Yield Chunks covering the flat vector in order, each `size` wide (the last may be shorter).

        The chunk's tensors are reused buffers, valid until the next chunk is requested.
        Task vectors are written straight into the [N, size] buffer (one pass per input).
        check: "slab" checks the slices read straight into the slab for NaN/Inf before the chunk is
        yielded (one sum per task); "columns" leaves it to the consumer, which sums over the tasks anyway
        and must call `check_columns` with those sums before asking for the next chunk (task arithmetic:
        the slab's per-task sums were 40 % of its arithmetic).

        read_ahead: for a consumer whose arithmetic per slab takes about as long as reading it (task
        arithmetic). When every input is read in slices (`_direct`, a lazy base of the compute dtype, no
        preprocessing), a reader thread fills the next slab with preads (no torch op; the GIL is released)
        while the consumer computes on this one with one torch thread fewer (the reader has its core: on 2
        cores two OpenMP threads next to the reader stall at their barriers and nothing is gained). Task
        arithmetic at ViT-B/32 x 8 from the page cache: 0.61 s instead of 0.84 s (2 threads, inline), two
        slabs of memory instead of one. Not for consumers whose torch arithmetic is compute-bound (TIES's
        torch pass on one thread cost more than the reads it would hide); TIES's compiled loops
        (core.merging.fused: one thread, the GIL released) use it. Either way the base is subtracted from a
        slab's N rows in one op when the slab is handed over.
        """
        if check not in ("slab", "columns"):
            raise ValueError(f"check must be 'slab' or 'columns', got {check!r}")
        by_columns = check == "columns"
        size = size or chunk_columns(len(self))
        n_tasks = len(self)
        dev = self.device
        pin = dev.type == "cuda"  # page-locked slabs: faster copies to the GPU

        def new_slab() -> Slab:
            return Slab(
                torch.empty(n_tasks, size, dtype=self.dtype, pin_memory=pin),
                torch.empty(size, dtype=self.dtype, pin_memory=pin),
                torch.empty(n_tasks, size, dtype=self.dtype, pin_memory=pin) if with_finetuned else None,
            )

        def hand_over(f: Filled):
            """Yield the chunk of the slab's first `width` columns, its slices checked for NaN/Inf here, or
            (check="columns") by the consumer before it asks for the next chunk."""
            buf, bbuf, fbuf = f.slab.tvs, f.slab.base, f.slab.finetuned
            for a, z in f.raw:  # fine-tuned values read straight into the slab: the base off all N rows
                if fbuf is None:
                    buf[:, a:z].sub_(bbuf[a:z])
                else:
                    torch.sub(fbuf[:, a:z], bbuf[a:z], out=buf[:, a:z])
            width = f.width
            if width == size:
                parts = (buf, bbuf, fbuf)
            else:  # the last, partial chunk: contiguous copies so reductions see a plain [N, width] matrix
                parts = (
                    buf[:, :width].contiguous(),
                    bbuf[:width].clone(),
                    None if fbuf is None else fbuf[:, :width].contiguous(),
                )
            # on the compute device (on the CPU: the buffers themselves, no copy). Synchronous: the next
            # slab is read into the same buffers.
            t, b, ft = (None if x is None else x.to(dev) for x in parts)
            ch = Chunk(f.start, f.segments, t, b, ft)
            if by_columns:
                ch.unchecked = f.to_check
            else:
                self._check_slab(buf[:, :width], f.to_check)
            yield ch
            if ch.unchecked:
                raise RuntimeError("chunks(check='columns'): a slab was not checked (TaskVectors.check_columns)")

        ahead = read_ahead and READ_AHEAD and self.preprocess is None and self._all_direct()
        filled = ReadAhead(self._fill, size, new_slab) if ahead else self._fill(size, same_slab(new_slab()))
        since_trim = 0
        try:
            with one_thread_fewer() if ahead else contextlib.nullcontext():  # the reader has its own core
                for f in filled:
                    yield from hand_over(f)
                    f.release()
                    since_trim += size * n_tasks * 4
                    if since_trim >= TRIM_BYTES:  # what the consumer freed meanwhile: back to the OS
                        release_freed_memory()
                        since_trim = 0
        finally:
            filled.close()
            filled = f = None  # the slabs and read buffers: freed before the trim
            release_freed_memory()

    def _base_direct(self, key: str) -> bool:
        """Whether the base tensor `key` can be read in slices straight into a slab's base row."""
        return hasattr(self.base, "read_range") and self.base.dtype(key) == self.dtype

    def _all_direct(self) -> bool:
        """Whether the base and every fine-tuned tensor can be read in slices straight into a slab."""
        return all(self._direct(k) and self._base_direct(k) for k in self.keys)

    def _fill(self, size: int, acquire: Callable[[], Slab]):
        """The slabs of `chunks`, filled in flat order: yields a `Filled` per slab (its buffers from
        `acquire()`). Runs on the reader thread for a read-ahead pass: then every key is direct and this
        only issues preads (base slice into the base row, fine-tuned slices into their rows)."""
        n_tasks = len(self)
        pool = ReadPool()
        slab = acquire()
        pos, start, segments, raw, to_check = 0, 0, [], [], []
        for key in self.keys:
            direct = self.preprocess is None and self._direct(key)
            ranged = direct and self._base_direct(key)
            b = fts = tvs = None
            if not ranged:
                if direct:
                    b = self.read(-1, key, pool).to(self.dtype).reshape(-1)
                else:
                    b, fts = self._load(key, pool)
            if self.preprocess is not None:
                tvs = [
                    self.preprocess(t, key, (f - b).reshape(self.shapes[key])).reshape(-1) for t, f in enumerate(fts)
                ]
            n, off = self.shapes[key].numel(), 0
            while off < n:
                take = min(size - pos, n - off)
                buf, bbuf, fbuf = slab.tvs, slab.base, slab.finetuned
                if ranged:
                    self.base.read_range(key, off, bbuf[pos : pos + take])
                else:
                    bbuf[pos : pos + take] = b[off : off + take]
                for t in range(n_tasks):
                    if direct:  # raw fine-tuned values; hand-over subtracts the base from all rows at once
                        self.finetuned[t].read_range(key, off, (fbuf if fbuf is not None else buf)[t, pos : pos + take])
                        continue
                    if tvs is None:
                        torch.sub(fts[t][off : off + take], b[off : off + take], out=buf[t, pos : pos + take])
                    else:
                        buf[t, pos : pos + take] = tvs[t][off : off + take]
                    if fbuf is not None:
                        fbuf[t, pos : pos + take] = fts[t][off : off + take]
                if direct:
                    if raw and raw[-1][1] == pos:
                        raw[-1][1] = pos + take
                    else:
                        raw.append([pos, pos + take])
                segments.append((key, off, take))
                if direct and (0, key) not in self._checked:
                    to_check.append((key, off + take == n))
                pos += take
                off += take
                if pos == size:
                    yield Filled(slab, start, size, segments, raw, to_check)
                    slab = acquire()
                    start, pos, segments, raw, to_check = start + size, 0, [], [], []
            b = fts = tvs = None  # views into the pool's buffers
        if pos:
            yield Filled(slab, start, pos, segments, raw, to_check)


READ_AHEAD = True  # chunks(): fill the next slab on a reader thread when every input is read in slices


def l1(t: torch.Tensor) -> float:
    """||t||_1 as a Python float (float32 sums over at most one chunk, accumulated in Python floats)."""
    return float(t.abs().sum())


def total(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_t tensors[t], added in task order into one new tensor (no [T, ...] stack)."""
    out = tensors[0].clone()
    for t in tensors[1:]:
        out += t
    return out


class FlatWriter:
    """Collects per-chunk results back into tensors shaped like the parameters."""

    def __init__(self, shapes: Mapping[str, torch.Size], dtype=torch.float32):
        self.out = {k: torch.empty(s, dtype=dtype) for k, s in shapes.items()}

    def view(self, chunk: Chunk) -> torch.Tensor | None:
        """The output's own memory for a chunk that lies inside one key, on the CPU: a method can compute
        the chunk's values into it (`out=`) and `write` then has nothing to copy. None otherwise."""
        if len(chunk.segments) != 1 or chunk.tvs.device.type != "cpu":
            return None
        key, off, ln = chunk.segments[0]
        return self.out[key].view(-1)[off : off + ln]

    def write(self, chunk: Chunk, values: torch.Tensor) -> None:
        values = values.cpu()  # results of a GPU merge come back here, one slab at a time
        if len(chunk.segments) == 1:
            key, off, ln = chunk.segments[0]
            if values.data_ptr() == self.out[key].view(-1)[off : off + ln].data_ptr():
                return  # computed in place (`view`)
        pos = 0
        for key, off, ln in chunk.segments:
            self.out[key].view(-1)[off : off + ln] = values[pos : pos + ln]
            pos += ln

    def write_at(self, segments: list[tuple[str, int, int]], columns: torch.Tensor, values: torch.Tensor) -> None:
        """Write values at a few columns of a chunk whose segments are given (columns ascending)."""
        columns, values = columns.cpu(), values.cpu()
        pos = 0
        for key, off, ln in segments:
            sel = (columns >= pos) & (columns < pos + ln)
            if sel.any():
                self.out[key].view(-1)[columns[sel] - pos + off] = values[sel]
            pos += ln
