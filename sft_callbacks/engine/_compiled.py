"""The compiled kernels behind :mod:`.kernels` (imported only when numba is installed; see there).

Each one names the NumPy expression it computes; tests check them against it bit for bit. Arrays named ``rows``
are a group's global row ids, or empty for "every row, in order"; ``src`` is the stream's float32 row weights.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

_GOLDEN, _C1, _C2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_INV53 = 1.0 / (1 << 53)
_BUFFER = 8192  # numpy's ufunc buffer: a float32 array summed as float64 is cast and summed this many at a time


@njit(cache=True)
def deadline_order(share, owed, margin, count):
    """quotas.deadline_order over the groups of positive ``share`` (``owed`` updated in place)."""
    k_groups = share.shape[0]
    floor, room = margin - 1e-12, 1.0 - margin
    out = np.empty(count, np.int64)
    for t in range(count):
        best, best_time = -1, np.inf
        for j in range(k_groups):
            d = owed[j] + share[j]
            owed[j] = d
            if d >= floor:
                time = (room - d) / share[j]
                if time < best_time:
                    best, best_time = j, time
        if best < 0:
            best = 0
            for j in range(1, k_groups):
                if owed[j] > owed[best]:
                    best = j
        owed[best] -= 1.0
        out[t] = best
    return out


@njit(cache=True)
def _length(src, rows):
    """How many items ``src[rows]`` has (every row of ``src`` when ``rows`` is empty)."""
    return rows.shape[0] if rows.shape[0] else src.shape[0]


@njit(cache=True)
def _at(src, rows, i):
    """Item ``i`` of ``src[rows]`` (of ``src`` when ``rows`` is empty), as float64."""
    return np.float64(src[rows[i]] if rows.shape[0] else src[i])


@njit(cache=True)
def _halves(lo, n):
    """The two halves numpy's pairwise sum splits items ``lo..lo+n-1`` into (n > 128): the first rounded down to a
    multiple of 8."""
    half = n // 2
    half -= half % 8
    return lo, half, lo + half, n - half


@njit(cache=True)
def _row(src, rows, scale, lag, key, r, lo, hi):
    """Row ``r``'s pass arithmetic as _GroupStream._row_arrays and quotas.window_events do it: ``(rate, lag, psi,
    first visit in the window, visits in the window)``."""
    if src.shape[0] == 0:  # a branch per case, not _at: through _at this loop ran 1.5x slower at 100M rows
        rate = 1.0
    elif rows.shape[0] == 0:
        rate = np.float64(src[r]) * scale
    else:
        rate = np.float64(src[rows[r]]) * scale
    ell = np.float64(lag[r]) if lag.shape[0] else 0.0
    z = (np.uint64(r) ^ key) + _GOLDEN  # hashing.counter_uniforms
    z = (z ^ (z >> _S30)) * _C1
    z = (z ^ (z >> _S27)) * _C2
    z = z ^ (z >> _S31)
    u = np.float64(z >> _S11) * _INV53
    owed = ell if ell > 0.0 else 0.0  # quotas.thresholds
    psi = owed + u * (1.0 - owed)
    total = 0
    if rate > 0:  # quotas.visits_per_row
        total = max(int(math.ceil(rate + ell - psi)), 0)
    start, stop = 0, total
    if rate > 0 and lo != -np.inf:  # quotas.visits_before
        start = min(max(int(math.ceil(lo * rate + ell - psi)), 0), total)
    if rate > 0 and hi < 1.0:
        stop = min(max(int(math.ceil(hi * rate + ell - psi)), 0), total)
    return rate, ell, psi, start, stop - start


@njit(cache=True, parallel=True)
def window_events(src, rows, scale, lag, key, a, b, lo, hi):
    """quotas.window_events of rows ``a..b-1`` (ranks include ``a``): each row's visits counted, then written at
    its offset (rows in parallel; the result does not depend on the number of threads)."""
    count = np.empty(b - a, np.int64)
    for i in prange(b - a):
        count[i] = _row(src, rows, scale, lag, key, a + i, lo, hi)[4]
    ends = np.cumsum(count)
    events = ends[-1] if b > a else 0
    ranks = np.empty(events, np.int64)
    times = np.empty(events, np.float64)
    for i in prange(b - a):
        if count[i]:
            rate, ell, psi, start, c = _row(src, rows, scale, lag, key, a + i, lo, hi)
            e = ends[i] - c
            for v in range(start, start + c):
                ranks[e] = a + i
                times[e] = ((np.float64(v) + psi) - ell) / rate
                e += 1
    return ranks, times


@njit(cache=True)
def visited_bits(visited, n):
    """A bit per row (``np.packbits`` order, little-endian bits): set for the rows in ``visited``."""
    bits = np.zeros((n + 7) // 8, np.uint8)
    for v in visited:
        bits[v >> 3] |= np.uint8(1 << (v & 7))
    return bits


@njit(cache=True, parallel=True)
def split_lag(bits, rows, visited, unvisited):
    """``np.where(seen[rows], visited, unvisited)`` (float32), ``seen`` as :func:`visited_bits`."""
    out = np.empty(rows.shape[0], np.float32)
    for i in prange(rows.shape[0]):
        r = rows[i]
        out[i] = visited if (bits[r >> 3] >> (r & 7)) & 1 else unvisited
    return out


@njit(cache=True)
def _pairwise_block(src, rows, lo, n):
    """numpy's pairwise sum of at most 128 numbers (items ``lo..lo+n-1`` as float64): in order below 8, else 8
    accumulators."""
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += _at(src, rows, i)
        return res
    r0, r1, r2, r3 = _at(src, rows, lo), _at(src, rows, lo + 1), _at(src, rows, lo + 2), _at(src, rows, lo + 3)
    r4, r5, r6, r7 = _at(src, rows, lo + 4), _at(src, rows, lo + 5), _at(src, rows, lo + 6), _at(src, rows, lo + 7)
    i, end = 8, n - n % 8
    while i < end:
        j = lo + i
        r0 += _at(src, rows, j)
        r1 += _at(src, rows, j + 1)
        r2 += _at(src, rows, j + 2)
        r3 += _at(src, rows, j + 3)
        r4 += _at(src, rows, j + 4)
        r5 += _at(src, rows, j + 5)
        r6 += _at(src, rows, j + 6)
        r7 += _at(src, rows, j + 7)
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += _at(src, rows, lo + i)
        i += 1
    return res


@njit(cache=True)
def _pairwise(src, rows, lo, n):
    """numpy's pairwise sum of items ``lo..lo+n-1`` (``src[rows]`` as float64, contiguous): blocks of up to 128
    numbers, halves (rounded down to a multiple of 8) above, added as the recursion adds them. Written as a loop
    over an explicit stack of halves: numba's cache cannot reload a recursive function."""
    depth = 64
    f_lo = np.empty(depth, np.int64)
    f_n = np.empty(depth, np.int64)
    f_stage = np.zeros(depth, np.int64)  # 0: left half pending; 1: right half pending, the left's sum in f_left
    f_left = np.zeros(depth, np.float64)
    top = 0
    f_lo[0], f_n[0], f_stage[0] = lo, n, 0
    while True:
        if f_n[top] > 128:  # descend into the left half
            f_lo[top + 1], f_n[top + 1] = _halves(f_lo[top], f_n[top])[:2]
            f_stage[top + 1] = 0
            top += 1
            continue
        value = _pairwise_block(src, rows, f_lo[top], f_n[top])
        while True:  # hand the finished half's sum up the stack
            if top == 0:
                return value
            top -= 1
            if f_stage[top] == 0:  # it was the left half: go on with the right one
                f_left[top], f_stage[top] = value, 1
                f_lo[top + 1], f_n[top + 1] = _halves(f_lo[top], f_n[top])[2:]
                f_stage[top + 1] = 0
                top += 1
                break
            value = f_left[top] + value  # both halves done


@njit(cache=True, parallel=True)
def gathered_sum(src, rows):
    """``src[rows].sum(dtype=np.float64)`` (float32 ``src``) without the gathered copy: numpy casts a buffer of
    8192 numbers at a time and adds each buffer's pairwise sum to the total, in order (the buffers' sums are
    computed in parallel, then added in that order)."""
    n = _length(src, rows)
    blocks = (n + _BUFFER - 1) // _BUFFER
    sums = np.empty(blocks, np.float64)
    for k in prange(blocks):
        sums[k] = _pairwise(src, rows, k * _BUFFER, min(_BUFFER, n - k * _BUFFER))
    total = 0.0
    for k in range(blocks):
        total += sums[k]
    return total


@njit(cache=True)
def all_equal_positive(src, rows):
    """``bool((local == local[0]).all() and local[0] > 0)`` for ``local = src[rows]``, stopping at the first
    difference."""
    first = _at(src, rows, 0)
    for i in range(1, _length(src, rows)):
        if _at(src, rows, i) != first:
            return False
    return first > 0


@njit(cache=True)
def proportional(new, factor, old, scale, rows, rtol):
    """``np.allclose(new[rows] * factor, old[rows] * scale, rtol=rtol, atol=0)`` in float64, stopping at the first
    row that differs."""
    for i in range(_length(new, rows)):
        x = _at(new, rows, i) * factor
        y = _at(old, rows, i) * scale
        if not abs(x - y) <= rtol * abs(y):
            return False
    return True


@njit(cache=True)
def stable_argsort(x):
    """``np.argsort(x, kind="stable")`` of a float64 array: an LSD radix sort over the floats' bits, 16 at a time
    (a pass whose digit is the same for every number is skipped)."""
    n = x.shape[0]
    bits = (x + 0.0).view(np.uint64)  # + 0.0: -0.0 becomes 0.0, which numpy holds equal
    sign = np.uint64(1) << np.uint64(63)
    keys = np.empty(n, np.uint64)
    for i in range(n):  # the order of the floats as unsigned integers (negative numbers reversed)
        b = bits[i]
        keys[i] = ~b if b & sign else b | sign
    index = np.arange(n)
    spare_index = np.empty(n, np.int64)
    spare_keys = np.empty(n, np.uint64)
    digit_mask = np.uint64(0xFFFF)
    for p in range(4):
        shift = np.uint64(16 * p)
        count = np.zeros(65537, np.int64)
        for i in range(n):
            count[((keys[i] >> shift) & digit_mask) + 1] += 1
        if count.max() == n:
            continue
        for d in range(65536):
            count[d + 1] += count[d]
        for i in range(n):
            d = (keys[i] >> shift) & digit_mask
            j = count[d]
            count[d] = j + 1
            spare_index[j] = index[i]
            spare_keys[j] = keys[i]
        index, spare_index = spare_index, index
        keys, spare_keys = spare_keys, keys
    return index


@njit(cache=True)
def earliest_split(ranks, times, last):
    """quotas.earliest past its selection: the ranks of the visits at or before ``last`` in stable time order, and
    the other visits' ranks and times as they were."""
    n_head = 0
    for i in range(times.shape[0]):
        if times[i] <= last:
            n_head += 1
    head_times = np.empty(n_head, np.float64)
    head_ranks = np.empty(n_head, ranks.dtype)
    rest_ranks = np.empty(times.shape[0] - n_head, ranks.dtype)
    rest_times = np.empty(times.shape[0] - n_head, np.float64)
    h = k = 0
    for i in range(times.shape[0]):
        if times[i] <= last:
            head_times[h], head_ranks[h] = times[i], ranks[i]
            h += 1
        else:
            rest_times[k], rest_ranks[k] = times[i], ranks[i]
            k += 1
    return head_ranks[stable_argsort(head_times)], rest_ranks, rest_times


@njit(cache=True, parallel=True)
def pairwise_sum(src, rows):
    """``np.add.reduce(src[rows].astype(np.float64))`` without the gathered copy (numpy's pairwise sum of a
    contiguous float64 array): the tree's 16 subtrees four levels down are summed in parallel, then added as the
    tree adds them (the same floats)."""
    n = _length(src, rows)
    if n <= 128 * 32:
        return _pairwise(src, rows, 0, n)
    lo = np.empty(16, np.int64)
    size = np.empty(16, np.int64)
    lo[0], size[0] = 0, n
    width = 1
    for _ in range(4):  # every node is above 128 here: n > 4096 and each level at least halves less 8
        for k in range(width - 1, -1, -1):
            a, na, b, nb = _halves(lo[k], size[k])
            lo[2 * k], size[2 * k], lo[2 * k + 1], size[2 * k + 1] = a, na, b, nb
        width *= 2
    sums = np.empty(16, np.float64)
    for k in prange(16):
        sums[k] = _pairwise(src, rows, lo[k], size[k])
    while width > 1:
        width //= 2
        for k in range(width):
            sums[k] = sums[2 * k] + sums[2 * k + 1]
    return sums[0]


@njit(cache=True, parallel=True)
def float32_checked(w):
    """``w.astype(np.float32)`` and, of the result, ``(min, max)`` and whether every entry is finite."""
    n = w.shape[0]
    out = np.empty(n, np.float32)
    blocks = (n + 65535) // 65536
    low = np.empty(blocks, np.float32)
    high = np.empty(blocks, np.float32)
    bad = np.zeros(blocks, np.int64)
    for k in prange(blocks):
        a, b = k * 65536, min(n, (k + 1) * 65536)
        lo_k, hi_k, bad_k = np.float32(np.inf), np.float32(-np.inf), 0
        for i in range(a, b):
            x = np.float32(w[i])
            out[i] = x
            if not np.isfinite(x):
                bad_k += 1
            else:
                lo_k = min(lo_k, x)
                hi_k = max(hi_k, x)
        low[k], high[k], bad[k] = lo_k, hi_k, bad_k
    return out, (low.min() if blocks else np.float32(0)), (high.max() if blocks else np.float32(0)), bad.sum() == 0
