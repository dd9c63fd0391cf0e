"""Group balance: draw rare classes / domains more often (inverse frequency, temperature, or explicit shares).

Pure functions (:func:`inverse_frequency_shares`, :func:`temperature_shares`, :func:`target_shares`,
:func:`balance_shares`, :func:`group_loss_weights`) and the thin :class:`GroupBalanceCallback`. Method card:
``docs/methods/group_balance.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig
from ..engine.session import PolicyContext
from .groups import (
    floor_shares,
    group_counts,
    group_ids,
    named,
    natural_shares,
    row_group_shares,
    shares_from_mapping,
    shares_to_row_weights,
    uid_groups,
)
from .repetition import capped_shares, run_budget

STRATEGIES = ("inverse_frequency", "temperature", "target")


def inverse_frequency_shares(counts: np.ndarray, beta: float) -> np.ndarray:
    """Group shares ``∝ count^(1 - beta)``: each row's weight is ``count^-beta`` (inverse frequency to ``beta``).

    ``beta=0`` keeps the natural shares, ``beta=1`` makes the groups uniform, ``beta>1`` favours rare groups
    beyond uniform. Groups with no rows get share 0.

    Example:
        >>> inverse_frequency_shares(np.array([90, 10]), 1.0).tolist()
        [0.5, 0.5]
    """
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0 (got {beta})")
    c = np.asarray(counts, dtype=np.float64)
    s = np.where(c > 0, np.power(np.where(c > 0, c, 1.0), 1.0 - beta), 0.0)
    return natural_shares(s)


def temperature_shares(counts: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature sampling: group shares ``∝ count^(1/T)``.

    ``T=1`` keeps the natural shares, ``T -> inf`` tends to uniform, ``T<1`` sharpens towards the largest
    groups. Same family as :func:`inverse_frequency_shares` with ``beta = 1 - 1/T``.

    Example:
        >>> temperature_shares(np.array([81, 1]), 2.0).tolist()
        [0.9, 0.1]
    """
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0 (got {temperature})")
    c = np.asarray(counts, dtype=np.float64)
    s = np.where(c > 0, np.power(np.where(c > 0, c, 1.0), 1.0 / temperature), 0.0)
    return natural_shares(s)


def target_shares(shares: Mapping, names: Sequence[str]) -> np.ndarray:
    """Explicit ``{group: share}`` shares in ``names`` order, normalised to sum 1.

    Every group must be named (a missing group is an error, not a silent 0) and every name must be a group.

    Example:
        >>> target_shares({"b": 1, "a": 1}, ["a", "b"]).tolist()
        [0.5, 0.5]
    """
    return shares_from_mapping(shares, names, "target_shares")


def balance_shares(
    counts: np.ndarray,
    names: Sequence[str],
    *,
    strategy: str = "inverse_frequency",
    beta: float = 0.5,
    temperature: float = 2.0,
    target: Mapping | None = None,
    min_share: float = 0.0,
) -> np.ndarray:
    """The group shares :class:`GroupBalanceCallback` samples at: the strategy, then the ``min_share`` floor."""
    if strategy == "inverse_frequency":
        s = inverse_frequency_shares(counts, beta)
    elif strategy == "temperature":
        s = temperature_shares(counts, temperature)
    elif strategy == "target":
        if target is None:
            raise ValueError("strategy='target' needs target_shares={group: share}")
        s = target_shares(target, names)
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    return floor_shares(s, min_share)


def group_loss_weights(shares: np.ndarray, natural: np.ndarray, sample_groups: np.ndarray) -> np.ndarray:
    """Per-sample loss weights ``∝ share[g] / natural[g]``, normalised to mean 1 over the samples.

    Under uniform sampling, these weights give every group the same expected share of the gradient as
    sampling at ``shares`` would (importance weighting instead of resampling).

    Example:
        >>> group_loss_weights(np.array([0.5, 0.5]), np.array([0.75, 0.25]), np.array([0, 0, 0, 1])).tolist()
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    natural = np.asarray(natural, dtype=np.float64)
    ratio = np.divide(np.asarray(shares, dtype=np.float64), natural, out=np.zeros(len(natural)), where=natural > 0)
    w = ratio[np.asarray(sample_groups, dtype=np.int64)]
    mean = w.mean() if w.size else 0.0
    if mean <= 0:
        raise ValueError("every sample's group has share 0: the loss would be zero")
    return w / mean


@dataclass(frozen=True, kw_only=True)
class GroupBalanceConfig(CallbackConfig):
    """Options of :class:`GroupBalanceCallback` (see its Args), checked when built.

    Example:
        >>> GroupBalanceConfig(group_column="domain", beta=0.3).strategy
        'inverse_frequency'
    """

    group_column: str
    strategy: str = "inverse_frequency"
    beta: float = 0.5
    temperature: float = 2.0
    target_shares: Mapping | None = None
    min_share: float = 0.0
    loss_weighting: bool = False
    max_passes: float | None = None

    def __post_init__(self):
        self.require(isinstance(self.group_column, str) and bool(self.group_column),
                     "group_column must be the name of a column of the training dataset", self.group_column)
        self.require(self.strategy in STRATEGIES, f"unknown strategy; choose one of {list(STRATEGIES)}", self.strategy)
        self.require(np.isfinite(self.beta) and self.beta >= 0, "beta must be a finite number >= 0", self.beta)
        self.require(np.isfinite(self.temperature) and self.temperature > 0, "temperature must be a finite number > 0",
                     self.temperature)
        if self.strategy == "target":
            self.require(isinstance(self.target_shares, Mapping) and bool(self.target_shares),
                         "strategy='target' needs target_shares={group: share, ...}")
            bad = {k: v for k, v in self.target_shares.items() if not np.isfinite(float(v)) or float(v) < 0}
            self.require(not bad, "target_shares must be finite and >= 0", bad)
            self.require(sum(float(v) for v in self.target_shares.values()) > 0,
                         "target_shares are all zero; at least one group needs a positive share")
        else:
            self.require(self.target_shares is None,
                         f"target_shares is only used with strategy='target' (strategy is {self.strategy!r})")
        self.require(0.0 <= self.min_share < 1.0, "min_share must be in [0, 1)", self.min_share)
        if self.max_passes is not None:
            self.require(bool(np.isfinite(self.max_passes)) and self.max_passes > 0,
                         "max_passes must be a number > 0 (passes over a group's rows), or None for no budget",
                         self.max_passes)
            self.require(not self.loss_weighting, "max_passes limits resampling; with loss_weighting=True every row "
                         "is drawn at its natural rate: drop one of the two")
            self._set("max_passes", float(self.max_passes))
        self._set("beta", float(self.beta))
        self._set("temperature", float(self.temperature))
        self._set("target_shares", dict(self.target_shares) if self.target_shares is not None else None)
        self._set("min_share", float(self.min_share))
        self._set("loss_weighting", bool(self.loss_weighting))


class GroupBalanceCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that draws rare classes / domains more often.

    Rows are grouped by a column of your training dataset (``group_column``, e.g. ``"domain"`` or a label) and
    each group ``g`` with ``n_g`` rows gets a share ``p_g`` of the draws, rows within a group equally likely
    (row weight ``p_g / n_g``). The shares come from

    * ``strategy="inverse_frequency"``: ``p_g ∝ n_g^(1-beta)`` (every row weighted by ``n_g^-beta``; ``beta=0``
      natural, ``beta=1`` uniform over groups);
    * ``strategy="temperature"``: temperature sampling ``p_g ∝ n_g^(1/T)`` with ``T = temperature``, as in
      multilingual pre-training (Conneau & Lample 2019, XLM: their ``alpha`` is ``1/T``, ``alpha = 0.5``;
      Arivazhagan et al. 2019, massively multilingual NMT: ``T = 5``);
    * ``strategy="target"``: the shares you give, ``target_shares={"math": 0.3, ...}`` (normalised).

    then every share is raised to at least ``min_share`` (exactly, taking the mass from the larger groups).

    With ``max_passes`` the shares get a repetition budget (UniMax, Chung et al. 2023): no group is drawn more than
    ``max_passes`` times its rows over the run, computed from the planned steps when training begins; what a
    capped group cannot take goes to the others in proportion to their shares. A static target mixture with
    ``max_passes=4`` is what a careful user tries first: it keeps a scarce group from being memorised in a long run
    (repeated rows keep most of their value up to about 4 passes, Muennighoff et al. 2023).

    With ``loss_weighting=True`` the callback does not touch sampling: it scales each sample's loss by
    ``p_g / natural_g`` (mean 1 over samples) instead, so every group gets the same expected share of the
    gradient as resampling would give, while every row is still seen at the natural rate. Use it when rare
    groups are so small that resampling would repeat the same rows many times.

    Combined with other sampling policies (e.g. :class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback`)
    the product rule multiplies the row weights: the effective share of a group is
    ``∝ p_g * q_g / natural_g`` where ``q_g`` is the other policy's group share (each policy's reweighting of
    the natural mixture composes).

    Per-step cost: none. The shares are computed once when training begins (one pass over the group column,
    O(rows)); afterwards the callback returns ``None`` (keep the weights) at every sync point.

    Metrics: ``sft/mixture/<group>`` (the group's share of the sampler's current draw distribution, i.e. of all
    active policies together; natural shares when nothing replaces the sampler), ``sft/balance/target/<group>``
    (this callback's share ``p_g``) and, with ``max_passes``, ``sft/balance/capped/<group>`` (1 where the budget
    holds the group below ``p_g``).

    Args:
        group_column (`str`): column of the training dataset naming each row's group (any values; grouped by
            their string form).
        strategy (`str`, defaults to `"inverse_frequency"`): `"inverse_frequency"`, `"temperature"` or `"target"`.
        beta (`float`, defaults to 0.5): inverse-frequency exponent (`strategy="inverse_frequency"`), >= 0.
        temperature (`float`, defaults to 2.0): sampling temperature `T` (`strategy="temperature"`), > 0.
        target_shares (`dict`, *optional*): `{group: share}` for `strategy="target"`; must name every group.
        min_share (`float`, defaults to 0.0): floor on every group's share, in [0, 1/groups].
        loss_weighting (`bool`, defaults to `False`): reweight the loss per group instead of resampling.
        max_passes (`float`, *optional*): repetition budget, passes over each group's rows by the end of the run.

    Example:
        >>> from sft_callbacks.policies.balance import GroupBalanceCallback  # doctest: +SKIP
        >>> balance = GroupBalanceCallback(group_column="domain", strategy="temperature", temperature=3.0)  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., train_dataset=train, callbacks=[balance])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    config_class = GroupBalanceConfig

    def __init__(self, config: GroupBalanceConfig | None = None, /, **options):
        super().__init__(config, **options)
        # Resampling or loss weighting: the session reads these flags per instance.
        self.needs_sampler = not self.config.loss_weighting
        self.needs_loss_weighting = self.config.loss_weighting
        # internal state
        self.group_names: list[str] = []
        self.shares: np.ndarray | None = None
        self.natural: np.ndarray | None = None
        self.capped: np.ndarray | None = None  # groups the repetition budget holds below their share
        self.budgeted: np.ndarray | None = None  # the shares the budget planned when training began
        self._restored: tuple[dict, list] | None = None  # a checkpoint's planned shares
        self._ids: np.ndarray | None = None
        self._ids_key = None
        self._given = False

    def required_columns(self) -> list[str]:
        return [self.config.group_column]

    def on_train_begin(self, args, state, control, **kwargs):
        self._given = False  # hand the weights to the session once per train() call
        super().on_train_begin(args, state, control, **kwargs)

    def _prepare(self, ctx: PolicyContext) -> None:
        key = (id(ctx.dataset), ctx.num_rows)
        if self._ids is not None and self._ids_key == key:
            return
        ids, names = group_ids(ctx.column(self.config.group_column))
        counts = group_counts(ids, len(names))
        self._ids, self._ids_key, self.group_names = ids, key, names
        self.natural = natural_shares(counts)
        self.shares = balance_shares(
            counts, names, strategy=self.config.strategy, beta=self.config.beta, temperature=self.config.temperature,
            target=self.config.target_shares, min_share=self.config.min_share,
        )

    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        self._prepare(ctx)
        if self._given:
            return None
        self._given = True
        shares = self.shares
        if self.config.max_passes is not None:
            restored = self._restored
            if restored is not None and sorted(restored[0]) == sorted(self.group_names):
                shares = np.array([restored[0][n] for n in self.group_names], dtype=np.float64)
                self.capped = np.asarray(restored[1], dtype=bool) if len(restored[1]) == len(shares) \
                    else np.zeros(len(shares), dtype=bool)
            else:
                k = len(self.group_names)
                groups = uid_groups(self._ids, ctx.index.seq_uid, ctx.index.seq_row, len(ctx.index.keys))
                shares, self.capped = capped_shares(shares, *run_budget(ctx, groups, k), self.config.max_passes)
            self.budgeted = shares
        return shares_to_row_weights(self._ids, shares)

    def policy_loss_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        self._prepare(ctx)
        if self._given:
            return None
        self._given = True
        groups = uid_groups(self._ids, ctx.index.seq_uid, ctx.index.seq_row, len(ctx.index.keys))
        return group_loss_weights(self.shares, self.natural, groups)

    def policy_metrics(self) -> dict[str, float]:
        if self.shares is None:
            return {}
        sampler = self._session.sampler if self._session is not None else None
        if sampler is not None and len(sampler.current_weights) == len(self._ids):
            drawn = row_group_shares(sampler.current_weights, self._ids, len(self.group_names))
        else:
            drawn = self.natural
        out = {f"sft/mixture/{n}": v for n, v in named(drawn, self.group_names).items()}
        out.update({f"sft/balance/target/{n}": v for n, v in named(self.shares, self.group_names).items()})
        if self.capped is not None:
            out.update({f"sft/balance/capped/{n}": v for n, v in named(self.capped, self.group_names).items()})
        return out

    def policy_state(self) -> dict:
        # The shares are recomputed from the data and the arguments; the budget's were planned from the run's
        # start, so a resume reuses them (planned again from the draws so far they would move the stream).
        state = {"shares": named(self.shares, self.group_names) if self.shares is not None else None}
        if self.budgeted is not None:
            state["budgeted"] = named(self.budgeted, self.group_names)
            state["capped"] = [bool(c) for c in self.capped]
        return state

    def load_policy_state(self, state: dict) -> None:
        if state and state.get("budgeted") is not None:
            self._restored = dict(state["budgeted"]), list(state.get("capped") or [])
