"""The compiled loops of core.merging.fused (numba; imported only when a CPU TIES merge runs). fused.py says
what they compute and why every addition happens in torch's order."""

from __future__ import annotations

import numba
import numpy as np

BLOCK = 256  # columns per block: the block's [N, BLOCK] trimmed values stay in L1 (8 KB at 8 tasks)
RUN = 16  # torch's cascade run length (multi_row_sum's level_step for fewer than 2^20 rows)
f32 = np.float32


@numba.njit(nogil=True, cache=True)
def _cascade(v, first, step, count):
    """sum_i v[first + step * i], i < count, in the order of torch's multi_row_sum (SumKernel.cpp): a run of
    RUN values accumulates in level 0, which is then added into level 1 (and a level into the next when a
    run of RUN of its own completes); values after the last full run go into level 0; levels add last."""
    acc = np.zeros(4, dtype=f32)
    full = (count // RUN) * RUN
    for i in range(count):
        acc[0] += v[first + step * i]
        r = i + 1
        if r % RUN == 0 and r <= full:
            for lv in range(1, 4):
                acc[lv] += acc[lv - 1]
                acc[lv - 1] = f32(0.0)
                if (r & ((RUN - 1) << (lv * 4))) != 0:
                    break
    s = acc[0] + acc[1]
    s = s + acc[2]
    return s + acc[3]


@numba.njit(nogil=True, cache=True)
def col_sum(v, ilp):
    """torch's float32 sum of the N values v of one column of an [N, W] matrix summed over dim 0: the plain
    cascade, or (ilp: the last W mod 32 columns, torch's row_sum) four interleaved cascades over rows
    k, k + 4, ..., the rows after the last group of four added to the first, then the four added in order."""
    n = v.shape[0]
    if not ilp:
        return _cascade(v, 0, 1, n)
    groups = n // 4
    p0 = _cascade(v, 0, 4, groups)
    p1 = _cascade(v, 1, 4, groups)
    p2 = _cascade(v, 2, 4, groups)
    p3 = _cascade(v, 3, 4, groups)
    for i in range(groups * 4, n):
        p0 += v[i]
    p0 = p0 + p1
    p0 = p0 + p2
    return p0 + p3


@numba.njit(nogil=True, cache=True)
def _disjoint(tr, j, s, ilp, mean, u):
    """Column j's disjoint mean (or sum) under elected sign s: s * sum_t max(tr[t, j] * s, 0) over the count
    of positive terms (u: scratch of N values)."""
    zero = f32(0.0)
    cnt = zero
    for t in range(tr.shape[0]):
        x = tr[t, j] * s
        if x < zero:
            x = zero
        u[t] = x
        if x > zero:
            cnt += f32(1.0)
    tot = col_sum(u, ilp) * s
    return (tot / max(cnt, f32(1.0)) if mean else tot), cnt


@numba.njit(nogil=True, cache=True)
def _carry(acc, r, b):
    """After row r (a multiple of RUN) of a block's cascade: level 0 added into level 1, and a level into
    the next while r completes a run of RUN of that level too (`_cascade`, for the first b columns)."""
    for lv in range(1, 4):
        for j in range(b):
            acc[lv, j] += acc[lv - 1, j]
            acc[lv - 1, j] = f32(0.0)
        if (r & ((RUN - 1) << (lv * 4))) != 0:
            break


@numba.njit(nogil=True, cache=True)
def ties_slab(T, lo, hi, lam, mean, tail_from, out, colsum, at_or_above, hits, cancel_cols, cancel_vals):
    """TIES on slab T [N, W]: trim (|tau| >= hi kept; lo <= |tau| < hi undecided, its column a hit; lo = hi: none), scale
    row t by lam[t], elect sign(sum) (0 -> +1), disjoint mean (or sum) of the entries of the elected sign.
    Columns >= tail_from sum in torch's row_sum order (col_sum ilp), the others in the plain cascade.

    Writes out[W] (provisional on hit columns), colsum[W] = sum_t T[t] (the NaN/Inf check, ||sum tau||_1),
    adds each task's entries >= lo to at_or_above[N]. Returns (hit columns, written to hits; the sum of the
    elected signs over the other columns; exact cancellations among them, written to cancel_cols with
    their values under a negative majority in cancel_vals)."""
    n, w = T.shape
    full = (n // RUN) * RUN
    zero = f32(0.0)
    one = f32(1.0)
    tr = np.empty((n, BLOCK), dtype=f32)
    acc = np.zeros((4, BLOCK), dtype=f32)  # cascade levels of the block's column sums of T, then of u
    acc2 = np.zeros((4, BLOCK), dtype=f32)  # of the trimmed values, then the counts (level 0)
    hit = np.zeros(BLOCK, dtype=np.uint8)
    s = np.empty(BLOCK, dtype=f32)
    raw = np.empty(BLOCK, dtype=f32)
    col = np.empty(n, dtype=f32)
    lanes = np.zeros(BLOCK, dtype=np.int32)
    n_hits = 0
    n_cancel = 0
    sign_total = 0
    for j0 in range(0, w, BLOCK):
        b = min(BLOCK, w - j0)
        for j in range(b):
            hit[j] = 0
            for lv in range(4):
                acc[lv, j] = zero
                acc2[lv, j] = zero
        # pass 1: sums of T and of the trimmed, weighted values; undecided entries; counts >= lo. Branch-free
        # on 1-D rows, so LLVM vectorizes it (lo = hi when nothing is undecided: no entry is a hit)
        for t in range(n):
            lo_t = lo[t]
            hi_t = hi[t]
            lam_t = lam[t]
            row = T[t]  # (a 1-D C-contiguous row: T[t, j0 : j0 + b] is typed strided and gathers)
            trow = tr[t]
            a0 = acc[0]
            e0 = acc2[0]
            for j in range(b):
                x = row[j0 + j]
                a0[j] += x
                a = abs(x)
                ge_lo = a >= lo_t
                ge_hi = a >= hi_t
                lanes[j] += np.int32(ge_lo)  # (per-lane counts: a scalar int64 count vectorized 8 wide, 0.3 ms more)
                hit[j] |= ge_lo & (not ge_hi)
                v = (x * f32(ge_hi)) * lam_t
                trow[j] = v
                e0[j] += v
            cnt = 0
            for j in range(b):
                cnt += lanes[j]
                lanes[j] = 0
            at_or_above[t] += cnt
            if (t + 1) % RUN == 0 and t + 1 <= full:
                _carry(acc, t + 1, b)
                _carry(acc2, t + 1, b)
        plain = min(b, max(0, tail_from - j0))  # the block's columns before the tail
        for j in range(plain):  # branch-free: vectorized
            c = acc[0, j] + acc[1, j]
            c = c + acc[2, j]
            colsum[j0 + j] = c + acc[3, j]
            e = acc2[0, j] + acc2[1, j]
            e = e + acc2[2, j]
            e = e + acc2[3, j]
            raw[j] = f32(e > zero) - f32(e < zero)
        for j in range(plain, b):  # the tail's few columns, in row_sum's order
            for t in range(n):
                col[t] = T[t, j0 + j]
            colsum[j0 + j] = col_sum(col, True)
            for t in range(n):
                col[t] = tr[t, j]
            e = col_sum(col, True)
            raw[j] = f32(e > zero) - f32(e < zero)
        for j in range(b):
            s[j] = raw[j] + f32(raw[j] == zero)  # sign 0 -> +1
        # pass 2: sum and count of the entries of the elected sign
        for j in range(b):
            for lv in range(4):
                acc[lv, j] = zero
            acc2[0, j] = zero
        for t in range(n):
            trow = tr[t]
            a0 = acc[0]
            c0 = acc2[0]
            for j in range(b):
                u = trow[j] * s[j]
                pos = u > zero
                a0[j] += u if pos else zero
                c0[j] += f32(pos)
            if (t + 1) % RUN == 0 and t + 1 <= full:
                _carry(acc, t + 1, b)
        for j in range(plain):
            tot = acc[0, j] + acc[1, j]
            tot = tot + acc[2, j]
            tot = (tot + acc[3, j]) * s[j]
            cnt_j = acc2[0, j]
            out[j0 + j] = tot / max(cnt_j, one) if mean else tot
        for j in range(plain, b):
            out[j0 + j], acc2[0, j] = _disjoint(tr, j, s[j], True, mean, col)
        # bookkeeping, branch-free (a branch per column cost more than the whole second pass): the signs of the
        # decided columns, the hit columns and the exact cancellations among the others compacted in place
        signs = 0
        first_cancel = n_cancel
        for j in range(b):
            h = np.int32(hit[j])
            signs += np.int32(raw[j]) * (1 - h)
            hits[n_hits] = j0 + j
            n_hits += h
            cancel_cols[n_cancel] = j0 + j
            n_cancel += (1 - h) * np.int32((raw[j] == zero) & (acc2[0, j] > zero))
        sign_total += signs
        for i in range(first_cancel, n_cancel):  # rare: their values under a negative majority
            j = cancel_cols[i] - j0
            cancel_vals[i] = _disjoint(tr, j, -one, j0 + j >= tail_from, mean, col)[0]
    return n_hits, sign_total, n_cancel


@numba.njit(nogil=True, cache=True)
def histogram_slab(bits, hist, first, width, offset, fine, with_fine):
    """The TIES threshold pass on one slab (core.merging.kselect.topk_thresholds): `bits` is the [N, W] slab
    of float32 task vectors viewed as int32. Adds every entry's high 16 bits of |tau| (sign cleared) to its
    task's row of hist [N, 2^15]; with_fine: an entry whose high bits fall in its task's candidate bins
    [first, first + width) also adds its low 16 bits to fine, at ((offset + bin - first) << 16) | low.
    Integer counts: the same histograms as the torch pass's bincounts, whatever the order.

    The candidates (~2 % of the entries) are first compacted branch-free into `pos`, then counted: a branch
    per entry around the fine count ran 2.6x slower (14.7 vs 5.7 ms for a [20, 262144] slab; the high
    histogram alone 2.1 ms)."""
    n, w = bits.shape
    pos = np.empty(w, dtype=np.int64)
    for t in range(n):
        row = bits[t]
        h = hist[t]
        f0 = first[t]
        wd = width[t]
        o = offset[t]
        if not with_fine:
            for j in range(w):
                h[(row[j] >> 16) & 0x7FFF] += 1
            continue
        cnt = 0
        for j in range(w):
            b = row[j]
            hb = (b >> 16) & 0x7FFF
            h[hb] += 1
            rel = hb - f0
            pos[cnt] = j
            cnt += (rel >= 0) & (rel < wd)
        for i in range(cnt):
            b = row[pos[i]]
            rel = ((b >> 16) & 0x7FFF) - f0
            fine[((o + rel) << 16) | (b & 0xFFFF)] += 1
