"""TrainingDynamicsCallback: records per-sample training dynamics at no extra forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from .callbacks import SFTCallback
from .config import CallbackConfig
from .frames import DYNAMICS_COLUMNS, annotate_dataset, dynamics_frame, eval_frame

__all__ = ["DYNAMICS_COLUMNS", "TrainingDynamicsCallback", "TrainingDynamicsConfig", "annotate_dataset", "dynamics_frame", "eval_frame"]


@dataclass(frozen=True, kw_only=True)
class TrainingDynamicsConfig(CallbackConfig):
    """Options of :class:`TrainingDynamicsCallback` (see its Args), checked when built.

    Example:
        >>> TrainingDynamicsConfig(sync_every=5).max_weight_ratio
        1000.0
    """

    sync_every: int = 10
    max_weight_ratio: float = 1000.0

    def __post_init__(self):
        self.require(isinstance(self.sync_every, int) and self.sync_every >= 1, "sync_every must be an integer >= 1",
                     self.sync_every)
        self.require(self.max_weight_ratio >= 1, "max_weight_ratio must be >= 1", self.max_weight_ratio)
        self._set("max_weight_ratio", float(self.max_weight_ratio))


class TrainingDynamicsCallback(SFTCallback):
    """A [`~transformers.TrainerCallback`] that records per-sample training dynamics, at no extra forward pass.

    Add it to an unchanged ``SFTTrainer`` (or ``Trainer``) script. While training it reads, from the forward the
    Trainer already runs, each training row's mean NLL over its trained tokens (TRL's completion-only /
    assistant-only masking included), token accuracy and entropy; evaluation rows are captured the same way.
    It changes nothing about training: it does not replace the sampler.

    Per-step cost: a few element-wise ops on the batch's device and no host synchronisation; statistics are
    copied to the host and merged across processes every ``sync_every`` steps and when the Trainer logs,
    evaluates or saves. Memory: 52 bytes per training row, 6 bytes per row per epoch, and the visit log (the
    history the noise scores read): 15 bytes per training visit.

    Args:
        sync_every (`int`, defaults to 10): optimizer steps between merges of the statistics (besides logging,
            evaluation and checkpoint steps). Sampling policies see statistics as of the last merge.
        max_weight_ratio (`float`, defaults to 1000.0): cap on the largest/smallest positive sampling weight
            when sampling policies are active (see :func:`~sft_callbacks.engine.weights.combine_weights`).

    Example:
        >>> from trl import SFTConfig, SFTTrainer  # doctest: +SKIP
        >>> cb = TrainingDynamicsCallback()  # doctest: +SKIP
        >>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=train, callbacks=[cb])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> cb.dynamics().nlargest(5, "loss_mean")  # doctest: +SKIP
        >>> annotated = cb.to_dataset(train)  # your rows + times_seen, loss_mean, ...  # doctest: +SKIP
    """

    config_class = TrainingDynamicsConfig

    def __init__(self, config: TrainingDynamicsConfig | None = None, /, **options):
        super().__init__(config, **options)

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.session.sync_every = self.config.sync_every
        self.session.max_weight_ratio = self.config.max_weight_ratio
