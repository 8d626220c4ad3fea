"""Session state and caches every page shares.

- The active model set is a `core.spec.ModelSetRef` in ``st.session_state["model_set_ref"]``;
  the `ModelSet` it names is held by ``st.cache_resource`` keyed by the ref and the files'
  sizes and mtimes, so a page reload never reloads weights (the ModelSet keeps its state
  dicts and task vectors once per process).
- Derived results (task-vector tables, spectral tables, scopes, ESDs) live in a per-model-set
  store held by ``st.cache_resource`` (never st.cache_data: no pickling of tensors). The first
  computation shows a progress bar; later reruns read the store.
- The Merge lab puts its last merged model in ``st.session_state["merged_state_dict"]`` as
  ``(spec_key, state_dict)``; the analysis pages pick it up as "merged".

Nothing heavy happens at import: core modules that pull in torch are imported lazily.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import streamlit as st

from core.spec import ModelSetRef

MODEL_SET_KEY = "model_set_ref"
MERGED_KEY = "merged_state_dict"
SEED_KEY = "seed"
ERROR_KEY = "model_set_error"
DEFAULT_ZOO_ENV = "MERGESCOPE_DEFAULT_ZOO"  # e.g. "micro": preselect that zoo when it is built
DEFAULT_REF_ENV = "MERGESCOPE_DEFAULT_MODEL_SET"  # path of a JSON ModelSetRef to preselect (tests, demos)
MODELS_PAGE = str(Path(__file__).resolve().parents[1] / "pages" / "models.py")  # absolute: st.page_link


# ----------------------------------------------------------------------------------- warm-up


@st.cache_resource(show_spinner=False)
def warm_kernels() -> threading.Thread:
    """TIES's compiled kernel (core.merging.fused) loaded on a background thread once per server process:
    numba's import and the cached machine code take 0.5-0.7 s, which the first TIES merge paid otherwise
    (the Merge lab's first TIES: "merge 832 ms" against ~110 ms for the direction once loaded, styled zoo)."""
    from core.merging import fused

    th = threading.Thread(target=fused.warm, name="mergescope-warm-kernels", daemon=True)
    th.start()
    return th


# ----------------------------------------------------------------------------------- model set


def current_ref() -> ModelSetRef | None:
    """The active ModelSetRef; when nothing was chosen yet in this session, a default:
    the zoo named by the ``?zoo=`` query parameter or $MERGESCOPE_DEFAULT_ZOO (if there is a build),
    else the ModelSetRef JSON file named by $MERGESCOPE_DEFAULT_MODEL_SET."""
    ref = st.session_state.get(MODEL_SET_KEY)
    if isinstance(ref, dict):
        ref = ModelSetRef.from_dict(ref)
    if ref is None and not st.session_state.get("_default_zoo_checked"):
        st.session_state["_default_zoo_checked"] = True
        ref = _default_ref()
        if ref is not None:
            st.session_state[MODEL_SET_KEY] = ref
    return ref


def _default_ref() -> ModelSetRef | None:
    kind = st.query_params.get("zoo") or os.environ.get(DEFAULT_ZOO_ENV)
    try:
        if kind:
            from core.zoo import load_model_set

            load_model_set(kind)  # raises when there is no build (a build from an older recipe will do)
            return ModelSetRef(zoo=kind)
        path = os.environ.get(DEFAULT_REF_ENV)
        if path:
            return ModelSetRef.from_dict(json.loads(Path(path).read_text()))
    except Exception:  # a wrong kind, an unreadable cache or file: start with nothing loaded
        return None
    return None


def set_model_set(ref: ModelSetRef | None) -> None:
    """Make `ref` the active model set (None: unload). A merged model of the previous set is dropped."""
    if ref != st.session_state.get(MODEL_SET_KEY):
        st.session_state.pop(MERGED_KEY, None)
    st.session_state[MODEL_SET_KEY] = ref
    st.session_state.pop(ERROR_KEY, None)
    st.session_state["_default_zoo_checked"] = True


def _file_stamp(path: Path) -> list:
    """(path, size, mtime) of a file, or of every file directly inside a directory."""
    path = Path(path)
    if path.is_dir():
        return [_file_stamp(p)[0] for p in sorted(path.iterdir()) if p.is_file()]
    st_ = path.stat()
    return [[str(path), st_.st_size, st_.st_mtime_ns]]


def _stamp(ms) -> str:
    parts = [_file_stamp(ms.base_path)] + [_file_stamp(p) for p in ms.finetuned_paths.values()]
    return json.dumps(parts)


@st.cache_resource(show_spinner=False, max_entries=4)
def _model_set_resource(ref_key: str, stamp: str, _fresh):
    return _fresh


def get_model_set():
    """The active `core.modelset.ModelSet`, or None when nothing is loaded (or it cannot be read:
    then ``st.session_state["model_set_error"]`` says why)."""
    ref = current_ref()
    if ref is None:
        return None
    try:
        fresh = ref.load()  # cheap: paths only, no weights
        stamp = _stamp(fresh)
    except Exception as e:
        st.session_state[ERROR_KEY] = f"Cannot open the model set ({_describe(ref)}): {e}"
        return None
    st.session_state.pop(ERROR_KEY, None)
    return _model_set_resource(json.dumps(ref.to_dict(), sort_keys=True), stamp, _fresh=fresh)


def _describe(ref: ModelSetRef) -> str:
    return f"{ref.zoo} zoo" if ref.zoo else f"base {ref.base}, {len(ref.finetuned)} fine-tuned"


AUTO_CHECK_BYTES = 500 * 2**20  # a set under this size gets the NaN/Inf check without asking


def validation_report(ms, *, check_finite: bool = True):
    """The set's ValidationReport (core.checkpoints.validate_model_set), once per set and depth."""
    name = "validation_report" if check_finite else "validation_headers"
    label = "Checking keys, shapes and values" if check_finite else "Reading the checkpoints' headers"
    return memo(ms, name, lambda cb: ms.validate(check_finite=check_finite, progress=cb), label)


def set_bytes(ms) -> int:
    """Bytes on disk of the set's checkpoint files (from stat: no file is read)."""
    total = 0
    for p in [ms.base_path, *ms.finetuned_paths.values()]:
        p = Path(p)
        try:
            total += sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size
        except OSError:
            pass
    return total


def require_model_set():
    """The active ModelSet, validated; without one, explain what to load, link the Models page and stop
    the page. A set that fails validation (however it became active: a link, $MERGESCOPE_DEFAULT_MODEL_SET,
    files changed on disk) is shown as the grouped report and the page stops: no page computes on it."""
    ms = get_model_set()
    if ms is not None:
        from ui import errors

        try:
            report = validation_report(ms, check_finite=set_bytes(ms) < AUTO_CHECK_BYTES)
        except Exception as e:  # validate_model_set reports bad files itself; this is the last resort
            errors.show(e)
            st.stop()
        if report.ok:
            return ms
        st.error(
            f"**The active model set ({ms.name}) cannot be used.** Fix the files named below, or load another set."
        )
        errors.show_report(report)
        st.page_link(MODELS_PAGE, label="Go to Models", icon=":material/inventory_2:")
        st.stop()
    err = st.session_state.get(ERROR_KEY)
    if err:
        st.error(err)
    st.info(
        "No model set is loaded yet. A model set is one pretrained base plus fine-tuned checkpoints "
        "(one per task). Load the zoo or your own checkpoints on the Models page."
    )
    st.page_link(MODELS_PAGE, label="Go to Models to load a model set", icon=":material/inventory_2:")
    st.stop()


def seed() -> int:
    return int(st.session_state.get(SEED_KEY, 0))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------- progress


class ProgressCallback:
    """A progress bar driven by callbacks of either shape core uses:
    ``cb(stage: str, done: int, total: int)`` (zoo builds) or ``cb(done: int, total: int)`` (tables).

    Shown inside an ``st.status`` box; ``transient=True`` draws only a bar in a placeholder
    that `finish` removes (for first-time computations of cached results).
    """

    def __init__(self, label: str, *, transient: bool = False):
        self.label = label
        self.transient = transient
        if transient:
            self._slot = st.empty()
            self._bar = self._slot.progress(0.0, text=label)
            self._status = None
        else:
            self._status = st.status(label, expanded=True)
            self._bar = self._status.progress(0.0, text=label)

    def __call__(self, stage_or_done, done=None, total=None) -> None:
        if isinstance(stage_or_done, str):
            stage, d, t = stage_or_done, done or 0, total or 0
        else:
            stage, d, t = None, stage_or_done or 0, done or 0
        frac = min(max(d / t, 0.0), 1.0) if t else 0.0
        text = self.label + (f" — {stage}" if stage else "") + (f" ({d}/{t})" if t else "")
        self._bar.progress(frac, text=text)
        if self._status is not None and stage:
            self._status.update(label=f"{self.label} — {stage}")

    def finish(self, message: str | None = None) -> None:
        if self.transient:
            self._slot.empty()
        else:
            self._bar.progress(1.0, text=message or self.label)
            self._status.update(label=message or self.label, state="complete", expanded=False)

    def fail(self, message: str) -> None:
        if self.transient:
            self._slot.error(message)
        else:
            self._status.update(label=message, state="error", expanded=True)


def progress_callback(label: str, *, transient: bool = False) -> ProgressCallback:
    """A callable(stage_or_done, ...) updating an st.status + st.progress; call `.finish()` at the end."""
    return ProgressCallback(label, transient=transient)


# ----------------------------------------------------------------------------------- result store


def ms_key(ms) -> str:
    """Identity of a model set's files (paths, sizes, mtimes) for cache keys."""
    return ms.fingerprint()


@st.cache_resource(show_spinner=False, max_entries=4)
def _store(key: str) -> dict:
    return {"_lock": threading.RLock()}


def memo(ms, name: str, compute: Callable, label: str | None = None):
    """`compute(progress)` once per model set and `name`, kept in a cache_resource store.

    The progress bar (a transient ProgressCallback labelled `label`) appears only when the
    value is actually computed, never on later reruns.
    """
    store = _store(ms_key(ms))
    if name in store:
        return store[name]
    with store["_lock"]:
        if name not in store:
            cb = progress_callback(label or f"Computing {name}", transient=True)
            try:
                store[name] = compute(cb)
            finally:
                cb.finish()
    return store[name]


def live_merger(ms, subsample: int | None, bf16: bool):
    """The one `core.live.LiveMerger` per model set and evaluation settings, shared by every session and
    page (LiNeS, Merge lab): its direction and result caches serve them all. Settings are part of the key,
    so sessions with different bf16/subsample never share (or change) each other's numbers."""
    from core.live import LiveMerger
    from core.live_report import run_log_recorder
    from core.runtime.runlog import RunLog
    from core.spec import EvalSpec

    es = EvalSpec(split="test", subsample=subsample, bf16=bf16, seed=seed())
    ref = current_ref()

    def build(cb):
        # Every new evaluation goes to the run log (path read at each write) as a reproducible RunConfig.
        recorder = run_log_recorder(RunLog, ref, ms.fingerprint()) if ref is not None else None
        return LiveMerger(
            ms,
            eval_spec=es,
            evaluator_for=lambda e: get_evaluator(ms, e.split, e.subsample, e.bf16),
            on_evaluated=recorder,
        )

    return memo(ms, f"live:{subsample}:{bf16}:{es.seed}", build, "Preparing the live merger")


def lines_lesson(ms) -> dict | None:
    """The model set's measured LiNeS lesson (core.live_report.cached_lines_lesson), read from disk; None
    when it was never measured (no computation on page load)."""
    from core.live_report import cached_lines_lesson

    return cached_lines_lesson(ms, compute=False, cache=analysis_cache())


def merge_lesson(ms) -> dict | None:
    """The model set's measured merge lesson (each method's λ on validation,
    core.live_report.cached_merge_lesson), read from disk; None when it was never measured."""
    from core.live_report import cached_merge_lesson

    return cached_merge_lesson(ms, compute=False, cache=analysis_cache())


def measure_merge_lesson(ms, live, progress) -> dict:
    """Measure the merge lesson now (each lesson method's λ grid on validation) and keep it on disk."""
    from core.live_report import cached_merge_lesson

    return cached_merge_lesson(ms, live, cache=analysis_cache(), progress=progress)


def measure_lines_lesson(ms, live, progress) -> dict:
    """Measure the LiNeS lesson now (2 x 3 validation passes per task) and keep it on disk."""
    from core.live_report import cached_lines_lesson

    return cached_lines_lesson(ms, live, cache=analysis_cache(), progress=progress)


def newer_input() -> Callable[[], bool]:
    """A `cancel` for core's evaluations (checked between batches): true once the user has moved a widget
    again, i.e. Streamlit holds a rerun (or stop) request for this session. A burst of slider presses then
    evaluates only the latest position instead of finishing each stale one. Reads Streamlit's pending
    request state (not a public API; on any change this returns a never-cancelling callable, and the page
    behaves as before: the rerun takes over at the next redraw)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        requests = get_script_run_ctx().script_requests
        if not hasattr(requests._state, "name"):  # probe the private field once
            raise AttributeError("_state")
    except Exception:
        return lambda: False

    def pending() -> bool:
        state = getattr(requests, "_state", None)
        return getattr(state, "name", "") in ("RERUN", "STOP")

    return pending


def follow_newer_input() -> None:
    """After an evaluation that `newer_input` cancelled: start the fragment's run for the newest input now.
    A stale run that completed instead would remove the elements it did not redraw (the numbers, the
    bars, the tables) and the browser would rebuild them on the next run; measured in Chromium on the
    Merge lab, that churn spaced a burst's runs ~0.3 s apart. Call inside an `st.fragment`."""
    st.rerun(scope="fragment")


def analysis_cache():
    """The on-disk table cache (`core.analysis_cache.AnalysisCache` under the cache directory)."""
    from core.analysis_cache import AnalysisCache

    return AnalysisCache()


def _open(path):
    """A state dict read one tensor at a time from disk (`core.checkpoints.open_state_dict`): never held whole."""
    from core.checkpoints import open_state_dict

    return open_state_dict(path)


def analysis_keys(ms) -> list[str]:
    """The floating-point keys the fine-tuned checkpoints share with the base (what task vectors cover),
    read from the files' headers where the format allows (no weights are loaded)."""

    def compute(cb):
        from core.analysis_cache import float_keys

        if not ms.tasks:
            return []
        base, ft = _open(ms.base_path), _open(ms.finetuned_paths[ms.tasks[0]])
        floating = set(float_keys(ft))
        return [k for k in ft if k in floating and k in base]

    return memo(ms, "keys", compute, "Reading checkpoint headers")


def cached_task_vectors(ms) -> dict:
    """{task: task vector} (ft - base over the shared floating-point keys). Each is a
    `core.analysis_cache.StreamedTaskVector`: a tensor is computed from the two files when it is read
    and not kept, so a 20-task ViT-L/14 set never sits in memory."""

    def compute(cb):
        from core.analysis_cache import StreamedTaskVector

        keys = analysis_keys(ms)
        base = _open(ms.base_path)
        return {t: StreamedTaskVector(base, _open(ms.finetuned_paths[t]), keys) for t in ms.tasks}

    return memo(ms, "task_vectors", compute, "Opening checkpoints")


def _set_files(ms) -> list:
    return [ms.base_path, *ms.finetuned_paths.values()]


def _keys_param(keys: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def cached_tv_tables(ms, tower: str | None = None) -> dict:
    """Task-vector statistics of one tower (None: the default, core.layers.select_tower): parameter,
    block, kind and sign-conflict tables (core.task_vectors), on disk keyed by the files' fingerprints."""

    def tables(cb):
        from core import task_vectors as T

        tvs = cached_task_vectors(ms)
        base = _open(ms.base_path)
        steps = [
            ("parameter", lambda: T.parameter_table(base, tvs, tower=tower)),
            ("sign_conflict", lambda: T.sign_conflict_table(tvs, tower=tower)),
        ]
        out = {}
        for i, (name, fn) in enumerate(steps):
            cb(f"{name} table", i, len(steps))
            out[name] = fn()
        out["block"] = T.block_table(base, tvs, tower=tower, params=out["parameter"])
        out["kind"] = T.kind_table(base, tvs, tower=tower, params=out["parameter"])
        return {k: out[k] for k in ("parameter", "block", "kind", "sign_conflict")}

    def compute(cb):
        params = {"tower": tower, "keys": _keys_param(analysis_keys(ms)), "tasks": ms.tasks}
        return analysis_cache().get_or_compute("tv_tables", _set_files(ms), params, lambda: tables(cb))

    return memo(ms, "tv_tables" + ("" if tower is None else f":{tower}"), compute, "Task-vector statistics")


def cached_cosine(ms, layer: int | None | str = "all", tower: str | None = None):
    """Task x task cosine matrix of one tower over all its parameters ("all"), one block (int) or
    outside the blocks (None); on disk keyed by the files' fingerprints."""
    from core.task_vectors import cosine_matrix

    def compute(cb):
        params = {"layer": layer, "tower": tower, "keys": _keys_param(analysis_keys(ms)), "tasks": ms.tasks}
        return analysis_cache().get_or_compute(
            "cosine", _set_files(ms), params, lambda: cosine_matrix(cached_task_vectors(ms), layer, tower=tower)
        )

    return memo(ms, f"cosine:{layer}" + ("" if tower is None else f":{tower}"), compute, "Cosine similarity")


def merged_entry() -> tuple[str, dict] | None:
    """(spec_key, state_dict) of the Merge lab's last merged model, if any."""
    v = st.session_state.get(MERGED_KEY)
    return v if isinstance(v, tuple) and len(v) == 2 else None


def spectral_sources(ms) -> list[str]:
    """Every `which` the analysis caches accept for this model set, in menu order."""
    out = ["base", *ms.tasks, *[f"tv:{t}" for t in ms.tasks]]
    return out + (["merged"] if merged_entry() else [])


def source_label(which: str) -> str:
    if which == "base":
        return "base θ₀"
    if which == "merged":
        return "merged"
    if which.startswith("tv:"):
        return f"τ {which[3:]}"
    return f"fine-tuned {which}"


def _resolve(ms, which: str) -> tuple[str, dict]:
    """(cache name, state dict) for "base", a task name, "tv:<task>" or "merged". Checkpoints are opened
    lazily (a tensor is read when accessed), so analysing one model of a big set never loads the others."""
    if which == "base":
        return "base", _open(ms.base_path)
    if which == "merged":
        entry = merged_entry()
        if entry is None:
            raise KeyError("no merged model yet: make one in the Merge lab")
        return f"merged:{entry[0]}", entry[1]
    if which.startswith("tv:"):
        return which, cached_task_vectors(ms)[which[3:]]
    if which in ms.tasks:
        return f"ft:{which}", _open(ms.finetuned_paths[which])
    raise KeyError(f"unknown model {which!r}; expected 'base', a task of {ms.tasks}, 'tv:<task>' or 'merged'")


def _source_files(ms, which: str) -> list | None:
    """The files a model's analysis depends on (None for the in-memory merged model: not cached on disk)."""
    if which == "base":
        return [ms.base_path]
    if which.startswith("tv:"):
        return [ms.base_path, ms.finetuned_paths[which[3:]]]
    if which in ms.tasks:
        return [ms.finetuned_paths[which]]
    return None


def _on_disk(ms, which: str, kind: str, params: dict, compute: Callable):
    files = _source_files(ms, which)
    if files is None:
        return compute()
    return analysis_cache().get_or_compute(kind, files, params, compute)


def _drop_old_merged(store: dict, prefix: str, keep: str) -> None:
    for k in [k for k in store if k.startswith(prefix) and k != keep]:
        store.pop(k, None)


def _per_model(ms, which: str, tower: str | None, kind: str, label: str, compute: Callable):
    """A per-model table of `kind` (`compute(state_dict, keys, progress)`) over the keys the fine-tuned
    checkpoints cover: memoized in the session and kept on disk keyed by the files; for the merged model
    the previous merge's table is dropped."""
    name, sd = _resolve(ms, which)
    keys = [k for k in analysis_keys(ms) if k in sd]
    memo_name = f"{kind}:{name}" + ("" if tower is None else f":{tower}")
    if which == "merged":
        _drop_old_merged(_store(ms_key(ms)), f"{kind}:merged:", memo_name)
    params = {"which": which, "tower": tower, "keys": _keys_param(keys)}
    return memo(ms, memo_name, lambda cb: _on_disk(ms, which, kind, params, lambda: compute(sd, keys, cb)), label)


def cached_spectral_table(ms, which: str, tower: str | None = None):
    """`core.spectra.spectral_table` of one model ("base", a task, "tv:<task>", "merged") and one
    tower, over the keys the fine-tuned checkpoints cover; computed once per model and kept on disk
    (keyed by the files' fingerprints), so reopening the app reads it back."""
    from core.spectra import spectral_table

    return _per_model(
        ms,
        which,
        tower,
        "spectra",
        f"Spectra of {source_label(which)} (once per model)",
        lambda sd, keys, cb: spectral_table(sd, keys=keys, progress=cb, tower=tower),
    )


def cached_scopes(ms, which: str, tower: str | None = None):
    """`core.scopes.weight_scopes` of one model and tower (same `which` as cached_spectral_table), kept on disk."""
    from core.analysis_cache import restrict
    from core.scopes import weight_scopes

    return _per_model(
        ms, which, tower, "scopes", "Weight scopes", lambda sd, keys, cb: weight_scopes(restrict(sd, keys), tower=tower)
    )


def cached_esd(ms, which: str, matrix: str) -> tuple:
    """(eigenvalues, power-law fit) of one analysed matrix (a spectral_table row name) of one model."""
    from core.spectra import analysed_matrices, esd, fit_powerlaw

    name, sd = _resolve(ms, which)

    def compute(cb):
        base_name = matrix.split("[")[0]
        for row, w in analysed_matrices(sd, keys=[base_name]):
            if row == matrix:
                eigs = esd(w)
                return eigs, fit_powerlaw(eigs)
        raise KeyError(f"{matrix!r} is not an analysed matrix of {source_label(which)}")

    return memo(ms, f"esd:{name}:{matrix}", compute, "Eigenvalues")


@st.cache_resource(show_spinner=False, max_entries=256)
def _checkpoint_info(path: str, stamp: str) -> dict:
    from core.checkpoints import checkpoint_info

    try:
        return checkpoint_info(path)
    except Exception as e:  # the Models page shows the message, not a traceback
        return {"path": path, "error": str(e)}


def checkpoint_summary(path) -> dict:
    """`core.checkpoints.checkpoint_info` (headers only), cached by path + size + mtime;
    {"path", "error"} when the file cannot be read."""
    try:
        stamp = json.dumps(_file_stamp(Path(path)))
    except OSError as e:
        return {"path": str(path), "error": f"{path}: {e.strerror or e}"}
    return _checkpoint_info(str(path), stamp)


# ----------------------------------------------------------------------------------- evaluation


@st.cache_resource(show_spinner="Preparing evaluation data (once per model set)…", max_entries=8)
def _evaluator(key: str, split: str, subsample: int | None, bf16: bool, seed_: int, _ms):
    from core.evaluate import Evaluator

    return Evaluator.for_model_set(_ms, split=split, subsample=subsample, bf16=bf16, seed=seed_)


def get_evaluator(ms, split: str = "test", subsample: int | None = None, bf16: bool = False):
    """`core.evaluate.Evaluator.for_model_set(ms, ...)` for the session's seed, held by st.cache_resource."""
    return _evaluator(ms_key(ms), split, subsample, bf16, seed(), _ms=ms)
