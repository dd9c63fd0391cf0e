"""Group helpers shared by the group-level policies: group ids of rows, shares, and shares -> row weights.

Pure functions on arrays (no Trainer). A *share* vector gives, per group, the probability that a draw comes from
that group; it is turned into per-row sampling weights so that each group's rows together carry exactly its
share (rows within a group equally likely, unless a per-row preference is given).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def group_ids(values: Sequence) -> tuple[np.ndarray, list[str]]:
    """Integer group id of every value, and the group names (``str`` of the values, sorted).

    Values are grouped by their string form, so strings, ints and bools all work and the names can be used as
    metric suffixes and JSON keys; missing values (``None``, NaN) form the group ``"None"``. Vectorised
    (``pandas.factorize``): fast on millions of rows.

    Example:
        >>> ids, names = group_ids(["b", "a", "b", None])
        >>> ids.tolist(), names
        ([2, 1, 2, 0], ['None', 'a', 'b'])
    """
    arr = np.empty(len(values), dtype=object)
    arr[:] = list(values) if not isinstance(values, np.ndarray) else values
    codes, uniques = pd.factorize(arr, use_na_sentinel=True)
    if (codes < 0).any():
        codes = np.where(codes < 0, len(uniques), codes)
        uniques = list(uniques) + [None]
    as_str = np.array([str(u) for u in uniques], dtype=object)
    names, remap = np.unique(as_str, return_inverse=True)  # sorted; merges 1 and "1"
    return remap.reshape(-1)[codes].astype(np.int64), [str(n) for n in names]


def group_counts(ids: np.ndarray, num_groups: int) -> np.ndarray:
    """Rows per group (length ``num_groups``)."""
    return np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_groups).astype(np.float64)


def natural_shares(counts: np.ndarray) -> np.ndarray:
    """Each group's share of the rows (what uniform row sampling draws)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.sum() <= 0:
        raise ValueError("no rows in any group")
    return counts / counts.sum()


def shares_to_row_weights(ids: np.ndarray, shares: np.ndarray, row_preference: np.ndarray | None = None) -> np.ndarray:
    """Per-row sampling weights under which each group's total probability equals its share.

    A row of group ``g`` gets ``share[g] / count[g]``; with ``row_preference`` (positive, per row), rows of a
    group are weighted by it instead of equally, still summing to ``share[g]`` per group. The weights sum to 1
    when every group with a positive share has rows.

    Example:
        >>> shares_to_row_weights(np.array([0, 0, 0, 1]), np.array([0.5, 0.5])).tolist()
        [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]
    """
    ids = np.asarray(ids, dtype=np.int64)
    shares = np.asarray(shares, dtype=np.float64)
    pref = np.ones(len(ids)) if row_preference is None else np.asarray(row_preference, dtype=np.float64)
    if pref.shape != ids.shape:
        raise ValueError(f"row_preference has {pref.shape[0]} entries for {ids.shape[0]} rows")
    if not np.all(np.isfinite(pref)) or (pref <= 0).any():
        raise ValueError("row_preference must be finite and > 0")
    mass = np.bincount(ids, weights=pref, minlength=len(shares))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_unit = np.where(mass > 0, shares / np.where(mass > 0, mass, 1.0), 0.0)
    w = per_unit[ids] * pref
    total = w.sum()
    if total <= 0:
        raise ValueError("every group that has rows has share 0: no row could be drawn")
    return w / total


def row_group_shares(weights: np.ndarray, ids: np.ndarray, num_groups: int) -> np.ndarray:
    """Each group's share of a per-row weight vector (e.g. the sampler's current draw distribution)."""
    w = np.asarray(weights, dtype=np.float64)
    mass = np.bincount(np.asarray(ids, dtype=np.int64), weights=w, minlength=num_groups)
    total = mass.sum()
    return mass / total if total > 0 else mass


def floor_shares(shares: np.ndarray, min_share: float) -> np.ndarray:
    """Normalise ``shares`` and raise every group below ``min_share`` to it, taking the mass from the others.

    Exact: the result sums to 1 and every entry is ``>= min_share``; groups above the floor keep their relative
    proportions. Needs ``min_share * len(shares) <= 1``.

    Example:
        >>> floor_shares(np.array([0.98, 0.01, 0.01]), 0.1).round(3).tolist()
        [0.8, 0.1, 0.1]
    """
    s = np.asarray(shares, dtype=np.float64)
    if not np.all(np.isfinite(s)) or (s < 0).any() or s.sum() <= 0:
        raise ValueError(f"shares must be finite, >= 0 and not all zero (got {s.tolist()})")
    s = s / s.sum()
    k = len(s)
    if min_share <= 0 or k == 0:
        return s
    if min_share * k > 1 + 1e-12:
        raise ValueError(f"min_share={min_share} is impossible for {k} groups (min_share * groups must be <= 1)")
    fixed = np.zeros(k, dtype=bool)
    for _ in range(k):
        free_mass = 1.0 - min_share * fixed.sum()
        free = ~fixed
        base = s[free].sum()
        out = np.full(k, min_share)
        out[free] = s[free] / base * free_mass if base > 0 else free_mass / free.sum()
        newly = free & (out < min_share - 1e-15)
        if not newly.any():
            return out
        fixed |= newly
    return np.full(k, 1.0 / k)


def shares_from_mapping(mapping: Mapping, names: Sequence[str], what: str = "target_shares") -> np.ndarray:
    """Share vector (normalised, in ``names`` order) from a ``{group: share}`` mapping.

    Keys are matched by their string form. Raises ``ValueError`` naming the groups that are missing, the names
    that are not groups, and negative / non-finite / all-zero shares.

    Example:
        >>> shares_from_mapping({"a": 3, "b": 1}, ["a", "b"]).tolist()
        [0.75, 0.25]
    """
    given = {str(k): v for k, v in mapping.items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"{what} names groups {unknown} that are not in the data (groups: {list(names)}; rows the trainer "
            "dropped while preparing the dataset, e.g. left without a trained token by truncation, do not count)"
        )
    missing = [n for n in names if n not in given]
    if missing:
        raise ValueError(f"{what} gives no value for groups {missing}; give one for every group {list(names)}")
    values = np.array([float(given[n]) for n in names], dtype=np.float64)
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(f"{what} must be finite and >= 0 (got {dict(zip(names, values.tolist()))})")
    if values.sum() <= 0:
        raise ValueError(f"{what} are all zero; at least one group needs a positive share")
    return values / values.sum()


def named(values: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    """``{name: float}`` of a per-group vector (JSON-able)."""
    return {n: float(v) for n, v in zip(names, np.asarray(values, dtype=np.float64))}


def uid_groups(row_ids: np.ndarray, seq_uid: np.ndarray, seq_row: np.ndarray, num_uids: int) -> np.ndarray:
    """Group id of every sample id (``ctx.stats`` order) from the group ids of dataloader rows.

    Rows with identical content share a sample id; the group of the last such row is kept.
    """
    out = np.zeros(num_uids, dtype=np.int64)
    out[np.asarray(seq_uid)] = np.asarray(row_ids)[np.asarray(seq_row)]
    return out
