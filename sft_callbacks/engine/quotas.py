"""Pure rules behind the sampler: which rows a pass visits, in which order, and how groups share the stream.

Every function takes arrays and returns arrays; :class:`~sft_callbacks.engine.sampling.AdaptiveSampler` keeps the
state and decides when to call them. The model is *credit*: a row earns credit at its weight's rate and is visited
each time its credit, less its visits so far, reaches a random threshold ``psi`` in (0, 1). Equal weights then give
random reshuffling (each row once per pass, in the order of a fresh permutation), unequal weights give quotas (a
row's visit count never strays more than one from the credit it has earned), and a row is never visited again
while a row of equal or higher weight and the same history still waits for its turn.

Example:
    >>> import numpy as np
    >>> visits_per_row(np.array([2.0, 1.0, 0.0]), np.zeros(3), np.array([0.5, 0.5, 0.5])).tolist()
    [2, 1, 0]
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels

_INDEX_LIMIT_32 = 2**31 - 1


def index_dtype(n: int) -> np.dtype:
    """The smallest signed integer type that holds the indices ``0..n-1`` (int32 up to 2^31 rows).

    Example:
        >>> index_dtype(10), index_dtype(2**31 + 1)
        (dtype('int32'), dtype('int64'))
    """
    return np.dtype(np.int32) if n <= _INDEX_LIMIT_32 else np.dtype(np.int64)


def pass_permutation(n: int, seed: int) -> np.ndarray:
    """``torch.randperm(n)`` from a generator seeded with ``seed``: the order accelerate's seedable sampler draws.

    accelerate's ``SeedableRandomSampler`` seeds its generator with ``data_seed + epoch`` and then yields
    ``torch.randperm(n)``; a pass seeded the same way is the plain Trainer's epoch, index for index.

    Example:
        >>> sorted(pass_permutation(5, 0).tolist())
        [0, 1, 2, 3, 4]
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    perm = torch.randperm(n, generator=generator).numpy()
    return perm.astype(index_dtype(n), copy=False)


def phases(n: int) -> np.ndarray:
    """Visit thresholds ``psi`` in (0, 1) for the rows of a pass, in the pass's permutation order: ``(j + 0.5) / n``.

    Using the permutation rank (not an independent uniform) makes ties impossible and makes equal weights visit the
    rows in exactly the permutation's order.

    Example:
        >>> phases(4).tolist()
        [0.125, 0.375, 0.625, 0.875]
    """
    return (np.arange(n, dtype=np.float64) + 0.5) / n


def thresholds(lag: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Each row's visit threshold for a pass: ``psi`` moved into ``[max(0, lag), 1]``.

    A row owed credit from before the pass (``lag > 0``) gets its first visit between now and the moment it would
    fall a whole visit behind, in the order of ``psi``; no visit is ever due before the pass starts, so the pass
    never opens with a burst of overdue rows. Rows with no lag keep ``psi`` (equal weights: the permutation).

    Example:
        >>> thresholds(np.array([0.0, 0.5, -0.5]), np.array([0.5, 0.5, 0.5])).tolist()
        [0.5, 0.75, 0.5]
    """
    owed = np.maximum(lag, 0.0)
    return owed + psi * (1.0 - owed)


def visits_per_row(rate: np.ndarray, lag: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Visits each row gets in one pass: the thresholds ``m + psi`` (``m = 0, 1, ...``) its credit crosses.

    A row with lag ``l`` (credit minus visits) and rate ``r`` (credit per pass) is visited for every ``m >= 0`` with
    ``m + psi - l < r``: ``max(0, ceil(r + l - psi))`` times. Rows of rate 0 are never visited.

    Example:
        >>> visits_per_row(np.array([1.0, 1.5]), np.array([0.0, 0.6]), np.array([0.5, 0.5])).tolist()
        [1, 2]
    """
    n = np.ceil(rate + lag - psi)
    n = np.where(rate > 0, np.maximum(n, 0.0), 0.0)
    return n.astype(np.int64)


def visits_before(x: float, rate: np.ndarray, lag: np.ndarray, psi: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Visits of each row whose time in the pass is below ``x`` (times of visit ``m``: ``(m + psi - l) / r``).

    Example:
        >>> visits_before(0.5, np.array([2.0]), np.array([0.0]), np.array([0.5]), np.array([2])).tolist()
        [1]
    """
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.ceil(x * rate + lag - psi)
    k = np.where(rate > 0, k, 0.0)
    return np.clip(k, 0, total).astype(np.int64)


def window_events(
    lo: float, hi: float, rate: np.ndarray, lag: np.ndarray, psi: np.ndarray, total: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The visits of one time window ``[lo, hi)`` of a pass in row order (a row's visits in turn): ``(ranks,
    times)``, the rank of each visit's row and the visit's time in the pass. :func:`plan_window` sorts them.

    Example:
        >>> ranks, times = window_events(-np.inf, 1.0, np.array([1.0, 2.0]), np.zeros(2), np.array([0.25, 0.75]),
        ...                              np.array([1, 2]))
        >>> ranks.tolist(), times.tolist()
        ([0, 1, 1], [0.25, 0.375, 0.875])
    """
    first = np.zeros(len(rate), dtype=np.int64) if lo == -np.inf else visits_before(lo, rate, lag, psi, total)
    last = total if hi >= 1.0 else visits_before(hi, rate, lag, psi, total)
    count = last - first
    ranks = np.repeat(np.arange(len(rate), dtype=np.int64), count)
    if ranks.size == 0:
        return ranks, np.empty(0, dtype=np.float64)
    # The visit number of each event: first[row] + 0, 1, ... within the row's run.
    starts = np.cumsum(count) - count
    m = np.arange(ranks.size, dtype=np.int64) - np.repeat(starts, count) + np.repeat(first, count)
    return ranks, (m + psi[ranks] - lag[ranks]) / rate[ranks]


def plan_window(
    lo: float, hi: float, rate: np.ndarray, lag: np.ndarray, psi: np.ndarray, total: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The visits of one time window ``[lo, hi)`` of a pass, in time order; ties keep the permutation's order.

    Arrays are in the pass's permutation order (position ``j`` holds the row ranked ``j``). Returns
    ``(ranks, times)``: the permutation rank of each visit's row and the visit's time in the pass (a visit owed
    from before the pass has a negative time and comes first). ``lo = -inf`` opens the first window. The rows can
    be cut into consecutive chunks: :func:`window_events` of each, concatenated, sort to the same plan.

    Example:
        >>> ranks, times = plan_window(-np.inf, 1.0, np.array([1.0, 2.0]), np.zeros(2), np.array([0.25, 0.75]),
        ...                            np.array([1, 2]))
        >>> ranks.tolist()
        [0, 1, 1]
    """
    ranks, times = window_events(lo, hi, rate, lag, psi, total)
    order = np.argsort(times, kind="stable")  # stable: equal times keep the permutation's order
    return ranks[order], times[order]


def earliest(ranks: np.ndarray, times: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``count`` visits of ``(ranks, times)`` in stable time order, and the others as they were.

    Returns ``(head, rest_ranks, rest_times)``: ``head`` holds the ranks of the earliest visits (at least ``count``:
    every visit tied with the last one comes too) in the order a stable sort by time puts them, the rest keep their
    order, so sorting ``head`` and then the rest again gives the whole stable sort, block by block. A window's
    first draws then cost a selection, not a sort of the whole window.

    Example:
        >>> head, rest, t = earliest(np.array([0, 1, 2, 3]), np.array([0.5, 0.1, 0.5, 0.9]), 2)
        >>> head.tolist(), rest.tolist(), t.tolist()
        ([1, 0, 2], [3], [0.9])
    """
    compiled = kernels.get()
    if count >= len(times):
        order = compiled.stable_argsort(times) if compiled is not None else np.argsort(times, kind="stable")
        return ranks[order], ranks[:0], times[:0]
    last = np.partition(times, count - 1)[count - 1] if count > 0 else -np.inf
    if compiled is not None:
        return compiled.earliest_split(ranks, times, float(last))
    early = times <= last
    head = np.flatnonzero(early)
    head = head[np.argsort(times[head], kind="stable")]
    late = ~early
    return ranks[head], ranks[late], times[late]


def carried_lag(rate: np.ndarray, lag: np.ndarray, visited: np.ndarray, elapsed: float) -> np.ndarray:
    """Lag (credit minus visits) of each row after ``elapsed`` of a pass in which it was visited ``visited`` times.

    Example:
        >>> carried_lag(np.array([1.0, 1.0]), np.zeros(2), np.array([1, 0]), 0.5).tolist()
        [-0.5, 0.5]
    """
    return (lag + rate * max(0.0, elapsed) - visited).astype(np.float32)


def deadline_order(shares: np.ndarray, deficit: np.ndarray, count: int) -> np.ndarray:
    """Which group each of the next ``count`` positions goes to: Tijdeman's earliest-deadline rule over credit.

    Each position, every group earns its share; ``deficit`` holds each group's credit minus the positions it took.
    Among the groups owed at least ``d = 1 / (2K - 2)`` (``K`` groups of positive share), the one whose deficit
    would first reach ``1 - d`` takes the position; ties go to the lower group. Each group's count then stays within
    ``1 - d`` (below one) of its share of any prefix (Tijdeman 1980, the chairman assignment problem), where stride
    scheduling and smooth weighted round-robin exceed one from about six groups. Groups of share 0 are never
    chosen. ``deficit`` is updated in place; the result does not depend on how the stretch is cut into calls.
    With numba installed the loop runs compiled (:mod:`.kernels`), with the same floats.

    Example:
        >>> deficit = np.zeros(2)
        >>> deadline_order(np.array([0.75, 0.25]), deficit, 8).tolist()
        [0, 0, 1, 0, 0, 0, 1, 0]
    """
    compiled = kernels.get()
    if compiled is not None and count:
        at = np.flatnonzero(np.asarray(shares) > 0)
        owed = np.asarray(deficit, dtype=np.float64)[at]
        chosen = compiled.deadline_order(np.asarray(shares, dtype=np.float64)[at], owed,
                                         1.0 / (2 * len(at) - 2) if len(at) > 1 else 0.0, int(count))
        deficit[at] = owed
        return at.astype(np.int64)[chosen]
    active = [k for k in range(len(shares)) if shares[k] > 0]
    share = [float(shares[k]) for k in active]
    owed = [float(deficit[k]) for k in active]
    margin = 1.0 / (2 * len(active) - 2) if len(active) > 1 else 0.0
    floor, room, inf = margin - 1e-12, 1.0 - margin, float("inf")
    members = list(enumerate(share))
    order = range(len(share))
    out = [0] * count
    for t in range(count):  # about 1 us a position: the stream's one Python loop, so kept lean
        best, best_time = -1, inf
        for j, p in members:
            d = owed[j] + p
            owed[j] = d
            if d >= floor:
                time = (room - d) / p
                if time < best_time:
                    best, best_time = j, time
        # Tijdeman: some group is always owed enough; the most owed one guards against rounding.
        j = best if best >= 0 else max(order, key=owed.__getitem__)
        owed[j] -= 1.0
        out[t] = j
    for j, k in enumerate(active):
        deficit[k] = owed[j]
    return np.asarray(active, dtype=np.int64)[np.asarray(out, dtype=np.int64)] if count else np.empty(0, np.int64)
