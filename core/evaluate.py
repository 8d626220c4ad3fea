"""One evaluation path for every model: accuracy per task with its head (zero-shot or a file).

`Evaluator` holds what does not change between evaluations — the model built once from the base,
each task's uint8 pixels (the demo zoo's in memory, a user's data memory-mapped from the on-disk
image cache, `core.datasets.imagecache`), labels and heads — and `accuracy(state_dict)` copies a
(merged or fine-tuned) visual tower into the model in place and streams the images through it in
batches under `torch.inference_mode`. bf16 / fp16 are opt-in: autocast on a GPU, a low-precision
copy of the visual tower on the CPU (`_target`). Normalization happens per batch: the only float32
image buffer is one batch, sized from a memory budget (`auto_batch_size`).

Anytime results: `rounds(state_dict)` evaluates a seeded, class-stratified order of each task's
images in growing rounds and yields per task (correct, n) with a 95% Wilson interval
(`wilson_interval`); a cancel Event / callable stops it between batches.

Shared evaluators (`for_model_set`) are cached per (model set, split, subsample, seed, device) and
never changed by a caller: per-session settings such as bf16 live on a light view (`with_settings`)
that shares the model, the images and the heads, so one browser session's bf16 toggle cannot change
another session's numbers. The accuracy summaries (normalized, control) live in `core.select`.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .anytime import Estimate, stratified_order
from .datasets.imagecache import transform_for
from .datasets.sources import Progress, TaskSource, model_set_sources
from .errors import Cancelled, ModelSetError
from .heads import check_head, has_text_tower, resolve_head
from .models import build_model, image_size_of, load_visual, preprocess
from .runtime.devices import resolve_device

MEMORY_BUDGET_MB = 256  # float32 input + activations of one batch
MAX_BATCH = (
    256  # small batches: a cancel (a newer slider position) is seen within ~40 ms on the demo zoo, and no slower
)
FIRST_ROUND_SECONDS = 1.0  # anytime rounds: aim for first numbers within about this long


@dataclass
class TaskData:
    """One task inside an evaluator: uint8 pixels (never float), the rows evaluated, labels, head."""

    pixels: torch.Tensor  # uint8 (M, 3, S, S), in memory or memory-mapped
    index: torch.Tensor  # int64 (N,) rows of `pixels` evaluated
    labels: torch.Tensor  # int64 (N,)
    head: torch.Tensor  # (C, D); logits = normalize(features) @ head.T (+ bias)
    bias: torch.Tensor | None
    size: int
    mean: tuple
    std: tuple
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    head_source: str = ""
    release: Callable[[], None] | None = None  # after a batch: unmap the cache pages it read

    def batch(self, positions: torch.Tensor) -> torch.Tensor:
        """float32 normalized images at `positions` (into `index`): one batch, made on the fly."""
        return preprocess(self.pixels[self.index[positions]], self.size, mean=self.mean, std=self.std)

    @property
    def images(self) -> torch.Tensor:
        """All evaluated images as float32 — a convenience for small (demo) data; the evaluator never uses it."""
        return self.batch(torch.arange(len(self.index)))


def auto_batch_size(model, budget_mb: float = MEMORY_BUDGET_MB) -> int:
    """Images per batch so that the float32 input and the widest activations fit `budget_mb`."""
    v = model.visual
    size = image_size_of(model)
    patch = v.conv1.kernel_size[0] if hasattr(v, "conv1") else 16
    tokens = (size // patch) ** 2 + 1
    width = v.conv1.out_channels if hasattr(v, "conv1") else 768
    per_image = 3 * size * size * 4 + tokens * width * 4 * 12
    return int(max(1, min(MAX_BATCH, budget_mb * 2**20 // per_image)))


class Evaluator:
    """Accuracy of visual state dicts on a fixed set of tasks.

    Build with `for_model_set` (a model set's evaluation tasks: a model set JSON's data or the demo
    zoo's, cached per set/split/subsample) or directly from a base state dict and
    ``{task: TaskSource | (uint8 images, labels, TaskSpec)}``.
    """

    _CACHE: dict[tuple, Evaluator] = {}

    def __init__(
        self,
        base_state_dict: Mapping[str, torch.Tensor],
        tasks: Mapping[str, TaskSource | tuple],
        *,
        bf16: bool = False,
        fp16: bool = False,
        batch_size: int | None = None,
        arch: str | dict | None = None,
        device: str | torch.device | None = "auto",
        model=None,
    ):
        self.model = model if model is not None else build_model(base_state_dict, arch)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        size = image_size_of(self.model)
        text = has_text_tower(base_state_dict)
        embed_dim = int(self.model.visual.output_dim)
        self.tasks: dict[str, TaskData] = {}
        heads = {}
        for name, src in tasks.items():
            if isinstance(src, tuple):
                images, labels, spec = src
                src = TaskSource(images, labels, spec.classnames, spec.templates)
            if src.head is not None:
                head = check_head(src.head, name, src.num_classes or src.head.num_classes, embed_dim)
            else:
                head = resolve_head(
                    name,
                    self.model,
                    base_has_text=text,
                    num_classes=src.num_classes if src.num_classes is not None else -1,
                    classnames=src.classnames,
                    templates=src.templates,
                )
            if len(src.labels) and int(src.labels.max()) >= head.num_classes:
                top = int(src.labels.max())
                raise ModelSetError(f"task {name!r}: labels go up to {top} but the head has {head.num_classes} classes")
            heads[name] = (src, head)
        self.device = resolve_device(device)
        self.model.to(self.device)
        for name, (src, head) in heads.items():
            h = head.to(self.device)
            self.tasks[name] = TaskData(
                src.pixels,
                src.index,
                src.labels[src.index],
                h.weight,
                h.bias,
                size,
                tuple(src.mean),
                tuple(src.std),
                tuple(src.skipped),
                tuple(src.notes),
                head.source,
                src.release,
            )
        # The base's visual weights, to restore between evaluations: the caller's (read-only) tensors
        # where they fit as they are, copies otherwise (HF names, other dtypes).
        self.base_visual = {}
        for k, v in self.model.state_dict().items():
            if k.startswith("visual."):
                src = base_state_dict.get(k)
                fits = src is not None and src.shape == v.shape and src.dtype == v.dtype and src.device == v.device
                self.base_visual[k] = src if fits and torch.equal(src, v) else v.detach().clone()
        self.bf16 = bf16
        self.fp16 = fp16
        self.batch_size = int(batch_size) if batch_size else auto_batch_size(self.model)
        self._orders: dict[tuple[str, int], np.ndarray] = {}
        self._speed: dict[str, float] = {}  # images/s of the last pass per precision (shared by views)
        # Shared by every view of this evaluator: which weights are in the (shared) model now.
        self._model_state: dict[str, object] = {"loaded": None}
        # CPU bf16/fp16: a low-precision copy of the visual tower (pure bf16 matmuls use AMX / AVX-512
        # BF16; CPU autocast re-casts activations around every op and was slower than fp32 here).
        self._low: dict[torch.dtype, dict] = {}

    def with_settings(
        self, *, bf16: bool | None = None, fp16: bool | None = None, batch_size: int | None = None
    ) -> Evaluator:
        """A view with its own settings sharing this evaluator's model, images and heads (cheap)."""
        view = copy.copy(self)
        if bf16 is not None:
            view.bf16 = bool(bf16)
        if fp16 is not None:
            view.fp16 = bool(fp16)
        if batch_size is not None:
            view.batch_size = int(batch_size)
        return view

    @classmethod
    def evict(cls, ev: Evaluator) -> None:
        """Drop the cached evaluator `ev` shares its model with (frees its images and model)."""
        for k, v in list(cls._CACHE.items()):
            if v.model is ev.model:
                del cls._CACHE[k]

    @classmethod
    def clear_cache(cls) -> None:
        cls._CACHE.clear()

    # -- construction -------------------------------------------------------
    @classmethod
    def for_model_set(
        cls,
        ms,
        split: str = "test",
        subsample: int | None = None,
        bf16: bool = False,
        seed: int = 0,
        *,
        fp16: bool = False,
        device: str | None = "auto",
        progress: Progress | None = None,
    ) -> Evaluator:
        """Evaluator on a model set's evaluation tasks (``ms.eval_tasks``) for one split.

        Cached by (model set, split, subsample, seed, device): the model, the images (decoded into
        the on-disk cache on first use, `progress(done, total)` per task) and the heads are built
        once per process. `subsample` takes a seeded subset of each task's split (sorted indices).
        The returned object is a view with its own `bf16` / `fp16` (the cached one is never modified).
        """
        torch.set_flush_denormal(True)
        dev = resolve_device(device)
        where = getattr(ms, "source", None) or ms.zoo_dir or ms.base_path
        key = (str(where), ms.fingerprint(), tuple(ms.eval_tasks), split, subsample, seed, str(dev))
        ev = cls._CACHE.get(key)
        if ev is None:
            if not ms.eval_tasks:
                raise ValueError(f"model set {ms.name!r} has no evaluation tasks (eval_tasks is empty)")
            base = ms.base()
            build_arch = ms.build_arch() if hasattr(ms, "build_arch") else None
            model = build_model(base, build_arch)
            pre = ms.preprocessor_config() if hasattr(ms, "preprocessor_config") else None
            transform = transform_for(model, pre)
            tasks = model_set_sources(ms, split, transform, subsample=subsample, seed=seed, progress=progress)
            ev = cls(base, tasks, model=model, device=dev)
            cls._CACHE[key] = ev
        return ev.with_settings(bf16=bf16, fp16=fp16)

    # -- core ---------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def heads(self) -> dict[str, torch.Tensor]:
        return {t: d.head for t, d in self.tasks.items()}

    def num_images(self, task: str | None = None) -> int | dict[str, int]:
        """Images each task's accuracy rests on (after subsampling and skipping unreadable files)."""
        if task is not None:
            return len(self.tasks[task].labels)
        return {t: len(d.labels) for t, d in self.tasks.items()}

    def notes(self) -> dict[str, list[str]]:
        """Per task: what the data reader and the image cache reported (carved val, skipped files, ...)."""
        return {t: list(d.notes) for t, d in self.tasks.items() if d.notes}

    def load(self, state_dict: Mapping[str, torch.Tensor] | None) -> None:
        """Put base visual weights overlaid with `state_dict`'s ``visual.*`` entries into the model
        (into the low-precision tower for a CPU bf16 / fp16 view: one converting copy per move)."""
        target, state = self._target()
        if state_dict is None:
            if state["loaded"] != "base":
                load_visual(target, self.base_visual)
                state["loaded"] = "base"
            return
        n_visual = sum(k.startswith("visual.") for k in state_dict)
        if n_visual < len(self.base_visual):  # partial dict: the rest comes from the base
            load_visual(target, self.base_visual)
        if n_visual:
            load_visual(target, state_dict)
        state["loaded"] = _Loaded(state_dict)

    def _ensure_loaded(self, state_dict) -> None:
        loaded = self._target()[1]["loaded"]
        fresh = loaded == "base" if state_dict is None else isinstance(loaded, _Loaded) and loaded.holds(state_dict)
        if not fresh:
            self.load(state_dict)

    def _autocast(self):
        """Autocast on a GPU for bf16 / fp16; on the CPU a low-precision tower is used instead (`_target`)."""
        dtype = torch.bfloat16 if self.bf16 else torch.float16
        on = bool(self.bf16 or self.fp16) and self.device.type != "cpu"
        return torch.autocast(self.device.type, dtype=dtype, enabled=on)

    @torch.no_grad()
    def _target(self) -> tuple[torch.nn.Module, dict]:
        """(module whose ``visual`` runs, its "which weights are loaded" record): the shared model, or on
        the CPU for bf16 / fp16 a low-precision copy of its visual tower shared by every such view."""
        if not (self.bf16 or self.fp16) or self.device.type != "cpu":
            return self.model, self._model_state
        dtype = torch.bfloat16 if self.bf16 else torch.float16
        low = self._low.get(dtype)
        if low is None:
            shell = torch.nn.Module()
            shell.visual = copy.deepcopy(self.model.visual).to(dtype)
            low = {"shell": shell, "loaded": self._model_state["loaded"]}  # it holds what the model holds
            self._low[dtype] = low
        return low["shell"], low

    def _tower(self) -> tuple[torch.nn.Module, torch.dtype]:
        """The visual tower to run and its input dtype."""
        visual = self._target()[0].visual
        return visual, next(visual.parameters()).dtype

    def _plan(self, positions: Mapping[str, torch.Tensor]) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Batches of at most `batch_size` images running across tasks in order: [(task, positions)]."""
        batch, room = [], self.batch_size
        for t, pos in positions.items():
            i = 0
            while i < len(pos):
                take = pos[i : i + room]
                batch.append((t, take))
                i += len(take)
                room -= len(take)
                if room == 0:
                    yield batch
                    batch, room = [], self.batch_size
        if batch:
            yield batch

    def _stream(
        self,
        positions: Mapping[str, torch.Tensor],
        on_features: Callable[[str, torch.Tensor, torch.Tensor], None],
        cancel=None,
    ) -> None:
        """Run the model over `positions` (per task, into its index) batch by batch; calls
        `on_features(task, positions, normalized float32 features)`. Checks `cancel` between batches."""
        t0, seen = time.perf_counter(), 0
        tower, dtype = self._tower()
        # One autocast region for the whole pass (GPU): the weight copies are cast once, not per batch.
        with torch.inference_mode(), self._autocast():
            for batch in self._plan(positions):
                if _cancelled(cancel):
                    raise Cancelled("evaluation cancelled")
                x = torch.cat([self.tasks[t].batch(pos) for t, pos in batch])
                f = tower(x.to(self.device, dtype, non_blocking=True))
                seen += len(x)
                with torch.autocast(self.device.type, enabled=False):  # heads and argmax in float32
                    f = F.normalize(f.float(), dim=-1)
                    self._post(batch, f, on_features)
        if seen:
            self._speed[self.precision] = seen / max(time.perf_counter() - t0, 1e-9)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"

    def images_per_second(self) -> float | None:
        """The speed of the last pass at this view's precision (None before any)."""
        return self._speed.get(self.precision)

    def _post(self, batch, f: torch.Tensor, on_features) -> None:
        """Hand each task's slice of the batch's features on, then unmap the cache pages it read."""
        i = 0
        for t, pos in batch:
            on_features(t, pos, f[i : i + len(pos)])
            i += len(pos)
            if self.tasks[t].release is not None:
                self.tasks[t].release()

    def _logits(self, task: str, f: torch.Tensor) -> torch.Tensor:
        d = self.tasks[task]
        lg = f @ d.head.T
        return lg if d.bias is None else lg + d.bias

    def features(
        self, state_dict: Mapping[str, torch.Tensor] | None = None, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """L2-normalized image features per task (N_t, D) for a visual state dict (None = the base)."""
        tasks = self._check(tasks)
        self.load(state_dict)
        dim = int(self.model.visual.output_dim)
        out = {t: torch.empty(len(self.tasks[t].labels), dim) for t in tasks}

        def keep(t, pos, f):
            out[t][pos] = f.cpu()

        self._stream({t: torch.arange(len(self.tasks[t].labels)) for t in tasks}, keep)
        return out

    def logits(
        self, state_dict: Mapping[str, torch.Tensor] | None = None, tasks: Iterable[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Head logits per task (N_t, C_t)."""
        return {t: self._logits(t, f.to(self.device)).cpu() for t, f in self.features(state_dict, tasks).items()}

    def counts(
        self,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        tasks: Iterable[str] | None = None,
        *,
        cancel=None,
    ) -> dict[str, tuple[int, int]]:
        """(correct, n) per task on every evaluated image; `cancel` (Event or callable) raises Cancelled."""
        tasks = self._check(tasks)
        self.load(state_dict)
        right = {t: 0 for t in tasks}

        def count(t, pos, f):
            pred = self._logits(t, f).argmax(1).cpu()
            right[t] += int((pred == self.tasks[t].labels[pos]).sum())

        self._stream({t: torch.arange(len(self.tasks[t].labels)) for t in tasks}, count, cancel)
        return {t: (right[t], len(self.tasks[t].labels)) for t in tasks}

    def accuracy(
        self,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        tasks: Iterable[str] | None = None,
        *,
        cancel=None,
    ) -> dict[str, float]:
        """Accuracy in [0, 1] per task of the model whose visual tower is `state_dict` (None = base, i.e. zero-shot)."""
        return {
            t: (k / n if n else float("nan")) for t, (k, n) in self.counts(state_dict, tasks, cancel=cancel).items()
        }

    def timed_accuracy(self, state_dict=None, tasks=None) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        acc = self.accuracy(state_dict, tasks)
        return acc, time.perf_counter() - t0

    # -- anytime ------------------------------------------------------------
    def order(self, task: str, seed: int = 0) -> np.ndarray:
        """The seeded, stratified evaluation order of a task's images (positions into its index)."""
        key = (task, seed)
        if key not in self._orders:
            self._orders[key] = stratified_order(self.tasks[task].labels.numpy(), seed)
        return self._orders[key]

    def rounds(
        self,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        tasks: Iterable[str] | None = None,
        *,
        first: int | None = None,
        growth: float = 2.0,
        seed: int = 0,
        cancel=None,
    ) -> Iterator[dict[str, Estimate]]:
        """Anytime accuracy: round r evaluates the next ``first * growth**r`` images of every task in its
        stratified order (`first` None: as many as the last pass's speed evaluates in
        `FIRST_ROUND_SECONDS`, at least 2 per task; 8 before any pass) and yields {task: Estimate(correct, n, total)} (cumulative; `Estimate.interval`
        is the 95% Wilson interval). Stops after the round that covers every image, or quietly between
        batches once `cancel` is set. Other callers may use the shared model between rounds: the
        weights are re-loaded when needed (hold `core.runtime.locks.FORWARD_LOCK` around each step)."""
        tasks = self._check(tasks)
        right = {t: 0 for t in tasks}
        done = {t: 0 for t in tasks}
        total = {t: len(self.tasks[t].labels) for t in tasks}
        if first is None:
            speed = self.images_per_second()
            first = 8 if speed is None else max(2, int(speed * FIRST_ROUND_SECONDS / max(1, len(tasks))))
        step = max(1, int(first))

        def count(t, pos, f):
            pred = self._logits(t, f).argmax(1).cpu()
            right[t] += int((pred == self.tasks[t].labels[pos]).sum())

        while True:
            positions = {}
            for t in tasks:
                nxt = min(total[t], done[t] + step)
                if nxt > done[t]:
                    positions[t] = torch.from_numpy(self.order(t, seed)[done[t] : nxt])
            if not positions:
                return
            self._ensure_loaded(state_dict)
            try:
                self._stream(positions, count, cancel)
            except Cancelled:
                return
            for t, pos in positions.items():
                done[t] += len(pos)
            yield {t: Estimate(right[t], done[t], total[t]) for t in tasks}
            if all(done[t] >= total[t] for t in tasks):
                return
            step = max(step + 1, int(step * growth))

    def _check(self, tasks: Iterable[str] | None) -> list[str]:
        tasks = list(self.tasks) if tasks is None else list(tasks)
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise KeyError(f"tasks {unknown} are not in this evaluator (it has {list(self.tasks)})")
        return tasks


class _Loaded:
    """Which state dict's weights the model holds: the dict's id and weak references to its visual tensors.

    An id alone is not an identity: once a merged dict is freed, the next one can be allocated at the same
    address (the LiNeS page's next target then showed the previous target's accuracies). The same id with
    the very same tensor objects is the same weights; no reference is kept, so nothing stays alive for it."""

    __slots__ = ("ident", "refs")

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self.ident = id(state_dict)
        self.refs = {k: weakref.ref(v) for k, v in state_dict.items() if k.startswith("visual.")}

    def holds(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        if id(state_dict) != self.ident:
            return False
        n = 0
        for k, v in state_dict.items():
            if k.startswith("visual."):
                ref = self.refs.get(k)
                if ref is None or ref() is not v:
                    return False
                n += 1
        return n == len(self.refs)


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())
