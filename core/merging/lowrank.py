"""Merges in the singular-vector bases of the task matrices: TSV-M, Iso-C, Iso-CTS, CART.

Each walks the task vectors one key at a time (memory: the N task matrices of one key, like task
arithmetic) and computes its SVDs with torch.linalg (on the GPU when there is one). The few top triplets
kept of each task matrix come from its float64 Gram matrix (`top_svd`: more accurate than the official
code's float32 SVD, and 2.3-3.4x faster), or from its SVD where that cannot tell them; the steps whose
conditioning needs it - polar factors of stacked bases and the flattened spectra of Iso, which lift the poorly
determined tail singular vectors to the mean singular value - run in float64; the products of their
orthonormal factors (U V^T, (U S) V^T) are formed in the compute dtype, as the official code forms them.
Wide matrices are decomposed through their transpose (`svd`: 2.4-2.8x faster in LAPACK). Tensors that are not matrices are averaged
over the tasks, as in the official code. Every method is a MergedDirection whose global scale is
`coefficients`: theta = theta_0 + coefficients * tau_merged (LiNeS or a block curve may replace it).

With allow_nonfinite=True, a matrix whose task vectors hold NaN/Inf cannot be decomposed: its merged
value is NaN (the result carries the non-finite input, as the opt-in warns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .direction import MergedDirection, global_scale, keywise_direction
from .registry import Param, merge_method
from .streaming import TaskVectors, total

SVD_DTYPE = torch.float64


def is_matrix(key: str, shape: Sequence[int]) -> bool:
    """A tensor the TSV / Iso code decomposes: every 2-D tensor (positional embedding and the output
    projection included) except the text tower's `text_projection`, which the official code averages."""
    return len(shape) == 2 and "text_projection" not in key


def svd(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.linalg.svd(a, full_matrices=False), a wide matrix through its transpose (a^T = V S U^T).

    LAPACK's divide-and-conquer SVD (gesdd, what torch calls on the CPU) takes 2.4-2.8x longer on a wide
    matrix than on its transpose: 0.361 vs 0.148 s for a float32 768x3072 (ViT-B/32's mlp.c_proj), 0.805
    vs 0.292 s for 1024x4096 (ViT-L/14), 2 threads, measured. Same factors up to rounding and the signs
    of singular pairs, which no method here depends on (each uses products u_i s_i v_i^T or U V^T)."""
    if a.shape[-2] < a.shape[-1]:
        v, s, uh = torch.linalg.svd(a.mT, full_matrices=False)
        return uh.mT, s, v.mT
    return torch.linalg.svd(a, full_matrices=False)


# The Gram route of `top_svd` keeps its answer only while the p-th eigenvalue of the float64 Gram matrix is
# at least this share of the largest (sigma_p >= 1e-4 sigma_1): there sigma_p is known to ~1e-8 of itself.
GRAM_FLOOR = 1e-8


def _gram_triplets(
    a: torch.Tensor, p: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The top p singular triplets of a from the eigendecomposition of the float64 Gram matrix of its
    shorter side (torch.linalg.eigh): a^T a = V diag(s^2) V^T gives v_i, s_i and u_i = a v_i / s_i (a a^T:
    u_i, s_i and v_i = a^T u_i / s_i), in `dtype`. None where the p-th eigenvalue is under GRAM_FLOOR of
    the largest: there the Gram matrix cannot tell the triplets apart (`top_svd`, `polar_factors`)."""
    a64 = a.to(SVD_DTYPE)
    tall = a.shape[0] >= a.shape[1]
    w, q = torch.linalg.eigh(a64.mT @ a64 if tall else a64 @ a64.mT)
    w, q = w[-p:].flip(0), q[:, -p:].flip(1)
    if not bool(w[-1] > 0) or not bool(w[-1] >= GRAM_FLOOR * w[0]):
        return None
    s = w.sqrt()
    u, vh = ((a64 @ q).div_(s), q.mT) if tall else (q, (q.mT @ a64).div_(s.unsqueeze(1)))
    return u.to(dtype), s.to(dtype), vh.to(dtype)


def top_svd(
    a: torch.Tensor, p: int, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top p singular triplets of an [m, n] a, as the first p of `svd(a)`: (u [m, p], s [p], vh [p, n])
    in `dtype` (default a's). TSV-M, Iso-CTS and CART keep a few of each task matrix's triplets (TSV-M
    min(m, n)/T, CART 12 %), where the official code computes every one.

    Below min(m, n) they come from the float64 Gram matrix of a's shorter side (`_gram_triplets`). In
    float64 this is more accurate than the float32 SVD it replaces for every kept triplet with
    s_p >= 1e-4 s_1 (`GRAM_FLOOR`: s_p to ~1e-8 of itself, where a float32 SVD resolves s_p only to
    ~1e-7 s_1), and 2.3-3.4x faster on ViT matrices (1024 x 1024: 0.10 vs 0.23 s, 4096 x 1024: 0.17 vs
    0.57 s, 2 threads). Where s_p is smaller than that (a rank-deficient or zero task matrix) or p covers
    the whole rank, the triplets come from `svd`, as before."""
    dtype = dtype or a.dtype
    m, n = a.shape
    if p <= 0:
        return a.new_zeros((m, 0), dtype=dtype), a.new_zeros((0,), dtype=dtype), a.new_zeros((0, n), dtype=dtype)
    found = _gram_triplets(a, p, dtype) if p < min(m, n) else None
    if found is not None:
        return found
    u, s, vh = svd(a.to(dtype))
    return u[:, :p].clone(), s[:p].clone(), vh[:p, :].clone()  # copies: views would keep the full factors


def svdvals(a: torch.Tensor) -> torch.Tensor:
    """torch.linalg.svdvals(a), a wide matrix through its transpose (same values): 0.316 vs 0.084 s for a
    float32 768x3072, 0.689 vs 0.166 s for 1024x4096, 2 threads, measured."""
    return torch.linalg.svdvals(a.mT if a.shape[-2] < a.shape[-1] else a)


def polar_factors(a: torch.Tensor, dtype: torch.dtype = SVD_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V^T) of a = U S V^T computed in float64, returned in `dtype`: the orthogonal polar factor of a,
    the nearest matrix with orthonormal columns (or rows, for a wide a), is U V^T. The methods take the
    factors in their compute dtype: orthonormal factors lose nothing to a float32 product but its rounding
    (~7e-7 of the largest entry, measured; float64's product costs 2x as long).

    While a's singular values stay within 1e4 of each other (`GRAM_FLOOR` on their squares; the stacked
    bases of TSV-M and Iso-CTS: condition numbers 2.8-700 on ViT-shaped synthetic tasks, ~1e4 where the
    stack fills a square matrix) the factors come from the float64 Gram matrix of a's shorter side, as in
    `top_svd`: a^T a = Q S^2 Q^T gives (a Q S^-1, Q^T), a a^T = P S^2 P^T gives (P, S^-1 P^T a); every
    singular pair counts in U V^T, so the whole spectrum must clear the floor. Against the SVD's factors
    the product U V^T differed by 4e-16-1.5e-10, in 0.4-0.5x the time (4096 x 1020: 0.21 vs 0.53 s)."""
    found = _gram_triplets(a, min(a.shape), dtype)
    u, _, vh = found if found is not None else svd(a.to(SVD_DTYPE))
    return u.to(dtype), vh.to(dtype)


def polar_product(a: torch.Tensor, s: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """polar(a) diag(s) polar(b) for an [m, p] a and a [p, n] b (the stacked U and V^T of TSV-M and
    Iso-CTS; s: p values or one), in `dtype` from float64 factors.

    With polar(a) = P_a Q_a^T and polar(b) = P_b Q_b^T the product is P_a (Q_a^T diag(s) P_b) Q_b^T: the
    small core first, then whichever side costs fewer multiply-adds, instead of forming both polar factors
    (m p^2 + p^2 n) before their m p n product. For ViT-B/32's matrices at p = min(m, n) that is 29 %
    fewer (a block's four matrices: 9.0 instead of 12.7 GMAC)."""
    pa, qa = polar_factors(a, dtype)
    pb, qb = polar_factors(b, dtype)
    core = (qa * s.to(dtype)) @ pb
    (m, ra), (rb, n) = pa.shape, qb.shape
    if m * rb * (ra + n) <= n * ra * (rb + m):
        return (pa @ core) @ qb
    return pa @ (core @ qb)


def running_mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """m_1 = x_1, m_i = m_{i-1} + (x_i - m_{i-1}) / i: the official code's mean of non-matrix tensors."""
    m = tensors[0].clone()
    for i, x in enumerate(tensors[1:], start=2):
        m += (x - m) / i
    return m


def _decompose(tvs: TaskVectors, key: str, mats: list[torch.Tensor], fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """fn(matrices on the merge's device, tvs.device) -> merged matrix, back in the compute dtype on the CPU."""
    if tvs.allow_nonfinite and not all(bool(torch.isfinite(m).all()) for m in mats):
        return torch.full(tvs.shapes[key], float("nan"), dtype=tvs.dtype)
    dev = tvs.device
    out = fn([m.to(dev) for m in mats])
    return out.to("cpu", tvs.dtype)


# --------------------------------------------------------------------------- TSV-M
def tsv_rank(shape: Sequence[int], sv_reduction: float) -> int:
    """Singular triplets kept per task: int(min(m, n) * sv_reduction), as the official code."""
    return int(min(shape) * sv_reduction)


def tsv_matrix(mats: list[torch.Tensor], sv_reduction: float) -> torch.Tensor:
    """One matrix of TSV-M: each task's top-k triplets, stacked; U and V replaced by their polar factors."""
    k = tsv_rank(mats[0].shape, sv_reduction)
    if k == 0:
        return torch.zeros_like(mats[0])
    us, ss, vs = [], [], []
    for m in mats:
        # top_svd returns k triplets, never views of full factors (a view keeps the task's whole U and V
        # alive: 20 tasks of a 3072x768 matrix hold 236 MB per key; TSV-M at B/32 x 20 peaked at 2.93 model sizes)
        u, s, vh = top_svd(m, k)
        us.append(u)
        ss.append(s)
        vs.append(vh)
    # The official code writes the blocks into zero-padded min(m, n)-wide buffers; the padding only
    # meets zero singular values, so the compact stacks give the same product.
    return polar_product(torch.cat(us, dim=1), torch.cat(ss), torch.cat(vs, dim=0), mats[0].dtype)


@merge_method(
    "tsv_m",
    params=(
        Param(
            "sv_reduction", "float", 0.01, 1.0, 0.01, help="fraction of each task's singular triplets kept (None: 1/T)"
        ),
        Param("coefficients", "float", 0.0, 3.0, 0.1, help="global lambda"),
    ),
    reference="Gargiulo et al. 2025 (Task Singular Vectors); AntoAndGar/task_singular_vectors "
    "src/utils/TSVM_utils.py compute_and_sum_svd_mem_reduction",
    description="Per matrix: each task's top singular triplets, stacked; U and V orthogonalised (polar factors).",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 31)),
)
def tsv_m(tvs: TaskVectors, sv_reduction: float | None = None, coefficients: float = 1.0) -> MergedDirection:
    """TSV-M, following AntoAndGar/task_singular_vectors `compute_and_sum_svd_mem_reduction`.

    Every 2-D tensor but `text_projection`: per task the top k = int(min(m, n) * sv_reduction)
    singular triplets (U_t, S_t, V_t); stacked U = [U_1 .. U_T], V = [V_1 .. V_T], S = [S_1 .. S_T];
    tau = polar(U) diag(S) polar(V)^T with polar(A) = P Q^T from A = P Sigma Q^T. Other tensors: the mean
    of the task vectors. sv_reduction None means 1/T (the official setting). Where the official code
    needs T*k <= min(m, n) (zero-padded buffers), larger sv_reduction simply stacks wider.
    """
    frac = 1 / len(tvs) if sv_reduction is None else float(sv_reduction)
    if not 0 < frac <= 1:
        raise ValueError(f"tsv_m: sv_reduction must be in (0, 1] (or None for 1/T), got {sv_reduction}")
    scale = global_scale(coefficients, "tsv_m")

    def merge_key(key, ts, tot):
        if not is_matrix(key, ts[0].shape):
            return running_mean(ts)
        return _decompose(tvs, key, ts, lambda ms: tsv_matrix(ms, frac))

    return keywise_direction(tvs, merge_key, scale, {"sv_reduction": frac})


# --------------------------------------------------------------------------- Iso-C / Iso-CTS
def iso_c_matrix(mats: list[torch.Tensor], summed: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t tau_t (`summed`, when the caller has it) with every singular value replaced by their mean
    (float64)."""
    u, s, vh = svd((total(mats) if summed is None else summed).to(SVD_DTYPE))
    dt = mats[0].dtype
    return (u.to(dt) * s.mean().to(dt)) @ vh.to(dt)


@merge_method(
    "iso_c",
    params=(Param("coefficients", "float", 0.0, 3.0, 0.1, help="global lambda"),),
    reference="Marczak et al. 2025 (Iso-C); danielm1405/iso-merging src/utils/iso.py iso_c",
    description="Per matrix: the SVD of sum_t tau_t with a flat spectrum (every singular value -> their mean).",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 31)),
)
def iso_c(tvs: TaskVectors, coefficients: float = 1.0) -> MergedDirection:
    """Iso-C, following danielm1405/iso-merging `iso_c`: for every 2-D tensor but `text_projection`,
    sum_t tau_t = U S V^T becomes mean(S) U V^T; other tensors: the mean of the task vectors."""
    scale = global_scale(coefficients, "iso_c")
    n = len(tvs)

    def merge_key(key, ts, tot):
        if not is_matrix(key, ts[0].shape):
            return tot / n
        return _decompose(tvs, key, ts, lambda ms: iso_c_matrix(ms, tot))

    return keywise_direction(tvs, merge_key, scale)


def iso_cts_sizes(shape: Sequence[int], n_tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(common size k, directions per task) for one matrix, exactly as the official code rounds:
    k = r - round((r - int(r * f)) / T) * T with r = min(m, n) (Python round: half to even)."""
    r = min(shape)
    common = int(r * common_space_fraction)
    specific_total = round((r - common) / n_tasks) * n_tasks
    common = r - specific_total
    return common, int((r - common) / n_tasks)


def iso_cts_matrix(
    mats: list[torch.Tensor], common_space_fraction: float, key: str = "", summed: torch.Tensor | None = None
) -> torch.Tensor:
    """One matrix of Iso-CTS: the common subspace of sum_t tau_t plus each task's own directions, the top
    singular triplets of tau_t - U_c U_c^T tau_t (iso-merging `iso_cts`; here in float64 throughout).

    Where m <= n the SVD of the sum gives a basis of all of R^m, and its last m - k columns R span the
    complement of U_c: the residual is R (R^T tau_t), whose SVD is R times that of the (m - k) x n matrix
    R^T tau_t (the same singular values and right vectors, left vectors R u'). One (m - k) m n product and
    an SVD a fifth the height (k ~ 0.8 r) replace two k m n products and the m x n SVD. Tall matrices keep
    the projection: their reduced U spans n of the m dimensions."""
    n = len(mats)
    common, per_task = iso_cts_sizes(mats[0].shape, n, common_space_fraction)
    if common < 0:
        raise ValueError(
            f"iso_cts: common_space_fraction={common_space_fraction} leaves no common space for {key!r} "
            f"(min dimension {min(mats[0].shape)}, {n} tasks); use a larger fraction"
        )
    u, s, vh = svd((total(mats) if summed is None else summed).to(SVD_DTYPE))
    uc, sc, vc = u[:, :common], s[:common], vh[:common, :]
    # m <= n: u is a basis of all of R^m, so its last m - k columns span the complement of U_c
    rest = u[:, common:] if u.shape[0] == u.shape[1] else None
    us, ss, vs = [], [], []
    for m in mats if per_task else ():  # each task's own directions, outside the common space
        if rest is not None:  # tau - U_c U_c^T tau = R (R^T tau): the SVD of the (m - k) x n coordinates
            ut, st, vt = top_svd(rest.T @ m.to(SVD_DTYPE), per_task)
            ut = rest @ ut
        else:
            m64 = m.to(SVD_DTYPE, copy=True)  # a scratch copy: the projection below works in place
            ut, st, vt = top_svd(m64.addmm_(uc, uc.T @ m64, alpha=-1), per_task)  # m - U_c U_c^T m
        us.append(ut)  # float64 like the common space's: stacked as they come
        ss.append(st)
        vs.append(vt)
    u_all, v_all = torch.cat([*us, uc], dim=1), torch.cat([*vs, vc], dim=0)
    flat = torch.cat([*ss, sc]).mean()
    return polar_product(u_all, flat, v_all, mats[0].dtype)


@merge_method(
    "iso_cts",
    params=(
        Param("common_space_fraction", "float", 0.0, 1.0, 0.05, help="share of the rank given to the common subspace"),
        Param("coefficients", "float", 0.0, 3.0, 0.1, help="global lambda"),
    ),
    reference="Marczak et al. 2025 (Iso-CTS); danielm1405/iso-merging src/utils/iso.py iso_cts",
    description="Per matrix: common subspace of sum_t tau_t plus task-specific directions, flat spectrum.",
    lambda_grid=tuple(round(0.1 * i, 1) for i in range(1, 31)),
)
def iso_cts(tvs: TaskVectors, common_space_fraction: float = 0.8, coefficients: float = 1.0) -> MergedDirection:
    """Iso-CTS, following danielm1405/iso-merging `iso_cts`.

    For every 2-D tensor but `text_projection` (r = min(m, n), T tasks): the top k singular directions
    of sum_t tau_t (k = r - round((r - int(r f)) / T) T) form the common space U_c; each task adds the
    top (r - k)/T directions of tau_t - U_c U_c^T tau_t. The stacked U and V are replaced by their polar
    factors and every singular value by the mean of the stacked ones. Other tensors: the task mean.
    """
    f = float(common_space_fraction)
    if not 0 <= f <= 1:
        raise ValueError(f"iso_cts: common_space_fraction must be in [0, 1], got {common_space_fraction}")
    scale = global_scale(coefficients, "iso_cts")

    def merge_key(key, ts, tot):
        if not is_matrix(key, ts[0].shape):
            return running_mean(ts)
        return _decompose(tvs, key, ts, lambda ms: iso_cts_matrix(ms, f, key, tot))

    return keywise_direction(tvs, merge_key, scale, {"common_space_fraction": f})


# --------------------------------------------------------------------------- CART
def cart_key(key: str, shape: Sequence[int]) -> bool:
    """The keys CART decomposes: names with "attn" or "mlp" and neither "ln" nor "bias" (substrings, as
    the official code tests them); only matrices can be decomposed, so other shapes stay theta_avg."""
    return ("attn" in key or "mlp" in key) and not ("ln" in key or "bias" in key) and len(shape) == 2


def cart_rank(dim: int, rank_ratio: float) -> int:
    """Rank kept per task: 0 at rank_ratio 0, all at 1, else max(1, int(rank_ratio * dim))."""
    if rank_ratio == 0.0:
        return 0
    if rank_ratio == 1.0:
        return dim
    return max(1, int(rank_ratio * dim))


def cart_matrix(
    mats: list[torch.Tensor], rank_ratio: float, prior: float, summed: torch.Tensor | None = None
) -> torch.Tensor:
    """mean tau + prior * sum_t SVD_k(tau_t - mean tau) = (theta_avg - theta_0) + prior * sum_t SVD_k(theta_t - theta_avg).
    `summed`: sum_t tau_t, when the caller has it. The deviations overwrite `mats` (the key's task vectors,
    which the key-wise pass hands over to be used up: `direction.keywise_direction`): no fresh matrix per
    task (0.35 s of CART's time outside its SVDs at ViT-B/32 x 8 went to allocating them)."""
    mean = (total(mats) if summed is None else summed) / len(mats)
    low = torch.zeros_like(mean)
    k = cart_rank(min(mean.shape), rank_ratio)
    for m in mats:
        u, s, vh = top_svd(m.sub_(mean), k)
        low.addmm_(u * s, vh)  # one kernel: 23 -> 14 ms per 3072x768 matrix of 8 tasks
    return low.mul_(prior).add_(mean)


@merge_method(
    "cart",
    params=(
        Param("rank_ratio", "float", 0.0, 1.0, 0.01, help="share of each deviation's rank kept"),
        Param("prior", "float", 0.0, 4.0, 0.1, help="CART's lambda on the low-rank deviations"),
        Param("coefficients", "float", 0.0, 2.0, 0.1, help="global lambda (1: CART as published)"),
    ),
    reference="Choi et al. 2025 (CART, 'Revisiting weight averaging for model merging'); JH-GEECS/CART "
    "src/merging.py StaticMergeModule._merge_weights('CART')",
    description="theta_avg plus a low-rank SVD of each model's deviation from theta_avg (attention and MLP matrices).",
)
def cart(tvs: TaskVectors, rank_ratio: float = 0.12, prior: float = 2.0, coefficients: float = 1.0) -> MergedDirection:
    """CART, following JH-GEECS/CART `StaticMergeModule._merge_weights("CART")` with
    `_get_truncated_task_vectors(rank_ratio, prev_origin=theta_0, new_origin=theta_avg)`.

    theta_avg = theta_0 + (1/T) sum_t tau_t. Keys with "attn" or "mlp" and neither "ln" nor "bias"
    (2-D): theta_avg + prior * sum_t SVD_k(theta_t - theta_avg), k = max(1, int(rank_ratio min(m, n)))
    (0 at rank_ratio 0, full at 1). Every other key stays theta_avg (the official code adds
    prior * sum_t (theta_t - theta_avg), which is zero). CART's own lambda is `prior` (official config
    `prior`, default 2.0); `coefficients` is the global scale of this whole direction, as for every
    method here (theta = theta_0 + coefficients * tau_merged), so coefficients = 1 is CART as published.
    """
    r = float(rank_ratio)
    if not 0 <= r <= 1:
        raise ValueError(f"cart: rank_ratio must be in [0, 1], got {rank_ratio}")
    prior = float(prior)
    scale = global_scale(coefficients, "cart")
    n = len(tvs)

    def merge_key(key, ts, tot):
        if not cart_key(key, ts[0].shape):
            return tot / n
        return _decompose(tvs, key, ts, lambda ms: cart_matrix(ms, r, prior, tot))

    return keywise_direction(tvs, merge_key, scale, {"rank_ratio": r, "prior": prior})
