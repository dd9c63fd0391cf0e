"""The base class of every sft-callbacks callback, and the contract a sampling policy implements."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .checkpoints import incomplete_latest
from .config import CallbackConfig, is_json
from .frames import annotate_dataset, dynamics_frame, eval_frame, run_annotations
from .session import PolicyContext, Session

logger = logging.getLogger(__name__)


_WARNED: set[str] = set()


def warn_incomplete_checkpoint(output_dir) -> None:
    """Warn (once per folder) when the checkpoint ``resume_from_checkpoint=True`` would pick is incomplete, naming
    the one to resume from instead: the Trainer would fail on its missing ``trainer_state.json``."""
    found = incomplete_latest(output_dir) if output_dir else None
    if found is None or found[0] in _WARNED:
        return
    _WARNED.add(found[0])
    latest, complete = found
    instead = (f"resume from {complete} (sft_callbacks.last_complete_checkpoint finds it)" if complete
               else "no complete checkpoint is left: start again")
    logger.warning("sft-callbacks: %s is incomplete (the run stopped while saving it: no readable trainer_state.json); "
                   "resume_from_checkpoint=True would pick it and fail. Delete it or %s", latest, instead)


def check_liger(args, at_init: bool = False) -> None:
    """Refuse ``use_liger_kernel=True`` where Liger's fused linear cross-entropy would replace the LM head.

    That kernel (Liger's default) computes the loss inside the model and returns neither logits nor per-token
    log-probabilities, so there is nothing per sample to capture. TRL's ``SFTTrainer`` (1.16) turns it off itself
    (``liger_kernel_config["fused_linear_cross_entropy"] = False``) and keeps its fused LM head: the capture then
    reads that head's outputs as without Liger. So the plain ``Trainer`` (or a config asking for the fused loss) is
    refused at construction, with what to change; TRL's ``SFTTrainer`` is allowed. At construction an
    ``SFTConfig`` is let through (TRL adjusts the config after the callbacks' ``on_init_end``); ``on_train_begin``
    checks the final config.
    """
    if not getattr(args, "use_liger_kernel", False):
        return
    if at_init and type(args).__name__ == "SFTConfig":
        return
    config = getattr(args, "liger_kernel_config", None) or {}
    if config.get("fused_linear_cross_entropy", True):
        raise ValueError(
            "use_liger_kernel=True with Liger's fused linear cross-entropy (its default) returns neither logits nor "
            "per-token log-probabilities, so sft-callbacks cannot capture per-sample losses. Use TRL's SFTTrainer "
            "(it keeps its own fused LM head and turns that kernel off), or pass "
            "liger_kernel_config={'fused_linear_cross_entropy': False}, or use_liger_kernel=False"
        )


class SFTCallback(TrainerCallback, ExportableState):
    """A [`~transformers.TrainerCallback`] that joins the trainer's shared sft-callbacks session.

    Every callback of this package derives from it, so that any subset of them, in any order, shares one
    :class:`~sft_callbacks.engine.tracking.SampleTracker` and one :class:`~sft_callbacks.engine.sampling.AdaptiveSampler`.
    Its state (and, for the first of our callbacks, the tracker's statistics and the sampler's schedule) is
    saved in checkpoints through ``ExportableState`` and restored by ``trainer.train(resume_from_checkpoint=...)``.

    After training, :meth:`dynamics` and :meth:`to_dataset` give the per-sample statistics.
    """

    needs_sampler = False
    needs_loss_weighting = False
    publishes_signals = False
    config_class: type[CallbackConfig] | None = None  # a strategy's options (see :mod:`.config`)

    def __init__(self, config: CallbackConfig | None = None, /, **options: Any):
        if self.config_class is not None:
            if config is None:
                config = self.config_class(**options)
            elif options:
                raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__} or keyword options, not both")
            elif not isinstance(config, self.config_class):
                raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
            self.config = config
            self._init_kwargs = config.to_dict()
        else:
            if config is not None:
                raise TypeError(f"{type(self).__name__} has no config class; pass its options as keywords")
            self._init_kwargs = dict(options)
        self._session: Session | None = None
        self._last_state = None
        self._sft_restore = None

    # -- policy contract (overridden by sampling policies) -----------------------------------------------
    @property
    def policy_name(self) -> str:
        """Name of this policy in logs and checkpoints (class name, ``#k`` for the k-th extra of a class)."""
        slot = getattr(self, "_policy_slot", 0)
        return type(self).__name__ if slot == 0 else f"{type(self).__name__}#{slot}"

    def policy_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        """Per-row sampling weights (length ``ctx.num_rows``), or ``None`` to keep the previous ones.

        ``reason`` is ``"step"`` (a periodic sync), ``"evaluate"`` (after an evaluation) or ``"epoch"``.
        """
        return None

    def policy_signals(self) -> dict[str, float]:
        """Signals for other policies (``ctx.signals``), read right after this policy's call.

        Set ``publishes_signals = True`` so the session asks this policy before the others at each sync point.
        """
        return {}

    def policy_metrics(self) -> dict[str, float]:
        """Metrics to log (keys under ``sft/``, e.g. ``{"sft/hard/fraction": 0.3}``) at each logging step."""
        return {}

    def required_columns(self) -> list[str]:
        """Columns of the training dataset this callback reads; checked when training begins."""
        return []

    def policy_loss_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        """Per-sample loss weights (length ``len(ctx.index.keys)``, indexed like ``ctx.stats``) or ``None``.

        Only called when ``needs_loss_weighting`` is True. A weight of 1 leaves a sample's loss unchanged.
        """
        return None

    def policy_state(self) -> dict:
        """JSON-serialisable state of the policy, saved in checkpoints."""
        return {}

    def load_policy_state(self, state: dict) -> None:
        """Restore what :meth:`policy_state` returned."""

    # -- events -----------------------------------------------------------------------------------------
    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError(
                f"{type(self).__name__} has not been attached to a trainer yet: pass it in "
                "`callbacks=[...]` of the Trainer / SFTTrainer and call `trainer.train()` first"
            )
        return self._session

    def _is_driver(self) -> bool:
        return self._session is not None and self._session.driver is self

    def on_init_end(self, args, state, control, model=None, **kwargs):
        check_liger(args, at_init=True)
        if model is not None:
            self._session = Session.for_model(model)
        warn_incomplete_checkpoint(getattr(args, "output_dir", None))

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        check_liger(args)
        self._session = Session.for_model(model)
        if self._sft_restore is None and state.global_step > 0:
            self._sft_restore = self._saved_payload(state)
            if self._sft_restore is None:
                logger.warning("sft-callbacks: %s has no saved state in the checkpoint (the run that saved it did not "
                               "have it): it starts fresh at step %d", type(self).__name__, state.global_step)
        self._session.join(self, args, state, model, train_dataloader)
        self._last_state = state
        if self._is_driver():
            self._session.tracker.step = state.global_step + 1
            self._session.tracker.epoch = int(state.epoch + 1e-9) if state.epoch else 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._make_room_in_saved_state(state)
        if self._is_driver():
            self._session.begin_policies(state)  # loss weighting without a sampler: before the first forward

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self._is_driver():
            self._session.tracker.epoch = int(state.epoch + 1e-9) if state.epoch else 0

    def on_step_end(self, args, state, control, **kwargs):
        self._last_state = state
        if not self._is_driver():
            return
        session = self._session
        session.tracker.step = state.global_step + 1
        if (
            state.global_step % session.sync_every == 0
            or control.should_log
            or control.should_evaluate
            or control.should_save
            or control.should_training_stop
            or state.global_step >= state.max_steps
        ):
            session.tracker.flush()
            session.update_policies(state, "step")

    def on_epoch_end(self, args, state, control, **kwargs):
        if self._is_driver():
            self._session.tracker.flush()
            self._session.update_policies(state, "epoch")

    def on_evaluate(self, args, state, control, metrics=None, eval_dataloader=None, **kwargs):
        self._last_state = state
        if not self._is_driver():
            return
        name = _eval_name(metrics or {})
        dataset = getattr(eval_dataloader, "dataset", None)
        import datasets

        if not isinstance(dataset, datasets.Dataset):
            dataset = None
        self._session.tracker.flush_eval(dataset, name, state.global_step, args)
        self._session.update_policies(state, "evaluate")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._is_driver() and logs is not None:
            self._session.log(logs, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self._is_driver():
            self._session.tracker.flush()

    # -- checkpoints ------------------------------------------------------------------------------------
    def _make_room_in_saved_state(self, state) -> None:
        """Give this class an empty entry in ``state.stateful_callbacks`` for the next checkpoint to fill.

        transformers' ``_save_checkpoint`` indexes the entry by class name without a default, so a callback added on
        resume (absent from the loaded ``trainer_state.json``) raises ``KeyError`` there and no checkpoint is written;
        and it appends to a list entry (several instances of a class) at every save, so the list would grow and a
        resume would read the first save's states. The indexing came with huggingface/transformers#32115; no upstream
        issue reports the first failure, and huggingface/transformers#33875 (open) fixes the second. An empty entry
        before every save avoids both: ``{}`` is replaced, ``[]`` gets one state per instance, in handler order (what
        :meth:`_saved_payload` reads).
        """
        if state is None or self._session is None:
            return
        if state.stateful_callbacks is None:
            state.stateful_callbacks = {}
        count = sum(type(m) is type(self) for m in self._session.members)
        state.stateful_callbacks[type(self).__name__] = [] if count > 1 else {}

    def _saved_payload(self, state) -> dict | None:
        """Our payload in a resumed ``TrainerState`` (loaded from the checkpoint's trainer_state.json).

        Read here rather than relying on ``args.restore_callback_states_from_checkpoint`` (off by default), so
        resuming always continues the same statistics and index stream.
        """
        entry = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(entry, list):
            same = [m for m in self._session.members if type(m) is type(self)] if self._session else []
            entry = entry[len(same)] if len(same) < len(entry) else None
        if not isinstance(entry, dict):
            return None
        return (entry.get("attributes") or {}).get("_sft_restore")

    def state(self) -> dict:
        payload: dict[str, Any] = {"policy": self.policy_state()}
        if self._is_driver():
            payload["session"] = self._session.state_dict(self._last_state)
        # Only JSON-able settings go to trainer_state.json (a callable difficulty, say, cannot).
        args = {k: v for k, v in self._init_kwargs.items() if is_json(v)}
        return {"args": args, "attributes": {"_sft_restore": payload}}

    # -- results ----------------------------------------------------------------------------------------
    def dynamics(self):
        """Per-sample training dynamics as a pandas DataFrame indexed by the row of your training dataset.

        See :func:`sft_callbacks.engine.frames.dynamics_frame` for the columns.
        """
        return dynamics_frame(self.session.tracker)

    def eval_dynamics(self, name: str = "eval"):
        """Per-sample results of the latest evaluation, indexed by the row of your eval dataset.

        Columns ``loss``, ``token_accuracy``, ``step`` (when it ran), ``dropped``. ``name`` is the metric
        prefix of the evaluation (``"eval"``, or ``"eval_<key>"`` for a dict of eval datasets).
        """
        return eval_frame(self.session.tracker, name)

    def row_annotations(self):
        """Columns this callback adds to each row of the training dataset, as a DataFrame indexed by that row
        (``to_dataset`` and :func:`~sft_callbacks.curate` carry them), or ``None`` for none. Every column it
        returns needs a meaning in :data:`sft_callbacks.engine.columns.COLUMN_MEANINGS`."""
        return None

    def to_dataset(self, dataset):
        """Your training ``dataset`` (same rows, same order) with every annotation of the run: the training
        dynamics, the final sampling ``weight`` when a sampling policy ran, and the columns the run's other
        callbacks add (the data map's, the curriculum's ``difficulty``). The columns' meanings:
        :data:`sft_callbacks.engine.columns.COLUMN_MEANINGS`.

        Example:
            >>> annotated = dyn.to_dataset(train)  # after trainer.train(); doctest: +SKIP
            >>> annotated.save_to_disk("annotated")  # doctest: +SKIP
        """
        session = self.session
        return annotate_dataset(dataset, run_annotations(session, session.members or [self]))


def _eval_name(metrics: dict) -> str:
    for key in metrics:
        if key.endswith("_loss") and key.startswith("eval"):
            return key[: -len("_loss")]
    return "eval"


class SamplingPolicyCallback(SFTCallback):
    """Base class for a callback that steers which training rows are drawn.

    Subclass it and implement :meth:`compute_weights`; the session calls it at every sync point (every
    ``sync_every`` steps, when the Trainer logs, evaluates or saves, and at epoch ends), multiplies the weights of
    all active policies, caps the max/min ratio and schedules the result on the sampler. The new weights are
    drawn from at most ``lag`` micro-batches later (see README, "When do new weights take effect").

    Example:
        >>> class PreferShort(SamplingPolicyCallback):
        ...     def compute_weights(self, ctx, reason):
        ...         lengths = np.asarray(ctx.dataset["input_ids"], dtype=object)
        ...         return 1.0 / np.array([len(x) for x in lengths], dtype=float)
    """

    needs_sampler = True

    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        """Per-row weights (length ``ctx.num_rows``) or ``None`` to keep the previous ones."""
        raise NotImplementedError

    def policy_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        return self.compute_weights(ctx, reason)
