"""Hard-example mining: draw the samples the model currently finds hardest more often.

Two layers, as everywhere in :mod:`sft_callbacks.policies`:

- pure functions from per-sample statistics to weights (:func:`hardness_scores`, :func:`rank_weights`,
  :func:`power_weights`, :func:`cap_ratio`, :func:`group_normalise`, :func:`focal_loss_weights`,
  :func:`first_epoch_reference`, :func:`hard_fraction`), tested on arrays, no Trainer needed;
- :class:`HardExampleMiningCallback`, which decides *when* to call them (warm-up, every k-th sync point) and logs
  what it did under ``sft/hard/``.

See ``docs/methods/hard_example_mining.md`` for the method card.
"""

from __future__ import annotations

from dataclasses import dataclass

import logging
import math
import numbers

import numpy as np

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig

logger = logging.getLogger(__name__)

SCORE_FLOOR = 1e-3
"""Smallest hardness score: keeps every weight positive (a zero weight would *exclude* a row)."""

MODES = ("rank", "power")


# -- pure functional core ---------------------------------------------------------------------------------------
def scored_mask(
    loss_last: np.ndarray, reference: np.ndarray | None = None, times_seen: np.ndarray | None = None
) -> np.ndarray:
    """Which samples have a hardness score: seen at least once, a finite latest loss and, with a
    ``reference``, a finite reference.

    Example:
        >>> scored_mask(np.array([1.0, np.nan, 2.0]), np.array([0.5, 0.5, np.nan])).tolist()
        [True, False, False]
    """
    loss = np.asarray(loss_last, dtype=np.float64)
    ok = np.isfinite(loss)
    if times_seen is not None:
        ok &= np.asarray(times_seen) > 0
    if reference is not None:
        ok &= np.isfinite(np.asarray(reference, dtype=np.float64))
    return ok


def hardness_scores(
    loss_last: np.ndarray,
    reference: np.ndarray | None = None,
    times_seen: np.ndarray | None = None,
    *,
    floor: float = SCORE_FLOOR,
) -> np.ndarray:
    """Per-sample hardness: the latest loss, or the *reducible* loss ``loss - reference``, at least ``floor``.

    Samples without a score (see :func:`scored_mask`: never seen, or no reference yet) get the mean score of the
    scored ones, so they are drawn like an average sample until they are seen. With no scored sample at all,
    every score is 1.

    Args:
        loss_last: latest mean NLL per sample (``SampleStats.loss_last``; NaN where unseen).
        reference: per-sample reference loss (RHO-LOSS's irreducible loss); ``None`` scores by the loss itself.
        times_seen: per-sample count of training forwards; ``None`` treats every finite loss as seen.
        floor: lower clip of the scores (> 0), so every sample keeps a positive weight. A reducible loss below it
            (the sample is already at or below its reference: nothing left to learn) is clipped to it.

    Example:
        >>> hardness_scores(np.array([2.0, np.nan, 4.0]), times_seen=np.array([1, 0, 1])).tolist()
        [2.0, 3.0, 4.0]
        >>> hardness_scores(np.array([2.0, 1.0]), reference=np.array([0.5, 3.0])).tolist()
        [1.5, 0.001]
    """
    if not floor > 0:
        raise ValueError("floor must be > 0 (a zero score would exclude a sample)")
    loss = np.asarray(loss_last, dtype=np.float64)
    ok = scored_mask(loss, reference, times_seen)
    scores = np.ones(loss.shape[0], dtype=np.float64)
    if not ok.any():
        return scores
    raw = loss[ok] if reference is None else loss[ok] - np.asarray(reference, dtype=np.float64)[ok]
    known = np.maximum(raw, floor)
    scores[:] = known.mean()
    scores[ok] = known
    return scores


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """0-based rank of each score from the largest (rank 0) down; tied scores share their average rank."""
    n = scores.shape[0]
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    new[1:] = ordered[1:] != ordered[:-1]
    tie_id = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], n) - 1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ((starts + ends) / 2.0)[tie_id]
    return ranks


def rank_weights(scores: np.ndarray, selection_pressure: float) -> np.ndarray:
    """Rank-based selection weights (Loshchilov & Hutter, 2015), scaled to mean 1.

    The sample of rank ``r`` (0 = hardest, i.e. largest score; ``n`` samples) gets weight
    ``exp(-log(s_e) * r / (n - 1))``: the weight falls geometrically with the rank, and the hardest sample is
    exactly ``s_e = selection_pressure`` times as likely as the easiest. (The paper divides by ``n``; with
    ``n - 1`` the ratio is ``s_e`` exactly rather than ``s_e ** ((n - 1) / n)``.) Only the order of the scores
    matters, so the weights do not depend on the scale of the loss. Tied scores share their average rank, hence
    equal weights. Cost: one sort, O(n log n).

    Example:
        >>> w = rank_weights(np.array([3.0, 1.0, 2.0]), 4.0)
        >>> float(w[0] / w[1]), float(w[0] / w[2])
        (4.0, 2.0)
    """
    if not selection_pressure >= 1:
        raise ValueError("selection_pressure must be >= 1")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = s.shape[0]
    if n == 0:
        return s.copy()
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if n == 1:
        return np.ones(1)
    w = np.exp(-math.log(selection_pressure) * _average_ranks(s) / (n - 1))
    return w / w.mean()


def power_weights(scores: np.ndarray, alpha: float) -> np.ndarray:
    """Weights proportional to ``scores ** alpha``, scaled to mean 1.

    ``alpha = 1`` samples in proportion to the loss; larger ``alpha`` concentrates on the hardest, smaller
    flattens. Computed in log space, so no weight overflows or underflows to zero. Cost: O(n).

    Example:
        >>> np.round(power_weights(np.array([1.0, 3.0]), 2.0), 12).tolist()
        [0.2, 1.8]
    """
    if not alpha > 0:
        raise ValueError("alpha must be > 0")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] == 0:
        return s.copy()
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("scores must be finite and > 0 (hardness_scores clips them at a positive floor)")
    logw = alpha * (np.log(s) - np.log(s.max()))
    w = np.exp(np.maximum(logw, -700.0))
    return w / w.mean()


def _group_codes(groups) -> np.ndarray:
    """Integer code 0..G-1 of each group label.

    A numeric or string numpy array is coded by value. Anything else (a list, a dataset column, an object array)
    is grouped by the labels' string form, as the package's group policies do: ``1`` and ``"1"`` are one group,
    and ``None`` and NaN form the group ``"None"``.
    """
    if isinstance(groups, np.ndarray) and groups.dtype != object:
        return np.unique(groups, return_inverse=True)[1].reshape(-1)
    values = groups.tolist() if isinstance(groups, np.ndarray) else list(groups)
    labels = np.array(["None" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values],
                      dtype=object)
    if labels.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int64)


def group_normalise(weights: np.ndarray, groups) -> np.ndarray:
    """Scale ``weights`` so that the positive weights of every group have mean 1.

    Each group then holds the sampling mass it has under uniform sampling (its share of the rows), whatever the
    spread inside it; multiplied with another policy's per-group weights (the combination rule), the groups get
    exactly that policy's shares. Zeros stay zero.

    Example:
        >>> group_normalise(np.array([1.0, 3.0, 5.0]), ["a", "a", "b"]).tolist()
        [0.5, 1.5, 1.0]
    """
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    codes = _group_codes(groups)
    if codes.shape[0] != w.shape[0]:
        raise ValueError(f"got {codes.shape[0]} group labels for {w.shape[0]} weights")
    pos = w > 0
    total = np.bincount(codes[pos], weights=w[pos], minlength=codes.max(initial=-1) + 1)
    count = np.bincount(codes[pos], minlength=total.shape[0])
    mean = np.divide(total, count, out=np.ones_like(total), where=count > 0)
    out = np.zeros_like(w)
    out[pos] = w[pos] / mean[codes[pos]]
    return out


def cap_ratio(weights: np.ndarray, max_ratio: float, groups=None) -> np.ndarray:
    """Cap the ratio of the largest to the smallest positive weight at ``max_ratio``, raising the smallest.

    Without ``groups``: weights below ``max(w) / max_ratio`` are raised to it (as
    :func:`~sft_callbacks.engine.weights.combine_weights` does), then all are scaled to mean 1.

    With ``groups`` (one label per weight): the result also keeps mean 1 inside every group (see
    :func:`group_normalise`), so each group keeps its sampling mass exactly. It is the least flattening that
    meets both: ``v = max(w / c_g, m)``, where ``c_g`` makes group ``g``'s mean 1 and ``m``, the common floor, is
    the smallest for which ``max(v) / m <= max_ratio`` (found by bisection; ``max(v) / m`` falls as ``m``
    rises). Order is kept: a larger weight never ends smaller within a group. Zeros stay zero.

    Cost: O(n) without groups; with groups, one O(n log n) sort and O(n) per bisection step (at most 64) when the
    cap binds.

    Example:
        >>> cap_ratio(np.array([1.0, 10.0, 100.0]), 10.0).tolist()
        [0.25, 0.25, 2.5]
    """
    if max_ratio is None or not max_ratio >= 1:
        raise ValueError("max_ratio must be >= 1")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (np.isfinite(w).all() and (w >= 0).all()):
        raise ValueError("weights must be finite and >= 0")
    pos = w > 0
    if not pos.any():
        raise ValueError("at least one weight must be positive")
    out = np.zeros_like(w)
    v = w[pos]
    if groups is None:
        v = np.maximum(v, v.max() / max_ratio)
        out[pos] = v / v.mean()
        return out
    codes = _group_codes(groups)
    if codes.shape[0] != w.shape[0]:
        raise ValueError(f"got {codes.shape[0]} group labels for {w.shape[0]} weights")
    out[pos] = _group_cap(v, _group_codes(codes[pos]), float(max_ratio))
    return out


def _group_cap(v: np.ndarray, codes: np.ndarray, max_ratio: float) -> np.ndarray:
    """:func:`cap_ratio` with groups, on positive weights ``v`` and dense codes 0..G-1 (every group present).

    For a floor ``m`` <= 1, group ``g`` (``n_g`` weights, sorted descending, prefix sums ``S_k``) needs ``c`` with
    ``sum_i max(v_i / c, m) = n_g``. The left side is ``max_k (S_k / c + (n_g - k) m)``, so the solution is
    ``c = max_k S_k / (n_g - (n_g - k) m)``: vectorised over all groups with one sort.
    """
    order = np.lexsort((-v, codes))
    vs, cs = v[order], codes[order]
    counts = np.bincount(cs)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    k = np.arange(vs.shape[0]) - starts[cs] + 1.0
    csum = np.cumsum(vs)
    prefix = csum - (csum[starts] - vs[starts])[cs]
    n_g = counts[cs].astype(np.float64)
    group_max = vs[starts]
    group_min = vs[np.append(starts[1:], vs.shape[0]) - 1]

    def scale(m: float) -> np.ndarray:
        return np.maximum.reduceat(prefix / (n_g - (n_g - k) * m), starts)

    c = scale(0.0)  # the group means: plain normalisation
    lo = float((group_min / c).min())
    if float((group_max / c).max()) <= max_ratio * lo:
        return v / c[codes]
    hi = 1.0  # every weight at the floor 1: ratio 1
    for _ in range(64):
        mid = math.sqrt(lo * hi)
        if float((group_max / scale(mid)).max()) <= max_ratio * mid:
            hi = mid
        else:
            lo = mid
        if hi <= lo * (1 + 1e-12):
            break
    return np.maximum(v / scale(hi)[codes], hi)


def focal_loss_weights(loss: np.ndarray, gamma: float, seen: np.ndarray | None = None) -> np.ndarray:
    """Focal-style per-sample loss weights: ``(1 - exp(-loss)) ** gamma``, scaled to mean 1 over seen samples.

    The sequence-level analogue of the focal loss (Lin et al., 2017), whose per-token factor is
    ``(1 - p_t) ** gamma``: here ``p = exp(-loss)`` is the geometric mean of the probabilities the model gave the
    sample's trained tokens, so a sample the model already predicts well (``p`` near 1) is weighted down. Unlike
    the focal loss, the factor is one number per sequence, taken from the sample's latest *recorded* loss (a
    constant, not differentiated through). ``gamma = 0`` gives all ones. Samples not ``seen`` (or with a
    non-finite loss) get 1.

    Example:
        >>> focal_loss_weights(np.array([np.log(2.0), np.log(4.0)]), 1.0).tolist()
        [0.8, 1.2]
    """
    if not gamma >= 0:
        raise ValueError("gamma must be >= 0")
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    ok = np.isfinite(loss)
    if seen is not None:
        ok &= np.asarray(seen, dtype=bool)
    out = np.ones(loss.shape[0], dtype=np.float64)
    if not ok.any():
        return out
    w = (-np.expm1(-np.maximum(loss[ok], 0.0))) ** gamma
    mean = w.mean()
    if mean > 0:
        out[ok] = w / mean
    return out


def first_epoch_reference(epoch_sum: dict, epoch_count: dict, size: int) -> np.ndarray:
    """Per-sample reference for ``reducible="first_epoch"``: the sample's mean loss in the first epoch it was seen.

    That loss was measured before the model had trained on the sample (the first time) or shortly after, by a
    model trained on the other samples: a free stand-in for RHO-LOSS's irreducible-loss model. It is NaN (no
    reducible score yet) until the sample has also been seen in a later epoch, since before that the latest loss
    and the reference come from the same epoch.

    Args:
        epoch_sum, epoch_count: ``SampleStats.epoch_sum`` / ``epoch_count`` (per-epoch loss sums and counts).
        size: number of samples.

    Example:
        >>> ref = first_epoch_reference({0: np.array([4.0, 2.0]), 1: np.array([1.0, 0.0])},
        ...                             {0: np.array([2, 1]), 1: np.array([1, 0])}, 2)
        >>> ref.tolist()[0], bool(np.isnan(ref[1]))
        (2.0, True)
    """
    ref = np.full(size, np.nan, dtype=np.float64)
    first = np.full(size, -1, dtype=np.int64)
    last = np.full(size, -1, dtype=np.int64)
    for e in sorted(epoch_sum):
        count = np.asarray(epoch_count[e])
        seen = count > 0
        new = seen & (first < 0)
        ref[new] = np.asarray(epoch_sum[e], dtype=np.float64)[new] / count[new]
        first[new] = e
        last[seen] = e
    ref[last <= first] = np.nan
    return ref


def hard_fraction(weights: np.ndarray, scores: np.ndarray, scored: np.ndarray) -> float:
    """Share of the sampling mass on scored entries whose score is above the median of the scored entries' scores.

    ``sum(w[scored & (score > median)]) / sum(w)``: about 0.5 under uniform weights once everything is scored
    (less with ties or unscored entries), and towards 1 the more the weights favour the harder half.

    Example:
        >>> hard_fraction(np.array([1.0, 1.0, 2.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]), np.ones(4, bool))
        0.75
    """
    w = np.asarray(weights, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    scored = np.asarray(scored, dtype=bool)
    total = w.sum()
    if not scored.any() or total <= 0:
        return 0.0
    median = np.median(s[scored])
    return float(w[scored & (s > median)].sum() / total)


# -- the callback -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class HardExampleMiningConfig(CallbackConfig):
    """Options of :class:`HardExampleMiningCallback` (see its Args), checked when built.

    Example:
        >>> HardExampleMiningConfig(warmup=5).warmup
        5
    """

    mode: str = "rank"
    selection_pressure: float = 10.0
    alpha: float = 1.0
    warmup: float | int = 0.1
    max_weight_ratio: float | None = 20.0
    reducible: bool | str = False
    group_column: str | None = None
    loss_weighting: bool = False
    focal_gamma: float = 2.0
    update_every: int = 1

    def __post_init__(self):
        self.require(self.mode in MODES, f"mode must be one of {MODES}", self.mode)
        self.require(_finite_number(self.selection_pressure) and self.selection_pressure > 1,
                     "selection_pressure must be a finite number > 1", self.selection_pressure)
        self.require(_finite_number(self.alpha) and self.alpha > 0, "alpha must be a finite number > 0", self.alpha)
        warmup = self.warmup
        self.require(not isinstance(warmup, bool) and _finite_number(warmup),
                     "warmup must be a fraction of training in [0, 1) or an int number of steps", warmup)
        if isinstance(warmup, numbers.Integral):
            self.require(warmup >= 0, "warmup in steps must be >= 0", warmup)
            self._set("warmup", int(warmup))
        else:
            self.require(0 <= warmup < 1, "a float warmup is a fraction of training in [0, 1); pass an int for a "
                                          "number of steps", warmup)
        ratio = self.max_weight_ratio
        self.require(ratio is None or (_finite_number(ratio) and ratio >= 1),
                     "max_weight_ratio must be a finite number >= 1 or None", ratio)
        self.require(self.reducible is not True,
                     'reducible=True is ambiguous: pass reducible="first_epoch" or the name of a reference-loss column')
        if self.reducible is None:
            self._set("reducible", False)
        self.require(self.reducible is False or (isinstance(self.reducible, str) and bool(self.reducible)),
                     'reducible must be False, "first_epoch" or a column name', self.reducible)
        self.require(self.group_column is None or (isinstance(self.group_column, str) and bool(self.group_column)),
                     "group_column must be a column name or None", self.group_column)
        self.require(isinstance(self.loss_weighting, bool), "loss_weighting must be True or False", self.loss_weighting)
        self.require(_finite_number(self.focal_gamma) and self.focal_gamma >= 0,
                     "focal_gamma must be a finite number >= 0", self.focal_gamma)
        every = self.update_every
        self.require(not isinstance(every, bool) and isinstance(every, numbers.Integral) and every >= 1,
                     "update_every must be an int >= 1", every)
        self._set("selection_pressure", float(self.selection_pressure))
        self._set("alpha", float(self.alpha))
        self._set("max_weight_ratio", None if ratio is None else float(ratio))
        self._set("focal_gamma", float(self.focal_gamma))
        self._set("update_every", int(every))


class HardExampleMiningCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that draws the training samples the model currently finds hardest more often.

    At each sync point after a warm-up, every sample's hardness is read from its latest recorded loss (from the
    forwards the Trainer already ran; no extra pass), turned into a sampling weight and handed to the shared
    adaptive sampler. Samples not seen yet are scored at the mean. Optionally it also reweights each sample's
    *loss*, focal style.

    - ``mode="rank"`` (default): online batch selection (Loshchilov & Hutter, 2015). Weight falls geometrically
      with the rank of the hardness, the hardest ``selection_pressure`` (their ``s_e``) times as likely as the
      easiest. Insensitive to the scale of the loss and to outliers.
    - ``mode="power"``: weight ``score ** alpha``.
    - ``reducible``: score by the *reducible* loss ``loss - reference`` (RHO-LOSS, Mindermann et al., 2022:
      ``loss`` is their training loss ``L[y|x; D_t]``, the reference their irreducible loss
      ``L[y|x; D_ho]``), clipped at a small floor, so samples that stay hard because they are noisy or
      unlearnable are not chased. ``reducible="<column>"`` reads the reference per row from a column of your
      dataset (e.g. the loss of a small model trained on held-out data: RHO-LOSS proper);
      ``reducible="first_epoch"`` uses the sample's mean loss in the first epoch it was seen, a free but rough
      proxy that scores a sample only once it has been seen in a later epoch (needs ``num_train_epochs >= 2``;
      weights stay uniform during the first epoch).
    - ``max_weight_ratio`` caps the largest/smallest weight, so no sample dominates.
    - ``group_column``: weights are normalised to mean 1 inside each group, so this policy only reweights
      samples *within* their group and group shares set by another policy (a mixture or balance policy) are
      kept exactly; the cap then holds jointly (see :func:`cap_ratio`).
    - ``loss_weighting=True``: each sample's loss is also multiplied by ``(1 - exp(-loss)) ** focal_gamma``
      (normalised to mean 1 over seen samples; :func:`focal_loss_weights`), the sequence-level analogue of the
      focal loss (Lin et al., 2017; ``focal_gamma`` is their ``gamma``). Applied through the tracker's hook, so the
      Trainer's loss stays exactly normalised by the optimizer step's token count under gradient accumulation
      and across processes. It uses the raw latest loss, also in ``reducible`` mode.

    Per-step cost: none (nothing runs in the training step). At each sync point where it acts: O(n log n) for
    ``mode="rank"`` (one sort), O(n) for ``mode="power"``, plus the sampler's O(n) update; with
    ``group_column`` and a binding cap, O(n) per bisection step (at most 64). Memory: a few float64 arrays of n.

    Args:
        mode (`str`, defaults to ``"rank"``): ``"rank"`` (rank-based selection pressure) or ``"power"``
            (``score ** alpha``).
        selection_pressure (`float`, defaults to 10.0): ``s_e`` of Loshchilov & Hutter, > 1: weight ratio of the
            hardest to the easiest sample in ``"rank"`` mode.
        alpha (`float`, defaults to 1.0): exponent of ``"power"`` mode, > 0.
        warmup (`float` or `int`, defaults to 0.1): the policy does nothing (uniform sampling, no loss weights)
            until this fraction of training is done (a float in [0, 1)), or this many optimizer steps (an int).
        max_weight_ratio (`float` or `None`, defaults to 20.0): cap on the largest/smallest of this policy's
            weights, >= 1. ``None`` leaves only the session's global cap
            (``TrainingDynamicsCallback(max_weight_ratio=1000)``).
        reducible (`bool` or `str`, defaults to ``False``): ``False`` scores by the latest loss;
            ``"first_epoch"`` or the name of a numeric column of per-row reference losses scores by
            ``loss - reference`` (at least 1e-3). Rows whose reference is missing (None/NaN) are scored at the mean.
        group_column (`str`, *optional*): column of group labels; weights are normalised to mean 1 within each
            group (hard-example mining reweights *inside* groups).
        loss_weighting (`bool`, defaults to ``False``): also weight each sample's loss focal style.
        focal_gamma (`float`, defaults to 2.0): the focal ``gamma`` for ``loss_weighting``, >= 0.
        update_every (`int`, defaults to 1): act at every sync point after the warm-up (1), or at the first and
            then every k-th; in between the previous weights stay in force.

    Metrics (logged under ``sft/hard/`` at each logging step; the first two describe this policy's own
    per-row weights, before other policies and the session's cap are applied):

    - ``sft/hard/fraction``: ``sum(w[r]) / sum(w)`` over rows ``r`` that are scored and whose score is strictly
      above the median of the scored rows' scores (:func:`hard_fraction`; a pack counts as one row with its
      samples' mean score). About 0.5 under uniform sampling, towards 1 as sampling concentrates on the harder half.
    - ``sft/hard/max_min_ratio``: largest/smallest positive weight.
    - ``sft/hard/active``: 1 once the warm-up has passed, else 0.
    - ``sft/hard/seen_fraction``: share of samples seen at least once; ``sft/hard/scored_fraction``: share with a
      hardness score (differs from the former only in ``reducible`` mode).

    Example:
        >>> from trl import SFTConfig, SFTTrainer  # doctest: +SKIP
        >>> from sft_callbacks import TrainingDynamicsCallback  # doctest: +SKIP
        >>> from sft_callbacks.policies.hard_examples import HardExampleMiningCallback  # doctest: +SKIP
        >>> hard = HardExampleMiningCallback(selection_pressure=10, warmup=0.1, group_column="domain")  # doctest: +SKIP
        >>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=train,
        ...                      callbacks=[TrainingDynamicsCallback(), hard])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP

    References:
        Loshchilov & Hutter, "Online Batch Selection for Faster Training of Neural Networks", ICLR workshop 2016
        (arXiv:1511.06343, 2015). Mindermann et al., "Prioritized Training on Points that are Learnable, Worth
        Learning, and Not Yet Learnt" (RHO-LOSS), ICML 2022. Lin et al., "Focal Loss for Dense Object
        Detection", ICCV 2017.
    """

    config_class = HardExampleMiningConfig

    def __init__(self, config: HardExampleMiningConfig | None = None, /, **options):
        super().__init__(config, **options)
        self.needs_loss_weighting = self.config.loss_weighting  # per instance: the session asks only those that set it
        # Internal state (sync points counted after the warm-up: checkpointed, so a resume acts at the same ones).
        self.sync_points = 0
        self.updates = 0
        self._decision: tuple | None = None
        self._metrics: dict[str, float] = {}
        self._cache: dict = {}

    # -- contract ------------------------------------------------------------------------------------------------
    def required_columns(self) -> list[str]:
        cols = []
        if self.config.reducible and self.config.reducible != "first_epoch":
            cols.append(self.config.reducible)
        if self.config.group_column is not None and self.config.group_column not in cols:
            cols.append(self.config.group_column)
        return cols

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if isinstance(self.config.warmup, int) and state.max_steps and self.config.warmup >= state.max_steps:
            logger.warning("HardExampleMiningCallback: warmup=%d steps >= max_steps=%d, so it never acts",
                           self.config.warmup, state.max_steps)
        if self.config.reducible == "first_epoch" and 0 < state.max_steps <= self.session.steps_per_epoch:
            logger.warning('HardExampleMiningCallback: reducible="first_epoch" scores samples from their second epoch '
                           "on, but this run trains for one epoch or less, so it never acts")

    def warmed_up(self, ctx) -> bool:
        """Whether the warm-up is over at ``ctx`` (``ctx.step >= warmup`` steps, or ``ctx.progress >= warmup``)."""
        if isinstance(self.config.warmup, int):
            return ctx.step >= self.config.warmup
        return ctx.progress >= self.config.warmup

    def _acts(self, ctx) -> bool:
        """Decide once per sync point (the session hands the loss-weight and sampling-weight calls the same ctx)."""
        if self._decision is not None and self._decision[0] is ctx:
            return self._decision[1]
        warm = self.warmed_up(ctx)
        act = False
        if warm:
            self.sync_points += 1
            act = (self.sync_points - 1) % self.config.update_every == 0
        self._decision = (ctx, act)
        stats = ctx.stats
        self._metrics["sft/hard/active"] = float(warm)
        if stats is not None and stats.size:
            self._metrics["sft/hard/seen_fraction"] = float((stats.times_seen > 0).mean())
        return act

    def compute_weights(self, ctx, reason: str) -> np.ndarray | None:
        if not self._acts(ctx):
            return None
        scores, scored = self.scores(ctx)
        if not scored.any():
            return None
        # Validation-paced difficulty (ValidationGuidedResamplingCallback(paced_difficulty=True)) sharpens selection.
        boost = float(getattr(ctx, "signals", {}).get("hard_boost", 0.0))
        if self.config.mode == "rank":
            base = rank_weights(scores, self.config.selection_pressure ** (1.0 + boost))
        else:
            base = power_weights(scores, self.config.alpha * (1.0 + boost))
        rows = ctx.rows_from_samples(base)
        groups = self._row_groups(ctx) if self.config.group_column is not None else None
        if self.config.max_weight_ratio is not None:
            weights = cap_ratio(rows, self.config.max_weight_ratio, groups)
        elif groups is not None:
            weights = group_normalise(rows, groups)
        else:
            weights = rows / rows[rows > 0].mean()
        self.updates += 1
        pos = weights[weights > 0]
        row_scores = ctx.rows_from_samples(scores)
        row_scored = ctx.rows_from_samples(scored.astype(np.float64)) > 0
        self._metrics.update({
            "sft/hard/fraction": hard_fraction(weights, row_scores, row_scored),
            "sft/hard/max_min_ratio": float(pos.max() / pos.min()),
            "sft/hard/scored_fraction": float(scored.mean()),
        })
        return weights

    def policy_loss_weights(self, ctx, reason: str) -> np.ndarray | None:
        if not self.config.loss_weighting or not self._acts(ctx):
            return None
        stats = ctx.stats
        seen = stats.times_seen > 0
        if not seen.any():
            return None
        return focal_loss_weights(stats.loss_last, self.config.focal_gamma, seen)

    def policy_metrics(self) -> dict[str, float]:
        return dict(self._metrics)

    def policy_state(self) -> dict:
        return {"sync_points": self.sync_points, "updates": self.updates, "metrics": dict(self._metrics)}

    def load_policy_state(self, state: dict) -> None:
        self.sync_points = int(state.get("sync_points", 0))
        self.updates = int(state.get("updates", 0))
        self._metrics = {k: float(v) for k, v in (state.get("metrics") or {}).items()}
        self._decision = None

    # -- statistics -> scores --------------------------------------------------------------------------------------
    def scores(self, ctx) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, scored)`` per sample at ``ctx``: :func:`hardness_scores` and :func:`scored_mask`."""
        stats = ctx.stats
        reference = None
        if self.config.reducible == "first_epoch":
            reference = first_epoch_reference(stats.epoch_sum, stats.epoch_count, stats.size)
        elif self.config.reducible:
            reference = self._sample_reference(ctx)
        return (
            hardness_scores(stats.loss_last, reference, stats.times_seen),
            scored_mask(stats.loss_last, reference, stats.times_seen),
        )

    def _cached(self, ctx, name: str, build):
        columns = ctx.columns
        key = (name, id(columns), getattr(columns, "_fingerprint", None), id(ctx.index), ctx.num_rows)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != name}
            self._cache[key] = build()
        return self._cache[key]

    def _sample_reference(self, ctx) -> np.ndarray:
        """The reference column per sample (mean over the rows holding it; NaN where a value is missing)."""

        def build():
            values = ctx.column(self.config.reducible)
            try:
                per_row = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ValueError(
                    f"HardExampleMiningCallback(reducible={self.config.reducible!r}) needs a numeric column of reference "
                    f"losses (one number per row, None for unknown): {err}"
                ) from None
            index = ctx.index
            n = len(index.keys)
            total = np.bincount(index.seq_uid, weights=per_row[index.seq_row], minlength=n)
            count = np.bincount(index.seq_uid, minlength=n)
            return np.divide(total, count, out=np.full(n, np.nan), where=count > 0)

        return self._cached(ctx, "reference", build)

    def _row_groups(self, ctx) -> np.ndarray:
        return self._cached(ctx, "groups", lambda: _group_codes(ctx.column(self.config.group_column)))


def _finite_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))
