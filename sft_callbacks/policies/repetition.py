"""What repeating a group costs: a per-group repetition budget (UniMax) and the withdrawal of groups whose
validation loss no longer responds to their draws.

Pure functions from statistics to shares, used by
:class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback` and
:class:`~sft_callbacks.policies.balance.GroupBalanceCallback`:

* :func:`capped_shares`: UniMax's budget (Chung et al., ICLR 2023): no group is drawn more than ``max_passes``
  times its rows over the run; what a capped group cannot take goes to the others in proportion to their shares.
  Repeated data keeps most of its value up to about 4 passes and loses it after (Muennighoff et al., 2023).
* :func:`stalled_groups` and :func:`withdrawn_shares`: a group whose validation loss has not fallen below its
  best earlier value by more than its standard error for ``patience`` evaluations gets no more than its natural
  share, whatever made it fall at first (a group with random answers learns their format, then nothing).

Example:
    >>> shares, capped = capped_shares(np.array([0.5, 0.5]), np.array([10, 90]), np.zeros(2), 100, 2.0)
    >>> shares.tolist(), capped.tolist()
    ([0.2, 0.8], [True, False])
"""

from __future__ import annotations

import numpy as np


def draws_per_step(args) -> int:
    """Rows the sampler hands out per optimizer step: per-device batch x accumulation x processes.

    Example:
        >>> from types import SimpleNamespace
        >>> draws_per_step(SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2,
        ...                                world_size=4))
        64
    """
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * int(args.world_size)


def capped_shares(
    shares: np.ndarray, sizes: np.ndarray, drawn: np.ndarray, remaining: float, max_passes: float
) -> tuple[np.ndarray, np.ndarray]:
    """Shares for the ``remaining`` draws of a run so that no group ends above ``max_passes`` passes over its rows.

    A group's allowance is ``max_passes * size - drawn``. Groups whose share of the remaining draws exceeds their
    allowance get exactly the allowance; the excess goes to the other groups in proportion to their shares (to
    their allowances where none of them has a share), repeatedly, until no group is over (UniMax's water-filling).
    Where even every allowance together is less than ``remaining``, the budget rises to the smallest number of
    passes that fits, so the passes are as equal as the draws so far allow (the plain run's, when the run is
    longer than ``max_passes`` epochs). Returns ``(shares, capped)``: the shares (summing to 1) and which groups
    the budget holds below their proposed share.

    Example:
        >>> s, c = capped_shares(np.array([0.9, 0.1]), np.array([10, 100]), np.array([0.0, 0.0]), 1000, 1.0)
        >>> s.round(3).tolist(), c.tolist()  # 1000 draws do not fit in one pass: both end at 9.1 passes
        ([0.091, 0.909], [True, False])
    """
    shares = np.asarray(shares, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    drawn = np.asarray(drawn, dtype=np.float64)
    if shares.shape != sizes.shape or shares.shape != drawn.shape:
        raise ValueError("shares, sizes and drawn need one entry per group")
    if not (np.isfinite(max_passes) and max_passes > 0):
        raise ValueError(f"max_passes must be a finite number > 0 (got {max_passes})")
    total = shares.sum()
    if remaining <= 0 or total <= 0:
        return shares / total if total > 0 else shares, np.zeros(len(shares), dtype=bool)
    shares = shares / total
    live = sizes > 0
    allowance = np.where(live, np.maximum(max_passes * sizes - drawn, 0.0), 0.0)
    if allowance.sum() < remaining:
        # Raise the budget to the level c where sum(max(0, c * size - drawn)) = remaining.
        allowance = np.where(live, np.maximum(_level(sizes[live], drawn[live], remaining) * sizes - drawn, 0.0), 0.0)
    want = shares * remaining
    got = np.zeros_like(want)
    capped = np.zeros(len(shares), dtype=bool)
    free = live.copy()
    left = float(remaining)
    for _ in range(len(shares) + 1):
        over = free & (want > allowance + 1e-9 * remaining)
        if not over.any():
            got[free] = want[free]
            break
        got[over] = allowance[over]
        capped |= over
        free &= ~over
        left = remaining - got[capped].sum()
        weights = np.where(free, shares, 0.0)
        if weights.sum() <= 0:
            weights = np.where(free, allowance, 0.0)
        if weights.sum() <= 0:
            break
        want = np.where(free, left * weights / weights.sum(), want)
    out = got / got.sum() if got.sum() > 0 else shares
    return out, capped & (out < shares - 1e-12)


def _level(sizes: np.ndarray, drawn: np.ndarray, remaining: float) -> float:
    """The pass count ``c`` at which ``sum(max(0, c * sizes - drawn)) == remaining`` (piecewise linear in c)."""
    order = np.argsort(drawn / sizes)
    start = (drawn / sizes)[order]
    s, d = sizes[order], drawn[order]
    for k in range(len(s)):
        # with groups 0..k taking draws: c = (remaining + sum d) / sum s over them
        c = (remaining + d[: k + 1].sum()) / s[: k + 1].sum()
        if k == len(s) - 1 or c <= start[k + 1]:
            return float(c)
    return float(start[-1])


def stalled_groups(losses: np.ndarray, errors: np.ndarray, patience: int) -> np.ndarray:
    """Which groups' validation loss has stopped responding: none of the last ``patience`` evaluations fell below
    the best earlier one by more than the latest standard error.

    ``losses`` and ``errors`` have one row per evaluation and one column per group (NaN: not measured). A group
    needs ``patience + 1`` measured evaluations before it can stall.

    Example:
        >>> losses = np.array([[1.0, 1.0], [0.5, 0.6], [0.49, 0.3], [0.51, 0.2]])
        >>> stalled_groups(losses, np.full((4, 2), 0.05), patience=2).tolist()
        [True, False]
    """
    losses = np.asarray(losses, dtype=np.float64)
    errors = np.asarray(errors, dtype=np.float64)
    if patience < 1:
        raise ValueError(f"patience must be >= 1 (got {patience})")
    out = np.zeros(losses.shape[1] if losses.ndim == 2 else 0, dtype=bool)
    if losses.ndim != 2 or losses.shape[0] <= patience:
        return out
    for g in range(losses.shape[1]):
        seen = np.isfinite(losses[:, g])
        values, se = losses[seen, g], errors[seen, g]
        if len(values) <= patience:
            continue
        best_before = values[:-patience].min()
        margin = se[-1] if np.isfinite(se[-1]) else 0.0
        out[g] = bool(values[-patience:].min() > best_before - margin)
    return out


def withdrawn_shares(shares: np.ndarray, natural: np.ndarray, withdrawn: np.ndarray) -> np.ndarray:
    """Shares with each withdrawn group held at or below its natural share; what it gives up goes to the other
    groups in proportion to their shares (all withdrawn: the natural shares, the plain run's).

    Example:
        >>> withdrawn_shares(np.array([0.6, 0.4]), np.array([0.2, 0.8]), np.array([True, False])).round(6).tolist()
        [0.2, 0.8]
    """
    shares = np.asarray(shares, dtype=np.float64)
    natural = np.asarray(natural, dtype=np.float64)
    withdrawn = np.asarray(withdrawn, dtype=bool)
    shares = shares / shares.sum()
    if not withdrawn.any():
        return shares
    keep = ~withdrawn
    if not (keep & (shares > 0)).any():
        return natural / natural.sum()
    out = np.where(withdrawn, np.minimum(shares, natural), shares)
    freed = 1.0 - out.sum()
    rest = np.where(keep, shares, 0.0)
    return out + freed * rest / rest.sum()


def run_budget(ctx, uid_group: np.ndarray, num_groups: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(sizes, drawn, remaining)`` of a run in samples: each group's samples, its draws so far (the tracker's
    visit counts) and the draws the rest of the run will make (steps left x rows per step, in samples)."""
    sizes = np.bincount(uid_group, minlength=num_groups).astype(np.float64)
    seen = np.nan_to_num(np.asarray(ctx.stats.times_seen, dtype=np.float64))
    drawn = np.bincount(uid_group, weights=seen, minlength=num_groups)
    samples_per_row = len(uid_group) / max(ctx.num_rows, 1)  # packed rows hold several samples
    remaining = max(0, int(ctx.max_steps) - int(ctx.step)) * draws_per_step(ctx.args) * samples_per_row
    return sizes, drawn, float(remaining)
