"""Pure functions from statistics to sampling weights, and the rule that combines several policies.

Nothing here knows about the Trainer: every function takes arrays and returns arrays, so it is tested on arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def check_weights(weights: np.ndarray, num_rows: int, source: str = "policy") -> np.ndarray:
    """Validate a weight vector from ``source``; returns it as float64.

    Raises a ``ValueError`` naming ``source`` for a wrong length, NaN/inf, negative values or all zeros.

    Example:
        >>> check_weights(np.array([1.0, 0.0]), 2).tolist()
        [1.0, 0.0]
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != num_rows:
        raise ValueError(f"{source} returned {w.shape[0]} weights for a training set of {num_rows} rows")
    bad = ~np.isfinite(w)
    if bad.any():
        raise ValueError(f"{source} returned {int(bad.sum())} non-finite weights (NaN or inf); weights must be finite")
    if (w < 0).any():
        raise ValueError(f"{source} returned negative weights; weights must be >= 0")
    if not (w > 0).any():
        raise ValueError(f"{source} returned all-zero weights; at least one row must keep a positive weight")
    return w


def combine_weights(
    vectors: Sequence[tuple[str, np.ndarray]],
    num_rows: int,
    *,
    floor: float = 0.0,
    max_ratio: float | None = 1000.0,
) -> np.ndarray:
    """Combine policy weight vectors into one sampling distribution.

    The rule: each vector is validated and scaled to mean 1 over its positive entries; the vectors are
    multiplied; a zero in any vector excludes the row (a curriculum that has not reached it yet); among the
    remaining rows, weights below ``floor`` times the mean are raised to it, and the ratio of the largest to
    the smallest weight is capped at ``max_ratio`` by raising the smallest; the result sums to 1.

    Args:
        vectors: ``(name, weights)`` pairs, one per active policy; names appear in error messages.
        num_rows: length every vector must have.
        floor: minimum weight relative to the mean of positive weights (0 disables).
        max_ratio: cap on max/min over positive weights (``None`` disables).

    Example:
        >>> combine_weights([("a", np.array([1.0, 3.0])), ("b", np.array([1.0, 1.0]))], 2).tolist()
        [0.25, 0.75]
    """
    if max_ratio is not None and max_ratio < 1:
        raise ValueError("max_ratio must be >= 1")
    if floor < 0:
        raise ValueError("floor must be >= 0")
    out = np.ones(num_rows, dtype=np.float64)
    for name, w in vectors:
        w = check_weights(w, num_rows, name)
        out *= w / w[w > 0].mean()
    positive = out > 0
    if not positive.any():
        raise ValueError(
            "the active policies exclude every row between them (their weights have no positive entry in common): "
            + ", ".join(name for name, _ in vectors)
        )
    pos = out[positive]
    if floor > 0:
        pos = np.maximum(pos, floor * pos.mean())
    if max_ratio is not None:
        pos = np.maximum(pos, pos.max() / max_ratio)
    out[positive] = pos
    return out / out.sum()


def uid_to_rows(uid_weights: np.ndarray, seq_uid: np.ndarray, seq_row: np.ndarray, num_rows: int) -> np.ndarray:
    """Per-row weights from per-sample (key) weights: a row's weight is the mean over the samples it holds.

    For unpacked data each row holds one sample; a pack's weight is the mean of its samples'.

    Example:
        >>> uid_to_rows(np.array([1.0, 3.0]), np.array([0, 1]), np.array([0, 0]), 1).tolist()
        [2.0]
    """
    total = np.bincount(seq_row, weights=uid_weights[seq_uid], minlength=num_rows)
    count = np.bincount(seq_row, minlength=num_rows)
    return np.divide(total, count, out=np.zeros(num_rows), where=count > 0)
