"""The same model for less compute: skip rows the model has already learnt, without biasing the objective
(InfoBatch, Qin et al., ICLR 2024).

Pure functions (:func:`infobatch_prune`, :func:`importance_weights`) and the thin :class:`InfoBatchCallback`. The
per-row losses are the tracker's (each row's latest training loss, from the forward the Trainer already makes);
the skipping goes through the sampler's weights and the rescaling through the package's per-sample loss weights.
Method card: ``docs/methods/pruning.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig
from ..engine.session import PolicyContext
from .groups import group_ids, uid_groups

METHODS = ("infobatch", "importance")
THRESHOLDS = ("mean", "group_mean")


def infobatch_prune(loss: np.ndarray, prune_ratio: float, rng: np.random.Generator,
                    groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """InfoBatch's rule: among the rows whose latest loss is below the mean (of their group with ``groups``),
    skip a random ``prune_ratio`` of them this epoch and scale the loss of the others by ``1 / (1 - prune_ratio)``
    (exactly: the learnt rows over the kept ones, so the rounding of the count adds no bias), so the expected
    gradient over the epoch is the full data's. Rows without a loss yet (NaN) are kept at weight 1.

    Returns ``(keep, loss_weight)``: whether each row is drawn this epoch, and its loss weight.

    Example:
        >>> keep, w = infobatch_prune(np.array([0.1, 0.2, 3.0, 4.0]), 0.5, np.random.default_rng(0))
        >>> int(keep[:2].sum()), keep[2:].tolist(), sorted(set(w[:2][keep[:2]].tolist())), w[2:].tolist()
        (1, [True, True], [2.0], [1.0, 1.0])
    """
    if not 0 <= prune_ratio < 1:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    loss = np.asarray(loss, dtype=np.float64)
    groups = np.zeros(len(loss), dtype=np.int64) if groups is None else np.asarray(groups)
    keep = np.ones(len(loss), dtype=bool)
    weight = np.ones(len(loss), dtype=np.float64)
    for g in np.unique(groups):
        at = np.flatnonzero((groups == g) & np.isfinite(loss))
        if at.size == 0:
            continue
        learnt = at[loss[at] < loss[at].mean()]
        skipped = rng.choice(learnt, size=int(prune_ratio * learnt.size), replace=False) if learnt.size else learnt
        keep[skipped] = False
        # m / (m - skipped), InfoBatch's 1 / (1 - r) without the rounding of the skipped count: each learnt row's
        # expected weight over the random choice is exactly 1.
        weight[learnt] = learnt.size / max(1, learnt.size - skipped.size)
        weight[skipped] = 1.0
    return keep, weight


def importance_weights(loss: np.ndarray, floor: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Importance sampling on the loss (Katharopoulos & Fleuret, 2018): draw rows with probability ``p ∝ loss``
    (floored at ``floor`` times the mean, so no row is starved) and weight each one's loss by ``1 / (N p)``, an
    unbiased estimate of the full-data gradient. Rows without a loss yet get the mean loss.

    Returns ``(sampling_weight, loss_weight)``.

    Example:
        >>> p, w = importance_weights(np.array([1.0, 3.0]), floor=0.0)
        >>> p.tolist(), w.tolist()
        ([0.25, 0.75], [2.0, 0.6666666666666666])
    """
    loss = np.asarray(loss, dtype=np.float64)
    seen = np.isfinite(loss)
    mean = float(loss[seen].mean()) if seen.any() else 1.0
    value = np.where(seen, np.maximum(loss, 0.0), mean)
    value = np.maximum(value, floor * max(mean, 1e-12))
    if not value.sum() > 0:
        value = np.ones_like(value)
    p = value / value.sum()
    return p, 1.0 / (len(p) * p)


@dataclass(frozen=True, kw_only=True)
class InfoBatchConfig(CallbackConfig):
    """Options of :class:`InfoBatchCallback` (see its Args), checked when built.

    Example:
        >>> InfoBatchConfig().prune_ratio
        0.5
    """

    prune_ratio: float = 0.5
    delta: float = 0.875
    method: str = "infobatch"
    threshold: str = "mean"
    group_column: str | None = None
    importance_floor: float = 0.1

    def __post_init__(self):
        self.require(0 <= self.prune_ratio < 1, "prune_ratio must be in [0, 1)", self.prune_ratio)
        self.require(0 < self.delta <= 1, "delta must be in (0, 1]: the fraction of training that prunes",
                     self.delta)
        self.require(self.method in METHODS, f"method must be one of {list(METHODS)}", self.method)
        self.require(self.threshold in THRESHOLDS, f"threshold must be one of {list(THRESHOLDS)}", self.threshold)
        self.require(self.threshold == "mean" or self.group_column is not None,
                     "threshold='group_mean' needs group_column (each row is compared with its group's mean loss)")
        self.require(0 <= self.importance_floor <= 1, "importance_floor must be in [0, 1]", self.importance_floor)


class InfoBatchCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that spends the steps you give it on the rows the model has not learnt
    yet, without biasing what it learns (InfoBatch, Qin et al., ICLR 2024).

    At every epoch start, from each row's latest training loss (the tracker's, free): among the rows below the
    mean loss (``threshold="group_mean"``: below their group's mean, so a scarce group is not starved), a random
    ``prune_ratio`` is skipped for the epoch (sampling weight 0) and the loss of the rest of them is scaled by
    ``1 / (1 - prune_ratio)``, so the expected gradient over the epoch is still the full data's. Rows not yet seen
    are kept. From the first sync point after ``delta`` of the steps (an epoch start, or a periodic sync inside an
    epoch) nothing is skipped and every weight is 1 (annealing).
    ``method="importance"`` instead draws rows with probability proportional to their loss and weights each loss
    by ``1 / (N p)`` (Katharopoulos & Fleuret, 2018).

    **How you save compute.** The Trainer's step count is fixed by its arguments, so you ask for the compute you
    want to spend: set ``max_steps`` (or ``num_train_epochs``) to the fraction of your full run, e.g. 0.6x the
    steps. The learning-rate schedule is then the shorter run's own, the progress bar is right, and the callback
    spends those steps where they teach the model most. The helper :func:`pruned_max_steps` gives the number.

    Metrics: ``sft/prune/skipped_fraction`` (rows skipped this epoch), ``sft/prune/rows_processed`` (training
    rows drawn so far), ``sft/prune/annealing`` (1 once nothing is skipped).

    Per-step cost: none. At each epoch start: O(rows) NumPy work on the tracker's latest losses.

    Args:
        prune_ratio (`float`, defaults to 0.5): the share of the below-threshold rows skipped each epoch.
        delta (`float`, defaults to 0.875): the fraction of the steps during which rows are skipped.
        method (`str`, defaults to `"infobatch"`): `"infobatch"` or `"importance"`.
        threshold (`str`, defaults to `"mean"`): `"mean"` (all rows) or `"group_mean"` (each row's group).
        group_column (`str`, *optional*): the column naming each row's group (for `"group_mean"`).
        importance_floor (`float`, defaults to 0.1): `"importance"`: the least sampling weight, relative to the
            mean loss.

    Example:
        >>> prune = InfoBatchCallback(prune_ratio=0.5)  # doctest: +SKIP
        >>> args = SFTConfig(..., max_steps=pruned_max_steps(full_steps, 0.6))  # doctest: +SKIP
        >>> SFTTrainer(..., args=args, callbacks=[prune]).train()  # doctest: +SKIP
    """

    config_class = InfoBatchConfig
    needs_loss_weighting = True

    def __init__(self, config: InfoBatchConfig | None = None, /, **options):
        super().__init__(config, **options)
        self.keep: np.ndarray | None = None  # per sample id, this epoch
        self.loss_weight: np.ndarray | None = None
        self.sampling: np.ndarray | None = None  # importance: per sample id
        self.annealing = False
        self.annealed_step: int | None = None  # the sync point at which a pruning epoch switched to annealing
        self.epoch_decided: int | None = None
        self._groups: np.ndarray | None = None

    def required_columns(self) -> list[str]:
        return [self.config.group_column] if self.config.group_column else []

    def _past_delta(self, ctx: PolicyContext) -> bool:
        """Whether ``delta`` of the run's steps are done: from here on nothing is skipped (annealing)."""
        return ctx.max_steps > 0 and ctx.step >= self.config.delta * ctx.max_steps

    def _keep_every_row(self, n: int) -> None:
        self.keep, self.loss_weight, self.sampling = np.ones(n, dtype=bool), np.ones(n), None

    def _decide(self, ctx: PolicyContext, reason: str) -> bool:
        """Decide this epoch's rows once per epoch (at training start and at each epoch end, for the next), and
        switch to annealing at the first sync point after ``delta`` of the steps, even inside an epoch (a run of a
        few epochs has no epoch start in its last eighth and would otherwise prune to its end)."""
        if reason == "step" and not self.annealing and self.keep is not None and self._past_delta(ctx):
            self.annealing, self.annealed_step = True, int(ctx.step)
            self._keep_every_row(len(ctx.index.keys))
            return True
        epoch = ctx.epoch + (1 if reason == "epoch" else 0)
        if reason not in ("train_begin", "epoch", "resume") or self.epoch_decided == epoch:
            return False
        self.epoch_decided = epoch
        n = len(ctx.index.keys)
        self.annealing = self._past_delta(ctx)
        loss = np.asarray(ctx.stats.loss_last, dtype=np.float64).copy()
        loss[np.asarray(ctx.stats.times_seen) == 0] = np.nan
        if self.annealing or not np.isfinite(loss).any():
            self._keep_every_row(n)
            return True
        if self.config.method == "importance":
            self.sampling, self.loss_weight = importance_weights(loss, self.config.importance_floor)
            self.keep = np.ones(n, dtype=bool)
            return True
        groups = None
        if self.config.threshold == "group_mean":
            if self._groups is None or len(self._groups) != n:
                ids, _ = group_ids(ctx.column(self.config.group_column))
                self._groups = uid_groups(ids, ctx.index.seq_uid, ctx.index.seq_row, n)
            groups = self._groups
        seed = int(getattr(ctx.args, "seed", 0) or 0)
        rng = np.random.default_rng([seed, epoch])  # the same choice on every process
        self.keep, self.loss_weight = infobatch_prune(loss, self.config.prune_ratio, rng, groups)
        self.sampling = None
        return True

    def _hands_out(self, ctx: PolicyContext, reason: str) -> bool:
        """Whether this call gives the decision in force: at its own sync points, or at the one that annealed."""
        return reason in ("train_begin", "epoch", "resume") or (reason == "step" and self.annealed_step == ctx.step)

    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        if not self._decide(ctx, reason) and self.keep is None:
            return None
        if not self._hands_out(ctx, reason):
            return None
        per_sample = self.sampling if self.sampling is not None else self.keep.astype(np.float64)
        rows = ctx.rows_from_samples(per_sample)
        return rows if (rows > 0).any() else None

    def policy_loss_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        self._decide(ctx, reason)
        if not self._hands_out(ctx, reason) or self.loss_weight is None:
            return None
        return self.loss_weight

    def policy_metrics(self) -> dict[str, float]:
        if self.keep is None:
            return {}
        out = {"sft/prune/skipped_fraction": float(1.0 - self.keep.mean()) if self.keep.size else 0.0,
               "sft/prune/annealing": float(self.annealing)}
        stats = self._session.tracker.stats if self._session is not None else None
        if stats is not None:
            out["sft/prune/rows_processed"] = float(np.asarray(stats.times_seen, dtype=np.float64).sum())
        return out

    def policy_state(self) -> dict:
        return {"epoch_decided": self.epoch_decided, "annealing": self.annealing, "annealed_step": self.annealed_step}

    def load_policy_state(self, state: dict) -> None:
        # The epoch's decision is in the checkpoint's schedule and loss weights; deciding it again from the losses
        # at the checkpoint would draw another stream than the uninterrupted run.
        if state:
            self.annealing = bool(state.get("annealing", False))
            self.epoch_decided = state.get("epoch_decided")
            self.annealed_step = state.get("annealed_step")


def pruned_max_steps(full_steps: int, compute_fraction: float) -> int:
    """The ``max_steps`` to give the Trainer for ``compute_fraction`` of a full run of ``full_steps`` steps.

    Example:
        >>> pruned_max_steps(225, 0.6)
        135
    """
    if not 0 < compute_fraction <= 1:
        raise ValueError(f"compute_fraction must be in (0, 1], got {compute_fraction}")
    return max(1, int(round(full_steps * compute_fraction)))
