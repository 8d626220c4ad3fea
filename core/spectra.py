"""Empirical spectral densities (ESD) and heavy-tailed power-law fits, per weight matrix.

Conventions follow WeightWatcher 0.7.7 (CalculatedContent/WeightWatcher), whose numbers
`fit_powerlaw` reproduces, and TempBalance (YefanZhou/TempBalance) for the cheaper
median-xmin Hill estimate:

* The ESD of an N x M matrix W is the spectrum of WᵀW: the squared singular values,
  min(N, M) of them, with no 1/N normalization.
* A Conv2d kernel (out, in, kh, kw) is cut into kh·kw matrices of shape out x in, each
  scaled by √(1/2) (WeightWatcher's conv2d_norm), and the eigenvalues of all slices are
  pooled into one ESD.
* The power-law fit keeps λ > 1e-5, scans every eigenvalue but the largest as xmin, and
  picks the first xmin with the least Kolmogorov-Smirnov distance. Fewer than 20 eigenvalues
  take WeightWatcher's small-N path (bias-corrected Hill estimator, tails of at least 8).

Everything numeric runs in float64. Eigenvalues come from the Gram matrix (cheaper than an
SVD, batched on a GPU, spread over worker threads on a CPU), and the fit evaluates all
candidate xmins at once, with branch and bound on the KS distance, instead of
WeightWatcher's Python loop; the few candidates that decide the result are recomputed term
for term as WeightWatcher does, so xmin, alpha and D come out equal to its own.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

try:  # ships with scikit-learn; without it BLAS keeps its own thread count
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

from core.layers import layer_index, select_tower
from core.runtime.devices import resolve_device  # noqa: F401 - re-exported: spectra's device rule

EVALS_THRESH = 1e-5  # WeightWatcher drops eigenvalues <= this before fitting
SMALL_N_CUTOFF = 20  # WeightWatcher's WWFit switches to the small-N estimator below this many eigenvalues
SMALL_N_K_MIN = 8  # smallest tail the small-N estimator considers
CONV2D_SCALE = math.sqrt(0.5)  # conv2d_norm: sqrt(conv2d_count / 2) with conv2d_count = 1 (pooled slices)
OVER_TRAINED_ALPHA, UNDER_TRAINED_ALPHA = 2.0, 6.0  # WeightWatcher's warning thresholds

# Byte budget of one batched Gram/eigen step on the GPU; KS work layout.
_BATCH_BYTES = 256 * 2**20
_KS_ROWS = 32  # candidate rows per chunk of the KS matrix
_KS_SAMPLES = 48  # tail points per candidate for the KS lower bound
_TABLE_CHUNK = 8  # matrices per GPU batch in spectral_table

# open_clip parameter-name fragments -> matrix kind shown in the table (first match wins).
KIND_PATTERNS: tuple[tuple[str, str], ...] = (
    ("out_proj", "out"),
    ("q_proj", "q"),
    ("k_proj", "k"),
    ("v_proj", "v"),
    ("c_fc", "c_fc"),
    ("fc1", "c_fc"),
    ("c_proj", "c_proj"),
    ("fc2", "c_proj"),
    ("conv", "conv"),
    ("patch_embed", "conv"),
    ("token_embedding", "embedding"),
    ("text_projection", "proj"),
    ("proj", "proj"),
    ("head", "head"),
)
# Never analysed: positional tables are not linear maps.
SKIP_PATTERNS = ("positional_embedding", "position_embedding", "pos_embed", "class_embedding")
# Tables with a vocabulary dimension: skipped unless `include_embeddings=True`.
EMBEDDING_PATTERNS = ("token_embedding", "embed_tokens", "wte", "word_embeddings")


# --------------------------------------------------------------------------- ESD


def _host_array(weight) -> np.ndarray:
    """`weight` as a NumPy array in its own float precision (no copy for a CPU float32/float64 tensor)."""
    if isinstance(weight, torch.Tensor):
        t = weight.detach()
        if t.dtype not in (torch.float32, torch.float64):
            t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.float64)
        return t.cpu().numpy()
    a = np.asarray(weight)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _host_stack(weight) -> np.ndarray:
    """The (B, N, M) float64 stack of `weight_matrices`, as a NumPy array (no torch ops: no thread-pool spin-up)."""
    w = _host_array(weight)
    if w.ndim not in (2, 4):
        raise ValueError(f"expected a 2-D weight matrix or a 4-D conv kernel, got shape {tuple(w.shape)}")
    if not np.isfinite(w).all():
        raise ValueError(f"weight of shape {tuple(w.shape)} has NaN or inf entries: its spectrum is undefined")
    if w.ndim == 2:
        return w.astype(np.float64)[None]
    out_ch, in_ch, kh, kw = w.shape
    stack = np.ascontiguousarray(w.transpose(2, 3, 0, 1), dtype=np.float64).reshape(kh * kw, out_ch, in_ch)
    stack *= CONV2D_SCALE
    return stack


def weight_matrices(weight) -> torch.Tensor:
    """The stack of 2-D matrices whose eigenvalues make up `weight`'s ESD, float64, shape (B, N, M).

    A 2-D weight is a stack of one. A 4-D conv kernel (out, in, kh, kw) becomes its kh·kw slices
    W[:, :, i, j] (out x in), each multiplied by √(1/2). This is WeightWatcher's treatment of
    PyTorch kernels (channels "last"): even when its channel detection disagrees (kh + kw > out + in)
    it flips back to these same slices.
    """
    return torch.from_numpy(_host_stack(weight))


def _device_batch(device: torch.device, per_matrix_bytes: int) -> int:
    """How many matrices of one shape fit one batched Gram/eigen step: half the free GPU memory, or _BATCH_BYTES."""
    budget = _BATCH_BYTES
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = max(_BATCH_BYTES, free // 2)
    return max(1, budget // per_matrix_bytes)


def _gram_eigenvalues_torch(mats: torch.Tensor, device: torch.device) -> np.ndarray:
    """Eigenvalues of the smaller Gram matrix of each matrix in the stack (B, N, M), batched in torch.

    The stack is moved to `device` a chunk at a time, so a GPU only ever holds what fits its free memory.
    """
    b, n, m = mats.shape
    small = min(n, m)
    step = _device_batch(device, 8 * (n * m + 2 * small * small))
    out = []
    for start in range(0, b, step):
        x = mats[start : start + step].to(device, dtype=torch.float64)
        gram = x.mT @ x if n >= m else x @ x.mT
        del x
        out.append(torch.linalg.eigvalsh(gram).clamp_min_(0.0).cpu().numpy())
        del gram
    return np.concatenate(out, axis=0)


def _gram_eigenvalues_numpy(weight) -> np.ndarray:
    """Eigenvalues of the smaller Gram matrix of each matrix of `weight`'s stack, on the CPU, float64.

    One matrix: WᵀW through BLAS syrk (numpy recognises `x.T @ x`) and LAPACK's symmetric
    eigenvalue solver (syevd), values only, through torch: scipy's LAPACK wrappers hold the GIL, so
    `esd_many`'s worker threads ran their eigenvalue halves one at a time (measured: 2 threads 0.303 s
    vs 1 thread 0.337 s for eight 768×768 Gram matrices; torch's 0.224 vs 0.311 s). Stacks (conv
    slices): numpy's batched matmul and eigvalsh.
    """
    x = _host_stack(weight)
    n, m = x.shape[1:]
    if x.shape[0] == 1:
        w = x[0]
        gram = w.T @ w if n >= m else w @ w.T
        del x, w
        eigs = torch.linalg.eigvalsh(torch.from_numpy(gram)).numpy()[None, :]
    else:
        gram = np.swapaxes(x, 1, 2) @ x if n >= m else x @ np.swapaxes(x, 1, 2)
        eigs = np.linalg.eigvalsh(gram)
    return np.maximum(eigs, 0.0)


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def esd_many(
    weights: Sequence, *, workers: int | None = None, device: str | torch.device | None = None
) -> list[np.ndarray]:
    """ESDs of many weights at once: one sorted float64 array per weight, in input order.

    All arithmetic is float64: the Gram matrix of a float32 weight is formed exactly enough that its
    eigenvalues agree with a float64 SVD to ~1e-9 relative even at the bottom of a square matrix's
    spectrum (and to ~1e-14 elsewhere), far below what moves alpha; eigenvalues of the Gram matrix
    cost a fraction of an SVD. `device` ("auto" by default: a CUDA GPU when torch sees one): on a GPU,
    same-shaped matrices are stacked and decomposed in batches sized to its free memory. On the CPU,
    `workers` threads (default: one per core) each convert and decompose whole matrices, the Gram
    product with single-threaded BLAS (on a shared machine that beats one multi-threaded call by far,
    because threaded BLAS spins waiting for cores other processes hold) and the eigenvalues through
    torch, whose LAPACK call releases the GIL (and may use torch's intra-op threads). Only the matrices
    being decomposed are ever held in float64.
    """
    weights = list(weights)
    dev = resolve_device(device)
    if dev.type == "cuda":
        stacks = [weight_matrices(w) for w in weights]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, st in enumerate(stacks):
            groups.setdefault(tuple(st.shape[1:]), []).append(i)
        result: list[np.ndarray | None] = [None] * len(stacks)
        for idx in groups.values():
            eigs = _gram_eigenvalues_torch(torch.cat([stacks[i] for i in idx]), dev)
            for i, chunk in zip(idx, np.split(eigs, np.cumsum([stacks[i].shape[0] for i in idx])[:-1])):
                result[i] = np.sort(chunk.ravel())
        return result  # type: ignore[return-value]
    return list(_cpu_esd_stream(weights, workers))


def _cpu_esd_stream(weights: Sequence, workers: int | None = None, check=None) -> Iterator[np.ndarray]:
    """`esd_many`'s CPU path as a stream: sorted ESDs in input order, each yielded as soon as it and those
    before it are done (a page's progress moves per matrix), `workers` matrices in flight at a time (so
    only those are ever held in float64). `check(i)` runs in the worker before matrix i is decomposed."""
    weights = list(weights)
    if not weights:
        return
    workers = max(1, min(_default_workers() if workers is None else workers, len(weights)))

    def work(i: int) -> np.ndarray:
        if check is not None:
            check(i)
        return np.sort(_gram_eigenvalues_numpy(weights[i]).ravel())

    limit = threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext()
    with limit:
        if workers == 1:
            for i in range(len(weights)):
                yield work(i)
        else:
            pool = ThreadPoolExecutor(workers)
            try:
                yield from pool.map(work, range(len(weights)))
            finally:  # a failure (or a closed stream) cancels the matrices not yet started
                pool.shutdown(wait=True, cancel_futures=True)


def esd(weight, *, device: str | torch.device | None = None) -> np.ndarray:
    """Eigenvalues of WᵀW (squared singular values, no 1/N normalization), float64, ascending.

    `weight` is a 2-D matrix or a 4-D conv kernel (torch tensor or array); see `weight_matrices`
    for how kernels are sliced and scaled. A conv kernel's slices are pooled into one ESD.
    """
    return esd_many([weight], device=device)[0]


# --------------------------------------------------------------------- power law


def _failed(n: int, status: str = "failed") -> dict:
    return {
        "alpha": -1.0,
        "xmin": -1.0,
        "xmax": -1.0,
        "D": -1.0,
        "sigma": -1.0,
        "num_pl_spikes": -1,
        "n": n,
        "status": status,
        "method": "none",
        "warning": "",
    }


def _ks_rows(logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """KS distance max_j |1 - (λ_j/λ_i)^(1-α_i) - (j-i)/n_i| over the tail j >= i, for each candidate row i.

    `rows` ascending, α finite and > 1. Row chunks of the (rows x N) matrix, so memory stays small
    and little is spent below the diagonal: there the log-ratio and the empirical CDF are clipped
    to 0, which makes those entries exactly 0 and leaves the maximum alone.
    """
    n_total = logs.size
    out = np.empty(rows.size, dtype=np.float64)
    for a in range(0, rows.size, _KS_ROWS):
        r = rows[a : a + _KS_ROWS]
        first = int(r[0])
        n = (n_total - r).astype(np.float64)[:, None]
        m = logs[None, first:] - logs[r, None]
        np.maximum(m, 0.0, out=m)
        m *= (1.0 - alphas[a : a + _KS_ROWS])[:, None]
        np.exp(m, out=m)  # (λ_j/λ_i)^(1-α_i), exactly 1 on and below the diagonal
        emp = np.arange(first, n_total)[None, :] - r[:, None]
        np.maximum(emp, 0, out=emp)
        m += emp / n
        np.subtract(1.0, m, out=m)
        np.abs(m, out=m)
        out[a : a + _KS_ROWS] = m.max(axis=1)
    return out


def _ks_lower_bounds(logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A lower bound on each row's KS distance: the same deviation at _KS_SAMPLES points spread over its tail."""
    n_total = logs.size
    n = n_total - rows
    q = np.linspace(0.0, 1.0, _KS_SAMPLES)
    j = rows[:, None] + np.floor(q[None, :] * (n[:, None] - 1)).astype(np.int64)
    fit = np.exp((1.0 - alphas)[:, None] * (logs[j] - logs[rows, None]))
    return np.abs(1.0 - (fit + (j - rows[:, None]) / n[:, None].astype(np.float64))).max(axis=1)


def _ks_distances(logs: np.ndarray, alphas: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """KS distance of every candidate row whose minimum could be the overall minimum; others get a lower bound.

    Branch and bound: sampled lower bounds for all rows, full distances for the most promising
    few (their least is an upper bound on the minimum), then full distances only for rows whose
    lower bound does not exceed it. Rows left out have a true distance above the minimum by more
    than the rounding of either computation, so the first least distance is unchanged.
    """
    if rows.size <= 2 * _KS_ROWS:
        return _ks_rows(logs, alphas, rows)
    lower = _ks_lower_bounds(logs, alphas, rows)
    out = lower.copy()
    probe = np.sort(np.argsort(lower, kind="stable")[:_KS_ROWS])
    out[probe] = _ks_rows(logs, alphas[probe], rows[probe])
    best = out[probe].min()
    todo = np.flatnonzero(lower <= best + 1e-9)
    todo = todo[~np.isin(todo, probe)]
    if todo.size:
        out[todo] = _ks_rows(logs, alphas[todo], rows[todo])
    return out


def _ww_alpha_d(data: np.ndarray, logs: np.ndarray, i: int, bias_corrected: bool = False) -> tuple[float, float, float]:
    """(s, α, D) of candidate i computed term for term as WeightWatcher does (the exact tie-breaker)."""
    n = float(data.size - i)
    s = np.sum(logs[i:]) - n * logs[i]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alpha = 1.0 + ((n - 1.0) if bias_corrected else n) / s
        d = 1.0
        if alpha > 1:
            d = float(np.max(np.abs(1 - (data[i:] / data[i]) ** (-alpha + 1) - np.arange(n) / n)))
    return float(s), float(alpha), d


def _fit_standard(data: np.ndarray, logs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hill α and KS D for every candidate xmin = data[i], i < N-1 (WeightWatcher's fit_power_law_standard)."""
    n_total = data.size
    idx = np.arange(n_total - 1)
    n = (n_total - idx).astype(np.float64)
    suffix = np.cumsum(logs[::-1])[::-1]  # Σ_{j>=i} ln λ_j
    s = suffix[:-1] - n * logs[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = 1.0 + n / s
    # Cumulative sums round differently from numpy's pairwise sum: where s is at rounding level
    # (tails of tied eigenvalues) the sign of s and so α are unreliable; redo those exactly.
    shaky = np.abs(s) <= 1e-9 * (np.abs(suffix[:-1]) + n * np.abs(logs[:-1]) + 1e-300)
    for i in np.flatnonzero(shaky):
        alphas[i] = _ww_alpha_d(data, logs, int(i))[1]
    ds = np.ones(n_total - 1, dtype=np.float64)
    ok = np.flatnonzero((alphas > 1) & np.isfinite(alphas))
    ds[ok] = _ks_distances(logs, alphas[ok], ok)
    for i in np.flatnonzero(np.isinf(alphas) & (alphas > 0)):  # tails of equal eigenvalues: α = +inf
        ds[i] = _ww_alpha_d(data, logs, int(i))[2]
    # Exact pass near the minimum: recompute the near-best candidates the way WeightWatcher does, so
    # the first-minimum tie-break lands on the same xmin bit for bit.
    near = np.flatnonzero(ds <= ds.min() + 1e-7)
    for i in near:
        _, alphas[i], ds[i] = _ww_alpha_d(data, logs, int(i))
    return alphas, ds


def _fit_small_n(data: np.ndarray, logs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """WeightWatcher 0.7.7's fit_powerlaw_smallN, as its results come out of WWFit.

    α = 1 + (n-1)/s (bias-corrected Hill), only for tails of at least 8 eigenvalues with
    s = Σ ln(λ/xmin) > 1e-12; other candidates keep α = 0, D = 1. WeightWatcher ranks the
    candidates by J = D - 0.868/√n, but WWFit.__init__ then re-selects by the least D over the
    same arrays, so J never reaches the result: the caller takes the first least D, as WW does.
    If no candidate qualifies, the whole sample is the tail (i = 0), unless it is degenerate
    (s <= 1e-12), in which case α stays 0 and D = 1. WeightWatcher computes σ before that
    fallback, so there σ = (0 - 1)/√n; returned as the third array (the α used for σ).
    """
    n_total = data.size
    alphas = np.zeros(n_total - 1, dtype=np.float64)
    ds = np.ones(n_total - 1, dtype=np.float64)
    qualified = False
    for i in range(n_total - 1):  # at most 18 candidates
        if n_total - i < SMALL_N_K_MIN:
            continue
        s, alpha, d = _ww_alpha_d(data, logs, i, bias_corrected=True)
        if s <= 1e-12:
            continue
        alphas[i] = alpha
        if alpha > 1.0:
            ds[i] = d
            qualified = True
    if qualified:
        return alphas, ds, alphas, "small_n"
    sigma_alphas = alphas.copy()
    s, alpha, _ = _ww_alpha_d(data, logs, 0, bias_corrected=True)
    if s <= 1e-12:
        return alphas, ds, sigma_alphas, "degenerate"
    alphas[0] = alpha  # always > 1 here since n >= 2 and s > 0; D computed without the α > 1 guard
    with np.errstate(over="ignore"):
        ds[0] = float(np.max(np.abs(np.arange(n_total) / n_total - (1.0 - (data / data[0]) ** (1.0 - alpha)))))
    return alphas, ds, sigma_alphas, "small_n_fallback"


def fit_powerlaw(eigenvalues, *, thresh: float = EVALS_THRESH) -> dict:
    """Power-law fit of an ESD tail, numerically equal to WeightWatcher 0.7.7's default (`pl_package="ww"`).

    Keeps λ > `thresh`. For every candidate xmin (each sorted eigenvalue but the largest) the Hill
    estimate α = 1 + n / Σ ln(λ/xmin) over the n eigenvalues λ >= xmin, and the KS distance
    D = max_j |1 - (λ_j/xmin)^(1-α) - j/n| (j = 0..n-1; D = 1 when α <= 1); the fit is the first
    xmin with the least D. With fewer than 20 eigenvalues WeightWatcher's small-N estimator is used.

    Returns a dict: alpha, xmin, xmax (largest eigenvalue kept), D, sigma = (α-1)/√n_tail,
    num_pl_spikes (eigenvalues >= xmin), n (eigenvalues after `thresh`), status ("success",
    "degenerate" when all kept eigenvalues are equal, or "failed" with fewer than 2; failed fits
    carry WeightWatcher's -1 placeholders), method ("standard", "small_n", "small_n_fallback"),
    warning ("over-trained" for α < 2, "under-trained" for α > 6, as WeightWatcher flags them).
    """
    evals = np.asarray(eigenvalues, dtype=np.float64).ravel()
    data = np.sort(evals[evals > thresh])
    n_total = data.size
    if n_total < 2:
        return _failed(n_total)
    logs = np.log(data)
    if n_total < SMALL_N_CUTOFF:
        alphas, ds, sigma_alphas, method = _fit_small_n(data, logs)
    else:
        alphas, ds = _fit_standard(data, logs)
        sigma_alphas, method = alphas, "standard"
    best = int(np.argmin(ds))  # first index of the least D, as np.argmin in WWFit
    alpha = float(alphas[best])
    if np.isnan(alpha):
        return _failed(n_total)
    xmin = float(data[best])
    status = "degenerate" if method == "degenerate" or data[0] == data[-1] else "success"
    warning = "over-trained" if alpha < OVER_TRAINED_ALPHA else "under-trained" if alpha > UNDER_TRAINED_ALPHA else ""
    return {
        "alpha": alpha,
        "xmin": xmin,
        "xmax": float(data[-1]),
        "D": float(ds[best]),
        "sigma": float((sigma_alphas[best] - 1.0) / math.sqrt(n_total - best)),
        "num_pl_spikes": int(np.count_nonzero(evals >= xmin)),
        "n": n_total,
        "status": status,
        "method": "small_n" if method == "degenerate" else method,
        "warning": warning,
    }


def alpha_hill_median(eigenvalues, *, filter_zeros: bool = False, thresh: float = EVALS_THRESH) -> float:
    """TempBalance's PL_Alpha_Hill ('median' fitting, xmin_pos = 2).

    With the n eigenvalues sorted ascending, i = ⌊n/2⌋, xmin = λ_i and
    α = 1 + n' / (Σ_{j>=i} ln λ_j - n' ln xmin), n' = n - i. As in TempBalance's default
    (filter_zeros=False) every eigenvalue is kept, zeros included; with `filter_zeros` only
    λ > thresh are kept (all of them again if none pass). Returns nan when xmin is 0 or the
    tail is flat.
    """
    eigs = np.sort(np.asarray(eigenvalues, dtype=np.float64).ravel())
    if filter_zeros:
        kept = eigs[eigs > thresh]
        eigs = kept if kept.size else eigs
    if eigs.size == 0:
        return float("nan")
    i = eigs.size // 2
    xmin = eigs[i]
    if not xmin > 0:
        return float("nan")
    n = float(eigs.size - i)
    s = float(np.sum(np.log(eigs[i:])) - n * np.log(xmin))
    return 1.0 + n / s if s > 0 else float("nan")


# ------------------------------------------------------------------ per-layer table


def matrix_kind(name: str) -> str:
    """Short kind of a weight matrix from its (open_clip) name: q/k/v/out/c_fc/c_proj/conv/proj/..."""
    if name.endswith("]") and "[" in name:
        return name[name.rindex("[") + 1 : -1]
    for fragment, kind in KIND_PATTERNS:
        if fragment in name:
            return kind
    return "linear"


def analysed_matrices(
    state_dict: Mapping[str, torch.Tensor], *, keys: Iterable[str] | None = None, include_embeddings: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """(row name, weight) pairs that `spectral_table` analyses, in state-dict order.

    Fused `attn.in_proj_weight` (3d x d) is split into `...in_proj_weight[q]`, `[k]`, `[v]`.
    Skipped: non-floating and 1-D/3-D tensors, positional/class embeddings, vocabulary
    embeddings (unless `include_embeddings`, also when `keys` names them), and matrices with a
    dimension < 2. `keys` restricts and orders the analysis; an unknown key raises KeyError.
    """
    wanted = None if keys is None else list(keys)
    names = wanted if wanted is not None else list(state_dict)
    out: list[tuple[str, torch.Tensor]] = []
    for name in names:
        if name not in state_dict:
            raise KeyError(f"{name!r} is not in the state dict ({len(state_dict)} keys)")
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(np.asarray(t))
        if not t.is_floating_point() or t.ndim not in (2, 4):
            continue
        if any(p in name for p in SKIP_PATTERNS):
            continue
        if not include_embeddings and any(p in name for p in EMBEDDING_PATTERNS):
            continue
        if min(t.shape[:2]) < 2 or (t.ndim == 4 and min(t.shape) < 1):
            continue
        if name.endswith("in_proj_weight") and t.ndim == 2 and t.shape[0] == 3 * t.shape[1]:
            for part, chunk in zip("qkv", t.chunk(3, dim=0)):
                out.append((f"{name}[{part}]", chunk))
            continue
        out.append((name, t))
    return out


def _table_spectra(items: list[tuple[str, torch.Tensor]], device=None):
    """((name, weight), eigenvalues) in order. On the CPU, one stream over every matrix (`_cpu_esd_stream`:
    a worker's next matrix starts as soon as it is free; chunks of 8 left a worker idle at every chunk's
    end), each matrix checked for NaN/inf by its worker; on a GPU, `_TABLE_CHUNK` matrices per batch,
    which bounds the float64 stacks held at once (a ViT-L/14 tower in float64 is ~2.4 GB)."""

    def check(i: int) -> None:
        name, t = items[i]
        if not np.isfinite(_host_array(t)).all():
            raise ValueError(f"{name}: NaN or inf entries, so no spectrum; check the checkpoint this tensor came from")

    if resolve_device(device).type != "cuda":
        yield from zip(items, _cpu_esd_stream([t for _, t in items], check=check))
        return
    for i in range(len(items)):
        check(i)
    for start in range(0, len(items), _TABLE_CHUNK):
        chunk = items[start : start + _TABLE_CHUNK]
        yield from zip(chunk, esd_many([t for _, t in chunk], device=device))


def spectral_table(
    state_dict: Mapping[str, torch.Tensor],
    *,
    keys: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    include_embeddings: bool = False,
    tower: str | None = None,
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """One row per analysed weight matrix (see `analysed_matrices`) of one tower with its spectral metrics.

    Columns: name, layer (`core.layers.layer_index`, Int64 with <NA> outside the blocks), kind, shape (of
    the analysed tensor), n_eigs (ESD size), alpha, xmin, D, sigma, num_pl_spikes, status
    (WeightWatcher-compatible `fit_powerlaw`), lambda_max (spectral norm squared),
    alpha_weighted = α·log10 λmax, stable_rank = Σλ/λmax, alpha_hill (TempBalance's median Hill).
    `progress(done, total)` is called after each matrix is fitted (eigenvalues are computed
    a few matrices at a time, so progress moves steadily). `tower`: "visual" or "text" (None: the
    image tower, or a model's only tower; `core.layers.select_tower`), so a full CLIP's text blocks
    never share a layer number with its image blocks. `device`: where the ESDs run (`esd_many`).
    """
    keys = select_tower(state_dict if keys is None else list(keys), tower)
    items = analysed_matrices(state_dict, keys=keys, include_embeddings=include_embeddings)
    total = len(items)
    rows = []
    for done, ((name, t), eigs) in enumerate(_table_spectra(items, device), start=1):
        fit = fit_powerlaw(eigs)
        lam_max = float(eigs[-1]) if eigs.size else float("nan")
        ok = fit["status"] != "failed"
        rows.append(
            {
                "name": name,
                "layer": layer_index(name.split("[")[0]),
                "kind": matrix_kind(name),
                "shape": tuple(t.shape),
                "n_eigs": int(eigs.size),
                "alpha": fit["alpha"] if ok else float("nan"),
                "xmin": fit["xmin"] if ok else float("nan"),
                "D": fit["D"] if ok else float("nan"),
                "sigma": fit["sigma"] if ok else float("nan"),
                "num_pl_spikes": fit["num_pl_spikes"],
                "status": fit["status"],
                "lambda_max": lam_max,
                "alpha_weighted": fit["alpha"] * math.log10(lam_max) if ok and lam_max > 0 else float("nan"),
                "stable_rank": float(eigs.sum() / lam_max) if lam_max > 0 else float("nan"),
                "alpha_hill": alpha_hill_median(eigs),
            }
        )
        if progress is not None:
            progress(done, total)
    columns = [
        "name", "layer", "kind", "shape", "n_eigs", "alpha", "xmin", "D", "sigma", "num_pl_spikes", "status",
        "lambda_max", "alpha_weighted", "stable_rank", "alpha_hill",
    ]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    table["layer"] = table["layer"].astype("Int64")  # <NA> outside the blocks
    return table
