"""Which training answers are wrong: suspicion scores read from every sample's visit history.

Pure functions over the tracker's :class:`~sft_callbacks.engine.tracking.VisitLog` (one entry per training forward pass
of a sample: step, loss, whole-answer correctness, least likely token, AUM margin). A per-sample loss separates
wrong answers only in a window of the run: before the model has learnt the task every loss is high (the first
visits read an untrained model), and once it memorises the wrong answers their loss falls too (Arpit et al.,
2017; on CIFAR-10 with 60% noise loss AUROC drops from 0.95 at epoch 20 to 0.63 at epoch 100). So the default
score averages each sample's confidence over the **window of trust**, chosen from the run itself: it opens when
the whole-answer accuracy of the clean-looking samples saturates (the burn-in) and closes when the most
suspicious samples start to be fitted (memorisation). See BENCHMARKS.md ("Finding wrong answers") for the
measurements that chose it.

Example:
    >>> log = {"uid": np.array([0, 1, 0, 1]), "step": np.array([0, 0, 5, 5]),
    ...        "loss": np.array([2.0, 2.0, 0.1, 3.0]), "correct": np.array([False, False, True, False])}
    >>> history_scores(log, 2, start=5)["confidence_after_burn_in"].round(3).tolist()
    [0.095, 0.95]
"""

from __future__ import annotations

import numpy as np

NOISE_SCORES = {
    "confidence_after_burn_in": "1 - mean confidence exp(-loss) over the visits in the window of trust (default)",
    "min_token_after_burn_in": "1 - mean probability of the least likely trained token, same window",
    "wrong_visits": "share of visits in the window whose greedy answer missed a trained token (ties: confidence)",
    "aum": "minus the mean AUM margin (given token's logit minus the best other), same window; needs logits",
    "confidence": "1 - mean confidence over every visit (the data map's confidence)",
    "confidence_time_normalised": "minus the mean, over every visit, of its confidence less the median confidence "
                                  "of the visits of the same span of steps",
    "loss_first": "the loss of the first visit (an out-of-sample reading, by a model still learning)",
    "loss_last": "the loss of the last visit",
}
DEFAULT_NOISE_SCORE = "confidence_after_burn_in"


def _mean_by(uid: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    total = np.bincount(uid, weights=x, minlength=n)
    count = np.bincount(uid, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _spans(step: np.ndarray, bins: int = 20) -> np.ndarray:
    """The span (``0..bins-1``, equal spans of steps from the first to the last) of each visit."""
    if step.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(step.min(), step.max() + 1, bins + 1)
    return np.clip(np.searchsorted(edges, step, side="right") - 1, 0, bins - 1)


def span_medians(step: np.ndarray, value: np.ndarray, bins: int = 20) -> np.ndarray:
    """The median of ``value`` over the visits of each of ``bins`` equal spans of steps (NaN: an empty span).

    Subtracted from each visit's confidence it removes what every row shares at that point of the run (the
    format being learnt, the learning rate's schedule), so a whole-run mean keeps the early readings, where clean
    answers are learnt before wrong ones, without the drag of the phase where every row is still unlearnt.

    Example:
        >>> span_medians(np.array([0, 0, 1, 1]), np.array([0.0, 0.5, 0.5, 1.0]), bins=2).tolist()
        [0.25, 0.75]
    """
    step, value = np.asarray(step, dtype=np.int64), np.asarray(value, dtype=np.float64)
    out = np.full(bins, np.nan)
    if step.size == 0:
        return out
    span = _spans(step, bins)
    order = np.lexsort((value, span))
    bounds = np.searchsorted(span[order], np.arange(bins + 1))
    for b in range(bins):
        if bounds[b + 1] > bounds[b]:
            out[b] = np.median(value[order[bounds[b] : bounds[b + 1]]])
    return out


def window_of_trust(visits: dict, n: int, *, rate: float = 0.2, bins: int = 20, level: float = 0.95
                    ) -> tuple[int, int | None]:  # fmt: skip
    """The steps ``[start, end)`` whose visits a noise score should read, chosen from the run itself.

    Visits are binned by step into ``bins`` equal spans. ``start`` is the first span in which the whole-answer
    accuracy of the clean-looking samples (confidence above the median over all their visits) reaches ``level``
    of its best span: before it, a high loss says the model has not learnt the task yet, not that the answer is
    wrong. ``end`` is the first later span in which the most suspicious samples (the lowest ``rate / 2`` by
    confidence) are fitted more often than not (memorisation), or ``None`` if that never happens.

    Example:
        >>> steps = np.repeat(np.arange(10), 4); uid = np.tile(np.arange(4), 10)
        >>> correct = (steps >= 3) & (uid > 0)  # the model learns at step 3; sample 0 stays wrong
        >>> loss = np.where(correct, 0.1, 2.0)
        >>> window_of_trust({"uid": uid, "step": steps, "loss": loss, "correct": correct}, 4, bins=10, rate=0.5)
        (3, None)
    """
    uid, step = np.asarray(visits["uid"], dtype=np.int64), np.asarray(visits["step"], dtype=np.int64)
    if uid.size == 0:
        return 0, None
    correct = np.asarray(visits["correct"], dtype=bool)
    overall = _mean_by(uid, np.exp(-np.asarray(visits["loss"], dtype=np.float64)), n)
    seen = np.isfinite(overall)
    clean = seen & (overall >= np.median(overall[seen]))
    suspect = seen & (overall <= np.quantile(overall[seen], max(rate / 2, 1.0 / seen.sum())))
    edges = np.linspace(step.min(), step.max() + 1, bins + 1)
    span = _spans(step, bins)

    def accuracy(rows):
        sel = rows[uid]
        hits = np.bincount(span[sel], weights=correct[sel], minlength=bins)
        count = np.bincount(span[sel], minlength=bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, hits / np.maximum(count, 1), np.nan)

    acc_clean, acc_suspect = accuracy(clean), accuracy(suspect)
    if not np.isfinite(acc_clean).any():
        return int(edges[0]), None
    first = int(np.argmax(np.nan_to_num(acc_clean, nan=-1.0) >= level * np.nanmax(acc_clean)))
    later = np.flatnonzero((np.arange(bins) > first) & (np.nan_to_num(acc_suspect, nan=0.0) > 0.5))
    start = int(np.ceil(edges[first]))
    end = int(np.ceil(edges[later[0]])) if later.size else None
    # Every sample keeps at least one visit inside: the window opens no later than any sample's last visit (a
    # model still learning at the end, or a sample no longer drawn), and closes no earlier than the first visit
    # of every sample after it opens.
    last_visit = np.full(n, -1, dtype=np.int64)
    np.maximum.at(last_visit, uid, step)
    start = min(start, int(last_visit[last_visit >= 0].min()))
    if end is not None:
        after = step >= start
        first_inside = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_inside, uid[after], step[after])
        end = max(end, int(first_inside[first_inside < np.iinfo(np.int64).max].max()) + 1)
    return start, end


def history_scores(visits: dict, n: int, *, start: int = 0, end: int | None = None) -> dict[str, np.ndarray]:
    """Every score of :data:`NOISE_SCORES` for ``n`` samples (higher = more likely a wrong answer; NaN: no visit
    to read), from visit arrays ``uid``, ``step``, ``loss``, ``correct`` and optionally ``min_logp`` / ``margin``.

    The ``*_after_burn_in``, ``wrong_visits`` and ``aum`` scores read only visits with ``start <= step < end``.

    Example:
        >>> log = {"uid": np.array([0, 1, 0, 1]), "step": np.array([0, 0, 5, 5]),
        ...        "loss": np.array([2.0, 2.0, 0.1, 3.0]), "correct": np.array([False, False, True, False])}
        >>> s = history_scores(log, 2, start=5)
        >>> s["wrong_visits"].round(2).tolist(), s["loss_first"].tolist()
        ([0.0, 1.0], [2.0, 2.0])
    """
    uid = np.asarray(visits["uid"], dtype=np.int64)
    step = np.asarray(visits["step"], dtype=np.int64)
    loss = np.asarray(visits["loss"], dtype=np.float64)
    conf = np.exp(-loss)
    inside = (step >= start) & (step < end if end is not None else True)
    u = uid[inside]
    out = {}
    window_conf = _mean_by(u, conf[inside], n)
    out["confidence_after_burn_in"] = 1.0 - window_conf
    if "min_logp" in visits:
        out["min_token_after_burn_in"] = 1.0 - _mean_by(u, np.exp(np.asarray(visits["min_logp"], np.float64)[inside]), n)
    wrong = _mean_by(u, (~np.asarray(visits["correct"], dtype=bool)[inside]).astype(np.float64), n)
    out["wrong_visits"] = wrong + 1e-3 * (1.0 - window_conf)  # confidence breaks the ties of a count
    if "margin" in visits:
        margin = np.asarray(visits["margin"], dtype=np.float64)[inside]
        out["aum"] = -_mean_by(u, margin, n) if np.isfinite(margin).any() else np.full(n, np.nan)
    out["confidence"] = 1.0 - _mean_by(uid, conf, n)
    out["confidence_time_normalised"] = -_mean_by(uid, conf - span_medians(step, conf)[_spans(step)], n)
    order = np.argsort(step, kind="stable")
    first = np.full(n, np.nan)
    last = np.full(n, np.nan)
    last[uid[order]] = loss[order]
    first[uid[order][::-1]] = loss[order][::-1]
    out["loss_first"], out["loss_last"] = first, last
    return out


def estimate_noise_rate(score: np.ndarray, iterations: int = 200) -> tuple[float, np.ndarray]:
    """The share of wrong answers and each sample's probability of being one, from a two-component Gaussian
    mixture fitted to ``score`` by EM (the clean and the noisy mode, as in Arazo et al. 2019 and DivideMix).

    A score within [0, 1] (one minus a confidence) is fitted in log-odds, where the clean mode, piled up near 0
    with a long tail, is close to Gaussian; fitted on the raw scale the noisy mode swallows that tail and the
    rate comes out two to three times too high (BENCHMARKS.md, "Finding wrong answers"). NaN scores get NaN
    posteriors. Fewer than 10 scored samples, or a single value: rate 0.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> s = np.concatenate([rng.normal(0.05, 0.03, 800), rng.normal(0.8, 0.1, 200)])
        >>> rate, post = estimate_noise_rate(s)
        >>> round(rate, 2), bool(post[-1] > 0.99), bool(post[0] < 0.01)
        (0.2, True, True)
    """
    score = np.asarray(score, dtype=np.float64)
    ok = np.isfinite(score)
    post = np.full(score.shape, np.nan)
    x = score[ok]
    if x.size and x.min() >= 0 and x.max() <= 1:
        x = np.clip(x, 1e-4, 1 - 1e-4)
        x = np.log(x / (1 - x))
    if x.size < 10 or np.ptp(x) <= 0:
        post[ok] = 0.0
        return 0.0, post
    # Start from "almost all clean": the clean mode at the median, the noisy one at the top 5%'s mean. Started
    # in the middle of the bulk, EM splits the clean mode in two instead.
    top = x >= np.quantile(x, 0.95)
    mu = np.array([np.median(x), x[top].mean()])
    floor = max(1e-6, (np.ptp(x) / 100) ** 2)
    var = np.full(2, max(x[~top].var() if (~top).sum() > 1 else x.var(), floor))
    pi = np.array([0.95, 0.05])
    for _ in range(iterations):
        logp = -0.5 * (x[:, None] - mu) ** 2 / var - 0.5 * np.log(var) + np.log(pi)
        logp -= logp.max(1, keepdims=True)
        r = np.exp(logp)
        r /= r.sum(1, keepdims=True)
        nk = r.sum(0) + 1e-12
        mu_new = (r * x[:, None]).sum(0) / nk
        var = np.maximum((r * (x[:, None] - mu_new) ** 2).sum(0) / nk, floor)
        pi = nk / nk.sum()
        if np.allclose(mu_new, mu, atol=1e-9):
            mu = mu_new
            break
        mu = mu_new
    noisy = int(np.argmax(mu))
    if pi[noisy] > 0.5:  # the "noisy" mode is the majority: no separate mode of wrong answers was found
        post[ok] = 0.0
        return 0.0, post
    p = r[:, noisy]
    # The higher mode's posterior falls again far below it only through the variance ratio: scores above that
    # mode's mean are at least as suspicious, so the posterior is made non-decreasing in the score.
    order = np.argsort(x, kind="stable")
    p[order] = np.maximum.accumulate(p[order])
    post[ok] = p
    return float(p.mean()), post


def noise_rate_decision(score: np.ndarray, *, given: float | None = None, fallback_rate: float = 0.1,
                        min_precision: float = 0.7, max_rate: float = 0.5,
                        estimate: tuple[float, np.ndarray] | None = None) -> dict:  # fmt: skip
    """The share of a group's rows to flag or withhold, and why: the rate given, or the one estimated from the
    scores when the estimate can be trusted, else a conservative fallback.

    The estimate is a two-component mixture of the scores (:func:`estimate_noise_rate`). It is trusted
    when it is at most ``max_rate`` and the rows it would flag are, by the mixture's own posterior, wrong at
    least ``min_precision`` of the time (two modes that barely separate give flags of low expected precision and
    rates of 0.4-0.6 where the truth is 0.17). Otherwise the group withholds ``min(estimate, fallback_rate)``:
    only its most suspicious rows.

    ``estimate``: :func:`estimate_noise_rate`'s ``(rate, posterior)`` of these scores, when the caller has it.

    Returns ``{"rate", "estimated", "expected_precision", "source"}`` with ``source`` one of ``"given"``,
    ``"estimated"``, ``"fallback"`` (and ``"reason"`` when it fell back).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> clean = np.concatenate([rng.normal(0.05, 0.03, 800), rng.normal(0.8, 0.1, 200)])
        >>> d = noise_rate_decision(clean)
        >>> d["source"], round(d["rate"], 2)
        ('estimated', 0.2)
        >>> noise_rate_decision(rng.uniform(0, 1, 1000))["source"]
        'fallback'
    """
    score = np.asarray(score, dtype=np.float64)
    estimated, post = estimate if estimate is not None else estimate_noise_rate(score)
    ok = np.isfinite(score)
    k = int(round(estimated * ok.sum()))
    top = np.argsort(-np.where(ok, score, -np.inf), kind="stable")[:k]
    precision = float(np.nanmean(post[top])) if k else float("nan")
    out = {"estimated": float(estimated), "expected_precision": precision}
    if given is not None:
        return {**out, "rate": float(given), "source": "given"}
    if estimated <= 0:
        return {**out, "rate": 0.0, "source": "fallback", "reason": "the scores show no separate mode of wrong answers"}
    if estimated > max_rate:
        return {**out, "rate": min(estimated, fallback_rate), "source": "fallback",
                "reason": f"estimated rate {estimated:.2f} is above {max_rate:g}: no separate mode"}
    if not precision >= min_precision:
        return {**out, "rate": min(estimated, fallback_rate), "source": "fallback",
                "reason": f"the estimate's flags would be wrong answers only {precision:.0%} of the time"}
    return {**out, "rate": float(estimated), "source": "estimated"}


def flag_by_score(score: np.ndarray, rate: float, *, eligible: np.ndarray | None = None,
                  groups: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """The ``round(rate * eligible)`` highest-scoring eligible samples, within each group when ``groups`` is given.

    Example:
        >>> flag_by_score(np.array([0.1, 0.9, 0.2, 0.8]), 0.5).tolist()
        [False, True, False, True]
        >>> flag_by_score(np.array([0.1, 0.9, 0.2, 0.8]), 0.5, groups=np.array(["a", "a", "a", "b"])).tolist()
        [False, True, True, False]
    """
    score = np.asarray(score, dtype=np.float64)
    if not 0 <= rate <= 1:
        raise ValueError(f"the noise rate must be in [0, 1], got {rate}")
    ok = np.isfinite(score) & (True if eligible is None else np.asarray(eligible, dtype=bool))
    groups = np.zeros(score.shape, dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != score.shape:
        raise ValueError(f"groups has {groups.size} labels for {score.size} samples")
    flags = np.zeros(score.shape, dtype=bool)
    for g in np.unique(groups):
        at = np.flatnonzero((groups == g) & ok)
        k = int(round(rate * at.size))
        if k:
            flags[at[np.argsort(-score[at], kind="stable")[:k]]] = True
    return flags
