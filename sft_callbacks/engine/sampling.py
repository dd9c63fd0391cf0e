"""AdaptiveSampler: draws training indices lazily from weights that may change during training.

Each drawn position ``p`` (counted across epochs: ``p = epoch * len(sampler) + k``) gets a uniform number
that is a pure function of ``(seed, p)``, and is mapped to a row by a binary search in the cumulative weights
active at ``p``. Weight changes are *scheduled* at a stream position, never applied "now", so the index stream
is the same whatever the dataloader prefetches, on every process, and after a resume from a checkpoint.
"""

from __future__ import annotations

import base64
import io
import zlib
from bisect import bisect_right
from collections.abc import Iterator

import numpy as np
import torch

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a ``uint64`` array (wrapping arithmetic), a fast high-quality bit mixer.

    Example:
        >>> splitmix64(np.arange(2, dtype=np.uint64)).dtype
        dtype('uint64')
    """
    with np.errstate(over="ignore"):
        z = (x + _GOLDEN) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def counter_uniforms(seed: int, start: int, stop: int) -> np.ndarray:
    """Uniform floats in [0, 1) for stream positions ``start..stop-1``; position ``p`` always gets the same value.

    Example:
        >>> u = counter_uniforms(0, 0, 4)
        >>> bool(((u >= 0) & (u < 1)).all()) and np.array_equal(u[2:], counter_uniforms(0, 2, 4))
        True
    """
    key = splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    pos = np.arange(start, stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = splitmix64(pos ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _validated(weights: np.ndarray, num_rows: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_rows:
        raise ValueError(f"weights have {w.shape[0]} entries but the dataset has {num_rows} rows")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or inf; a policy must return finite, non-negative weights")
    if (w < 0).any():
        raise ValueError("weights contain negative values; a policy must return finite, non-negative weights")
    if not (w > 0).any():
        raise ValueError("all weights are zero; at least one row must have a positive weight")
    return w


class _WeightVersion:
    """One weight vector and its cumulative sums, active from stream position ``start``."""

    __slots__ = ("start", "weights", "cumsum")

    def __init__(self, start: int, weights: np.ndarray):
        self.start = start
        # Stored as float32 (what checkpoints keep), summed from those exact values, so a restored schedule
        # draws bit-identically; float64 sums keep tiny weights drawable at 1e8 rows.
        self.weights = np.asarray(weights, dtype=np.float32)
        self.cumsum = np.cumsum(self.weights, dtype=np.float64)


class AdaptiveSampler(torch.utils.data.Sampler[int]):
    """A [`torch.utils.data.Sampler`] that draws each index, with replacement, from weights that can change mid-epoch.

    Installed by the session into the Trainer's own dataloader (``DataLoaderShard.set_sampler``); users never
    build it. Properties the rest of the package relies on:

    - ``len(sampler)`` is fixed (``num_samples``), so the Trainer's step count does not change;
    - the index at stream position ``p`` depends only on ``seed``, ``p`` and the weights active at ``p``;
    - :meth:`schedule` makes new weights active from a given position, so all processes (which share the
      seed and the schedule) yield the same stream and accelerate's ``BatchSamplerShard`` splits it;
    - updating weights costs O(n) (one cumulative sum); each draw is a binary search, O(log n); float64
      sums and a counter-based generator work far past 2^24 rows (where ``torch.multinomial`` stops).

    Args:
        num_rows (`int`): number of rows of the dataset the dataloader indexes.
        num_samples (`int`, *optional*): indices per epoch; defaults to ``num_rows``.
        seed (`int`, defaults to 0): seed of the stream (the session passes ``args.data_seed or args.seed``).
        chunk_size (`int`, defaults to 256): indices computed per vectorised batch by :meth:`draw` (never across
            a scheduled weight change, so the stream does not depend on it).
        lazy_chunk (`int`, defaults to 1): indices computed ahead while iterating. The session sets it to one
            micro-batch, so the sampler never runs more than one micro-batch ahead of what the dataloader asked.

    Example:
        >>> s = AdaptiveSampler(4, seed=0)
        >>> s.schedule(np.array([0.0, 0.0, 1.0, 0.0]), at_position=0)
        >>> list(s)
        [2, 2, 2, 2]
    """

    def __init__(
        self, num_rows: int, num_samples: int | None = None, *, seed: int = 0, chunk_size: int = 256, lazy_chunk: int = 1
    ):
        if num_rows <= 0:
            raise ValueError("AdaptiveSampler needs a dataset with at least one row")
        self.num_rows = int(num_rows)
        self.num_samples = int(num_samples if num_samples is not None else num_rows)
        self.seed = int(seed)
        self.chunk_size = int(chunk_size)
        self.lazy_chunk = max(1, int(lazy_chunk))
        self.epoch = 0
        self._versions: list[_WeightVersion] = [_WeightVersion(0, np.ones(self.num_rows))]
        self._starts: list[int] = [0]
        self.produced = 0  # highest stream position handed out so far (+1)
        self.before_iter = None  # called with the epoch before an epoch's first draw (the session's hook)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Called by the Trainer before each epoch; positions of epoch ``e`` start at ``e * len(self)``."""
        self.epoch = int(epoch)

    # -- weights ---------------------------------------------------------------------------------------
    def schedule(self, weights: np.ndarray, at_position: int) -> None:
        """Make ``weights`` active for every stream position ``>= at_position``.

        Raises ``ValueError`` for NaN/inf, negative or all-zero weights, or a wrong length. Scheduling at a
        position this sampler has already handed out would make the stream depend on prefetch timing, so
        that is refused too (the session schedules far enough ahead).
        """
        w = _validated(weights, self.num_rows)
        at_position = int(at_position)
        if at_position < self.produced:
            raise RuntimeError(
                f"weights scheduled at stream position {at_position}, but the sampler already produced "
                f"{self.produced} positions; schedule further ahead"
            )
        # A later schedule at an earlier-or-equal position replaces what was queued after it.
        while len(self._starts) > 1 and self._starts[-1] >= at_position:
            self._starts.pop()
            self._versions.pop()
        if self._starts[-1] >= at_position:  # the very first version
            self._versions[0] = _WeightVersion(self._starts[0], w)
        else:
            self._versions.append(_WeightVersion(at_position, w))
            self._starts.append(at_position)

    def weights_at(self, position: int) -> np.ndarray:
        """The (float32) weights active at stream ``position``."""
        return self._versions[self._version_index(int(position))].weights

    def _version_index(self, position: int) -> int:
        vi = bisect_right(self._starts, position) - 1
        if vi < 0:
            raise ValueError(
                f"stream position {position} comes before {self._starts[0]}: the weights for it were pruned "
                "after it was consumed, so it can no longer be drawn"
            )
        return vi

    @property
    def current_weights(self) -> np.ndarray:
        """Weights of the latest scheduled version."""
        return self._versions[-1].weights

    def prune(self, before_position: int) -> None:
        """Forget versions fully superseded before ``before_position`` (they can no longer be drawn from)."""
        i = bisect_right(self._starts, int(before_position)) - 1
        if i > 0:
            del self._versions[:i]
            del self._starts[:i]

    # -- drawing ---------------------------------------------------------------------------------------
    def draw(self, start: int, stop: int) -> np.ndarray:
        """Indices for stream positions ``start..stop-1`` (no state changes; positions must not be pruned)."""
        out = np.empty(stop - start, dtype=np.int64)
        pos = start
        while pos < stop:
            vi = self._version_index(pos)
            end = min(stop, pos + self.chunk_size)
            if vi + 1 < len(self._starts):
                end = min(end, self._starts[vi + 1])
            v = self._versions[vi]
            u = counter_uniforms(self.seed, pos, end) * v.cumsum[-1]
            idx = np.searchsorted(v.cumsum, u, side="right")
            np.minimum(idx, self.num_rows - 1, out=idx)  # u*total can round up to total
            out[pos - start : end - start] = idx
            pos = end
        return out

    def __iter__(self) -> Iterator[int]:
        if self.before_iter is not None:
            self.before_iter(self.epoch)
        base = self.epoch * self.num_samples
        k = 0
        while k < self.num_samples:
            # Lazily, one small chunk at a time, so scheduled weights are read as late as possible.
            end = min(self.num_samples, k + self.lazy_chunk)
            chunk = self.draw(base + k, base + end)
            self.produced = max(self.produced, base + end)
            yield from chunk.tolist()
            k = end

    # -- checkpointing ---------------------------------------------------------------------------------
    def state_dict(self, from_position: int = 0) -> dict:
        """JSON-serialisable state: the schedule from ``from_position`` on (weights zlib+base64 encoded)."""
        first = max(0, bisect_right(self._starts, int(from_position)) - 1)
        return {
            "num_rows": self.num_rows,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "versions": [
                {"start": v.start, "weights": encode_array(v.weights)} for v in self._versions[first:]
            ],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a schedule saved by :meth:`state_dict`; the dataset size must match."""
        if int(state["num_rows"]) != self.num_rows:
            raise ValueError(
                f"checkpointed sampler was built for {state['num_rows']} rows, this dataset has {self.num_rows}; "
                "resume with the same training dataset"
            )
        self.seed = int(state["seed"])
        versions = state["versions"]
        self._versions = [_WeightVersion(int(v["start"]), decode_array(v["weights"]).astype(np.float64)) for v in versions]
        self._starts = [v.start for v in self._versions]
        self._starts[0] = 0  # earlier positions are skipped on resume; keep the search total
        self._versions[0].start = 0
        self.produced = 0


def encode_array(a: np.ndarray) -> dict:
    """Encode a numpy array as a small JSON-able dict (npy bytes, zlib, base64)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return {"npy_zlib_b64": base64.b64encode(zlib.compress(buf.getvalue(), 6)).decode("ascii")}


def decode_array(d: dict) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    raw = zlib.decompress(base64.b64decode(d["npy_zlib_b64"]))
    return np.load(io.BytesIO(raw), allow_pickle=False)
