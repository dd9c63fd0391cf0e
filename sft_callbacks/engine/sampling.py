"""AdaptiveSampler: draws the training stream like the Trainer shuffles, from weights that may change mid-epoch.

The stream is made of *passes*. In a pass every row is visited as often as the credit it has earned allows (its
weight, scaled so that the mean weight earns one visit per pass), in the order of a fresh random permutation; see
:mod:`.quotas` for the rule. With equal weights a pass is one permutation of the rows, seeded exactly as
accelerate's seedable sampler seeds the plain Trainer's epoch, so the stream *is* the plain Trainer's. Rows can be
split into groups: each group runs its own passes and groups take turns by Tijdeman's earliest-deadline rule at
their shares, so a change of the groups' shares costs O(groups).

Weight changes are *scheduled* at a stream position, never applied "now", so the index stream is the same whatever
the dataloader prefetches, on every process, and after a resume from a checkpoint.
"""

from __future__ import annotations

import base64
import io
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from . import kernels, quotas
from .hashing import counter_key, counter_uniforms

_WINDOW_EVENTS = 1 << 20  # visits planned at once in a weighted pass (bounds memory and first-draw latency) ...
_MAX_WINDOWS = 8  # ... but each window rescans the group's rows, so a pass has at most this many
_GROUP_CHUNK = 1 << 16  # positions assigned to groups per call of the deadline rule
_PLAN_CHUNK = 1 << 20  # rows whose pass arithmetic is done at once (elementwise: chunks give the same values)
_SORT_BLOCK = 1 << 16  # a window's visits put in order at first; each later block is 3x all those before it
_STATE_FORMAT = "passes-1"
_EVERY_ROW = np.empty(0, dtype=np.int32)  # the compiled kernels' ``rows`` for "every row, in order"


def _validated(weights: np.ndarray, num_rows: int, what: str = "weights", noun: str = "rows") -> np.ndarray:
    w = np.asarray(weights)
    if not np.issubdtype(w.dtype, np.floating):
        w = w.astype(np.float64)
    w = w.reshape(-1)
    if w.shape[0] != num_rows:
        raise ValueError(f"{what} have {w.shape[0]} entries but the dataset has {num_rows} {noun}")
    low, high = (float(w.min()), float(w.max())) if w.size else (0.0, 0.0)
    finite = np.isfinite(low) and np.isfinite(high)  # NaN propagates into min/max, inf shows in them
    return _checked(w, low, high, finite, what)


def _row_weights_float32(weights, num_rows: int) -> np.ndarray:
    """The row weights as float32, validated (:func:`_validated`); a float array in one compiled pass."""
    compiled = kernels.get()
    if (compiled is None or not isinstance(weights, np.ndarray) or weights.ndim != 1
            or weights.dtype not in (np.float32, np.float64) or len(weights) != num_rows or num_rows == 0):
        return _validated(np.asarray(weights, dtype=np.float32), num_rows)
    w, low, high, finite = compiled.float32_checked(np.ascontiguousarray(weights))
    return _checked(w, float(low), float(high), bool(finite), "weights")


def _checked(w: np.ndarray, low: float, high: float, finite: bool, what: str) -> np.ndarray:
    if not finite:
        raise ValueError(f"{what} contain NaN or inf; a policy must return finite, non-negative weights")
    if low < 0:
        raise ValueError(f"{what} contain negative values; a policy must return finite, non-negative weights")
    if not high > 0:
        raise ValueError(f"all {what} are zero; at least one must be positive")
    return w


def _pairwise_sum(values: np.ndarray, index: np.ndarray) -> float:
    """``np.add.reduce(values[index].astype(np.float64))`` bit for bit, a chunk of rows at a time.

    numpy sums a contiguous float64 array pairwise, splitting ``n`` rows at ``n // 2`` rounded down to a multiple
    of 8; recursing the same way until a part fits a chunk adds the same numbers in the same order, without
    float64 copies of every row.
    """
    n = len(index)
    if n <= max(_PLAN_CHUNK, 128):  # numpy adds up to 128 numbers in one unrolled block
        return float(np.add.reduce(values[index].astype(np.float64))) if n else 0.0
    half = n // 2
    half -= half % 8
    return _pairwise_sum(values, index[:half]) + _pairwise_sum(values, index[half:])


@dataclass
class _Change:
    """Weights scheduled from stream position ``start``: row weights (float32) or group shares (float64)."""

    start: int
    weights: np.ndarray | None = None
    shares: np.ndarray | None = None
    sums: np.ndarray | None = None  # each group's total weight under ``weights`` (computed once, O(rows))
    totals: np.ndarray | None = None  # the same totals as each group sums its rows for its rates (numpy's buffers)

    def to_dict(self) -> dict:
        out = {"start": self.start}
        if self.weights is not None:
            out["weights"] = encode_array(self.weights)
        if self.shares is not None:
            out["shares"] = self.shares.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> _Change:
        weights = decode_array(d["weights"]).astype(np.float32) if "weights" in d else None
        shares = np.asarray(d["shares"], dtype=np.float64) if "shares" in d else None
        return cls(int(d["start"]), weights, shares)


class _GroupStream:
    """One group's own sequence of passes over its rows; hands out the next rows of the current pass.

    A flat pass (equal weights, no credit carried) is one permutation of the rows. A weighted pass needs no
    permutation: each row gets a fresh uniform threshold from a counter-based hash of (seed, pass, row), its visits
    are planned one window of pass time at a time and sorted by time. Memory per row: the permutation of a flat pass
    (int32) or the lag of a weighted one (float32); the weights are the stream's one array, read through ``rows``.
    """

    def __init__(self, rows: np.ndarray | None, n: int, seed: int):
        self.rows = rows  # global ids of the group's rows (None: every row, in order)
        self.n = n
        self.seed = seed  # pass p is seeded with seed + p
        self.source: np.ndarray | None = None  # the stream's row weights when this group's differ; None: all equal
        self.scale = 1.0  # rate = weight * scale has mean 1 over the group
        self.lag: np.ndarray | None = None  # credit minus visits per row at the start of the pass (None: all 0)
        self.pass_id = 0  # passes started so far
        self.in_pass = False
        self.perm: np.ndarray | None = None  # a flat pass's permutation
        self.window = 0
        self.windows = 1
        self.events: np.ndarray | None = None  # a weighted pass: the window's visits so far in order (row numbers)
        self.later: tuple[np.ndarray, np.ndarray] | None = None  # ... and its other visits, (ranks, times) unsorted
        self.planned = 0  # visits in the window
        self.cursor = 0

    def _local(self, weights: np.ndarray) -> np.ndarray:
        return weights if self.rows is None else weights[self.rows]

    @property
    def _kernel_rows(self) -> np.ndarray:
        """The group's rows as the compiled kernels take them (empty: every row, in order)."""
        return self.rows if self.rows is not None else _EVERY_ROW

    # -- the pass ----------------------------------------------------------------------------------------
    def _start_pass(self) -> None:
        self.pass_id += 1
        self.in_pass = True
        self.window, self.cursor = 0, 0
        if self.source is None and self.lag is None:
            self.perm = quotas.pass_permutation(self.n, self.seed + self.pass_id - 1)
            self.events, self.windows = None, 1
            return
        self.perm = None
        if self.lag is None:
            self.lag = np.zeros(self.n, dtype=np.float32)
        self.windows = min(_MAX_WINDOWS, max(1, math.ceil(self.n / _WINDOW_EVENTS)))
        self._plan_window()

    def _threshold_seed(self) -> int:
        return (self.seed + self.pass_id - 1) ^ 0x7A3D

    def _row_arrays(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rate, lag, psi, visits)`` of the pass for the group's rows ``a..b-1`` (elementwise in the row)."""
        if self.source is None:
            rate = np.ones(b - a)
        else:
            local = self.source[a:b] if self.rows is None else self.source[self.rows[a:b]]
            rate = local.astype(np.float64) * self.scale
        lag = self.lag[a:b].astype(np.float64)
        draws = counter_uniforms(self._threshold_seed(), a, b)
        psi = quotas.thresholds(lag, draws)
        return rate, lag, psi, quotas.visits_per_row(rate, lag, psi)

    def _pass_chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """``(a, rate, lag, psi, visits)`` for the pass's rows, a chunk at a time (bounded temporaries)."""
        for a in range(0, self.n, _PLAN_CHUNK):
            yield a, *self._row_arrays(a, min(self.n, a + _PLAN_CHUNK))

    def _window_bounds(self, w: int) -> tuple[float, float]:
        lo = -np.inf if w == 0 else w / self.windows
        hi = 1.0 if w == self.windows - 1 else (w + 1) / self.windows
        return lo, hi

    def _window_chunks(self, lo: float, hi: float) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """:func:`quotas.window_events` of the pass's rows a chunk at a time (ranks of the group's rows)."""
        compiled = kernels.get()
        if compiled is None:
            for a, rate, lag, psi, total in self._pass_chunks():
                r, t = quotas.window_events(lo, hi, rate, lag, psi, total)
                yield r + a, t
            return
        source = self.source if self.source is not None else np.empty(0, dtype=np.float32)
        rows = self._kernel_rows if self.source is not None else _EVERY_ROW
        key = counter_key(self._threshold_seed())
        for a in range(0, self.n, _PLAN_CHUNK):
            yield compiled.window_events(source, rows, float(self.scale), self.lag, key, a,
                                         min(self.n, a + _PLAN_CHUNK), float(lo), float(hi))

    def _plan_window(self) -> None:
        lo, hi = self._window_bounds(self.window)
        ranks, times = [], []
        for r, t in self._window_chunks(lo, hi):
            ranks.append(r)
            times.append(t)
        # Events are in row order, so a stable order by time keeps the permutation's order at ties; the window is
        # put in order a block at a time, as the draws reach it.
        self.later = (np.concatenate(ranks).astype(quotas.index_dtype(self.n)), np.concatenate(times))
        self.planned = len(self.later[1])
        self.events = np.empty(0, dtype=quotas.index_dtype(self.n))
        self.cursor = 0

    def _order_until(self, stop: int) -> None:
        """Put the window's visits in order up to ``stop`` (the earliest of the rest, a growing block at a time)."""
        while len(self.events) < stop:
            block = max(stop - len(self.events), 3 * len(self.events), _SORT_BLOCK)
            head, ranks, times = quotas.earliest(*self.later, block)
            self.events = np.concatenate([self.events, head])
            self.later = (ranks, times)

    def _end_pass(self) -> None:
        if self.perm is None:
            lag = np.empty(self.n, dtype=np.float32)
            for a, rate, old, _, total in self._pass_chunks():
                lag[a : a + len(rate)] = old + rate - total
            self._store_lag(lag)
        self.in_pass = False
        self.perm = self.events = self.later = None

    def _store_lag(self, lag: np.ndarray) -> None:
        lag = lag.astype(np.float32)
        self.lag = lag if lag.any() else None

    def _available(self) -> int:
        return (self.n if self.perm is not None else self.planned) - self.cursor

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` rows (global ids) of this group's stream."""
        out = []
        while count > 0:
            if not self.in_pass:
                self._start_pass()
            avail = self._available()
            if avail == 0:
                if self.perm is not None or self.window == self.windows - 1:
                    self._end_pass()
                else:
                    self.window += 1
                    self._plan_window()
                continue
            k = min(count, avail)
            if self.perm is None:
                self._order_until(self.cursor + k)
            source = self.perm if self.perm is not None else self.events
            local = source[self.cursor : self.cursor + k]
            out.append(local if self.rows is None else self.rows[local])
            self.cursor += k
            count -= k
        return np.concatenate(out).astype(np.int64, copy=False) if out else np.empty(0, dtype=np.int64)

    def flat_lag(self) -> tuple[np.float32, np.float32]:
        """A flat pass interrupted here leaves two lags: of the rows not yet visited, and of those visited."""
        # the threshold of the last visit handed out (rank cursor - 1 of the permutation): quotas.phases, one entry
        elapsed = (float(self.cursor - 1) + 0.5) / self.n if self.cursor else 0.0
        unvisited, visited = quotas.carried_lag(np.ones(2), np.zeros(2), np.array([0.0, 1.0]), elapsed)
        return unvisited, visited

    def interrupt(self) -> None:
        """End the pass in progress here, keeping each row's credit and visits (before its weights change)."""
        if not self.in_pass:
            return
        if self.perm is not None:  # a flat pass: the first `cursor` rows of the permutation were visited
            unvisited, visited = self.flat_lag()
            lag = np.full(self.n, unvisited, dtype=np.float32)
            lag[self.perm[: self.cursor]] = visited
            self._store_lag(lag)
        else:
            lo, _ = self._window_bounds(self.window)
            hits = np.bincount(self.events[: self.cursor], minlength=self.n)

            def visited(a, rate, lag, psi, total):
                before = (np.zeros(len(rate), dtype=np.int64) if lo == -np.inf
                          else quotas.visits_before(lo, rate, lag, psi, total))
                return before + hits[a : a + len(rate)]

            if self.cursor:  # the time of the last visit handed out: its row's visit number in the pass
                j = int(self.events[self.cursor - 1])
                rate, lag, psi, total = self._row_arrays(j, j + 1)
                elapsed = (visited(j, rate, lag, psi, total)[0] - 1 + psi[0] - lag[0]) / rate[0]
            else:
                elapsed = 0.0 if lo == -np.inf else lo
            carried = np.empty(self.n, dtype=np.float32)
            for a, rate, lag, psi, total in self._pass_chunks():
                carried[a : a + len(rate)] = quotas.carried_lag(rate, lag, visited(a, rate, lag, psi, total),
                                                                float(elapsed))
            self._store_lag(carried)
        self.in_pass = False
        self.perm = self.events = self.later = None

    def _equal_and_total(self, weights: np.ndarray | None, total: float | None = None) -> tuple[bool, float]:
        """Whether this group's weights are all equal and positive, and their float64 sum (``local.sum(dtype=
        np.float64)``, bit for bit; ``total`` if the caller has it)."""
        if weights is None:
            return True, float(self.n)
        compiled = kernels.get()
        if compiled is not None:
            if total is None:
                total = compiled.gathered_sum(weights, self._kernel_rows)
            return bool(compiled.all_equal_positive(weights, self._kernel_rows)), float(total)
        local = self._local(weights)
        return bool((local == local[0]).all() and local[0] > 0), float(local.sum(dtype=np.float64))

    def _proportional(self, weights: np.ndarray, total: float) -> bool:
        """Whether the new weights are the old ones scaled (the group's share moved, not its rows)."""
        compiled = kernels.get()
        if compiled is not None:
            return bool(compiled.proportional(weights, self.n / total, self.source, float(self.scale),
                                              self._kernel_rows, 1e-6))
        old = self._local(self.source).astype(np.float64) * self.scale
        return bool(np.allclose(self._local(weights).astype(np.float64) * (self.n / total), old, rtol=1e-6, atol=0))

    def set_weights(self, weights: np.ndarray | None, total: float | None = None) -> None:
        """The stream's new row weights (None: all equal); the pass in progress ends first if this group's changed.

        Weights proportional to the old ones (the group's share moved, not its rows) keep the pass going.
        """
        equal, total = self._equal_and_total(weights, total)
        if equal and self.source is None:
            return
        if not equal and self.source is not None and total > 0 and self._proportional(weights, total):
            self._adopt(weights, equal, total)
            return
        self.interrupt()
        self._adopt(weights, equal, total)

    def adopt_weights(self, weights: np.ndarray | None) -> None:
        """Take the stream's row weights as this group's without touching a pass (a restored checkpoint's)."""
        self._adopt(weights, *self._equal_and_total(weights))

    def _adopt(self, weights: np.ndarray | None, equal: bool, total: float) -> None:
        self.source = None if equal else weights
        self.scale = self.n / total if total > 0 else 1.0

    # -- checkpointing -------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pass_id": self.pass_id, "in_pass": self.in_pass, "window": self.window, "cursor": self.cursor,
                "lag": None if self.lag is None else encode_array(self.lag)}

    def load_state_dict(self, d: dict) -> None:
        self.lag = None if d["lag"] is None else decode_array(d["lag"]).astype(np.float32)
        self.pass_id = int(d["pass_id"])
        self.in_pass = False
        self.perm = self.events = self.later = None
        self.window, self.windows, self.cursor = 0, 1, 0
        if d["in_pass"]:
            self.pass_id -= 1
            self._start_pass()  # the same permutation, or the same thresholds and lag
            if self.perm is None and int(d["window"]):
                self.window = int(d["window"])
                self._plan_window()
            self.cursor = int(d["cursor"])
            if self.perm is None:
                self._order_until(self.cursor)  # what the pass handed out is read back when it is interrupted


class _Stream:
    """The whole stream's state at one position: each group's passes and the groups' turns.

    It starts as one group (the plain Trainer's permutations) and splits into the sampler's groups at the first
    change that makes weights unequal, each row keeping its credit and visits, so a run is the plain run until a
    policy first moves it.
    """

    def __init__(self, num_rows: int, seed: int):
        self.position = 0
        self.num_rows = num_rows
        self.seed = seed
        self.weights: np.ndarray | None = None  # row weights in force (float32); None: all equal
        self.groups = [_GroupStream(None, num_rows, seed)]
        self._reset_turns()

    def _reset_turns(self) -> None:
        sizes = np.array([g.n for g in self.groups], dtype=np.float64)
        self.sums = sizes  # each group's total row weight
        self.shares = sizes / sizes.sum()
        self.deficit = np.zeros(len(self.groups))  # each group's credit minus the positions it took

    def split(self, partition: tuple[np.ndarray, np.ndarray]) -> None:
        """From one group to the sampler's groups; each row keeps its lag, each group the sum of its rows'."""
        whole = self.groups[0]
        seen = None
        compiled = kernels.get()
        if whole.in_pass and whole.perm is not None:
            # A flat pass leaves two lags; they are read through a mask of the visited rows (a bit a row compiled,
            # a byte a row in NumPy).
            unvisited, visited = whole.flat_lag()
            if compiled is not None:
                seen = compiled.visited_bits(whole.perm[: whole.cursor], self.num_rows)
            else:
                seen = np.zeros(self.num_rows, dtype=bool)
                seen[whole.perm[: whole.cursor]] = True
            lag = None
        else:
            whole.interrupt()
            lag = whole.lag
        order, offsets = partition
        self.groups = []
        owed = []
        for k in range(len(offsets) - 1):
            rows = order[offsets[k] : offsets[k + 1]]
            g = _GroupStream(rows, len(rows), self.seed + ((k + 1) << 32))
            if lag is not None or seen is not None:  # one gather per group: its rows' lag, what the group is owed
                if seen is None:
                    local = lag[rows]
                elif compiled is not None:
                    local = compiled.split_lag(seen, rows, visited, unvisited)
                else:
                    local = np.where(seen[rows], visited, unvisited)
                owed.append(float(local.sum(dtype=np.float64)))
                if local.any():
                    g.lag = local
            self.groups.append(g)
        self._reset_turns()
        self.sums = self.group_sums(self.weights)
        if owed:
            self.deficit = np.array(owed)

    def group_sums(self, weights: np.ndarray | None) -> np.ndarray:
        if weights is None:
            return np.array([g.n for g in self.groups], dtype=np.float64)
        if len(self.groups) == 1:
            return np.array([weights.sum(dtype=np.float64)])
        return np.array([weights[g.rows].sum(dtype=np.float64) for g in self.groups])

    def _set_shares(self, shares: np.ndarray) -> None:
        self.shares = shares / shares.sum()  # each group keeps its deficit: what it was owed stays owed

    def apply(self, change: _Change, partition) -> None:
        if change.weights is not None:
            w = change.weights
            compiled = kernels.get()
            flat = bool(compiled.all_equal_positive(w, _EVERY_ROW) if compiled is not None
                        else (w == w[0]).all())
            if partition is not None and len(self.groups) == 1 and not flat:
                self.split(partition)
            self.weights = None if flat else w
            totals = change.totals if change.totals is not None and len(change.totals) == len(self.groups) else None
            for k, g in enumerate(self.groups):
                g.set_weights(self.weights, None if totals is None else float(totals[k]))
            known = change.sums is not None and len(change.sums) == len(self.groups)
            self.sums = change.sums if known else self.group_sums(self.weights)
            self._set_shares(self.sums)
        if change.shares is not None:
            if len(self.groups) == 1:
                self.split(partition)
            self._set_shares(change.shares)

    def advance(self, count: int) -> np.ndarray:
        if len(self.groups) == 1:
            out = self.groups[0].take(count)
        else:
            out = np.empty(count, dtype=np.int64)
            done = 0
            while done < count:
                k = min(_GROUP_CHUNK, count - done)
                chosen = quotas.deadline_order(self.shares, self.deficit, k)
                part = out[done : done + k]
                for g in np.unique(chosen):
                    mask = chosen == g
                    part[mask] = self.groups[g].take(int(mask.sum()))
                done += k
        self.position += count
        return out

    def state_dict(self) -> dict:
        return {"position": self.position, "weights": None if self.weights is None else encode_array(self.weights),
                "shares": self.shares.tolist(), "deficit": self.deficit.tolist(),
                "groups": [g.state_dict() for g in self.groups]}

    def load_state_dict(self, d: dict, partition) -> None:
        if len(d["groups"]) > 1:
            if partition is None or len(partition[1]) - 1 != len(d["groups"]):
                raise ValueError(f"checkpointed sampler has {len(d['groups'])} row groups, this one has other groups")
            self.split(partition)
        self.position = int(d["position"])
        self.weights = None if d["weights"] is None else decode_array(d["weights"]).astype(np.float32)
        for g in self.groups:
            g.adopt_weights(self.weights)
        self.sums = self.group_sums(self.weights)
        self.shares = np.asarray(d["shares"], dtype=np.float64)
        self.deficit = np.asarray(d["deficit"], dtype=np.float64)
        for g, gd in zip(self.groups, d["groups"]):
            g.load_state_dict(gd)


class _Recent:
    """The last ``capacity`` indices handed out, by stream position (a ring buffer)."""

    def __init__(self, capacity: int):
        self.buf = np.zeros(capacity, dtype=np.int64)
        self.end = 0  # positions [end - filled, end) are held
        self.filled = 0

    def push(self, start: int, values: np.ndarray) -> None:
        cap = len(self.buf)
        if start != self.end:
            self.filled = 0  # not contiguous with what is held
        n = len(values)
        keep = values[-cap:]
        self.buf[np.arange(start + n - len(keep), start + n) % cap] = keep
        self.end = start + n
        self.filled = min(cap, self.filled + n)

    def get(self, start: int, stop: int) -> np.ndarray | None:
        if start < self.end - self.filled or stop > self.end:
            return None
        return self.buf[np.arange(start, stop) % len(self.buf)].copy()


class AdaptiveSampler(torch.utils.data.Sampler[int]):
    """A [`torch.utils.data.Sampler`] that draws like the Trainer shuffles, from weights that can change mid-epoch.

    Installed by the session into the Trainer's own dataloader (``DataLoaderShard.set_sampler``). How it draws:

    - **Equal weights: random reshuffling.** Each epoch is a permutation of the rows, every row exactly once: the
      very permutation the plain Trainer draws (``torch.randperm`` from a generator seeded with ``seed + epoch``,
      as accelerate's seedable sampler does), so a run whose policies stay flat is the plain run, index for index.
    - **Unequal weights: quotas, not dice.** Each row earns credit at its weight's rate (the mean weight earns one
      visit per pass of ``num_rows`` draws) and is visited when its credit, less its visits, passes a fresh random
      threshold (a counter-based hash of seed, pass and row). A row's visit count stays within one of the credit it
      has earned in pass time, and a row is not visited again while a row of equal weight with the same history
      still waits. Against the expected count ``n * w_i / sum(w)`` at every position: within one with the two
      levels below when weights are equal inside each group; measured within 1.2 for row weights up to 3x the mean;
      a single row far heavier than the rest strays further, since its visits are spread over pass time, not
      positions. Chosen over systematic sampling of a per-pass permutation (whose per-pass rounding drifts like a
      random walk over passes) and Efraimidis-Spirakis keys (a weighted order without replacement, with no control
      of visit counts once a weight exceeds one visit per pass).
    - **Two levels, group then row.** With ``groups`` (a group label per row), each group runs its own passes and
      the groups take turns by Tijdeman's earliest-deadline rule at their shares (each group's count stays within
      one of its share of any prefix); :meth:`schedule_groups` changes the shares in O(groups).

    Properties the rest of the package relies on:

    - ``len(sampler)`` is fixed (``num_samples``), so the Trainer's step count does not change;
    - :meth:`schedule` makes new weights active from a given stream position (``epoch * len(sampler) + k``);
    - the index at a position depends only on ``seed``, the position and the schedule, so every process (same seed,
      same schedule) yields the same stream and accelerate's ``BatchSamplerShard`` splits it;
    - :meth:`state_dict` / :meth:`load_state_dict` resume the stream exactly;
    - it works far past 2^24 rows (where ``torch.multinomial`` stops): int32 permutations up to 2^31 rows, int64
      beyond; resident memory is at most 16 bytes per row (the weights in force, the rows sorted by group, and a
      flat pass's permutation or each row's credit) plus a planning window of max(1M, rows / 8) visits (4 bytes
      each once in order, 12 before).

    With numba installed (``pip install "sft-callbacks[fast]"``) the hot loops run compiled (:mod:`.kernels`) and
    yield the same stream, index for index.

    Args:
        num_rows (`int`): number of rows of the dataset the dataloader indexes.
        num_samples (`int`, *optional*): indices per epoch; defaults to ``num_rows``.
        seed (`int`, defaults to 0): seed of the stream (the session passes the seed of the sampler it replaces).
        lazy_chunk (`int`, defaults to 1): indices computed ahead while iterating. The session sets it to one
            micro-batch, so the sampler never runs more than one micro-batch ahead of what the dataloader asked.
        groups (array of labels, *optional*): a group per row for two-level sampling (see above).
        history (`int`, defaults to 65536): recent indices kept, so a checkpoint can record the positions the
            dataloader drew ahead of the last finished step.

    Example:
        >>> s = AdaptiveSampler(4, seed=0)
        >>> sorted(s)  # equal weights: every row once per epoch
        [0, 1, 2, 3]
        >>> s.schedule(np.array([0.0, 0.0, 1.0, 0.0]), at_position=4)
        >>> s.set_epoch(1)
        >>> list(s)
        [2, 2, 2, 2]
    """

    def __init__(
        self,
        num_rows: int,
        num_samples: int | None = None,
        *,
        seed: int = 0,
        lazy_chunk: int = 1,
        groups=None,
        history: int = 1 << 16,
    ):
        if num_rows <= 0:
            raise ValueError("AdaptiveSampler needs a dataset with at least one row")
        self.num_rows = int(num_rows)
        self.num_samples = int(num_samples if num_samples is not None else num_rows)
        self.seed = int(seed)
        self.lazy_chunk = max(1, int(lazy_chunk))
        self.epoch = 0
        self.produced = 0  # highest stream position handed out so far (+1)
        self.before_iter = None  # called with the epoch before an epoch's first draw (the session's hook)
        self._partition = self._make_partition(groups)
        kernels.warm(quotas.index_dtype(self.num_rows))  # once per process: the first weight change pays nothing
        self._pending: list[_Change] = []  # scheduled, not yet reached
        self._log: list[_Change] = []  # reached; kept so draw() can replay the stream
        self._replayable = True
        self._origin: dict | None = None  # stream state draw() replays from (None: a fresh stream)
        self._stream = _Stream(self.num_rows, self.seed)
        self._recent = _Recent(max(int(history), self.lazy_chunk))
        self._floor = 0  # positions below were consumed before a resume: never trained on
        self._tail: tuple[int, np.ndarray] | None = None  # restored positions [start, start + len)

    def _make_partition(self, groups) -> tuple[np.ndarray, np.ndarray] | None:
        """Rows sorted by group (int32 up to 2^31 rows) and each group's offset into them; None for one group."""
        if groups is None:
            return None
        import pandas as pd

        labels = np.asarray(groups).reshape(-1)
        if labels.dtype == object:  # e.g. strings with missing values: compare as text
            labels = labels.astype(str)
        if labels.shape[0] != self.num_rows:
            raise ValueError(f"groups have {labels.shape[0]} entries but the dataset has {self.num_rows} rows")
        ids, uniques = pd.factorize(labels, sort=True, use_na_sentinel=False)  # hashing: O(rows)
        if len(uniques) < 2:
            return None
        if len(uniques) < 2**15:
            ids = ids.astype(np.int16)  # a stable sort of 16-bit keys is a radix sort
        order = np.argsort(ids, kind="stable").astype(quotas.index_dtype(self.num_rows))
        offsets = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=len(uniques)))])
        return order, offsets

    def _group_ids(self) -> np.ndarray | None:
        if self._partition is None:
            return None
        order, offsets = self._partition
        ids = np.empty(self.num_rows, dtype=np.int32)
        ids[order] = np.repeat(np.arange(len(offsets) - 1, dtype=np.int32), np.diff(offsets))
        return ids

    def set_groups(self, groups) -> None:
        """Split rows into groups (a label per row) for two-level sampling; before the stream first splits.

        Example:
            >>> s = AdaptiveSampler(4)
            >>> s.set_groups(["a", "a", "b", "b"])
            >>> s.num_groups
            2
        """
        partition = self._make_partition(groups)
        if len(self._stream.groups) > 1:
            same = partition is not None and self._partition is not None and all(
                np.array_equal(a, b) for a, b in zip(partition, self._partition))
            if not same:
                raise RuntimeError("the sampler's stream already runs on other row groups; groups are set before it")
            return
        self._partition = partition

    @property
    def num_groups(self) -> int:
        """Row groups the stream takes turns between once weights differ (1 without ``groups``)."""
        return 1 if self._partition is None else len(self._partition[1]) - 1

    def _group_sums(self, weights: np.ndarray | None) -> np.ndarray:
        order, offsets = self._partition
        if weights is None:
            return np.diff(offsets).astype(np.float64)
        return np.array([_pairwise_sum(weights, order[a:b]) for a, b in zip(offsets[:-1], offsets[1:])])

    def __len__(self) -> int:
        return self.num_samples

    def group_credit(self) -> np.ndarray:
        """Each group's credit minus the positions it took so far (within one of zero once groups take turns)."""
        return self._stream.deficit.copy()

    def resident_bytes(self) -> int:
        """Bytes of the per-row arrays the sampler holds: the partition, the weights in force, each group's pass.

        Example:
            >>> AdaptiveSampler(1000).resident_bytes()
            0
        """
        total = sum(a.nbytes for a in self._partition) if self._partition is not None else 0
        if self._stream.weights is not None:
            total += self._stream.weights.nbytes
        for g in self._stream.groups:
            total += sum(a.nbytes for a in (g.perm, g.lag, g.events, *(g.later or ())) if a is not None)
        return total

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch; positions of epoch ``e`` start at ``e * len(self)``."""
        self.epoch = int(epoch)

    # -- weights ---------------------------------------------------------------------------------------
    def schedule(self, weights: np.ndarray, at_position: int) -> None:
        """Make row ``weights`` active for every stream position ``>= at_position``.

        Raises ``ValueError`` for NaN/inf, negative or all-zero weights, or a wrong length. Scheduling at a
        position this sampler has already handed out would make the stream depend on prefetch timing, so
        that is refused too (the session schedules far enough ahead). Costs O(rows).
        """
        w = _row_weights_float32(weights, self.num_rows)  # kept as float32: checked as such
        sums = totals = None
        compiled = kernels.get()
        if self._partition is not None and compiled is not None:  # each group's two sums, without gathered copies
            order, offsets = self._partition
            groups = [order[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
            sums = np.array([compiled.pairwise_sum(w, rows) for rows in groups])
            totals = np.array([compiled.gathered_sum(w, rows) for rows in groups])
        elif self._partition is not None:
            sums = self._group_sums(w)
        self._queue(_Change(int(at_position), weights=w, sums=sums, totals=totals))

    def schedule_groups(self, shares: np.ndarray, at_position: int) -> None:
        """Make the groups' ``shares`` of the stream active from ``at_position``; rows keep their weights in a group.

        Costs O(groups). Needs ``groups`` at construction; a group given a share must have rows of positive weight.

        Example:
            >>> s = AdaptiveSampler(4, groups=["a", "a", "b", "b"])
            >>> s.schedule_groups(np.array([0.0, 1.0]), at_position=0)
            >>> sorted(set(s))
            [2, 3]
        """
        if self._partition is None:
            raise ValueError("schedule_groups needs the sampler built with `groups` (a group label per row)")
        shares = _validated(shares, self.num_groups, "group shares", "groups")
        sums = self._sums_before(int(at_position))
        starved = np.flatnonzero((shares > 0) & (sums <= 0))
        if starved.size:
            raise ValueError(f"groups {starved.tolist()} are given a share but all their rows have weight 0")
        self._queue(_Change(int(at_position), shares=shares))

    def _sums_before(self, position: int) -> np.ndarray:
        for change in reversed(self._pending):
            if change.start <= position and change.sums is not None:
                return change.sums
        if len(self._stream.groups) > 1:
            return self._stream.sums
        return self._group_sums(self._stream.weights)  # O(rows), once: before the stream first splits

    def _queue(self, change: _Change) -> None:
        if change.start < self.produced:
            raise RuntimeError(
                f"weights scheduled at stream position {change.start}, but the sampler already produced "
                f"{self.produced} positions; schedule further ahead"
            )
        # A later schedule at an earlier-or-equal position replaces what was queued after it.
        self._pending = [c for c in self._pending if c.start < change.start] + [change]

    def weights_at(self, position: int) -> np.ndarray:
        """The row weights (float32) in force at stream ``position`` (scheduled ones included)."""
        w = None
        for change in self._log + self._pending:
            if change.start <= position and change.weights is not None:
                w = change.weights
        if w is None and position >= self._stream.position:
            w = self._stream.weights
        return w if w is not None else np.ones(self.num_rows, dtype=np.float32)

    @property
    def current_weights(self) -> np.ndarray:
        """Row weights of the latest scheduled change (float32); all ones before any."""
        for change in reversed(self._pending):
            if change.weights is not None:
                return change.weights
        w = self._stream.weights
        if w is None:
            for change in reversed(self._log):
                if change.weights is not None:
                    return change.weights
        return w if w is not None else np.ones(self.num_rows, dtype=np.float32)

    def prune(self, before_position: int) -> None:
        """Forget changes applied before ``before_position`` (:meth:`draw` can then no longer replay before it)."""
        keep = [c for c in self._log if c.start >= before_position]
        if len(keep) != len(self._log):
            self._replayable = False
        self._log = keep

    # -- drawing ---------------------------------------------------------------------------------------
    def _advance(self, stream: _Stream, pending: list[_Change], stop: int, log: list | None, recent: _Recent | None):
        chunks = []
        while stream.position < stop:
            while pending and pending[0].start <= stream.position:
                change = pending.pop(0)
                stream.apply(change, self._partition)
                if log is not None:
                    log.append(change)
            end = min(stop, pending[0].start) if pending else stop
            start = stream.position
            idx = stream.advance(end - start)
            if recent is not None:
                recent.push(start, idx)
            chunks.append(idx)
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    def _produce(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=np.int64)
        pos = start
        if pos < self._floor:  # consumed before the resume; the Trainer skips these batches
            end = min(stop, self._floor)
            out[: end - start] = 0
            pos = end
        if self._tail is not None and pos < stop:
            t0, tail = self._tail
            if t0 <= pos < t0 + len(tail):
                end = min(stop, t0 + len(tail))
                out[pos - start : end - start] = tail[pos - t0 : end - t0]
                pos = end
        if pos < stop and pos < self._stream.position:
            end = min(stop, self._stream.position)
            held = self._recent.get(pos, end)
            if held is None:
                raise RuntimeError(
                    f"stream positions {pos}..{end} were handed out long ago and are no longer held; the sampler "
                    "is iterated in order (one pass per epoch)"
                )
            out[pos - start : end - start] = held
            pos = end
        if pos < stop:
            if pos > self._stream.position:
                self._advance(self._stream, self._pending, pos, self._log, self._recent)
            out[pos - start :] = self._advance(self._stream, self._pending, stop, self._log, self._recent)
        self.produced = max(self.produced, stop)
        return out

    def draw(self, start: int, stop: int) -> np.ndarray:
        """Indices for stream positions ``start..stop-1`` without changing the sampler's state.

        Recent positions come from what was handed out; others are replayed from the start of the stream (or
        from the checkpoint it was restored from), which needs every change since then (see :meth:`prune`).
        """
        held = self._recent.get(start, stop)
        if held is not None:
            return held
        origin_pos = 0 if self._origin is None else int(self._origin["stream"]["position"])
        if start < origin_pos and self._tail is not None and start >= self._tail[0]:
            head = self._tail[1][start - self._tail[0] : min(stop, origin_pos) - self._tail[0]]
            if stop <= origin_pos:
                return head.copy()
            return np.concatenate([head, self.draw(origin_pos, stop)])
        if start < origin_pos or not self._replayable:
            raise RuntimeError(f"positions {start}..{stop} can no longer be replayed: changes before them were pruned")
        stream = _Stream(self.num_rows, self.seed)
        if self._origin is not None:
            stream.load_state_dict(self._origin["stream"], self._partition)
        pending = sorted(self._log + self._pending, key=lambda c: c.start)
        pending = [c for c in pending if c.start >= stream.position]
        self._advance(stream, pending, start, None, None)
        return self._advance(stream, pending, stop, None, None)

    def __iter__(self) -> Iterator[int]:
        if self.before_iter is not None:
            self.before_iter(self.epoch)
        base = self.epoch * self.num_samples
        k = 0
        while k < self.num_samples:
            # Lazily, one small chunk at a time, so scheduled weights are read as late as possible.
            end = min(self.num_samples, k + self.lazy_chunk)
            chunk = self._produce(base + k, base + end)
            yield from chunk.tolist()
            k = end

    # -- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self, from_position: int = 0) -> dict:
        """JSON-serialisable state to resume the stream at ``from_position`` (the next position to train on).

        Holds the stream's state where the sampler has got to, the positions it handed out from
        ``from_position`` on (the dataloader draws a little ahead of training) and the changes scheduled later.
        """
        position = self._stream.position
        start = min(max(int(from_position), self._floor), position)
        tail = self._recent.get(start, position)
        if tail is None and self._tail is not None and start >= self._tail[0]:
            tail = self.draw(start, position)
        if tail is None:
            raise RuntimeError(
                f"cannot checkpoint the sampler at position {start}: it ran {position - start} positions ahead, more "
                f"than the {len(self._recent.buf)} it keeps; build it with a larger `history`"
            )
        return {
            "format": _STATE_FORMAT,
            "num_rows": self.num_rows,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "groups": None if self._partition is None else encode_array(self._group_ids()),
            "resume_from": start,
            "tail": encode_array(tail),
            "stream": self._stream.state_dict(),
            "pending": [c.to_dict() for c in self._pending],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a stream saved by :meth:`state_dict`; the dataset size must match."""
        if int(state["num_rows"]) != self.num_rows:
            raise ValueError(
                f"checkpointed sampler was built for {state['num_rows']} rows, this dataset has {self.num_rows}; "
                "resume with the same training dataset"
            )
        if state.get("format") != _STATE_FORMAT:
            raise ValueError(
                "this checkpoint's sampler state was written by an earlier sft-callbacks (it drew with replacement); "
                "its stream cannot be continued by this version: start the run again"
            )
        self.seed = int(state["seed"])
        groups = None if state["groups"] is None else decode_array(state["groups"])
        self._partition = self._make_partition(groups)
        self._stream = _Stream(self.num_rows, self.seed)
        self._stream.load_state_dict(state["stream"], self._partition)
        self._pending = [_Change.from_dict(c) for c in state["pending"]]
        self._log = []
        self._replayable = True
        self._origin = {"stream": state["stream"]}
        start = int(state["resume_from"])
        tail = decode_array(state["tail"]).astype(np.int64)
        self._tail = (start, tail)
        self._floor = start
        self._recent = _Recent(len(self._recent.buf))
        self.produced = self._stream.position


def encode_array(a: np.ndarray) -> dict:
    """Encode a numpy array as a small JSON-able dict (npy bytes, zlib, base64)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"npy_zlib_b64": base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    raw = zlib.decompress(base64.b64decode(d["npy_zlib_b64"]))
    return np.load(io.BytesIO(raw), allow_pickle=False)
