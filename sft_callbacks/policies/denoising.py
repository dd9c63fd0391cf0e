"""A run that cleans itself: once the noise score can be trusted, stop drawing (or down-weight) the rows most
likely to carry a wrong answer, and keep training on the rest.

Pure functions (:func:`withheld_rows`, and :func:`~.noise.noise_rate_decision` shared with the data map) and the
thin :class:`DenoisingCallback`. The score is the data map's (:mod:`.noise`): each sample's confidence over the
window of trust, read from the tracker's visit log, so acting costs no forward pass. Method card:
``docs/methods/denoising.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig
from ..engine.session import PolicyContext
from ..engine.tracking import KeyLookup
from .groups import group_ids, uid_groups
from .noise import (
    DEFAULT_NOISE_SCORE,
    NOISE_SCORES,
    flag_by_score,
    history_scores,
    noise_rate_decision,
    window_of_trust,
)

logger = logging.getLogger(__name__)

ACTIONS = ("drop", "downweight")
#: ``"withhold"``: rows scored once the score can be trusted; ``"small_loss"``: each step's loss skips the
#: sequences whose loss is in the top ``rate`` of their group (Co-teaching's rule, one network).
METHODS = ("withhold", "small_loss")
#: The columns :class:`DenoisingCallback` adds to each training row (``to_dataset``, :func:`~sft_callbacks.curate`).
DENOISING_COLUMNS = ("withheld", "withheld_reason")


def learnt_fraction(uid: np.ndarray, loss: np.ndarray, correct: np.ndarray, n: int) -> float:
    """Whole-answer accuracy of the clean-looking half of the samples (mean confidence ``exp(-loss)`` at or above
    the median) over the visits given: whether the model has learnt the task yet.

    Example:
        >>> learnt_fraction(np.array([0, 1, 2, 3]), np.array([0.1, 0.2, 2.0, 3.0]), np.array([1, 1, 0, 0], bool), 4)
        1.0
    """
    uid = np.asarray(uid, dtype=np.int64)
    count = np.bincount(uid, minlength=n)
    if not count.any():
        return 0.0
    conf = np.bincount(uid, weights=np.exp(-np.asarray(loss, dtype=np.float64)), minlength=n)
    hits = np.bincount(uid, weights=np.asarray(correct, dtype=np.float64), minlength=n)
    seen = count > 0
    mean_conf = conf[seen] / count[seen]
    clean = mean_conf >= np.median(mean_conf)
    return float(hits[seen][clean].sum() / count[seen][clean].sum())


def trusted_at_epoch_end(visits: dict, n: int, start: int, first_step: int) -> bool:
    """Whether the noise score can be trusted at the end of an epoch whose visits have steps ``>= first_step``: the
    window of trust opened before the epoch began, ``start < first_step`` (the whole epoch, a visit of every row,
    lies in it, and so does the end of the epoch before: never at the end of the first epoch, whose visits are each
    row's first), and in that epoch the model answered the clean-looking half of the rows right more often than not
    (it has learnt the task: before that the window's opening is read from noise).

    Example:
        >>> steps = np.repeat([1, 2, 3, 4], 4); uid = np.tile(np.arange(4), 4)
        >>> visits = {"uid": uid, "step": steps, "loss": np.full(16, 0.1), "correct": np.ones(16, bool)}
        >>> trusted_at_epoch_end(visits, 4, start=2, first_step=3), trusted_at_epoch_end(visits, 4, 3, 3)
        (True, False)
    """
    uid, step = np.asarray(visits["uid"], dtype=np.int64), np.asarray(visits["step"], dtype=np.int64)
    epoch = step >= first_step
    if not epoch.any() or start >= first_step:
        return False
    return learnt_fraction(uid[epoch], np.asarray(visits["loss"])[epoch], np.asarray(visits["correct"])[epoch],
                           n) >= 0.5


def ramped_rate(epoch: float, rate: float, ramp_epochs: float) -> float:
    """The share excluded at this point of the run: ``rate`` reached linearly over the first ``ramp_epochs``
    (Co-teaching's R(T) = 1 - min(T / T_k, 1) * tau kept; before the model has learnt anything every loss is high).

    Example:
        >>> ramped_rate(0.5, 0.2, 1.0), ramped_rate(3.0, 0.2, 1.0)
        (0.1, 0.2)
    """
    return float(rate) * min(1.0, max(0.0, float(epoch)) / float(ramp_epochs))


def small_loss_thresholds(loss: np.ndarray, groups: np.ndarray, num_groups: int, rate: float) -> np.ndarray:
    """Per group, the loss above which a sequence is left out: the ``1 - rate`` quantile of the group's latest
    per-sample losses (NaN, never seen, ignored); ``inf`` where ``rate`` is 0 or the group has no loss yet.

    Example:
        >>> small_loss_thresholds(np.array([0.1, 0.2, 0.3, 2.0, np.nan]), np.array([0, 0, 0, 0, 1]), 2, 0.25)
        array([0.3, inf])
    """
    loss = np.asarray(loss, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.full(num_groups, np.inf)
    if rate <= 0:
        return out
    for g in range(num_groups):
        x = loss[(groups == g) & np.isfinite(loss)]
        if x.size:
            # The k-th largest stays in: a share `rate` of the group lies strictly above the threshold.
            k = int(np.floor(rate * x.size))
            out[g] = np.partition(x, x.size - 1 - k)[x.size - 1 - k] if k else np.inf
    return out


def withheld_rows(score: np.ndarray, groups: np.ndarray, rates: dict) -> np.ndarray:
    """The ``round(rate * scored rows)`` highest-scoring rows of each group (``rates[group]``); unscored (NaN)
    rows are never withheld.

    Example:
        >>> withheld_rows(np.array([0.9, 0.1, 0.8, 0.7]), np.array([0, 0, 1, 1]), {0: 0.5, 1: 0.0}).tolist()
        [True, False, False, False]
    """
    score = np.asarray(score, dtype=np.float64)
    groups = np.asarray(groups)
    out = np.zeros(score.shape, dtype=bool)
    for g, rate in rates.items():
        at = groups == g
        if rate > 0 and at.any():
            out[at] = flag_by_score(score[at], rate)
    return out


@dataclass(frozen=True, kw_only=True)
class DenoisingConfig(CallbackConfig):
    """Options of :class:`DenoisingCallback` (see its Args), checked when built.

    Example:
        >>> DenoisingConfig(group_column="domain").action
        'drop'
    """

    group_column: str | None = None
    noise_rate: float | None = None
    fallback_rate: float = 0.1
    min_precision: float = 0.7
    act_after_epochs: int | None = None
    action: str = "drop"
    downweight: float = 0.1
    readmit: bool = False
    noise_score: str = DEFAULT_NOISE_SCORE
    method: str = "withhold"
    ramp_epochs: float = 1.0

    def __post_init__(self):
        self.require(self.method in METHODS, f"method must be one of {list(METHODS)}", self.method)
        self.require(self.ramp_epochs > 0, "ramp_epochs must be > 0", self.ramp_epochs)
        self.require(self.group_column is None or (isinstance(self.group_column, str) and bool(self.group_column)),
                     "group_column must be the name of a column of the training dataset, or None", self.group_column)
        self.require(self.noise_rate is None or 0 < self.noise_rate < 1,
                     "noise_rate must be in (0, 1), or None to estimate it per group", self.noise_rate)
        self.require(0 <= self.fallback_rate < 1, "fallback_rate must be in [0, 1)", self.fallback_rate)
        self.require(0 <= self.min_precision <= 1, "min_precision must be in [0, 1]", self.min_precision)
        self.require(self.act_after_epochs is None or (int(self.act_after_epochs) == self.act_after_epochs
                                                       and self.act_after_epochs >= 1),
                     "act_after_epochs must be an integer >= 1, or None to act once the score can be trusted",
                     self.act_after_epochs)
        self.require(self.action in ACTIONS, f"action must be one of {list(ACTIONS)}", self.action)
        self.require(0 <= self.downweight < 1, "downweight must be in [0, 1)", self.downweight)
        self.require(not self.readmit or self.action == "downweight",
                     "readmit needs action='downweight': a dropped row is never drawn again, so its score cannot "
                     "recover")
        self.require(self.noise_score in NOISE_SCORES, f"noise_score must be one of {sorted(NOISE_SCORES)}",
                     self.noise_score)


class DenoisingCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that stops training on the answers most likely wrong, mid-run, and
    keeps training on the rest: one run instead of a cleaning pipeline's three.

    Until it acts the run is the plain run, index for index (the sampler draws like the Trainer shuffles). It
    acts at the first epoch end at which the noise score can be trusted: the window of trust (the span of the run
    after the model has learnt the task and before it memorises the wrong answers, read from the run itself,
    :func:`~sft_callbacks.policies.noise.window_of_trust`) opened before the epoch just ended began
    (:func:`trusted_at_epoch_end`), so never at the end of the first epoch; or at the end of epoch
    ``act_after_epochs``. Then, per group (``group_column``):

    * the share to withhold is ``noise_rate`` if you give it, else the share a two-component mixture of the
      scores estimates, when that estimate can be trusted (at most 0.5, and the rows it flags wrong answers at
      least ``min_precision`` of the time by its own posterior); else a conservative ``fallback_rate`` of the
      most suspicious rows (:func:`noise_rate_decision`; the log says why);
    * that share of the highest-scoring rows is withheld: never drawn again (``action="drop"``) or drawn
      ``downweight`` times as often (``"downweight"``; with ``readmit=True`` re-scored at every later epoch end,
      so a row whose score recovers is drawn again).

    What it did is logged (``sft/denoise/withheld_fraction``, per group ``sft/denoise/rate/<group>``,
    ``sft/denoise/estimated_rate/<group>``, ``sft/denoise/fallback/<group>``) and once at INFO with the reasons;
    :attr:`report` holds it, the checkpoint keeps it, and the curated export carries each row's ``withheld`` flag
    and ``withheld_reason`` (``curate`` drops withheld rows by default; the card says how many and why).

    Per-step cost: none. At each epoch end until it acts: the window and the scores over the tracker's visit log,
    O(visits). Memory: the visit log, 15 bytes per visit.

    Args:
        group_column (`str`, *optional*): estimate the rate and withhold within each group of this column.
        noise_rate (`float`, *optional*): the share of wrong answers, if you know it (every group).
        fallback_rate (`float`, defaults to 0.1): the most a group withholds when its estimate cannot be trusted.
        min_precision (`float`, defaults to 0.7): the estimate's expected precision below which it is not trusted.
        act_after_epochs (`int`, *optional*): act at the end of this epoch instead of when the score is trusted.
        action (`str`, defaults to `"drop"`): `"drop"` or `"downweight"`.
        downweight (`float`, defaults to 0.1): sampling weight of a withheld row relative to 1 (`"downweight"`).
        readmit (`bool`, defaults to `False`): re-score at every epoch end after acting (`"downweight"` only).
        noise_score (`str`, defaults to `"confidence_after_burn_in"`): the ranking, one of ``NOISE_SCORES``.
        method (`str`, defaults to `"withhold"`): `"withhold"` (above) or `"small_loss"`: withhold nothing, and
            leave out of every step's loss the sequences whose loss is in the top ``noise_rate`` (else
            ``fallback_rate``) of their group's latest losses (Co-teaching's rule with one network; metrics
            ``sft/denoise/rate``, ``sft/denoise/left_out_fraction``, ``sft/denoise/threshold/<group>``).
        ramp_epochs (`float`, defaults to 1.0): `"small_loss"`: the share left out rises linearly from 0 over
            these epochs.

    Example:
        >>> denoise = DenoisingCallback(group_column="domain")  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., args=SFTConfig(num_train_epochs=3, ...), callbacks=[denoise])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> denoise.report["groups"]  # doctest: +SKIP
    """

    config_class = DenoisingConfig

    def __init__(self, config: DenoisingConfig | None = None, /, **options):
        super().__init__(config, **options)
        #: What the callback did: the step it acted at, the window it read, and per group the rate, its source
        #: (given, estimated, fallback and why) and the rows withheld.
        self.report: dict = {}
        self.withheld: np.ndarray | None = None  # per sample id
        self.acted_step: int | None = None
        self._group_names: list[str] = []
        self._uid_group: np.ndarray | None = None
        self._given = False
        self.thresholds: np.ndarray | None = None  # small_loss: per group, the loss above which a sequence is left out
        self.rate_now = 0.0
        self._group_lookup: KeyLookup | None = None
        self._thresholds_t: torch.Tensor | None = None
        self._thresholds_key: tuple | None = None
        self._counts: dict[str, torch.Tensor | float] = {"left_out": 0.0, "sequences": 0.0}

    def required_columns(self) -> list[str]:
        return [self.config.group_column] if self.config.group_column else []

    def on_train_begin(self, args, state, control, **kwargs):
        self._uid_group = None
        self._given = False
        self._epoch_start = int(state.global_step)
        super().on_train_begin(args, state, control, **kwargs)
        if self.config.method == "small_loss":
            self._thresholds_key = None
            index = self.session.tracker.index
            groups = self._groups(index, len(index.keys))
            self._group_lookup = KeyLookup(index.keys, groups, missing=-1)
            self._set_thresholds(state)
            self.session.tracker.add_batch_weighting(self._small_loss_weights)

    def on_step_begin(self, args, state, control, **kwargs):
        super().on_step_begin(args, state, control, **kwargs)
        if self.config.method == "small_loss":
            self._set_thresholds(state)

    def on_train_end(self, args, state, control, **kwargs):
        if self._session is not None:
            self.session.tracker.remove_batch_weighting(self._small_loss_weights)
        super().on_train_end(args, state, control, **kwargs)

    # -- the small-loss rule ---------------------------------------------------------------------------
    def _rate(self) -> float:
        return self.config.noise_rate if self.config.noise_rate is not None else self.config.fallback_rate

    def _set_thresholds(self, state) -> None:
        """Each group's threshold from the latest losses (the tracker's, merged across processes at its last
        sync, so every process leaves out the same sequences)."""
        tracker = self.session.tracker
        self.rate_now = ramped_rate(state.epoch or 0.0, self._rate(), self.config.ramp_epochs)
        key = (tracker.observed, self.rate_now)  # the losses change only when the tracker folds in new visits
        if key == self._thresholds_key:
            return
        self._thresholds_key = key
        groups = self._groups(tracker.index, tracker.stats.size)
        self.thresholds = small_loss_thresholds(tracker.stats.loss_last, groups, len(self._group_names),
                                                self.rate_now)
        # One more entry for rows outside the training set (group -1): never left out.
        self._thresholds_t = torch.from_numpy(np.append(self.thresholds, np.inf).astype(np.float32))

    def _small_loss_weights(self, keys: torch.Tensor, floats: torch.Tensor) -> torch.Tensor | None:
        if self._thresholds_t is None or not np.isfinite(self.thresholds).any():
            return None
        group = self._group_lookup(keys)
        limit = self._thresholds_t.to(keys.device)[torch.where(group < 0, len(self.thresholds), group)]
        loss = floats[0] / floats[1].clamp(min=1.0)
        keep = (loss <= limit) | ~torch.isfinite(loss)
        for name, value in (("left_out", (~keep).sum()), ("sequences", torch.tensor(keep.numel()))):
            value = value.to(keys.device, torch.float32)  # summed on the device, read when the Trainer logs
            self._counts[name] = value if not torch.is_tensor(self._counts[name]) else self._counts[name] + value
        return keep.float()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch_start = int(state.global_step)  # the epoch about to run begins after this step
        super().on_epoch_begin(args, state, control, **kwargs)

    def _groups(self, ctx_index, num_uids: int) -> np.ndarray:
        if self._uid_group is None or len(self._uid_group) != num_uids:
            if self.config.group_column is None:
                self._group_names, self._uid_group = ["all"], np.zeros(num_uids, dtype=np.int64)
            else:
                ids, self._group_names = group_ids(self.session.columns[self.config.group_column])
                self._uid_group = uid_groups(ids, ctx_index.seq_uid, ctx_index.seq_row, num_uids)
        return self._uid_group

    # -- policy -----------------------------------------------------------------------------------------
    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        if self.config.method == "small_loss":
            return None  # the stream is the plain run's: the rule acts inside each step's loss
        if self.withheld is not None and not self._given:  # restored from a checkpoint: hand the weights back
            self._given = True
            return self._row_weights(ctx)
        if reason != "epoch" or (self.withheld is not None and not self.config.readmit):
            return None
        epochs_done = ctx.epoch + 1
        tracker = self.session.tracker
        visits, n = tracker.visits.arrays(), tracker.stats.size
        start, end = window_of_trust(visits, n, rate=self.config.noise_rate or 0.2)
        if self.withheld is None and not self._ready(visits, n, start, epochs_done):
            return None
        scores = history_scores(visits, n, start=start, end=end)[self.config.noise_score]
        self._act(ctx, scores, (start, end))
        self._given = True
        return self._row_weights(ctx)

    def _ready(self, visits: dict, n: int, start: int, epochs_done: int) -> bool:
        """Whether to act at this epoch end: the given epoch is done, or the score can be trusted
        (:func:`trusted_at_epoch_end`; the tracker records a visit at the step it completes, ``global_step + 1``,
        so the epoch's first visits carry the step after the one it began at)."""
        if self.config.act_after_epochs is not None:
            return epochs_done >= self.config.act_after_epochs
        return trusted_at_epoch_end(visits, n, start, self._epoch_start + 1)

    def _act(self, ctx: PolicyContext, scores: np.ndarray, window: tuple[int, int | None]) -> None:
        groups = self._groups(ctx.index, len(scores))
        rates, report = {}, {}
        for g, name in enumerate(self._group_names):
            at = groups == g
            decision = noise_rate_decision(scores[at], given=self.config.noise_rate,
                                           fallback_rate=self.config.fallback_rate,
                                           min_precision=self.config.min_precision)
            rates[g] = decision["rate"]
            report[name] = decision
        withheld = withheld_rows(scores, groups, rates)
        for g, name in enumerate(self._group_names):
            report[name]["withheld"] = int(withheld[groups == g].sum())
        first = self.withheld is None
        self.withheld, self.acted_step = withheld, int(ctx.step) if first else self.acted_step
        self.report = {"step": self.acted_step, "window": [int(window[0]), None if window[1] is None else int(window[1])],
                       "withheld": int(withheld.sum()), "groups": report, "action": self.config.action}
        for name, d in report.items():
            why = (f"estimated {d['estimated']:.2f} untrusted ({d['reason']}), fell back to {d['rate']:.2f}"
                   if d["source"] == "fallback" else f"{d['source']} rate {d['rate']:.2f}")
            logger.info("DenoisingCallback: step %d: group %r: %s %d rows (%s)", ctx.step, name,
                        "withholds" if self.config.action == "drop" else "down-weights", d["withheld"], why)

    def _row_weights(self, ctx: PolicyContext) -> np.ndarray:
        value = 0.0 if self.config.action == "drop" else self.config.downweight
        per_sample = np.where(self.withheld, value, 1.0)
        rows = ctx.rows_from_samples(per_sample)
        if not (rows > 0).any():
            raise ValueError("DenoisingCallback would withhold every row; lower noise_rate or fallback_rate")
        return rows

    def policy_metrics(self) -> dict[str, float]:
        if self.config.method == "small_loss":
            seen = float(self._counts["sequences"])
            out = {"sft/denoise/rate": self.rate_now}
            if seen:
                out["sft/denoise/left_out_fraction"] = float(self._counts["left_out"]) / seen
            self._counts = {"left_out": 0.0, "sequences": 0.0}
            for g, name in enumerate(self._group_names):
                if self.thresholds is not None and np.isfinite(self.thresholds[g]):
                    out[f"sft/denoise/threshold/{name}"] = float(self.thresholds[g])
            return out
        if self.withheld is None:
            return {}
        out = {"sft/denoise/withheld_fraction": float(self.withheld.mean()) if self.withheld.size else 0.0}
        for name, d in self.report.get("groups", {}).items():
            out[f"sft/denoise/rate/{name}"] = float(d["rate"])
            out[f"sft/denoise/estimated_rate/{name}"] = float(d["estimated"])
            out[f"sft/denoise/fallback/{name}"] = float(d["source"] == "fallback")
        return out

    # -- what a user sees -------------------------------------------------------------------------------
    def row_annotations(self) -> pd.DataFrame | None:
        """``withheld`` (bool) and ``withheld_reason`` for each row of your training dataset (empty where not
        withheld, or where TRL dropped the row); ``None`` with packing (a row is then a pack)."""
        index = self.session.tracker.index
        if index is None or index.packed:
            return None
        user_uid = index.user_uid()
        kept = user_uid >= 0
        withheld = np.zeros(len(user_uid), dtype=bool)
        per_sample = self.withheld
        why = f"likely a wrong answer: withheld from step {self.acted_step} on ({self.config.action})"
        if self.config.method == "small_loss" and self.thresholds is not None:
            tracker = self.session.tracker
            groups = self._groups(index, tracker.stats.size)
            with np.errstate(invalid="ignore"):
                per_sample = tracker.stats.loss_last > self.thresholds[groups]
            why = (f"likely a wrong answer: its latest loss was in its group's top {self.rate_now:.0%}, left out of "
                   "the loss (small_loss)")
        if per_sample is not None:
            withheld[kept] = np.asarray(per_sample)[user_uid[kept]]
        frame = pd.DataFrame({"withheld": withheld, "withheld_reason": np.where(withheld, why, "")})
        frame.index.name = "row"
        return frame

    # -- checkpointing ------------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        if self.withheld is None:
            return {}
        return {"withheld": np.flatnonzero(self.withheld).tolist(), "size": int(len(self.withheld)),
                "acted_step": self.acted_step, "report": self.report}

    def load_policy_state(self, state: dict) -> None:
        if not state or "withheld" not in state:
            return
        withheld = np.zeros(int(state["size"]), dtype=bool)
        withheld[np.asarray(state["withheld"], dtype=np.int64)] = True
        self.withheld, self.acted_step, self.report = withheld, state.get("acted_step"), state.get("report", {})
        self._given = False
