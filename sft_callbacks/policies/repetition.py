"""What repeating a group costs: a per-group repetition budget (UniMax) and the withdrawal of groups whose
validation loss no longer responds to their draws.

Pure functions from statistics to shares, used by
:class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback` and
:class:`~sft_callbacks.policies.balance.GroupBalanceCallback`:

* :func:`capped_shares`: UniMax's budget (Chung et al., ICLR 2023): no group is drawn more than ``max_passes``
  times its rows over the run; what a capped group cannot take goes to the others in proportion to their shares.
  Repeated data keeps most of its value up to about 4 passes and loses it after (Muennighoff et al., 2023).
* :func:`stalled_groups` and :func:`withdrawn_shares`: a group whose validation loss no longer falls with its
  draws (the slope of loss against log(draws) over the last few evaluations is not one standard error below zero)
  gets no more than its natural share, whatever made it fall at first (a group with random answers learns their
  format, then nothing).

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
    shares: np.ndarray,
    sizes: np.ndarray,
    drawn: np.ndarray,
    remaining: float,
    max_passes: float | None,
    ceiling: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Shares for the ``remaining`` draws of a run so that no group ends above ``max_passes`` passes over its rows.

    A group's allowance is ``max_passes * size - drawn``. Groups whose share of the remaining draws exceeds their
    allowance get exactly the allowance; the excess goes to the other groups in proportion to their shares (to
    their allowances where none of them has a share), repeatedly, until no group is over (UniMax's water-filling).
    Where even every allowance together is less than ``remaining``, the budget rises to the smallest number of
    passes that fits, so the passes are as equal as the draws so far allow (the plain run's, when the run is
    longer than ``max_passes`` epochs). ``ceiling`` (optional) is a largest share per group on top of the budget
    (a withdrawn group's natural share): an excess never flows into a group above its ceiling; ``max_passes=None``
    applies the ceilings alone. Returns ``(shares, capped)``: the shares (summing to 1) and which groups the
    budget or their ceiling holds below their proposed share.

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
    if max_passes is not None and not (np.isfinite(max_passes) and max_passes > 0):
        raise ValueError(f"max_passes must be a finite number > 0 (got {max_passes})")
    total = shares.sum()
    if remaining <= 0 or total <= 0:
        return shares / total if total > 0 else shares, np.zeros(len(shares), dtype=bool)
    shares = shares / total
    live = sizes > 0
    if max_passes is None:
        allowance = np.where(live, np.inf, 0.0)
    else:
        allowance = np.where(live, np.maximum(max_passes * sizes - drawn, 0.0), 0.0)
        if allowance.sum() < remaining:
            # Raise the budget to the level c where sum(max(0, c * size - drawn)) = remaining.
            level = _level(sizes[live], drawn[live], remaining)
            allowance = np.where(live, np.maximum(level * sizes - drawn, 0.0), 0.0)
    if ceiling is not None:
        held = np.minimum(allowance, np.asarray(ceiling, dtype=np.float64) * remaining)
        if held.sum() >= remaining * (1 - 1e-12):  # ceilings that cannot all hold give way to the budget alone
            allowance = held
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


def stalled_groups(draws: np.ndarray, losses: np.ndarray, errors: np.ndarray, patience: int) -> np.ndarray:
    """Which groups' validation loss has stopped responding to their draws: over the last ``patience + 1``
    evaluations, the slope of loss against log(draws) is not at least one standard error below zero.

    ``draws``, ``losses`` and ``errors`` have one row per evaluation and one column per group (rows of the group
    drawn before the evaluation, its validation loss and that loss's standard error; NaN: not measured). The fit
    is :func:`~sft_callbacks.policies.mixing.log_law_slopes` (its error is the larger of the losses' own and the
    fit's residual error), so a single noisy evaluation neither withdraws a group nor keeps one in. A group
    needs ``patience + 1`` measured evaluations before it can stall.

    Example:
        >>> draws = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 30.0], [40.0, 40.0]])
        >>> losses = np.array([[1.0, 1.0], [0.5, 0.6], [0.49, 0.3], [0.51, 0.2]])
        >>> stalled_groups(draws, losses, np.full((4, 2), 0.05), patience=2).tolist()
        [True, False]
    """
    from .mixing import log_law_slopes

    if patience < 1:
        raise ValueError(f"patience must be >= 1 (got {patience})")
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2:
        return np.zeros(0, dtype=bool)
    draws, errors = np.asarray(draws, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    out = np.zeros(losses.shape[1], dtype=bool)
    for g in range(losses.shape[1]):
        seen = np.flatnonzero(np.isfinite(losses[:, g]) & (draws[:, g] > 0))[-(patience + 1):]
        if len(seen) < patience + 1:
            continue
        slope, se = log_law_slopes(draws[seen, g : g + 1], losses[seen, g : g + 1], errors[seen, g : g + 1])
        if np.isfinite(slope[0]):
            out[g] = bool(slope[0] > -(se[0] if np.isfinite(se[0]) else 0.0))
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
    # At least one step, so the shares stay meaningful (and logged) when the run has ended.
    remaining = max(1, int(ctx.max_steps) - int(ctx.step)) * draws_per_step(ctx.args) * samples_per_row
    return sizes, drawn, float(remaining)
