"""DomainAdaptationCallback: a domain-adversarial or MMD regulariser on one decoder layer's representations, added
to the Trainer's own loss in the same backward pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import numpy as np
import torch

from ..engine.callbacks import SFTCallback
from ..engine.config import CallbackConfig
from ..engine.sampling import decode_array, encode_array
from ..engine.tracking import KeyLookup
from .domain import DomainHead, adversarial_losses, gaussian_mmd2, packed_segments, padded_segments, sequence_means
from .groups import group_ids, uid_groups

METHODS = ("adversarial", "mmd")
HEAD_NAME = "sft_domain_head"  # the head's attribute on the model (left out of every save)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The decoder layers of a causal LM (also under a peft wrapper): ``model.model.layers`` in transformers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else getattr(base, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"DomainAdaptationCallback: cannot find the decoder layers of {type(base).__name__} "
                         "(expected model.get_decoder().layers, as in transformers' causal LMs)")
    return layers


def dann_schedule(progress: float) -> float:
    """The reversal strength of Ganin et al. (2016) at training progress ``progress`` in [0, 1]:
    ``2 / (1 + exp(-10 p)) - 1``, from 0 to about 1, so the domain head learns before it pushes back.

    Example:
        >>> round(dann_schedule(0.0), 3), round(dann_schedule(1.0), 3)
        (0.0, 1.0)
    """
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


@dataclass(frozen=True, kw_only=True)
class DomainAdaptationConfig(CallbackConfig):
    """Options of :class:`DomainAdaptationCallback` (see its Args), checked when built.

    Example:
        >>> DomainAdaptationConfig(group_column="domain", target_group="movies").method
        'adversarial'
    """

    group_column: str
    target_group: Any
    method: str = "adversarial"
    layer: int = -1
    weight: float = 0.1
    warmup: float = 0.1
    head_hidden: int = 256

    def __post_init__(self):
        self.require(self.method in METHODS, f"method must be one of {METHODS}", self.method)
        self.require(isinstance(self.weight, (int, float)) and self.weight >= 0 and math.isfinite(self.weight),
                     "weight must be a finite number >= 0", self.weight)
        self.require(isinstance(self.warmup, (int, float)) and self.warmup >= 0,
                     "warmup must be >= 0 (a fraction of training, or steps if >= 1)", self.warmup)
        self._set("weight", float(self.weight))


class DomainAdaptationCallback(SFTCallback):
    """Makes a decoder layer's sequence representations of the source groups indistinguishable from the target
    group's, while training on the Trainer's own loss.

    Each training micro-batch's hidden states after decoder layer ``layer`` (a forward hook on that layer: no
    ``output_hidden_states`` copy of every layer) are mean-pooled over each sequence's tokens. Then either

    * ``method="adversarial"`` (Ganin et al., 2016): a two-layer domain head classifies each sequence as target
      or source through a gradient-reversal layer; the head learns to tell them apart, the model to hide the
      difference. The reversal strength ramps up with :func:`dann_schedule` after ``warmup``.
    * ``method="mmd"`` (Long et al., 2015): the squared maximum mean discrepancy between the micro-batch's
      source and target representations (Gaussian kernels at 0.5, 1 and 2 times the median distance).

    The regulariser's value for each sequence, times ``weight``, is added to the loss of each of its trained
    tokens inside the forward's output, so the Trainer's own normalisation (tokens of the whole optimizer step,
    across gradient accumulation and processes) applies to it exactly, and the logged ``loss`` includes it.
    The domain head is a submodule of your model (so the Trainer's optimizer trains it and DDP synchronises
    it), excluded from every ``save_pretrained``; its weights travel in the checkpoint's callback state.

    Per-step cost: the pooling (one ``index_add`` over the layer's output) and, per micro-batch, a
    ``(B, hidden) x (hidden, 256)`` head or a ``B x B`` kernel matrix; no host synchronisation.

    Args:
        group_column (`str`): the training dataset's column naming each row's domain.
        target_group: the value of ``group_column`` for the domain the model will serve.
        method (`str`, defaults to ``"adversarial"``): ``"adversarial"`` or ``"mmd"``.
        layer (`int`, defaults to -1): which decoder layer's output to pool (negative counts from the end).
        weight (`float`, defaults to 0.1): the regulariser's weight in the loss.
        warmup (`float`, defaults to 0.1): fraction of training (or, if >= 1, optimizer steps) before the
            regulariser pushes on the model; the adversarial head trains from the start.
        head_hidden (`int`, defaults to 256): the domain head's hidden width.

    Example:
        >>> cb = DomainAdaptationCallback(group_column="domain", target_group="medical")  # doctest: +SKIP
        >>> SFTTrainer(..., callbacks=[TrainingDynamicsCallback(), cb]).train()  # doctest: +SKIP
    """

    config_class = DomainAdaptationConfig

    def __init__(self, config: DomainAdaptationConfig | None = None, /, **options):
        super().__init__(config, **options)
        self.head: DomainHead | None = None
        self._hidden: torch.Tensor | None = None
        self._layer_handle = None
        self._target_lookup: KeyLookup | None = None
        self._strength = 0.0
        self._sums = {"aux": 0.0, "correct": 0.0, "seen": 0.0, "batches": 0.0}
        self._saved_head = None
        self._capture_eval = False
        self._model = None

    def required_columns(self) -> list[str]:
        return [self.config.group_column]

    # -- attach -------------------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, **kwargs):
        super().on_init_end(args, state, control, model=model, **kwargs)
        if model is not None:
            self._attach(model)

    def _attach(self, model) -> None:
        self._model = model
        layers = decoder_layers(model)
        if not -len(layers) <= self.config.layer < len(layers):
            raise ValueError(f"layer={self.config.layer} but the model has {len(layers)} decoder layers")
        if self._layer_handle is not None:
            self._layer_handle.remove()
        self._layer_handle = layers[self.config.layer].register_forward_hook(self._keep_hidden)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if self.config.method == "adversarial" and getattr(base, HEAD_NAME, None) is None:
            # Before the Trainer builds its optimizer (in train()): as a submodule the head reaches it.
            param = next(base.parameters())
            self.head = DomainHead(base.config.hidden_size, 2, hidden=self.config.head_hidden).to(param.device)
            base.add_module(HEAD_NAME, self.head)
            names = {f"{HEAD_NAME}.{n}" for n, _ in self.head.named_parameters()}
            base._keys_to_ignore_on_save = set(base._keys_to_ignore_on_save or ()) | names
        elif self.config.method == "adversarial":
            self.head = getattr(base, HEAD_NAME)
        if self._saved_head is not None and self.head is not None:
            self._load_head(self._saved_head)

    def _keep_hidden(self, module, args, output):
        if module.training or self._capture_eval:
            self._hidden = output[0] if isinstance(output, tuple) else output

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, optimizer=optimizer, **kwargs)
        if self.head is not None and optimizer is not None:
            in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
            if not all(id(p) in in_optimizer for p in self.head.parameters()):
                raise ValueError("DomainAdaptationCallback(method='adversarial'): the domain head's parameters are "
                                 "not in the optimizer. Let the Trainer build it (no `optimizers=` argument), or "
                                 "use method='mmd', which has no parameters")
        values = self.session.columns[self.config.group_column]
        ids, names = group_ids(values)
        target = str(self.config.target_group)
        if target not in names:
            raise ValueError(f"DomainAdaptationCallback: target_group {self.config.target_group!r} is not a value of "
                             f"column {self.config.group_column!r} (values: {names[:20]})")
        if len(names) < 2:
            raise ValueError(f"DomainAdaptationCallback: column {self.config.group_column!r} has only the target group; "
                             "domain adaptation needs source rows too")
        index = self.session.tracker.index
        is_target = (ids == names.index(target)).astype(np.int64)
        self._target_lookup = KeyLookup(index.keys, uid_groups(is_target, index.seq_uid, index.seq_row, len(index.keys)),
                                        missing=-1)
        self._max_steps = max(1, state.max_steps)
        self.session.tracker.add_loss_term(self._loss_term)

    def on_step_begin(self, args, state, control, **kwargs):
        super().on_step_begin(args, state, control, **kwargs)
        warm = self.config.warmup if self.config.warmup >= 1 else self.config.warmup * self._max_steps
        progress = (state.global_step - warm) / max(1.0, self._max_steps - warm)
        self._strength = 0.0 if state.global_step < warm else (
            dann_schedule(progress) if self.config.method == "adversarial" else 1.0)

    def on_train_end(self, args, state, control, **kwargs):
        if self._session is not None:
            self.session.tracker.remove_loss_term(self._loss_term)
        super().on_train_end(args, state, control, **kwargs)

    # -- the loss term ------------------------------------------------------------------------------------
    def _targets(self, keys: torch.Tensor) -> torch.Tensor:
        """Per sequence: 1 target, 0 source, -1 unknown (a row not in the training set)."""
        return self._target_lookup(keys)

    def _loss_term(self, kwargs, output, keys: torch.Tensor) -> torch.Tensor | None:
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            return None
        attention_mask, position_ids = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if attention_mask is None and position_ids is not None and hidden.shape[0] == 1:
            segments, n = packed_segments(position_ids)
        else:
            segments, n = padded_segments(attention_mask, hidden.shape[:2])
        if n != keys.numel():
            return None  # a batch layout the capture does not read either (counted there as unmatched)
        pooled = sequence_means(hidden, segments, n)
        domain = self._targets(keys)
        known = domain >= 0
        if self.config.method == "adversarial":
            # Always through the head (times 0 before the warmup ends): every process uses its parameters in
            # every step, as DDP requires, and the head learns the domains from the start.
            losses, correct = adversarial_losses(pooled, domain.clamp(min=0), self.head, strength=self._strength)
            per_seq = losses * known
            self._add("correct", (correct & known).sum())
            self._add("seen", known.sum())
            # The head's own loss trains it at full weight; the reversal scales what reaches the model.
            scale = self.config.weight
        else:
            mmd = gaussian_mmd2(pooled[known & (domain == 0)], pooled[known & (domain == 1)])
            per_seq = mmd.expand(n)
            scale = self.config.weight * self._strength
        self._add("aux", per_seq.detach().mean())
        self._add("batches", torch.ones((), device=per_seq.device))
        return scale * per_seq

    def _add(self, name: str, value: torch.Tensor) -> None:
        # Summed on the device; read (one host copy) only when the Trainer logs.
        value = value.detach().float()
        self._sums[name] = value if not torch.is_tensor(self._sums[name]) else self._sums[name] + value

    # -- held-out check -----------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, dataset, batch_size: int = 16) -> dict[str, float]:
        """How much of the domain the representations still carry, on rows the model did not train on.

        ``dataset`` holds tokenised rows (``input_ids``) and the group column, e.g. ``trainer.eval_dataset`` of
        an ``SFTTrainer`` given an eval set with that column. The rows are pooled exactly as in training (mean
        over each sequence's tokens after decoder layer ``layer``, in eval mode); returns ``rows``, ``mmd``
        (source vs target, as the regulariser measures it) and, for the adversarial method, ``head_accuracy``
        (the domain head on these rows; 0.5 is chance when both sides are equally many).

        Example:
            >>> cb.measure(trainer.eval_dataset)  # doctest: +SKIP
            {'rows': 40, 'mmd': 0.012, 'head_accuracy': 0.55}
        """
        if self._model is None:
            raise RuntimeError("DomainAdaptationCallback.measure: attach the callback to a Trainer first")
        model = self._model
        device = next(model.parameters()).device
        ids = dataset["input_ids"]
        is_target = torch.tensor([str(g) == str(self.config.target_group) for g in dataset[self.config.group_column]])
        pooled, was_training = [], model.training
        model.eval()
        self._capture_eval = True
        try:
            for start in range(0, len(ids), batch_size):
                rows = ids[start:start + batch_size]
                length = max(len(r) for r in rows)
                input_ids = torch.zeros(len(rows), length, dtype=torch.long)
                attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
                for i, r in enumerate(rows):
                    input_ids[i, : len(r)] = torch.tensor(r)
                    attention_mask[i, : len(r)] = 1
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
                segments, n = padded_segments(attention_mask.to(device), input_ids.shape)
                pooled.append(sequence_means(self._hidden, segments, n).cpu())
                self._hidden = None
        finally:
            self._capture_eval = False
            model.train(was_training)
        reps = torch.cat(pooled)
        out = {"rows": float(len(reps)), "mmd": float(gaussian_mmd2(reps[~is_target], reps[is_target]))}
        if self.head is not None:
            predicted = self.head(reps.to(next(self.head.parameters()).device)).argmax(-1).cpu()
            out["head_accuracy"] = float((predicted == is_target.long()).float().mean())
        return out

    # -- logging and checkpoints --------------------------------------------------------------------------
    def policy_metrics(self) -> dict[str, float]:
        s, out = {k: float(v) for k, v in self._sums.items()}, {}
        if s["batches"]:
            out["sft/domain/aux_loss"] = s["aux"] / s["batches"]
            out["sft/domain/strength"] = self._strength
        if s["seen"]:
            out["sft/domain/head_accuracy"] = s["correct"] / s["seen"]
        self._sums = dict.fromkeys(s, 0.0)
        return out

    def policy_state(self) -> dict:
        if self.head is None:
            return {}
        return {"head": {k: encode_array(v.detach().cpu().float().numpy()) for k, v in self.head.state_dict().items()}}

    def load_policy_state(self, state: dict) -> None:
        if state.get("head"):
            self._saved_head = state["head"]
            if self.head is not None:
                self._load_head(self._saved_head)

    def _load_head(self, arrays: dict) -> None:
        device = next(self.head.parameters()).device
        self.head.load_state_dict({k: torch.from_numpy(decode_array(v)).to(device) for k, v in arrays.items()})
