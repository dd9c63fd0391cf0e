"""The validation-guided mixture's update rules as objects: each keeps its own state and decides the next mixture
from a :class:`MixingState`; :data:`RULES` maps ``method`` names to them, so adding a rule is one class here.
The arithmetic they use is in :mod:`.mixing`.

Example:
    >>> sorted(RULES)
    ['aioli', 'doremi', 'exp3', 'learnability', 'scaling']
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .mixing import (
    doremi_update,
    exp3_update,
    fresh_loss_slopes,
    geometric_step,
    log_law_slopes,
    scaling_shares,
    shrink_slopes,
    softmax_shares,
    transfer_matrix,
)

SCALING_WINDOW = 3  # evaluations in each log-law fit
LEARN_WINDOW = 4  # sync intervals in each first-visit loss fit (learnability)


@dataclass
class MixingState:
    """What a rule reads: the mixture in force, the prior it smooths towards, the target weights of the groups, the
    history of evaluations (per evaluation: ``step``, rows ``draws`` per group so far, ``loss`` and ``se`` per
    group, the last one just measured), that evaluation's losses, and how many updates came before."""

    mixture: np.ndarray
    prior: np.ndarray
    target: np.ndarray | None
    history: list[dict]
    losses: np.ndarray
    updates: int


@dataclass
class MixtureUpdate:
    """What a rule decided: the next mixture (``None``: keep it) and the per-group numbers it logs."""

    mixture: np.ndarray | None = None
    gain: np.ndarray | None = None  # target-loss decrease per drawn row
    slope: np.ndarray | None = None  # fitted loss slope per e-fold of draws
    excess: np.ndarray | None = None  # loss minus reference (DoReMi)


class MixingRule:
    """An update rule of the validation-guided mixture: its hyperparameters, its own state, and
    :meth:`after_evaluation` (and, for a rule that reads training statistics, :meth:`between_evaluations`).

    Example:
        >>> rule = RULES["exp3"](learning_rate=1.0, smoothing=0.0, min_share=0.0)
        >>> rule.state_dict()
        {'log_weights': None}
    """

    name = ""
    default_learning_rate = 1.0

    def __init__(self, learning_rate: float, smoothing: float, min_share: float):
        self.learning_rate, self.smoothing, self.min_share = float(learning_rate), float(smoothing), float(min_share)

    def after_evaluation(self, state: MixingState) -> MixtureUpdate:
        """The update after an evaluation was folded into ``state.history``."""
        raise NotImplementedError

    def between_evaluations(self, state: MixingState) -> MixtureUpdate | None:
        """An update from training statistics between evaluations (``None``: this rule waits for evaluations)."""
        return None

    def state_dict(self) -> dict:
        """The rule's own state, JSON-able, saved in checkpoints beside the callback's."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (missing keys: a fresh state)."""


RULES: dict[str, type[MixingRule]] = {}


def register_rule(cls: type[MixingRule]) -> type[MixingRule]:
    """Make a rule available as ``method=cls.name``; adding a rule is one class in one file."""
    RULES[cls.name] = cls
    return cls


def history_arrays(history: list[dict], last: int | None = None) -> tuple[np.ndarray, ...]:
    """``(draws, losses, errors, steps)`` of the last ``last`` evaluations (all by default), one row each."""
    points = history[-last:] if last else history
    as_float = lambda v: np.array([np.nan if x is None else float(x) for x in v], dtype=np.float64)  # noqa: E731
    return (np.array([h["draws"] for h in points], dtype=np.float64),
            np.array([as_float(h["loss"]) for h in points]),
            np.array([as_float(h["se"]) for h in points]),
            np.array([h["step"] for h in points], dtype=np.float64))


def _allocation_step(rule: MixingRule, state: MixingState, slope, se, target, draws) -> MixtureUpdate:
    """Shrink the slopes, then move the mixture towards draws ``∝ target * (-slope)`` (scaling, learnability)."""
    if not np.isfinite(slope).any():
        return MixtureUpdate()
    slope = shrink_slopes(slope, se, target)
    # d(target loss)/d(row of g) = target_g * b_g / n_g: what one more drawn row of the group is worth now.
    gain = target * np.maximum(-slope, 0.0) / np.maximum(draws, 1.0)
    proposal = scaling_shares(target, slope)
    if proposal is None:  # no group's loss falls: keep the mixture, smoothed back towards the prior
        proposal = state.prior
    proposal = (1.0 - rule.smoothing) * proposal + rule.smoothing * state.prior
    mixture = geometric_step(state.mixture, proposal, rule.learning_rate, rule.min_share)
    return MixtureUpdate(mixture=mixture, gain=gain, slope=slope)


@register_rule
class ScalingRule(MixingRule):
    """Per-group log-law fits of validation loss against rows drawn (ADO-style), a step towards the allocation."""

    name = "scaling"
    default_learning_rate = 0.5

    def after_evaluation(self, state: MixingState) -> MixtureUpdate:
        # The local slope, over the last few evaluations: returns diminish as a group is learnt.
        draws, losses, errors, _ = history_arrays(state.history, SCALING_WINDOW)
        slope, se = log_law_slopes(draws, losses, errors)
        return _allocation_step(self, state, slope, se, state.target, draws[-1])


@register_rule
class LearnabilityRule(MixingRule):
    """Slopes from first-visit training losses (dense, free), the validation slope where a group has no unseen
    rows left; then the scaling rule, at every sync point."""

    name = "learnability"
    default_learning_rate = 0.5

    def __init__(self, learning_rate: float, smoothing: float, min_share: float):
        super().__init__(learning_rate, smoothing, min_share)
        self.train_points: list[dict] = []  # per sync point: draws and first-visit loss sums per group

    def wants_point(self, step: int) -> bool:
        """Whether a training point at ``step`` is new (one per sync point)."""
        return not (self.train_points and self.train_points[-1]["step"] >= step)

    def add_point(self, point: dict) -> None:
        """A sync point's draws and first-visit loss sums per group; only the fit window is kept."""
        self.train_points.append(point)
        del self.train_points[:-(LEARN_WINDOW + 1)]

    def _step(self, state: MixingState) -> MixtureUpdate:
        slope, se = fresh_loss_slopes(self.train_points)
        if len(state.history) >= 2:
            v_slope, v_se = log_law_slopes(*history_arrays(state.history, SCALING_WINDOW)[:3])
            use_val = ~np.isfinite(slope)
            slope, se = np.where(use_val, v_slope, slope), np.where(use_val, v_se, se)
        target = state.target if state.target is not None else state.prior  # before the first evaluation
        draws = np.asarray(self.train_points[-1]["draws"], dtype=np.float64)
        return _allocation_step(self, state, slope, se, target, draws)

    after_evaluation = _step
    between_evaluations = _step

    def state_dict(self) -> dict:
        return {"train_points": self.train_points}

    def load_state_dict(self, state: dict) -> None:
        self.train_points = list(state.get("train_points") or [])


@register_rule
class AioliRule(MixingRule):
    """Aioli-style: a transfer matrix from share changes to per-step loss decreases, a step along its value."""

    name = "aioli"

    def after_evaluation(self, state: MixingState) -> MixtureUpdate:
        if len(state.history) < 2:
            return MixtureUpdate()
        draws, losses, _, steps = history_arrays(state.history)
        new = np.diff(draws, axis=0)
        shares = new / np.maximum(new.sum(axis=1, keepdims=True), 1.0)
        per_step = -np.diff(losses, axis=0) / np.maximum(np.diff(steps), 1.0)[:, None]
        a = transfer_matrix(shares, per_step)
        value = a.T @ state.target  # how much one more unit of share of g lowers the target loss per step
        scale = np.abs(value).max()
        if not np.isfinite(scale) or scale <= 0:
            return MixtureUpdate(gain=value)
        logits = np.log(np.maximum(state.mixture, 1e-12)) + self.learning_rate * value / scale
        return MixtureUpdate(mixture=softmax_shares(logits, state.prior, self.smoothing, self.min_share), gain=value)


def evidence_z(previous: dict, point: dict, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Each group's validation-loss decrease between two evaluations in standard errors (the two evaluations'
    errors combined), clipped to [-3, 3]; NaN where a loss or an error is missing.

    Example:
        >>> evidence_z({"se": [0.1]}, {"se": [0.0]}, np.array([1.0]), np.array([0.8])).tolist()
        [2.0]
    """
    se_before, se_after = (np.array([np.nan if x is None else float(x) for x in h["se"]], dtype=np.float64)
                           for h in (previous, point))
    se = np.sqrt(se_before**2 + se_after**2)
    z = np.divide(before - after, se, out=np.full_like(se, np.nan), where=se > 0)
    return np.clip(z, -3.0, 3.0)


@register_rule
class Exp3Rule(MixingRule):
    """EXP3 over groups, rewarded by each group's target-weighted validation-loss decrease per drawn share."""

    name = "exp3"

    def __init__(self, learning_rate: float, smoothing: float, min_share: float, reward: str = "loss",
                 min_evidence: float | None = None):
        super().__init__(learning_rate, smoothing, min_share)
        self.reward = reward  # "loss": the decrease in nats; "evidence": the decrease in standard errors (|z| <= 3)
        self.min_evidence = min_evidence  # a change under this many standard errors earns no reward
        self.log_weights: np.ndarray | None = None

    def after_evaluation(self, state: MixingState) -> MixtureUpdate:
        k = len(state.mixture)
        if self.log_weights is None:
            self.log_weights = np.log(np.maximum(state.mixture, 1e-12))
        if len(state.history) < 2 or state.target is None:
            return MixtureUpdate()
        previous, point = state.history[-2], state.history[-1]
        new = np.asarray(point["draws"]) - np.asarray(previous["draws"])
        drawn = new / new.sum() if new.sum() > 0 else state.mixture
        before, after = (np.array([np.nan if x is None else float(x) for x in h["loss"]], dtype=np.float64)
                         for h in (previous, point))
        z = evidence_z(previous, point, before, after)
        if self.min_evidence is not None:  # too small a change to tell from the evaluation's noise: no reward
            quiet = ~(np.abs(z) >= self.min_evidence)
            after = np.where(quiet, before, after)
            z = np.where(quiet, 0.0, z)
        if self.reward == "evidence":  # a fall counts by how sure it is, not by its size
            self.log_weights = exp3_update(self.log_weights, z, np.zeros_like(z), drawn, state.target,
                                           self.learning_rate, self.min_share)
        else:
            self.log_weights = exp3_update(self.log_weights, before, after, drawn, state.target, self.learning_rate,
                                           self.min_share)
        # What one drawn row of the group was worth in the last interval: target-loss decrease per row.
        gain = state.target * np.nan_to_num(before - after) / np.maximum(new, 1.0)
        # Exploration like EXP3's gamma: mix the prior back in, less as evaluations accumulate.
        explore = max(self.smoothing, min(1.0, np.sqrt(np.log(k) / (k * max(state.updates, 1))))) if k > 1 else 0.0
        return MixtureUpdate(mixture=softmax_shares(self.log_weights, state.prior, explore, self.min_share), gain=gain)

    def state_dict(self) -> dict:
        return {"log_weights": self.log_weights.tolist() if self.log_weights is not None else None}

    def load_state_dict(self, state: dict) -> None:
        lw = state.get("log_weights")
        self.log_weights = np.asarray(lw, dtype=np.float64) if lw is not None else None


@register_rule
class DoReMiRule(MixingRule):
    """DoReMi's excess-loss update against reference losses (given, or each group's first measured loss)."""

    name = "doremi"

    def __init__(self, learning_rate: float, smoothing: float, min_share: float):
        super().__init__(learning_rate, smoothing, min_share)
        self.reference: np.ndarray | None = None

    def after_evaluation(self, state: MixingState) -> MixtureUpdate:
        losses = state.losses
        if self.reference is None:
            self.reference = losses.copy()
        else:  # a group first measured now takes its first loss as reference ("first")
            fill = np.isnan(self.reference) & np.isfinite(losses)
            self.reference[fill] = losses[fill]
        excess = losses - self.reference
        mixture = doremi_update(state.mixture, excess, self.learning_rate, self.smoothing, state.prior, self.min_share)
        return MixtureUpdate(mixture=mixture, excess=excess)

    def state_dict(self) -> dict:
        ref = self.reference
        return {"reference": None if ref is None else [None if not np.isfinite(v) else float(v) for v in ref]}

    def load_state_dict(self, state: dict) -> None:
        ref = state.get("reference")
        self.reference = None if ref is None else np.array([np.nan if v is None else float(v) for v in ref])


#: Each rule's default learning rate (for ``scaling`` / ``learnability``: the fraction of the way to the fitted
#: allocation taken at each evaluation).
METHODS = {name: rule.default_learning_rate for name, rule in RULES.items()}
