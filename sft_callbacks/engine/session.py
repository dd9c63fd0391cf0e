"""One tracker and one sampler per trainer, shared by every sft-callbacks callback listed on it.

Callbacks never see the Trainer, but every event hands them the same model object, so the session is keyed by
the model. The first of our callbacks to receive ``on_train_begin`` in a ``train()`` call drives the session for
that call (flushes statistics, asks the policies for weights, schedules them on the sampler, logs); the others
only contribute their policy. This makes the behaviour independent of how many of our callbacks are listed, in
which order, and of the Trainer replacing callback objects when it restores them from a checkpoint.
"""

from __future__ import annotations

import logging
import math
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .sampling import AdaptiveSampler
from .tracking import SampleTracker, user_row_mapping
from .weights import check_weights, combine_weights, uid_to_rows

logger = logging.getLogger(__name__)

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def find_trainer():
    """The ``transformers.Trainer`` whose method is running up the call stack, or ``None``.

    Used only to log through ``trainer.log`` so that every ``report_to`` integration records our metrics.
    """
    from transformers import Trainer

    frame = sys._getframe(1)
    depth = 0
    while frame is not None and depth < 40:
        obj = frame.f_locals.get("self")
        if isinstance(obj, Trainer):
            return obj
        frame = frame.f_back
        depth += 1
    return None


@dataclass
class PolicyContext:
    """What a sampling policy sees when asked for weights.

    Attributes:
        stats: per-sample statistics (:class:`~sft_callbacks.engine.tracking.SampleStats`), indexed by sample id.
        index: the :class:`~sft_callbacks.engine.tracking.RowIndex` (sample id <-> dataloader row <-> user row).
        num_rows: rows of the dataloader's dataset (the sampler's index space).
        step: optimizer steps done; max_steps: planned total; epoch: current epoch.
        dataset: the dataset the dataloader indexes (TRL's prepared dataset, model columns only).
        args: the ``TrainingArguments``; eval_results: latest per-sample evaluation results by eval name.
        columns: the training rows with all their columns (your columns survive TRL's preparation), same row
            order as ``dataset``; read them with :meth:`column`.
    """

    stats: Any
    index: Any
    num_rows: int
    step: int
    max_steps: int
    epoch: int
    dataset: Any
    args: Any
    eval_results: dict
    columns: Any = None
    model: Any = None
    eval_datasets: dict = field(default_factory=dict)
    signals: dict = field(default_factory=dict)

    def eval_column(self, column: str, eval_name: str = "eval") -> list:
        """Values of ``column`` of your eval dataset ``eval_name`` (all its columns, TRL's row order)."""
        dataset = self.eval_datasets.get(eval_name)
        if dataset is None or column not in dataset.column_names:
            have = sorted(dataset.column_names) if dataset is not None else []
            raise KeyError(f"the eval dataset {eval_name!r} has no column {column!r} (it has {have})")
        return dataset[column]

    def column(self, name: str) -> list:
        """Values of column ``name`` of your training dataset for every dataloader row."""
        if self.columns is None or name not in self.columns.column_names:
            raise KeyError(f"the training dataset has no column {name!r}")
        return self.columns[name]

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.step / self.max_steps) if self.max_steps > 0 else 0.0

    def rows_from_samples(self, sample_weights: np.ndarray) -> np.ndarray:
        """Turn per-sample weights into per-row weights (a pack gets the mean of its samples)."""
        return uid_to_rows(sample_weights, self.index.seq_uid, self.index.seq_row, self.num_rows)


class Session:
    """Shared state of all sft-callbacks callbacks on one trainer: the tracker, the sampler, the policies."""

    def __init__(self):
        self.tracker = SampleTracker()
        self.sampler: AdaptiveSampler | None = None
        self.members: list = []  # callbacks active in the current train() call, in handler order
        self.driver = None
        self.dataset = None
        self.columns = None
        self.model = None
        self.args = None
        self.max_weight_ratio: float | None = 1000.0
        self.weight_floor = 0.0
        self.sync_every = 10
        self.lag_micro_batches = 0
        self.steps_per_epoch = 1
        self.micro_per_epoch = 1
        self.world_size = 1
        self.batch_size = 1
        self.weight_updates = 0
        self.last_policy_weights: dict[str, np.ndarray] = {}
        self.last_loss_weights: dict[str, np.ndarray] = {}
        # Signals policies publish for each other (e.g. "hard_boost" from validation-paced difficulty).
        self.signals: dict[str, float] = {}
        self._begun = False
        self._train_key = None
        self._restore: dict | None = None
        self._saved_policies: list[str] | None = None  # the weighting policies of the run that saved the checkpoint
        self._trainer_ref = None
        self._in_log = False
        self._last_logged_step = -1

    @classmethod
    def for_model(cls, model) -> Session:
        """The session of the trainer that owns ``model`` (created on first use)."""
        session = _SESSIONS.get(model)
        if session is None:
            session = cls()
            _SESSIONS[model] = session
        return session

    # -- lifecycle --------------------------------------------------------------------------------------
    def join(self, callback, args, state, model, train_dataloader) -> None:
        """Called by each of our callbacks at ``on_train_begin``; the first one sets the session up."""
        key = id(train_dataloader)
        if self._train_key != key:
            self._train_key = key
            self.members = []
            self.driver = callback
            self._begun = False
            self._state = state
            self._saved_policies = None
            self._setup(args, state, model, train_dataloader)
        missing = [c for c in callback.required_columns() if c not in self.columns.column_names]
        if missing:
            packed = " (with packing=True TRL keeps only input_ids/labels/seq_lengths; use padding_free instead)" \
                if "seq_lengths" in self.dataset.column_names else ""
            raise ValueError(
                f"{type(callback).__name__} was told to use column(s) {missing}, but the training dataset has "
                f"{sorted(self.columns.column_names)}{packed}; add the column to your dataset or fix the name"
            )
        if callback not in self.members:
            # A unique name per policy, stable across runs: the class name, numbered when listed twice.
            same = sum(type(m) is type(callback) for m in self.members)
            callback._policy_slot = same
            self.members.append(callback)
        self.validate_loss_weighting(args)
        if callback.needs_sampler and self.sampler is None:
            self._install_sampler(args, train_dataloader)
        restore = getattr(callback, "_sft_restore", None)
        if restore:
            session_state = restore.get("session")
            if session_state is not None:
                self.load_state_dict(session_state)
            callback.load_policy_state(restore.get("policy") or {})
            callback._sft_restore = None

    def _setup(self, args, state, model, train_dataloader) -> None:
        import datasets

        dataset = getattr(train_dataloader, "dataset", None)
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(
                "sft-callbacks needs a map-style `datasets.Dataset` as train_dataset (got "
                f"{type(dataset).__name__}). Per-sample statistics and weighted sampling index rows; an "
                "IterableDataset / streaming dataset has none. Load the dataset without `streaming=True` "
                "(or call `.take(n)` and `Dataset.from_generator`)."
            )
        self.world_size = max(1, int(getattr(args, "world_size", 1)))
        self.batch_size = int(args.per_device_train_batch_size)
        if len(dataset) < self.batch_size * self.world_size:
            raise ValueError(
                f"the training dataset has {len(dataset)} rows, fewer than one batch "
                f"({self.batch_size} per device x {self.world_size} processes); add data or lower "
                "`per_device_train_batch_size`"
            )
        self.dataset = dataset
        self.model = model
        self.args = args
        row_user, n_user = user_row_mapping(dataset, args)
        self.tracker.index_train(dataset, row_user, n_user)
        self.tracker.attach(model)
        ga = max(1, int(args.gradient_accumulation_steps))
        self.micro_per_epoch = max(1, len(train_dataloader))
        self.steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / ga))
        workers = int(args.dataloader_num_workers or 0)
        prefetch = int(args.dataloader_prefetch_factor or 2) if workers > 0 else 0
        # Micro-batches the dataloader can have drawn beyond the last finished step: the next step's
        # accumulation batches, accelerate's one-batch look-ahead, the workers' prefetch queue, and one spare.
        self.lag_micro_batches = ga + 2 + workers * prefetch
        self.sampler = None
        self._trainer_ref = None
        trainer = find_trainer()
        if trainer is not None:
            self._trainer_ref = weakref.ref(trainer)
        # The dataloader's copy lost the non-model columns; the trainer's train_dataset still has them, row for row.
        full = getattr(trainer, "train_dataset", None)
        self.columns = full if isinstance(full, datasets.Dataset) and len(full) == len(dataset) else dataset

    def _install_sampler(self, args, train_dataloader) -> None:
        from accelerate.data_loader import get_sampler

        original = get_sampler(train_dataloader)
        num_samples = len(original) if original is not None else len(self.dataset)
        if original is not None and type(original).__name__ == "LengthGroupedSampler":
            logger.warning("sft-callbacks replaces the length-grouped sampler (`group_by_length=True`) with weighted sampling")
        # The seed the Trainer's own shuffling uses, so equal weights give the plain run's stream index for index.
        seed = getattr(original, "initial_seed", None)
        if seed is None:
            seed = args.data_seed if getattr(args, "data_seed", None) is not None else args.seed
        # Enough recent indices to checkpoint whatever the dataloader drew ahead of the last finished step.
        ahead = (self.lag_micro_batches + 2) * self.batch_size * self.world_size
        sampler = AdaptiveSampler(len(self.dataset), num_samples, seed=int(seed), lazy_chunk=self.batch_size,
                                  history=max(1 << 16, 4 * ahead))
        sampler.before_iter = lambda epoch: self.begin_policies(self._state)
        train_dataloader.set_sampler(sampler)
        self.sampler = sampler
        if self._restore is not None:
            self._apply_sampler_restore()

    def _apply_sampler_restore(self) -> None:
        state = self._restore.pop("sampler", None) if self._restore else None
        if state is not None and self.sampler is not None:
            self.sampler.load_state_dict(state)

    # -- positions --------------------------------------------------------------------------------------
    def _micro_batch_position(self, epoch: int, micro: int) -> int:
        """Stream position where micro-batch ``micro`` of ``epoch`` starts, counting on into later epochs.

        An epoch holds ``micro_per_epoch`` micro-batches per process (its last one may be partial) over
        ``len(sampler)`` positions; a micro-batch index past the epoch's end lands in the next epochs.
        """
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        per_micro = self.batch_size * self.world_size
        epoch += micro // self.micro_per_epoch
        micro %= self.micro_per_epoch
        return epoch * n + min(n, micro * per_micro)

    def _consumed_micro(self, state) -> tuple[int, int]:
        epoch = int(self.tracker.epoch)
        in_epoch = max(0, state.global_step - epoch * self.steps_per_epoch)
        ga = max(1, int(self.args.gradient_accumulation_steps))
        return epoch, min(self.micro_per_epoch, in_epoch * ga)

    def consumed_position(self, state) -> int:
        """Stream position of the first sample of the next micro-batch, from the optimizer step count."""
        return self._micro_batch_position(*self._consumed_micro(state))

    def effective_position(self, state) -> int:
        """Position from which weights decided now are drawn: ``lag_micro_batches`` micro-batches ahead."""
        epoch, micro = self._consumed_micro(state)
        return self._micro_batch_position(epoch, micro + self.lag_micro_batches)

    # -- policies ---------------------------------------------------------------------------------------
    def context(self, state) -> PolicyContext:
        return PolicyContext(
            stats=self.tracker.stats,
            index=self.tracker.index,
            num_rows=len(self.dataset),
            step=state.global_step,
            max_steps=state.max_steps,
            epoch=int(self.tracker.epoch),
            dataset=self.dataset,
            args=self.args,
            eval_results=self.tracker.eval_results,
            columns=self.columns,
            model=self.model,
            eval_datasets=self.eval_datasets(),
            signals=self.signals,
        )

    def eval_datasets(self) -> dict:
        """The trainer's eval datasets with all their columns, by metric prefix (``eval``, ``eval_<key>``)."""
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        ds = getattr(trainer, "eval_dataset", None)
        if ds is None:
            return {}
        if isinstance(ds, dict):
            return {f"eval_{k}": v for k, v in ds.items()}
        return {"eval": ds}

    def update_policies(self, state, reason: str, at_position: int | None = None) -> None:
        """Ask every policy for sampling and loss weights; combine and apply them.

        Sampling weights are scheduled at ``at_position`` (default: :meth:`effective_position`); loss weights
        apply from the next training forward.
        """
        if self.dataset is None:
            return
        ctx = self.context(state)
        vectors, changed = self._collect_loss_weights(ctx, reason)
        if changed and vectors:
            self.tracker.set_loss_weights(np.prod([w for _, w in vectors], axis=0))
        if self.sampler is None:
            return
        vectors, changed = self._collect_sampling_weights(ctx, reason)
        if not changed or not vectors:
            return
        combined = self._combine(vectors, ctx.num_rows)
        if np.array_equal(combined.astype(np.float32), self.sampler.current_weights):
            return  # nothing changed: keep the schedule as it is
        at = self.effective_position(state) if at_position is None else at_position
        if at < self.sampler.produced:
            logger.warning(
                "sft-callbacks: the dataloader ran %d positions further ahead than expected; new weights apply "
                "from position %d instead of %d (the index stream may then differ between runs)",
                self.sampler.produced - at,
                self.sampler.produced,
                at,
            )
            at = self.sampler.produced
        self.sampler.schedule(combined, at)
        self.sampler.prune(self.consumed_position(state))
        self.weight_updates += 1

    def _collect(self, flag: str, ask, validate, last: dict, only: list | None = None) -> tuple[list, bool]:
        """``(name, weights)`` of every member with ``flag`` set; a member returning ``None`` keeps its last.

        ``only``: ask just these members; the others give their last weights."""
        vectors, changed = [], False
        # Producers of signals first, so consumers see this sync point's values.
        for cb in sorted(self.members, key=lambda m: not m.publishes_signals):
            if not getattr(cb, flag):
                continue
            asked = only is None or cb in only
            w = ask(cb) if asked else None
            if asked:
                self.signals.update(cb.policy_signals())
            if w is None:
                w = last.get(cb.policy_name)
            else:
                w = validate(cb, w)
                last[cb.policy_name] = w
                changed = True
            if w is not None:
                vectors.append((cb.policy_name, w))
        vectors.sort(key=lambda item: [m.policy_name for m in self.members].index(item[0]))
        return vectors, changed

    def _collect_loss_weights(self, ctx: PolicyContext, reason: str, only: list | None = None):
        return self._collect(
            "needs_loss_weighting",
            lambda cb: cb.policy_loss_weights(ctx, reason),
            lambda cb, w: check_weights(w, len(ctx.index.keys), f"{type(cb).__name__}.policy_loss_weights"),
            self.last_loss_weights,
            only,
        )

    def _collect_sampling_weights(self, ctx: PolicyContext, reason: str, only: list | None = None):
        return self._collect(
            "needs_sampler",
            lambda cb: cb.policy_weights(ctx, reason),
            lambda cb, w: check_weights(w, ctx.num_rows, f"{type(cb).__name__}.policy_weights"),
            self.last_policy_weights,
            only,
        )

    def _combine(self, vectors: list, num_rows: int) -> np.ndarray:
        return combine_weights(vectors, num_rows, floor=self.weight_floor, max_ratio=self.max_weight_ratio)

    def begin_policies(self, state) -> None:
        """First policy call of a ``train()``: before the first draw (sampler) or the first forward."""
        if self._begun:
            return
        self._begun = True
        if self.sampler is not None and self.sampler.produced == 0:
            self._set_sampler_groups()
        if state.global_step > 0:
            # Resumed: the checkpoint holds the schedule and loss weights in force, unless the policies changed.
            self._reconcile_policies(state)
            return
        at = self.sampler.produced if self.sampler is not None else None
        self.update_policies(state, "train_begin", at_position=at)

    def _weighting_members(self) -> list:
        return [cb for cb in self.members if cb.needs_sampler or cb.needs_loss_weighting]

    def _reconcile_policies(self, state) -> None:
        """On resume, rebuild the weights in force from the policies present: a policy removed since the checkpoint
        stops weighting at once, a policy added gives its first weights now; each change is logged."""
        present = {cb.policy_name for cb in self._weighting_members()}
        saved = (set(self._saved_policies) if self._saved_policies is not None
                 else set(self.last_policy_weights) | set(self.last_loss_weights))  # fmt: skip
        dropped = sorted(saved - present)
        added = [cb for cb in self._weighting_members() if cb.policy_name not in saved]
        if not dropped and not added:
            return
        for name in dropped:
            self.last_policy_weights.pop(name, None)
            self.last_loss_weights.pop(name, None)
        if dropped:
            logger.warning("sft-callbacks: resumed without %s (in the checkpoint's run): %s weights no longer apply "
                           "from step %d", ", ".join(dropped), "their" if len(dropped) > 1 else "its",
                           state.global_step)
        if added:
            logger.warning("sft-callbacks: resumed with %s added since the checkpoint: %s weights apply from step "
                           "%d", ", ".join(cb.policy_name for cb in added), "their" if len(added) > 1 else "its",
                           state.global_step)
        ctx = self.context(state)
        vectors, _ = self._collect_loss_weights(ctx, "resume", only=added)
        self.tracker.set_loss_weights(np.prod([w for _, w in vectors], axis=0) if vectors else None)
        if self.sampler is None:
            return
        vectors, _ = self._collect_sampling_weights(ctx, "resume", only=added)
        combined = self._combine(vectors, ctx.num_rows) if vectors else np.ones(ctx.num_rows)
        self.sampler.schedule(combined, self.sampler.produced)
        self.weight_updates += 1

    def _set_sampler_groups(self) -> None:
        """Two-level sampling over the group column the sampling policies share (none if they name different ones)."""
        names = {getattr(getattr(cb, "config", None), "group_column", getattr(cb, "group_column", None))
                 for cb in self.members if cb.needs_sampler}
        names.discard(None)
        if len(names) != 1:
            if len(names) > 1:
                logger.info("sft-callbacks: sampling policies group by different columns %s; rows are drawn in one "
                            "level", sorted(names))
            return
        (name,) = names
        if name in self.columns.column_names:
            self.sampler.set_groups(np.asarray(self.columns[name]))

    def validate_loss_weighting(self, args) -> None:
        """Refuse training setups whose loss would not go through the hook's per-token scaling."""
        if not any(cb.needs_loss_weighting for cb in self.members):
            return
        if getattr(args, "loss_type", "nll") == "dft":
            raise ValueError(
                "per-sample loss weighting scales the fused head's log-probabilities, which SFTTrainer's "
                "loss_type='dft' also exponentiates; the result would not be a weighted loss. Use loss_type='nll' "
                "or turn loss weighting off"
            )
        if getattr(args, "use_liger_kernel", False):
            # With TRL's fused head kept, scaling log_probs would reach the loss; not verified with Liger's kernels
            # (they need a GPU), so refused rather than trusted.
            raise ValueError("per-sample loss weighting is not verified with use_liger_kernel=True (Liger needs a "
                             "GPU, our tests run without one); set use_liger_kernel=False or turn loss weighting off")
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is not None and (
            getattr(trainer, "compute_loss_func", None) is not None or getattr(trainer, "label_smoother", None) is not None
        ):
            raise ValueError(
                "per-sample loss weighting needs the Trainer's standard loss: with compute_loss_func or label "
                "smoothing the loss is computed outside the model's forward and would ignore the weights; remove "
                "them or turn loss weighting off"
            )

    # -- metrics ----------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The ``sft/...`` metrics logged through the Trainer."""
        tr = self.tracker
        out: dict[str, float] = {}
        if tr.stats is not None:
            seen = tr.stats.times_seen > 0
            out["sft/tracker/samples_seen"] = float(seen.sum())
            out["sft/tracker/coverage"] = float(seen.mean()) if seen.size else 0.0
            if seen.any():
                out["sft/tracker/loss_last_mean"] = float(np.nanmean(tr.stats.loss_last[seen]))
            out["sft/tracker/nonfinite"] = float(tr.nonfinite)
            out["sft/tracker/unmatched"] = float(tr.unmatched)
        if self.sampler is not None:
            w = self.sampler.current_weights
            pos = w[w > 0]
            out["sft/sampler/weight_updates"] = float(self.weight_updates)
            out["sft/sampler/active_fraction"] = float(pos.size / w.size)
            if pos.size:
                out["sft/sampler/max_min_ratio"] = float(pos.max() / pos.min())
                p = pos / pos.sum()
                # Effective sample size fraction: 1 for uniform weights, smaller when sampling concentrates.
                out["sft/sampler/ess_fraction"] = float(1.0 / (np.square(p).sum() * w.size))
        for cb in self.members:
            for key, value in cb.policy_metrics().items():
                out[key if key.startswith("sft/") else f"sft/{key}"] = float(value)
        return out

    def log(self, logs: dict, step: int) -> None:
        """Log our metrics as their own record through ``trainer.log`` (or into ``logs`` without a trainer).

        Once per optimizer step: the end-of-training summary log at the last step does not repeat them.
        """
        if self._in_log or any(k.startswith("sft/") for k in logs) or step == self._last_logged_step:
            return
        self._last_logged_step = step
        metrics = self.metrics()
        if not metrics:
            return
        trainer = self._trainer_ref() if self._trainer_ref is not None else None
        if trainer is None:
            logs.update(metrics)
            return
        self._in_log = True
        try:
            # The base class's log: TRL's override would fold its pending metrics into our record.
            from transformers import Trainer

            Trainer.log(trainer, metrics)
        finally:
            self._in_log = False

    # -- checkpointing ----------------------------------------------------------------------------------
    def state_dict(self, state=None) -> dict:
        from_position = self.consumed_position(state) if (state is not None and self.sampler is not None) else 0
        return {
            "tracker": self.tracker.state_dict(),
            "sampler": self.sampler.state_dict(from_position) if self.sampler is not None else None,
            "weight_updates": self.weight_updates,
            "last_policy_weights": {k: _enc(v) for k, v in self.last_policy_weights.items()},
            "last_loss_weights": {k: _enc(v) for k, v in self.last_loss_weights.items()},
            "policies": [cb.policy_name for cb in self._weighting_members()],
        }

    def load_state_dict(self, d: dict) -> None:
        self.tracker.load_state_dict(d["tracker"])
        self.weight_updates = int(d.get("weight_updates", 0))
        self.last_policy_weights = {k: _dec(v) for k, v in d.get("last_policy_weights", {}).items()}
        self.last_loss_weights = {k: _dec(v) for k, v in d.get("last_loss_weights", {}).items()}
        self._saved_policies = d.get("policies")
        if self.last_loss_weights:
            self.tracker.set_loss_weights(np.prod(list(self.last_loss_weights.values()), axis=0))
        self._restore = {"sampler": d.get("sampler")} if d.get("sampler") is not None else None
        if self.sampler is not None:
            self._apply_sampler_restore()


def _enc(a):
    from .sampling import encode_array

    return encode_array(np.asarray(a, dtype=np.float32))


def _dec(d):
    from .sampling import decode_array

    return decode_array(d).astype(np.float64)
