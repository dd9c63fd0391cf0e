"""Exact best-``k`` rows per group, over data read chunk by chunk, in memory that does not grow with the rows.

:func:`curate`'s quotas and top-k must rank millions of rows without holding a score, a key or an argsort per
row. Scores become unsigned integer keys whose order is the ranking (:func:`order_keys`), and
:func:`best_rows_thresholds` finds, per group, the key of the ``k``-th best row by radix selection: 8 passes
over the chunks, one byte of the key per pass, each pass counting rows in a ``(groups, 256)`` histogram.
:meth:`Thresholds.keep` then marks the kept rows of each chunk; ties at the threshold keep input order, exactly
like a stable argsort.

Example:
    >>> import numpy as np
    >>> scores = np.array([0.5, 0.1, 0.9, 0.1, np.nan, 0.3])
    >>> groups = np.array([0, 0, 0, 1, 1, 1])
    >>> chunks = lambda: [(groups, order_keys(scores), np.ones(6, dtype=bool))]  # one chunk here
    >>> t = best_rows_thresholds(chunks, caps=np.array([2, 1]))
    >>> t.keep(groups, order_keys(scores), np.ones(6, dtype=bool)).tolist()
    [True, True, False, True, False, False]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np

_LAST = np.uint64(2**64 - 1)  # non-finite scores: ranked after every finite one (no finite key reaches it)
_SIGN = np.uint64(1 << 63)

#: ``(group codes, keys, candidate mask)`` of one chunk; codes index ``caps``.
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]


def order_keys(scores: np.ndarray, descending: bool = False) -> np.ndarray:
    """``uint64`` keys that sort like ``scores`` (lowest first, or highest with ``descending``); NaN / inf last.

    Example:
        >>> order_keys(np.array([2.0, -1.0, np.nan, 0.0])).argsort().tolist()
        [1, 3, 0, 2]
    """
    s = np.asarray(scores, dtype=np.float64)
    s = (-s if descending else s) + 0.0  # + 0.0 turns -0.0 into 0.0, so the two tie as they do in a sort
    bits = s.view(np.uint64)
    keys = np.where(bits & _SIGN, ~bits, bits | _SIGN)  # IEEE-754 order as unsigned integers
    keys[~np.isfinite(s)] = _LAST
    return keys


@dataclasses.dataclass
class Thresholds:
    """Per group: keep rows whose ``key >> shift`` is below ``prefix``, and the first ``take`` equal to it.

    ``take`` is -1 where every row equal to the prefix is kept; groups with a negative cap keep everything.
    :meth:`keep` must see the chunks in input order (it counts ties as it goes).
    """

    prefix: np.ndarray
    shift: np.ndarray
    take: np.ndarray
    capped: np.ndarray

    def __post_init__(self) -> None:
        self._tied = np.zeros(len(self.prefix), dtype=np.int64)  # ties kept so far per group

    def keep(self, codes: np.ndarray, keys: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Which of this chunk's candidate rows are among the best of their group (False for non-candidates)."""
        out = candidates.copy()
        rows = np.flatnonzero(candidates & self.capped[codes])
        if not len(rows):
            return out
        g = codes[rows]
        top = keys[rows] >> self.shift[g]
        below, equal = top < self.prefix[g], top == self.prefix[g]
        out[rows] = below | (equal & (self.take[g] < 0))
        partial = equal & (self.take[g] >= 0)
        for group in np.unique(g[partial]):  # exact ties on the cut: first come, first kept
            tied = rows[partial & (g == group)]
            room = max(int(self.take[group] - self._tied[group]), 0)
            out[tied[:room]] = True
            self._tied[group] += len(tied)
        return out


def best_rows_thresholds(chunks: Callable[[], Iterable[Chunk]], caps: np.ndarray) -> Thresholds:
    """Where each group's best ``caps[g]`` candidate rows (lowest key) end; ``caps[g] < 0``: no cap.

    ``chunks()`` yields the data in input order and is called up to 8 times (one pass per key byte); passes
    stop early once every group's cut is known. Memory: a ``(groups, 256)`` histogram plus one chunk.
    """
    caps = np.asarray(caps, dtype=np.int64)
    n_groups = len(caps)
    prefix = np.zeros(n_groups, dtype=np.uint64)
    shift = np.full(n_groups, 64, dtype=np.uint64)
    need = caps.copy()  # rows still to keep inside the current prefix
    take = np.full(n_groups, -1, dtype=np.int64)
    capped = caps >= 0
    open_ = capped.copy()
    for level in range(7, -1, -1):
        if not open_.any():
            break
        bit = np.uint64(8 * level)
        hist = np.zeros(n_groups * 256, dtype=np.int64)
        for codes, keys, candidates in chunks():
            rows = np.flatnonzero(candidates & open_[codes])
            g = codes[rows]
            k = keys[rows]
            if level < 7:  # inside the prefix found so far (a shift by 64 is undefined, hence the guard)
                inside = (k >> (bit + np.uint64(8))) == prefix[g]
                g, k = g[inside], k[inside]
            hist += np.bincount(g.astype(np.int64) * 256 + ((k >> bit) & np.uint64(255)).astype(np.int64),
                                minlength=n_groups * 256)  # fmt: skip
        hist = hist.reshape(n_groups, 256)
        for group in np.flatnonzero(open_):
            counts = hist[group]
            total = int(counts.sum())
            if need[group] >= total:  # the whole prefix fits: keep all of it
                shift[group], take[group] = bit + np.uint64(8), -1
                if level == 7:
                    capped[group] = False  # fewer rows than the cap
                open_[group] = False
                continue
            cum = np.cumsum(counts)
            digit = int(np.searchsorted(cum, need[group], side="left"))  # bucket that holds the k-th row
            before = int(cum[digit - 1]) if digit else 0
            prefix[group] = (prefix[group] << np.uint64(8)) | np.uint64(digit)
            shift[group] = bit
            need[group] -= before
            if need[group] == 0:  # cut falls between buckets: keep what is below, nothing equal
                take[group] = 0
                open_[group] = False
            elif need[group] == cum[digit] - before:  # the whole bucket is kept
                take[group] = -1
                open_[group] = False
            elif level == 0:  # one exact key value: keep its first `need` rows
                take[group] = need[group]
    # Groups still "open" after the last byte ended with an exact tie and are settled by `take`.
    return Thresholds(prefix=prefix, shift=shift, take=take, capped=capped)


__all__ = ["Thresholds", "best_rows_thresholds", "order_keys"]
