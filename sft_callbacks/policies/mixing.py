"""Online mixture updates driven by per-group validation loss: pure functions from the history of evaluations
(each group's validation loss, its standard error, and how many rows of each group had been drawn) to the next
training mixture. :class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback` calls them.

The candidates compared on the evidence benchmark (method card ``docs/methods/validation_guided_resampling.md``):

* :func:`exp3_update`: an EXP3-style bandit whose reward is a group's target-weighted validation-loss decrease
  per drawn share since the last evaluation (online data mixing, Albalak et al. 2023, with a validation reward).
* :func:`scaling_shares`: per-group log-law fits of validation loss against rows drawn; cumulative draws
  allocated where the target loss falls most per drawn row (ADO, Jiang et al. 2025, fitted on validation loss).
* :func:`doremi_update`: DoReMi's excess-loss update, for users who give reference losses.

The rules as objects, with their state, are in :mod:`.mixing_rules`.
"""

from __future__ import annotations

import math

import numpy as np

from .groups import floor_shares


def group_loss_stats(
    loss_by_row: np.ndarray, group_of_row: np.ndarray, n_tokens: np.ndarray, num_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: token-weighted mean loss, its standard error, and its trained tokens.

    The standard error treats the group's rows as a sample (weighted by tokens, Kish's effective size): it is how
    much the group's loss would move with another draw of validation rows of the same size, not how much it moves
    from one checkpoint to the next. Rows with a non-finite loss, no token or a negative group are ignored; a
    group without rows gets NaN mean and SE, and one row gives SE NaN.

    Example:
        >>> m, se, tok = group_loss_stats(np.array([1.0, 3.0, 2.0]), np.array([0, 0, 1]), np.array([1, 1, 2]), 2)
        >>> m.tolist(), tok.tolist()
        ([2.0, 2.0], [2.0, 2.0])
    """
    loss = np.asarray(loss_by_row, dtype=np.float64)
    g = np.asarray(group_of_row, dtype=np.int64)
    w = np.asarray(n_tokens, dtype=np.float64)
    ok = np.isfinite(loss) & (g >= 0) & (g < num_groups) & (w > 0)
    loss, g, w = loss[ok], g[ok], w[ok]
    tok = np.bincount(g, weights=w, minlength=num_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(g, weights=w * loss, minlength=num_groups) / tok
        var = np.bincount(g, weights=w * (loss - mean[g]) ** 2, minlength=num_groups) / tok
        n_eff = tok**2 / np.bincount(g, weights=w * w, minlength=num_groups)
        se = np.where(n_eff > 1, np.sqrt(var / np.maximum(n_eff - 1, 1e-12)), np.nan)
    mean = np.where(tok > 0, mean, np.nan)
    return mean, np.where(tok > 0, se, np.nan), tok


def exp3_update(
    log_weights: np.ndarray,
    loss_before: np.ndarray,
    loss_after: np.ndarray,
    drawn_share: np.ndarray,
    target: np.ndarray,
    lr: float,
    min_draw: float = 0.01,
) -> np.ndarray:
    """One EXP3 step on the groups' log-weights; reward = target-weighted validation-loss decrease per drawn share.

    ``reward_g = target_g * (loss_before_g - loss_after_g) / max(drawn_share_g, min_draw)`` (EXP3's importance
    weighting by the probability the arm was played), ``log_weights + lr * reward``; a group without both losses
    gets no reward. The caller turns the log-weights into shares (softmax, exploration, floor).

    Example:
        >>> exp3_update(np.zeros(2), np.array([1.0, 1.0]), np.array([0.5, 1.0]), np.array([0.5, 0.5]),
        ...             np.array([0.5, 0.5]), lr=1.0).tolist()
        [0.5, 0.0]
    """
    before, after = np.asarray(loss_before, np.float64), np.asarray(loss_after, np.float64)
    drop = np.nan_to_num(before - after, nan=0.0, posinf=0.0, neginf=0.0)
    reward = np.asarray(target, np.float64) * drop / np.maximum(np.asarray(drawn_share, np.float64), min_draw)
    return np.asarray(log_weights, np.float64) + float(lr) * reward


def softmax_shares(log_weights: np.ndarray, prior: np.ndarray, explore: float, min_share: float) -> np.ndarray:
    """``(1 - explore) * softmax(log_weights) + explore * prior``, floored at ``min_share``.

    Example:
        >>> softmax_shares(np.array([0.0, 0.0]), np.array([1.0, 0.0]), 0.5, 0.0).tolist()
        [0.75, 0.25]
    """
    z = np.asarray(log_weights, np.float64)
    z = np.exp(z - z.max())
    prior = np.asarray(prior, np.float64)
    return floor_shares((1.0 - explore) * z / z.sum() + explore * prior / prior.sum(), min_share)


def log_law_slopes(
    draws: np.ndarray, losses: np.ndarray, errors: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the slope ``b`` of ``loss ≈ a + b * log(draws)`` over the evaluations given, and its standard error.

    ``draws`` and ``losses`` are ``(evaluations, groups)``: rows of each group drawn before each evaluation and
    its validation loss there. Least squares over the evaluations where both are known and ``draws > 0``; fewer
    than two such points give NaN. The standard error propagates the losses' own ``errors`` (their SEs) when
    given, and with three or more points takes the larger of that and the fit's residual error.

    Example:
        >>> b, _ = log_law_slopes(np.array([[10.0], [100.0]]), np.array([[2.0], [1.0]]))
        >>> round(float(b[0] * np.log(10)), 6)
        -1.0
    """
    d = np.asarray(draws, np.float64)
    y = np.asarray(losses, np.float64)
    e = np.full_like(y, np.nan) if errors is None else np.asarray(errors, np.float64)
    k = y.shape[1]
    slope, se = np.full(k, np.nan), np.full(k, np.nan)
    for g in range(k):
        ok = np.isfinite(y[:, g]) & np.isfinite(d[:, g]) & (d[:, g] > 0)
        if ok.sum() < 2:
            continue
        x = np.log(d[ok, g])
        xc = x - x.mean()
        sxx = float((xc * xc).sum())
        if sxx <= 1e-12:
            continue
        yy = y[ok, g]
        slope[g] = float((xc * (yy - yy.mean())).sum() / sxx)
        parts = []
        ee = e[ok, g]
        if np.isfinite(ee).all():
            parts.append(float(np.sqrt((xc * xc * ee * ee).sum()) / sxx))
        if ok.sum() >= 3:
            resid = yy - yy.mean() - slope[g] * xc
            parts.append(float(np.sqrt((resid * resid).sum() / (ok.sum() - 2) / sxx)))
        se[g] = max(parts) if parts else np.nan
    return slope, se


def shrink_slopes(slopes: np.ndarray, errors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pull each group's slope towards the weighted mean slope by how uncertain it is (positive-part James-Stein).

    ``b̃_g = b̄ + (b_g - b̄) * max(0, 1 - se_g² / (b_g - b̄)²)``: a group whose slope differs from the others' by
    less than its standard error gets the common slope; a clear difference is kept. NaN slopes become ``b̄``;
    NaN errors leave the slope as it is.

    Example:
        >>> shrink_slopes(np.array([-1.0, -0.2]), np.array([0.1, 1.0]), np.array([0.5, 0.5])).round(3).tolist()
        [-0.975, -0.6]
    """
    b = np.asarray(slopes, np.float64)
    se = np.asarray(errors, np.float64)
    w = np.asarray(weights, np.float64)
    ok = np.isfinite(b)
    if not ok.any():
        return b
    mean = float((w[ok] * b[ok]).sum() / w[ok].sum()) if w[ok].sum() > 0 else float(b[ok].mean())
    dev = b - mean
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = np.where(np.isfinite(se) & (dev != 0), np.maximum(0.0, 1.0 - se * se / (dev * dev)), 1.0)
    return np.where(ok, mean + dev * keep, mean)


def scaling_shares(target: np.ndarray, slopes: np.ndarray) -> np.ndarray | None:
    """Shares that put the cumulative draws where the target loss falls most per drawn row, under a log law.

    With ``L_g ≈ a_g + b_g log(n_g)``, minimising ``Σ target_g L_g`` over draws ``Σ n_g = N`` gives
    ``n_g ∝ target_g * (-b_g)``: a group's rows are worth drawing in proportion to its weight in the target and
    to how much its validation loss falls per e-fold of its draws. A group whose loss does not fall (``b_g >= 0``:
    noise, nothing left to learn, overfitting) gets nothing. ``None`` when no group's loss falls.

    Example:
        >>> scaling_shares(np.array([0.5, 0.25, 0.25]), np.array([-0.2, -0.4, 0.1])).tolist()
        [0.5, 0.5, 0.0]
    """
    gain = np.asarray(target, np.float64) * np.maximum(-np.nan_to_num(np.asarray(slopes, np.float64), nan=0.0), 0.0)
    total = gain.sum()
    return gain / total if total > 0 else None


def geometric_step(mixture: np.ndarray, proposal: np.ndarray, rate: float, min_share: float) -> np.ndarray:
    """Move ``mixture`` a fraction ``rate`` of the way to ``proposal`` in log space, floored at ``min_share``.

    ``m' ∝ m^(1-rate) * max(p, min_share)^rate``: one update cannot starve a group, several consistent ones can
    (down to the floor). ``rate=1`` jumps to the (floored) proposal.

    Example:
        >>> geometric_step(np.array([0.5, 0.5]), np.array([0.9, 0.1]), 1.0, 0.0).round(3).tolist()
        [0.9, 0.1]
    """
    m = np.maximum(np.asarray(mixture, np.float64), 1e-12)
    p = np.maximum(np.asarray(proposal, np.float64), max(min_share, 1e-12))
    z = (1.0 - rate) * np.log(m / m.sum()) + rate * np.log(p / p.sum())
    z = np.exp(z - z.max())
    return floor_shares(z, min_share)


def fresh_loss_slopes(points: list[dict], min_rows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Per group, the slope of the loss of rows *at their first visit* against ``log(rows drawn)``, and its SE.

    A row's loss at its first visit is a held-out loss (the model has not trained on it yet): the mean over the
    rows first visited between two sync points says how well the model does on unseen rows of the group, at no
    cost. Each point holds cumulative per-group ``draws``, ``fresh_sum`` / ``fresh_sq`` (sum / sum of squares of
    first-visit losses) and ``fresh_count``; consecutive points give one interval mean, placed at the mean
    ``log(draws)`` of its two ends. Intervals with fewer than ``min_rows`` first visits are skipped (a group whose
    rows were all visited has none left: its slope is NaN).

    Example:
        >>> pts = [{"draws": [10.0], "fresh_sum": [0.0], "fresh_sq": [0.0], "fresh_count": [0.0]},
        ...        {"draws": [20.0], "fresh_sum": [20.0], "fresh_sq": [40.0], "fresh_count": [10.0]},
        ...        {"draws": [40.0], "fresh_sum": [30.0], "fresh_sq": [46.0], "fresh_count": [20.0]}]
        >>> round(float(fresh_loss_slopes(pts)[0][0] * np.log(2)), 6)  # one nat lower per doubling
        -1.0
    """
    if len(points) < 3:
        k = len(points[0]["draws"]) if points else 0
        return np.full(k, np.nan), np.full(k, np.nan)
    d = np.array([p["draws"] for p in points], np.float64)
    s = np.array([p["fresh_sum"] for p in points], np.float64)
    q = np.array([p["fresh_sq"] for p in points], np.float64)
    c = np.array([p["fresh_count"] for p in points], np.float64)
    dc, ds, dq = np.diff(c, axis=0), np.diff(s, axis=0), np.diff(q, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(dc >= min_rows, ds / dc, np.nan)
        var = np.maximum(dq / dc - mean * mean, 0.0)
        err = np.sqrt(var / np.maximum(dc - 1, 1))
        x = 0.5 * (np.log(np.maximum(d[:-1], 1.0)) + np.log(np.maximum(d[1:], 1.0)))
    return log_law_slopes(np.exp(x), mean, np.where(np.isfinite(mean), err, np.nan))


def transfer_matrix(shares: np.ndarray, decreases: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """How drawing each group lowers each validation group's loss: ``A`` in ``decrease_h ≈ Σ_g A[h, g] x_g``.

    Aioli's linear mixing law (Chen et al. 2025), estimated online from the history instead of from perturbation
    rounds: ``shares`` is ``(intervals, groups)``, the mixture drawn in each interval between two evaluations,
    ``decreases`` the same shape, each validation group's loss decrease over that interval per training step.
    Ridge regression of each row of ``A`` towards a pooled prior ``A0 = a I + c 1 1ᵀ`` (own-group effect ``a``,
    common effect ``c``, fitted by least squares over all groups and intervals), with penalty ``ridge`` per
    interval-equivalent: with few intervals ``A`` is the prior, with many the data speak. Non-finite decreases
    are dropped.

    Example:
        >>> x = np.array([[0.5, 0.5], [0.9, 0.1], [0.1, 0.9]])
        >>> y = x * np.array([1.0, 0.0])  # only group 0 lowers only its own loss
        >>> (transfer_matrix(x, y, ridge=1e-6).round(2) + 0.0).tolist()
        [[1.0, 0.0], [0.0, 0.0]]
    """
    x = np.asarray(shares, np.float64)
    y = np.asarray(decreases, np.float64)
    n, k = x.shape
    ok = np.isfinite(y)
    # Pooled prior: y[t, h] ≈ a * x[t, h] + c.
    feats = np.stack([x[ok], np.ones(ok.sum())], axis=1)
    if ok.sum() >= 2:
        (a, c), *_ = np.linalg.lstsq(feats, y[ok], rcond=None)
    else:
        a, c = 0.0, 0.0
    prior = a * np.eye(k) + c * np.ones((k, k))
    out = prior.copy()
    for h in range(k):
        rows = ok[:, h]
        if not rows.any():
            continue
        xh, yh = x[rows], y[rows, h]
        lhs = xh.T @ xh + ridge * np.eye(k)
        out[h] = np.linalg.solve(lhs, xh.T @ yh + ridge * prior[h])
    return out


def doremi_update(
    mixture: np.ndarray,
    excess: np.ndarray,
    lr: float,
    smoothing: float,
    prior: np.ndarray,
    min_share: float = 0.0,
) -> np.ndarray:
    """One exponentiated-gradient step of the group mixture (DoReMi, Xie et al. 2023, Algorithm 1).

    ``alpha' ∝ alpha * exp(lr * max(excess, 0))`` (groups whose validation loss exceeds their reference gain
    share; NaN excess counts as 0), then ``(1 - smoothing) * alpha' + smoothing * prior``, then every share is
    floored at ``min_share`` (exactly, see :func:`~sft_callbacks.policies.groups.floor_shares`).

    Example:
        >>> doremi_update(np.array([0.5, 0.5]), np.array([math.log(3), -1.0]), 1.0, 0.0, np.array([0.5, 0.5])).tolist()
        [0.75, 0.25]
    """
    a = np.asarray(mixture, dtype=np.float64)
    e = np.nan_to_num(np.asarray(excess, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    prior = np.asarray(prior, dtype=np.float64)
    if a.shape != e.shape or a.shape != prior.shape:
        raise ValueError(f"mixture {a.shape}, excess {e.shape} and prior {prior.shape} must have the same shape")
    if not (np.isfinite(lr) and lr >= 0):
        raise ValueError(f"lr must be finite and >= 0 (got {lr})")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1] (got {smoothing})")
    if (a < 0).any() or a.sum() <= 0:
        raise ValueError("mixture must be >= 0 and not all zero")
    with np.errstate(divide="ignore"):
        logits = np.log(a / a.sum()) + lr * np.maximum(e, 0.0)
    logits -= logits[np.isfinite(logits)].max()
    updated = np.exp(logits)
    updated /= updated.sum()
    mixed = (1.0 - smoothing) * updated + smoothing * (prior / prior.sum())
    return floor_shares(mixed, min_share)


def group_eval_losses(
    loss_by_row: np.ndarray,
    group_ids_of_eval_rows: np.ndarray,
    n_tokens: np.ndarray | None = None,
    num_groups: int | None = None,
) -> np.ndarray:
    """Validation loss of every group: token-weighted mean of its rows' losses (plain mean without ``n_tokens``).

    Rows with a NaN/inf loss or a negative group id (a group the mixture does not know) are ignored; a group
    without any usable row gets NaN. ``loss_by_row`` holds per-row mean NLL over the row's trained tokens, so
    the token-weighted mean is the group's per-token loss (what the Trainer's ``eval_loss`` is over all rows).

    Example:
        >>> group_eval_losses(np.array([1.0, 3.0, np.nan, 2.0]), np.array([0, 0, 1, 1]), np.array([1, 3, 5, 2])).tolist()
        [2.5, 2.0]
    """
    loss = np.asarray(loss_by_row, dtype=np.float64)
    g = np.asarray(group_ids_of_eval_rows, dtype=np.int64)
    if loss.shape != g.shape:
        raise ValueError(f"{loss.shape[0]} losses for {g.shape[0]} group ids")
    w = np.ones_like(loss) if n_tokens is None else np.asarray(n_tokens, dtype=np.float64)
    k = int(num_groups) if num_groups is not None else (int(g.max()) + 1 if g.size else 0)
    return group_loss_stats(loss, g, w, k)[0]


def plateau_step(loss: float, best: float | None, wait: int, patience: int) -> tuple[float | None, int, bool]:
    """Early-stopping bookkeeping: ``(best, wait, fire)`` after a new validation ``loss``.

    An evaluation that does not improve on ``best`` adds one to ``wait``; ``fire`` is True when ``wait`` reaches
    ``patience`` (``wait`` then restarts at 0). A NaN loss changes nothing.

    Example:
        >>> plateau_step(1.0, 0.9, 0, 1)
        (0.9, 0, True)
    """
    if not math.isfinite(loss):
        return best, wait, False
    if best is None or loss < best:
        return loss, 0, False
    wait += 1
    if wait >= patience:
        return best, 0, True
    return best, wait, False
