"""Validation-guided resampling: per-group validation loss steers the training mixture towards where more draws
lower the target validation loss most (update rules in ``mixing.py``; DoReMi's here), with an optional
preference for training rows that resemble the validation set (DSIR-style hashed n-grams) and an optional
validation-paced hardness signal.

The thin :class:`ValidationGuidedResamplingCallback`; its options in :mod:`.validation_config`, its update rules in
:mod:`.mixing_rules` (the arithmetic in :mod:`.mixing`), the DSIR preference in :mod:`.dsir`. Method card: ``docs/methods/validation_guided_resampling.md``.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.session import PolicyContext
from .dsir import dataset_texts, dsir_importance
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
from .mixing import group_loss_stats, plateau_step
from .mixing_rules import RULES, MixingState, history_arrays
from .repetition import capped_shares, run_budget, stalled_groups, withdrawn_shares
from .validation_config import ValidationGuidedConfig


logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Per-group validation loss and the mixture update
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------------------------------------------


def _nan_to_none(values) -> list:
    return [None if (v is None or not math.isfinite(float(v))) else float(v) for v in values]


def _none_to_nan(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)




class ValidationGuidedResamplingCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that moves the training mixture over groups to where more draws lower
    the target validation loss most per drawn row, after every evaluation.

    The target is the validation loss over your eval dataset, each group weighing its share of the eval tokens
    (``target="eval"``), or over ``target={group: weight}``. The mixture ``alpha`` over the training groups starts
    at the eval dataset's group mix (``prior="target"``); rows are drawn with weight ``alpha_g / n_g``. The
    per-group validation loss is taken from the tracker's capture of the evaluation the Trainer runs anyway
    (``eval_strategy``), not from an extra pass; the rows drawn per group between evaluations come from the
    tracker's visit counts. Default update (``method="exp3"``): an EXP3 bandit over groups (online data mixing,
    Albalak et al. 2023) whose reward is the group's target-weighted validation-loss decrease per drawn share since
    the previous evaluation:

        ``r_g = w_g (L_g_prev - L_g) / max(d_g, min_share)``, ``theta += eta * r``,
        ``alpha = (1 - gamma_t) softmax(theta) + gamma_t prior`` with ``gamma_t = max(c, sqrt(ln K / (K t)))``,
        every share floored at ``min_share``.

    A group whose loss does not respond to its draws (noise, nothing left to learn, overfitting) loses share; a
    rare group that keeps improving on few draws gains it. Two limits know what repetition costs, whatever the
    rule proposes:

    * **withdrawal** (``stall_patience=2``): a group whose validation loss no longer falls with its draws (over
      the last ``stall_patience + 1`` evaluations, the slope of its loss against log(draws) is not one standard
      error below zero) gets at most its natural share (the plain run's) until it falls again; the share it gives
      up goes to the others. A group of random answers learns their format, then nothing: it is withdrawn
      whatever its first evaluations rewarded (after mSFT, which drops the sub-dataset that overfits first).
    * **a repetition budget** (``max_passes=4``): no group is drawn more than ``max_passes`` times its rows over
      the run (the steps left times the rows per step are known); what a capped group cannot take goes to the
      others (UniMax, Chung et al. 2023; repeated data keeps most of its value up to about 4 passes, Muennighoff
      et al. 2023). Where the whole run is longer than ``max_passes`` epochs the budget rises to the plain run's.

    Other rules, measured side by side on the evidence benchmark (method card): ``"scaling"`` (per-group log-law
    fits of validation loss against rows drawn, draws where the target falls most per row; ADO-style), ``"learnability"`` (the same with slopes of first-visit
    training losses), ``"aioli"`` (an online linear mixing law), and ``"doremi"`` (DoReMi's excess-loss step over
    ``reference`` losses: the rule when you pass ``reference={group: loss}``; ``reference="first"`` reacts only
    to forgetting, the previous default).

    Options:

    * ``dsir=True``: within each group, prefer training rows that resemble the validation set: importance weights
      from hashed unigram + bigram bag-of-words models of the validation and training texts (DSIR, Xie et al.
      2023; ``w = exp(dsir_strength * clip(z, -3, 3))`` with ``z`` the log ratio ``log p_val - log p_train``
      standardised within the row's group), computed once when training begins. Group shares are unchanged.
    * ``paced_difficulty=True``: when the eval loss (token-weighted over all eval rows) has not improved for
      ``patience`` evaluations, :attr:`hard_boost` (in [0, 1]) rises by ``boost_step``. It does not change this
      callback's weights; hard-example and curriculum policies read it to raise the share of hard samples (see
      the method card, "Validation-paced difficulty").

    Combined with :class:`~sft_callbacks.policies.balance.GroupBalanceCallback` (or any other sampling policy)
    the product rule multiplies the row weights: the effective share of a group is ``∝ p_g * alpha_g / natural_g``.

    Per-step cost: none at training steps (the callback returns ``None``; ``"learnability"`` sums first-visit
    losses per group at each sync point). At each evaluation: O(eval rows + training rows) NumPy work on the host.
    With ``dsir=True``: one pass over the training and validation texts when training begins (vectorised; about a
    second per 100k short rows).

    Metrics: ``sft/mixture/<group>`` (the group's share of the sampler's current draw distribution, all active
    policies together; equals ``alpha_g`` when this callback is alone), ``sft/validation/mixture/<group>``
    (``alpha_g``), ``sft/validation/loss/<group>``, ``sft/validation/target/<group>`` (``w_g``),
    ``sft/validation/gain/<group>`` (why it moved: the estimated target-loss decrease per drawn row),
    ``sft/validation/slope/<group>`` (scaling, learnability), ``sft/validation/excess/<group>`` (doremi),
    ``sft/validation/passes/<group>`` (draws so far over the group's rows), ``sft/validation/capped/<group>`` and
    ``sft/validation/withdrawn/<group>`` (1 while the budget or the withdrawal holds the group; each change is also
    logged once, with its reason, at INFO), and with ``paced_difficulty`` ``sft/validation/hard_boost``.

    Args:
        group_column (`str`): column naming each row's group, in the training *and* the eval dataset.
        method (`str`, *optional*): update rule, `"exp3"` (default), `"scaling"`, `"learnability"`, `"aioli"` or
            `"doremi"` (the default when `reference` is a dict).
        target (`"eval"` or `dict`, defaults to `"eval"`): the loss to minimise: the eval dataset's token-weighted
            group mix, or `{group: weight}` for every training group.
        learning_rate (`float`, *optional*): ``eta``; default per method (exp3, aioli, doremi 1.0; scaling and
            learnability 0.5, a fraction of the way to the fitted allocation, in [0, 1]).
        smoothing (`float`, defaults to 1e-3): weight ``c`` of the prior mixed into every update (exp3: the floor
            of its exploration rate), in [0, 1].
        min_share (`float`, defaults to 0.01): floor on every group's share, in [0, 1/groups].
        reference (`"first"` or `dict`, defaults to `"first"`): doremi's reference losses ``L_ref``: the first
            evaluation's group losses, or `{group: loss}` for every training group.
        prior (`"target"`, `"natural"` or `dict`, *optional*): initial mixture and smoothing target: the eval
            rows' group mix (default), the training set's (default for doremi), or `{group: share}`.
        eval_name (`str`, defaults to `"eval"`): which evaluation to follow (`"eval_<key>"` for a dict of eval
            datasets).
        dsir (`bool`, defaults to `False`): prefer rows resembling the validation texts within each group.
        dsir_text_column (`str`, *optional*): column holding the text for DSIR (a string or chat messages);
            default: `messages`, else `prompt` + `completion`, else `text`.
        dsir_strength (`float`, defaults to 1.0): exponent scale of the DSIR weights (0 turns them off).
        paced_difficulty (`bool`, defaults to `False`): raise :attr:`hard_boost` when the eval loss plateaus.
        patience (`int`, defaults to 1): evaluations without improvement before each raise.
        boost_step (`float`, defaults to 0.25): how much :attr:`hard_boost` rises each time (capped at 1).
        max_passes (`float`, defaults to 4.0): repetition budget, passes over each group's rows by the end of the
            run (`None`: no budget).
        stall_patience (`int`, defaults to 2): a group is withdrawn to its natural share when its loss has not
            fallen with its draws over the last `stall_patience + 1` evaluations (`None`: never).
        reward (`str`, defaults to `"loss"`): exp3's reward, the loss decrease (`"loss"`) or the decrease in
            standard errors, clipped to 3 (`"evidence"`).
        min_evidence (`float`, *optional*): exp3 rewards a group's loss change only when it exceeds this many
            standard errors; until then the mixture stays where it is (at the prior, within the budget).

    Example:
        >>> from sft_callbacks.policies.validation import ValidationGuidedResamplingCallback  # doctest: +SKIP
        >>> guide = ValidationGuidedResamplingCallback(group_column="domain")  # doctest: +SKIP
        >>> args = SFTConfig(..., eval_strategy="steps", eval_steps=50)  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., args=args, train_dataset=train, eval_dataset=val, callbacks=[guide])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> guide.mixture_dict()  # doctest: +SKIP
    """

    config_class = ValidationGuidedConfig

    def __init__(self, config: ValidationGuidedConfig | None = None, /, **options):
        super().__init__(config, **options)
        # state (checkpointed)
        self.group_names: list[str] = []
        self.mixture: np.ndarray | None = None
        self.last_losses: np.ndarray | None = None
        self.last_excess: np.ndarray | None = None
        self.best_loss: float | None = None
        self.evals_without_improvement = 0
        self.hard_boost = 0.0
        self.updates = 0
        self.target: np.ndarray | None = None  # loss weight of every training group in the target
        self.history: list[dict] = []  # per evaluation: step, rows drawn per group, loss and SE per group
        extra = ({"reward": self.config.reward, "min_evidence": self.config.min_evidence}
                 if self.config.method == "exp3" else {})
        self.rule = RULES[self.config.method](self.config.learning_rate, self.config.smoothing, self.config.min_share,
                                              **extra)
        self.capped: np.ndarray | None = None  # groups the repetition budget holds below the rule's share
        self.withdrawn: np.ndarray | None = None  # groups whose validation loss stopped responding
        self.passes: np.ndarray | None = None  # draws so far over each group's rows
        self.last_gain: np.ndarray | None = None  # estimated target-loss decrease per drawn row, per group
        self.last_slope: np.ndarray | None = None  # scaling: fitted loss slope per e-fold of draws
        # internal
        self.natural: np.ndarray | None = None
        self.prior: np.ndarray | None = None
        self._ids: np.ndarray | None = None
        self._uid_group: np.ndarray | None = None
        self._ids_key = None
        self._row_preference: np.ndarray | None = None
        self._seen_result = None
        self._given = False
        self._resumed = False

    # -- setup ------------------------------------------------------------------------------------------
    def required_columns(self) -> list[str]:
        cols = [self.config.group_column]
        if self.config.dsir and self.config.dsir_text_column is not None:
            cols.append(self.config.dsir_text_column)
        return cols

    def on_train_begin(self, args, state, control, **kwargs):
        self._given = False
        super().on_train_begin(args, state, control, **kwargs)
        self._check_eval(args, self.session.eval_datasets())
        # Results of evaluations before this train() call are not news (an eval_on_start result comes later).
        self._seen_result = self.session.tracker.eval_results.get(self.config.eval_name)

    def _check_eval(self, args, eval_datasets: dict) -> None:
        """Refuse a run whose evaluation cannot give per-group losses (no evaluations, no group column)."""
        name = type(self).__name__
        strategy = getattr(args.eval_strategy, "value", args.eval_strategy)
        if strategy == "no":
            raise ValueError(
                f"{name} updates the mixture after each evaluation, but eval_strategy is 'no': set "
                "eval_strategy='steps' (with eval_steps) or 'epoch' and pass an eval_dataset"
            )
        if not eval_datasets:
            raise ValueError(f"{name} needs an eval_dataset (with a {self.config.group_column!r} column) on the trainer")
        if self.config.eval_name not in eval_datasets:
            raise ValueError(
                f"{name} follows the evaluation {self.config.eval_name!r}, but the trainer's evaluations are "
                f"{sorted(eval_datasets)}; set eval_name to one of them"
            )
        ds = eval_datasets[self.config.eval_name]
        if self.config.group_column not in ds.column_names:
            packed = " (with packing TRL keeps only input_ids/labels/seq_lengths; set eval_packing=False)" \
                if "seq_lengths" in ds.column_names else ""
            raise ValueError(
                f"{name} needs the group column {self.config.group_column!r} in the eval dataset {self.config.eval_name!r} to "
                f"compute per-group validation loss, but it has {sorted(ds.column_names)}{packed}"
            )

    def _prepare(self, ctx: PolicyContext) -> None:
        key = (id(ctx.dataset), ctx.num_rows)
        if self._ids is not None and self._ids_key == key:
            return
        self._check_eval(ctx.args, ctx.eval_datasets)
        ids, names = group_ids(ctx.column(self.config.group_column))
        counts = group_counts(ids, len(names))
        eval_names = set(group_ids(ctx.eval_column(self.config.group_column, self.config.eval_name))[1])
        only_eval = sorted(eval_names - set(names))
        if only_eval:
            logger.warning(
                "%s: groups %s appear in the eval dataset but not in the training data; their validation loss "
                "cannot change the mixture and is ignored", type(self).__name__, only_eval,
            )
        no_eval = [n for n in names if n not in eval_names]
        if no_eval:
            logger.warning(
                "%s: training groups %s have no eval rows; their share only moves through smoothing and the "
                "floor", type(self).__name__, no_eval,
            )
        if self.group_names and self.mixture is not None and self.group_names != names:
            raise ValueError(
                f"the restored mixture is over groups {self.group_names}, but the training data has groups {names}; "
                "resume with the same data"
            )
        self._ids, self._ids_key, self.group_names = ids, key, names
        self.natural = natural_shares(counts)
        if self.config.prior == "natural":
            self.prior = self.natural
        elif self.config.prior == "target":
            self.prior = self._eval_row_shares(ctx, names)
        else:
            self.prior = shares_from_mapping(self.config.prior, names, "prior")
        if isinstance(self.config.target, dict):
            self.target = shares_from_mapping(self.config.target, names, "target")
        self._uid_group = uid_groups(ids, ctx.index.seq_uid, ctx.index.seq_row, len(ctx.index.keys))
        if isinstance(self.config.reference, dict) and self.rule.reference is None:
            given = {str(k): float(v) for k, v in self.config.reference.items()}
            unknown = sorted(set(given) - set(names) - eval_names)
            missing = [n for n in names if n not in given]
            if unknown or missing:
                raise ValueError(
                    f"reference must give a loss for every training group {names}"
                    + (f"; missing {missing}" if missing else "") + (f"; not groups: {unknown}" if unknown else "")
                )
            self.rule.reference = np.array([given[n] for n in names], dtype=np.float64)
        if self.mixture is None:
            self.mixture = floor_shares(self.prior, self.config.min_share)
        if self.config.dsir and self.config.dsir_strength > 0:
            train_texts = dataset_texts(ctx.columns, self.config.dsir_text_column)
            val_texts = dataset_texts(ctx.eval_datasets[self.config.eval_name], self.config.dsir_text_column)
            self._row_preference = dsir_importance(train_texts, val_texts, strength=self.config.dsir_strength, groups=ids)

    def _eval_row_shares(self, ctx: PolicyContext, names: list[str]) -> np.ndarray:
        """Each training group's share of the eval rows (the starting mixture with ``prior="target"``)."""
        eval_ids, eval_names = group_ids(ctx.eval_column(self.config.group_column, self.config.eval_name))
        counts = group_counts(eval_ids, len(eval_names))
        by_name = dict(zip(eval_names, counts.tolist()))
        shares = np.array([float(by_name.get(n, 0)) for n in names], dtype=np.float64)
        if shares.sum() <= 0:
            raise ValueError(
                f"prior='target' starts from the eval dataset's group shares, but none of its groups "
                f"{sorted(eval_names)} is a training group {names}; pass prior='natural' or a dict"
            )
        return shares / shares.sum()

    def _draws_by_group(self, ctx: PolicyContext) -> np.ndarray:
        """Rows of each group drawn for training so far (the tracker's visit counts)."""
        seen = np.asarray(ctx.stats.times_seen, dtype=np.float64)
        return np.bincount(self._uid_group, weights=seen, minlength=len(self.group_names))

    # -- evaluation ---------------------------------------------------------------------------------------
    def _eval_group_losses(self, ctx: PolicyContext, result: dict):
        """Per training group validation loss, its SE and tokens, and the token-weighted loss over all eval rows."""
        index = result["index"]
        values = ctx.eval_column(self.config.group_column, self.config.eval_name)
        if index.num_rows != len(values):
            logger.warning(
                "%s: the evaluation %r ran on %d rows but the trainer's eval dataset has %d (an evaluate() call "
                "with another dataset?); the mixture is left as it is", type(self).__name__, self.config.eval_name,
                index.num_rows, len(values),
            )
            return None
        eval_ids, eval_names = group_ids(values)
        to_train = {n: i for i, n in enumerate(self.group_names)}
        remap = np.array([to_train.get(n, -1) for n in eval_names], dtype=np.int64)
        row_group = remap[eval_ids] if len(eval_ids) else np.zeros(0, np.int64)
        seq_uid, seq_row = np.asarray(index.seq_uid), np.asarray(index.seq_row)
        loss = np.asarray(result["loss_by_uid"], dtype=np.float64)[seq_uid]
        ntok = np.asarray(index.n_trained, dtype=np.float64)[seq_uid]
        groups = row_group[seq_row]
        per_group, se, tokens = group_loss_stats(loss, groups, ntok, len(self.group_names))
        ok = np.isfinite(loss) & (ntok > 0)
        overall = float((loss[ok] * ntok[ok]).sum() / ntok[ok].sum()) if ok.any() else float("nan")
        return per_group, se, tokens, overall

    def _update_from_eval(self, ctx: PolicyContext, result: dict) -> None:
        measured = self._eval_group_losses(ctx, result)
        if measured is None:
            return
        losses, se, tokens, overall = measured
        if self.config.target == "eval":  # (a target dict was set from the data when training began)
            # The eval loss is token-weighted over its rows, so each group weighs its share of the eval tokens.
            if tokens.sum() > 0:
                self.target = tokens / tokens.sum()
        draws = self._draws_by_group(ctx)
        point = {"step": int(ctx.step), "draws": draws.tolist(), "loss": _nan_to_none(losses), "se": _nan_to_none(se)}
        self.history.append(point)
        self._apply(self.rule.after_evaluation(self._mixing_state(losses)))
        self.last_losses = losses
        self.updates += 1
        if self.config.paced_difficulty:
            self.best_loss, self.evals_without_improvement, fire = plateau_step(
                overall, self.best_loss, self.evals_without_improvement, self.config.patience
            )
            if fire:
                self.hard_boost = min(1.0, self.hard_boost + self.config.boost_step)

    def _mixing_state(self, losses: np.ndarray | None = None) -> MixingState:
        return MixingState(mixture=self.mixture, prior=self.prior, target=self.target, history=self.history,
                           losses=losses, updates=self.updates)

    def _apply(self, update) -> None:
        """Take a rule's decision: the new mixture and the numbers it logs (each kept until a rule gives a new one)."""
        if update is None:
            return
        if update.mixture is not None:
            self.mixture = update.mixture
        self.last_gain = update.gain if update.gain is not None else self.last_gain
        self.last_slope = update.slope if update.slope is not None else self.last_slope
        self.last_excess = update.excess if update.excess is not None else self.last_excess

    def _record_train_point(self, ctx: PolicyContext) -> bool:
        """Per group: rows drawn so far, and sum / sum of squares / count of first-visit losses (learnability)."""
        if not self.rule.wants_point(ctx.step):
            return False
        first = np.asarray(ctx.stats.loss_first, dtype=np.float64)
        seen = np.isfinite(first)
        g, k = self._uid_group[seen], len(self.group_names)
        self.rule.add_point({
            "step": int(ctx.step), "draws": self._draws_by_group(ctx).tolist(),
            "fresh_sum": np.bincount(g, weights=first[seen], minlength=k).tolist(),
            "fresh_sq": np.bincount(g, weights=first[seen] ** 2, minlength=k).tolist(),
            "fresh_count": np.bincount(g, minlength=k).astype(np.float64).tolist(),
        })
        return True

    # -- policy ---------------------------------------------------------------------------------------------
    publishes_signals = True

    def policy_signals(self) -> dict[str, float]:
        """``hard_boost`` for the hardness policies (curriculum, hard-example mining), with paced_difficulty."""
        return {"hard_boost": float(self.hard_boost)} if self.config.paced_difficulty else {}

    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        self._prepare(ctx)
        changed = False
        result = ctx.eval_results.get(self.config.eval_name)
        if result is not None and result is not self._seen_result:
            self._seen_result = result
            self._update_from_eval(ctx, result)
            changed = True
        if self.config.method == "learnability" and self._record_train_point(ctx) and not changed:
            before = self.mixture.copy()
            self._apply(self.rule.between_evaluations(self._mixing_state()))
            changed = not np.array_equal(before, self.mixture)
        if self._given and not changed:
            return None
        self._given = True
        if changed or not self._resumed:  # a checkpoint's mixture is handed back as it was in force
            self._limit(ctx)
        self._resumed = False
        return self.row_weights()

    def _limit(self, ctx: PolicyContext) -> None:
        """What repetition costs: withdraw groups whose validation loss stalled, then hold every group within its
        repetition budget over the rest of the run (both logged under ``sft/validation/``)."""
        k = len(self.group_names)
        shares = self.mixture
        sizes, drawn, remaining = run_budget(ctx, self._uid_group, k)
        self.passes = np.divide(drawn, sizes, out=np.zeros(k), where=sizes > 0)
        withdrawn = np.zeros(k, dtype=bool)
        if self.config.stall_patience is not None and self.history:
            draws, losses, errors, _ = history_arrays(self.history)
            withdrawn = stalled_groups(draws, losses, errors, self.config.stall_patience)
            shares = withdrawn_shares(shares, self.natural, withdrawn)
        # A withdrawn group's natural share is a ceiling: a capped group's excess does not flow back into it.
        ceiling = np.where(withdrawn, self.natural, np.inf) if withdrawn.any() else None
        shares, held = capped_shares(shares, sizes, drawn, remaining, self.config.max_passes, ceiling)
        capped = held & ~withdrawn
        self._report_limits(ctx.step, withdrawn, capped)
        self.withdrawn, self.capped = withdrawn, capped
        self.mixture = floor_shares(shares, self.config.min_share)

    def _report_limits(self, step: int, withdrawn: np.ndarray, capped: np.ndarray) -> None:
        """Say when a group is withdrawn or capped, and why (once, when it happens)."""
        before_w = self.withdrawn if self.withdrawn is not None else np.zeros_like(withdrawn)
        before_c = self.capped if self.capped is not None else np.zeros_like(capped)
        name = type(self).__name__
        for g in np.flatnonzero(withdrawn & ~before_w):
            logger.info("%s: step %d: group %r withdrawn to at most its natural share: over the last %d evaluations "
                        "its validation loss did not fall with its draws by more than its standard error", name, step,
                        self.group_names[g], self.config.stall_patience + 1)
        for g in np.flatnonzero(~withdrawn & before_w):
            logger.info("%s: step %d: group %r readmitted: its validation loss fell again", name, step,
                        self.group_names[g])
        for g in np.flatnonzero(capped & ~before_c):
            logger.info("%s: step %d: group %r capped by the repetition budget: %.1f passes over its rows so far, "
                        "at most %g by the end of the run", name, step, self.group_names[g], self.passes[g],
                        self.config.max_passes)

    def row_weights(self) -> np.ndarray:
        """Per-row sampling weights of the current mixture (and DSIR preference), summing to 1."""
        if self.mixture is None or self._ids is None:
            raise RuntimeError("no mixture yet: the callback has not seen a training run")
        return shares_to_row_weights(self._ids, self.mixture, self._row_preference)

    def mixture_dict(self) -> dict[str, float]:
        """The current mixture ``{group: share}``."""
        return named(self.mixture, self.group_names) if self.mixture is not None else {}

    def policy_metrics(self) -> dict[str, float]:
        if self.mixture is None:
            return {}
        out = {}
        sampler = self._session.sampler if self._session is not None else None
        if sampler is not None and self._ids is not None and len(sampler.current_weights) == len(self._ids):
            drawn = row_group_shares(sampler.current_weights, self._ids, len(self.group_names))
            out.update({f"sft/mixture/{n}": v for n, v in named(drawn, self.group_names).items()})
        out.update({f"sft/validation/mixture/{n}": v for n, v in self.mixture_dict().items()})
        for key, values in (("capped", self.capped), ("withdrawn", self.withdrawn)):
            if values is not None:
                out.update({f"sft/validation/{key}/{n}": float(v) for n, v in zip(self.group_names, values)})
        if self.passes is not None:
            out.update({f"sft/validation/passes/{n}": float(v) for n, v in zip(self.group_names, self.passes)})
        for key, values in (("loss", self.last_losses), ("excess", self.last_excess), ("gain", self.last_gain),
                            ("slope", self.last_slope), ("target", self.target)):
            if values is not None:
                out.update({f"sft/validation/{key}/{n}": float(v) for n, v in zip(self.group_names, values) if np.isfinite(v)})
        if self.config.paced_difficulty:
            out["sft/validation/hard_boost"] = float(self.hard_boost)
        return out

    # -- checkpointing ---------------------------------------------------------------------------------------
    def policy_state(self) -> dict:
        if self.mixture is None:
            return {}
        return {
            "groups": list(self.group_names),
            "mixture": self.mixture.tolist(),
            "last_losses": _nan_to_none(self.last_losses) if self.last_losses is not None else None,
            "last_excess": _nan_to_none(self.last_excess) if self.last_excess is not None else None,
            "best_loss": self.best_loss,
            "evals_without_improvement": self.evals_without_improvement,
            "hard_boost": self.hard_boost,
            "updates": self.updates,
            "method": self.config.method,
            "target": self.target.tolist() if self.target is not None else None,
            "history": self.history,
            "capped": None if self.capped is None else self.capped.tolist(),
            "withdrawn": None if self.withdrawn is None else self.withdrawn.tolist(),
            **self.rule.state_dict(),
        }

    def load_policy_state(self, state: dict) -> None:
        if not state or state.get("mixture") is None:
            return
        self.group_names = list(state["groups"])
        self.mixture = np.asarray(state["mixture"], dtype=np.float64)
        self.last_losses = _none_to_nan(state["last_losses"]) if state.get("last_losses") is not None else None
        self.last_excess = _none_to_nan(state["last_excess"]) if state.get("last_excess") is not None else None
        self.best_loss = state.get("best_loss")
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        self.hard_boost = float(state.get("hard_boost", 0.0))
        self.updates = int(state.get("updates", 0))
        if state.get("method", self.config.method) != self.config.method:
            raise ValueError(
                f"the checkpoint's mixture was updated with method={state['method']!r}, this callback uses "
                f"method={self.config.method!r}; resume with the same method"
            )
        self.target = np.asarray(state["target"], dtype=np.float64) if state.get("target") is not None else None
        self.history = list(state.get("history") or [])
        for key in ("capped", "withdrawn"):
            setattr(self, key, None if state.get(key) is None else np.asarray(state[key], dtype=bool))
        self.rule.load_state_dict(state)
        self._resumed = True
        self._ids = None  # group ids are recomputed from the data at the next policy call
