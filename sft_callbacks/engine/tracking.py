"""SampleTracker: per-sample statistics captured from the forward passes the Trainer already makes.

A forward hook on the model reads, per sequence of the batch, the summed NLL over exactly the trained tokens
(TRL's fused head gives per-token ``log_probs`` and ``label_mask``; with the plain Trainer they come from the
logits), the number of correct top-1 predictions, the summed entropy where the forward gives it, and the
sequence's content key (see :mod:`sft_callbacks.engine.row_keys`). Everything stays on the device until a flush
(log / eval / save / epoch end), when the buffered records are copied once, merged across processes and folded
into flat per-row arrays. The hook never adds a forward pass and never synchronises the device.
"""

from __future__ import annotations

from typing import NamedTuple

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import row_keys
from .sampling import decode_array, encode_array

logger = logging.getLogger(__name__)


@dataclass
class RowIndex:
    """Maps content keys to dataset rows.

    ``keys`` are the sorted unique keys; ``seq_uid[i]`` is the key index of sequence ``i`` (a row, or a segment of a
    pack), ``seq_row[i]`` the dataloader row it sits in, and ``row_user[r]`` the user's dataset row of
    dataloader row ``r`` (``None`` for packed data, where a row is a pack of several samples).
    """

    keys: np.ndarray
    seq_uid: np.ndarray
    seq_row: np.ndarray
    n_trained: np.ndarray
    num_rows: int
    packed: bool
    row_user: np.ndarray | None = None
    num_user_rows: int | None = None

    @classmethod
    def from_dataset(cls, dataset, row_user: np.ndarray | None, num_user_rows: int | None) -> RowIndex:
        rows, keys, n_trained = [], [], []
        for r, k, n in row_keys.iter_dataset_keys(dataset):
            rows.append(r)
            keys.append(k)
            n_trained.append(n)
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        keys = np.concatenate(keys) if keys else np.zeros(0, np.uint64)
        n_trained = np.concatenate(n_trained) if n_trained else np.zeros(0, np.int64)
        uniq, seq_uid = np.unique(keys, return_inverse=True)
        # int32 indices while they fit: part of the per-sample memory budget.
        idx_dtype = np.int32 if max(len(dataset), len(keys)) < 2**31 else np.int64
        n_uid = np.zeros(len(uniq), dtype=np.int32)
        n_uid[seq_uid] = n_trained
        packed = "seq_lengths" in dataset.column_names
        return cls(
            keys=uniq,
            seq_uid=seq_uid.astype(idx_dtype),
            seq_row=rows.astype(idx_dtype),
            n_trained=n_uid,
            num_rows=len(dataset),
            packed=packed,
            row_user=None if packed or row_user is None else row_user.astype(idx_dtype),
            num_user_rows=None if packed else num_user_rows,
        )

    def layout(self) -> str:
        """Fingerprint of which key sits in which row: the same rows in another order give another fingerprint."""
        import hashlib

        digest = hashlib.sha256(np.asarray(self.seq_row, dtype=np.int64).tobytes())
        digest.update(np.asarray(self.keys[self.seq_uid], dtype=np.uint64).tobytes())
        return digest.hexdigest()[:32]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Key index of each key, -1 where the key is not in the dataset."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)

    def nbytes(self) -> dict[str, int]:
        """Bytes held: ``per_sample`` (key + trained-token count) and ``mapping`` (row <-> sample <-> user row)."""
        mapping = self.seq_uid.nbytes + self.seq_row.nbytes + (self.row_user.nbytes if self.row_user is not None else 0)
        return {"per_sample": self.keys.nbytes + self.n_trained.nbytes, "mapping": mapping}

    def user_uid(self) -> np.ndarray:
        """For unpacked data: key index of every row of the user's dataset, -1 for rows TRL dropped."""
        out = np.full(self.num_user_rows, -1, dtype=np.int64)
        out[self.row_user] = self.row_uid()
        return out

    def row_uid(self) -> np.ndarray:
        """For unpacked data: key index of every dataloader row."""
        out = np.empty(self.num_rows, dtype=np.int64)
        out[self.seq_row] = self.seq_uid
        return out


# Fixed per-key statistics (bytes): times_seen 4, last_step 4, loss_last 4, loss_first 4, loss_sum 8,
# acc_last 4, acc_sum 4, entropy_last 4, entropy_sum 4 = 40; plus the key 8 and n_trained 4 in RowIndex.
_STAT_FIELDS = {
    "times_seen": np.uint32,
    "last_step": np.int32,
    "loss_last": np.float32,
    "loss_first": np.float32,
    "loss_sum": np.float64,
    "acc_last": np.float32,
    "acc_sum": np.float32,
    "entropy_last": np.float32,
    "entropy_sum": np.float32,
}


class KeyLookup:
    """Per-sample values looked up by content key on the batch's device, inside the forward hook.

    The keys (``RowIndex.keys``) and ``values`` (same order) are sorted once as signed 64-bit integers and copied
    to each device once; a lookup is one ``searchsorted``. Keys not in the table get ``missing``.

    Example:
        >>> lookup = KeyLookup(np.array([5, 9], dtype=np.uint64), np.array([0.5, 2.0]), missing=1.0)
        >>> lookup(torch.tensor([9, 7]))
        tensor([2., 1.], dtype=torch.float64)
    """

    def __init__(self, keys: np.ndarray, values: np.ndarray, missing):
        signed = np.asarray(keys).view(np.int64)
        order = np.argsort(signed, kind="stable")
        self._keys, self._values, self._missing = signed[order], np.asarray(values)[order], missing
        self._on_device: dict = {}

    def __call__(self, keys: torch.Tensor) -> torch.Tensor:
        table = self._on_device.get(keys.device)
        if table is None:
            table = (torch.from_numpy(self._keys.copy()).to(keys.device),
                     torch.from_numpy(self._values.copy()).to(keys.device))
            self._on_device[keys.device] = table
        sorted_keys, values = table
        pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
        return torch.where(sorted_keys[pos] == keys, values[pos], torch.full_like(values[pos], self._missing))


_N_FLOATS = 6  # per sequence, in this order: the fields of SequenceRecords after ``keys``


class SequenceRecords(NamedTuple):
    """What one flush read from the forwards since the last: per captured sequence, its content key and sums over
    its trained tokens, plus when it was seen. A capture stacks the six float fields on the device (in field order)
    and copies them to the host once per flush.

    Example:
        >>> r = SequenceRecords.empty()
        >>> len(r.keys), r.nll_sum.dtype.name
        (0, 'float32')
    """

    keys: np.ndarray  # uint64 content key of the sequence
    nll_sum: np.ndarray  # summed negative log-likelihood of its trained tokens
    tokens: np.ndarray  # trained tokens
    correct: np.ndarray  # trained tokens predicted top-1
    entropy_sum: np.ndarray  # summed predictive entropy (NaN where the head does not give it)
    min_logp: np.ndarray  # log-probability of its least likely trained token
    margin_sum: np.ndarray  # summed AUM margin (NaN with the fused head: no logits)
    steps: np.ndarray  # optimizer step when seen
    epochs: np.ndarray  # epoch when seen

    @classmethod
    def from_arrays(cls, keys, floats, steps, epochs) -> SequenceRecords:
        """From the keys, the ``(6, n)`` float block in field order, and the steps and epochs."""
        return cls(keys, *floats, steps, epochs)

    @classmethod
    def empty(cls) -> SequenceRecords:
        return cls.from_arrays(np.zeros(0, np.uint64), np.zeros((_N_FLOATS, 0), np.float32), np.zeros(0, np.int64),
                               np.zeros(0, np.int64))

    @classmethod
    def concat(cls, parts) -> SequenceRecords:
        """One record from several (e.g. every process's), in order."""
        return cls(*(np.concatenate(column) for column in zip(*parts)))

    def select(self, mask: np.ndarray) -> SequenceRecords:
        return SequenceRecords(*(column[mask] for column in self))


class VisitLog:
    """Every training visit of every sample, in order: the history the noise scores read.

    Per visit: the sample (``uid``, uint32), the optimizer ``step`` (int32), the mean NLL over its trained
    tokens (``loss``, float16), whether the greedy prediction matched every trained token (``correct``), the
    least likely trained token's log-probability (``min_logp``, float16) and the mean AUM margin over its
    trained tokens (``margin``, float16; NaN under TRL's fused head, which gives no runner-up logit): 15 bytes
    per visit, so three epochs over 10M rows hold 450 MB.

    Example:
        >>> log = VisitLog()
        >>> log.append(np.array([0, 1]), np.array([3, 3]), np.array([0.1, 2.0]), np.array([True, False]),
        ...            np.array([-0.2, -3.0]), np.array([np.nan, np.nan]))
        >>> log.arrays()["correct"].tolist(), len(log)
        ([True, False], 2)
    """

    BYTES_PER_VISIT = 15
    _DTYPES = {"uid": np.uint32, "step": np.int32, "loss": np.float16, "correct": np.bool_, "min_logp": np.float16,
               "margin": np.float16}

    def __init__(self):
        self._chunks: list[dict[str, np.ndarray]] = []

    def append(self, uid, step, loss, correct, min_logp, margin) -> None:
        """Add visits (arrays of equal length, in visit order)."""
        if len(uid) == 0:
            return
        values = {"uid": uid, "step": step, "loss": loss, "correct": correct, "min_logp": min_logp, "margin": margin}
        with np.errstate(over="ignore"):  # float16 saturates at 65504: a loss that large reads as inf, not garbage
            self._chunks.append({k: np.asarray(v).astype(self._DTYPES[k]) for k, v in values.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The log as one array per field (the chunks are concatenated once, into one, until the next append)."""
        if not self._chunks:
            return {k: np.zeros(0, dtype=t) for k, t in self._DTYPES.items()}
        if len(self._chunks) > 1:
            self._chunks = [{k: np.concatenate([c[k] for c in self._chunks]) for k in self._DTYPES}]
        return self._chunks[0]

    def __len__(self) -> int:
        return sum(len(c["uid"]) for c in self._chunks)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for c in self._chunks for a in c.values())

    def state_dict(self) -> dict:
        return {k: encode_array(v) for k, v in self.arrays().items()}

    @classmethod
    def from_state_dict(cls, d: dict) -> VisitLog:
        log = cls()
        arrays = {k: decode_array(v) for k, v in d.items()}
        if len(arrays.get("uid", ())):
            log._chunks = [arrays]
        return log


@dataclass
class SampleStats:
    """Flat per-key arrays of training statistics (see ``_STAT_FIELDS``) plus per-epoch loss sums and counts."""

    size: int
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    epoch_sum: dict[int, np.ndarray] = field(default_factory=dict)
    epoch_count: dict[int, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        for name, dtype in _STAT_FIELDS.items():
            if name not in self.arrays:
                fill = np.nan if np.issubdtype(dtype, np.floating) and name not in ("loss_sum", "acc_sum", "entropy_sum") else 0
                if name == "last_step":
                    fill = -1
                self.arrays[name] = np.full(self.size, fill, dtype=dtype)

    def __getattr__(self, name):
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def epoch_loss_matrix(self) -> np.ndarray:
        """Mean loss of every sample in every epoch so far, ``(size, n_epochs)``, NaN where not seen."""
        epochs = sorted(self.epoch_sum)
        if not epochs:
            return np.zeros((self.size, 0), dtype=np.float32)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.stack(
                [np.where(self.epoch_count[e] > 0, self.epoch_sum[e] / self.epoch_count[e], np.nan) for e in epochs], 1
            )

    @property
    def nbytes_fixed(self) -> int:
        """Bytes of the fixed per-sample arrays (not the per-epoch history)."""
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def nbytes_history(self) -> int:
        """Bytes of the per-epoch loss sums and counts."""
        return sum(a.nbytes for a in self.epoch_sum.values()) + sum(a.nbytes for a in self.epoch_count.values())

    def apply(self, uid: np.ndarray, loss: np.ndarray, acc: np.ndarray, ent: np.ndarray, step: np.ndarray, epoch: np.ndarray):
        """Fold observations (in order) into the arrays. ``uid`` must be valid key indices."""
        if len(uid) == 0:
            return
        a = self.arrays
        np.add.at(a["times_seen"], uid, 1)
        np.add.at(a["loss_sum"], uid, loss)
        np.add.at(a["acc_sum"], uid, np.nan_to_num(acc))
        np.add.at(a["entropy_sum"], uid, np.nan_to_num(ent))
        # First and last occurrence of each key within this batch of observations, in order.
        _, first = np.unique(uid, return_index=True)
        _, rev = np.unique(uid[::-1], return_index=True)
        last = len(uid) - 1 - rev
        u_first, u_last = uid[first], uid[last]
        never = np.isnan(a["loss_first"][u_first])
        a["loss_first"][u_first[never]] = loss[first[never]]
        a["loss_last"][u_last] = loss[last]
        a["acc_last"][u_last] = acc[last]
        a["entropy_last"][u_last] = ent[last]
        a["last_step"][u_last] = step[last]
        for e in np.unique(epoch):
            sel = epoch == e
            if int(e) not in self.epoch_sum:
                self.epoch_sum[int(e)] = np.zeros(self.size, dtype=np.float32)
                self.epoch_count[int(e)] = np.zeros(self.size, dtype=np.uint16)
            np.add.at(self.epoch_sum[int(e)], uid[sel], loss[sel])
            np.add.at(self.epoch_count[int(e)], uid[sel], 1)

    def state_dict(self) -> dict:
        return {
            "size": self.size,
            "arrays": {k: encode_array(v) for k, v in self.arrays.items()},
            "epochs": {str(e): [encode_array(self.epoch_sum[e]), encode_array(self.epoch_count[e])] for e in self.epoch_sum},
        }

    @classmethod
    def from_state_dict(cls, d: dict) -> SampleStats:
        stats = cls(size=int(d["size"]), arrays={k: decode_array(v) for k, v in d["arrays"].items()})
        for e, (s, c) in d["epochs"].items():
            stats.epoch_sum[int(e)] = decode_array(s)
            stats.epoch_count[int(e)] = decode_array(c)
        return stats


def user_row_mapping(dataset, args) -> tuple[np.ndarray | None, int | None]:
    """Which row of the user's dataset each dataloader row is, and how many rows the user's dataset had.

    TRL's ``SFTTrainer`` maps the user's dataset (row order kept), then may ``filter`` (rows left without a
    trained token after truncation) and ``shuffle``; both keep an indices mapping onto the mapped table, whose
    rows are the user's rows. The plain ``Trainer`` uses the user's dataset as it is.
    """
    try:
        from trl import SFTConfig
    except ImportError:  # pragma: no cover - trl is a dependency
        SFTConfig = ()
    indices = getattr(dataset, "_indices", None)
    if "seq_lengths" in dataset.column_names:
        return None, None
    prepared = isinstance(args, SFTConfig) and not (args.dataset_kwargs or {}).get("skip_prepare_dataset", False)
    transformed = prepared and (args.max_length is not None or getattr(args, "shuffle_dataset", False))
    if transformed and indices is not None:
        rows = indices.column(0).to_numpy().astype(np.int64)
        return rows, int(dataset.data.num_rows)
    return np.arange(len(dataset), dtype=np.int64), len(dataset)


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1


def _gather(obj):
    """Every process's ``obj``, in rank order (a list of one outside distributed runs)."""
    if not _is_distributed():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


class SampleTracker:
    """Captures per-sample loss, token accuracy and entropy from the Trainer's own forward passes.

    One tracker per trainer (the session owns it). ``attach(model)`` registers a forward hook;
    ``index_train(dataset, ...)`` learns the keys of the training rows; ``flush()`` folds the buffered
    observations into :attr:`stats` (collectively: every process must call it at the same point).

    Per-step cost: a handful of element-wise ops over the ``(B, T)`` batch on its device (the key hash and
    per-row sums of tensors the forward computed anyway) and no host synchronisation. With the plain
    ``Trainer`` (no fused head), per-token log-probabilities are taken from the logits (one ``cross_entropy``
    with ``reduction="none"``, as the model's loss does).

    Example:
        >>> tracker = SampleTracker()
        >>> tracker.stats is None
        True
    """

    def __init__(self):
        self.index: RowIndex | None = None
        self.stats: SampleStats | None = None
        self.step = 0
        self.epoch = 0
        self.nonfinite = 0
        self.unmatched = 0
        self.observed = 0
        self._pending: list[tuple] = []
        self._eval_pending: list[tuple] = []
        self._handle = None
        self._model = None
        self._loss_weights: np.ndarray | None = None
        self._loss_lookup: KeyLookup | None = None
        self._loss_terms: list = []
        self._batch_weightings: list = []
        self.eval_results: dict[str, dict] = {}
        self._eval_indices: dict[str, tuple] = {}
        self.visits = VisitLog()

    # -- hook --------------------------------------------------------------------------------------------
    def attach(self, model: torch.nn.Module) -> None:
        """Register the forward hook on ``model`` (idempotent)."""
        if self._handle is not None and self._model is model:
            return
        self.detach()
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)
        self._model = model

    def detach(self) -> None:
        """Remove the forward hook."""
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self._model = None

    def _hook(self, module, args, kwargs, output):
        with torch.no_grad():
            record = self._record(kwargs, output)
        if record is None:
            return None
        keys, floats, to_tokens = record
        if module.training:
            self._pending.append((keys, floats, self.step, self.epoch))
            weights = self._sample_weights(keys) if self._loss_weights is not None else None
            for rule in self._batch_weightings:
                w = rule(keys, floats)
                if w is not None:
                    weights = w if weights is None else weights * w.to(weights.dtype)
            weights = None if weights is None else to_tokens(weights)
            extra = self._extra_loss(kwargs, output, keys)
            if weights is not None or extra is not None:
                return self._adjust_loss(kwargs, output, weights, None if extra is None else to_tokens(extra))
        else:
            self._eval_pending.append((keys, floats, self.step, self.epoch))
        return None

    def _record(self, kwargs, output):
        """``(keys, [nll_sum, n_tokens, n_correct, entropy_sum, min_logp, margin_sum], to_tokens)`` per sequence,
        or ``None``."""
        input_ids = kwargs.get("input_ids")
        labels = kwargs.get("labels")
        if input_ids is None or labels is None or input_ids.dim() != 2:
            return None
        stats = _token_stats(output, input_ids, labels)
        if stats is None:
            return None
        mask, logp, entropy, top1, margin = stats
        maskf = mask.float()
        attention_mask = kwargs.get("attention_mask")
        position_ids = kwargs.get("position_ids")
        if attention_mask is None and position_ids is not None and input_ids.shape[0] == 1:
            cu = kwargs.get("cu_seq_lens_q")
            n_seg = int(cu.numel() - 1) if cu is not None else int((position_ids[0] == 0).sum())
            keys = row_keys.segment_keys(input_ids, labels, position_ids, n_seg)
            seg = row_keys.segment_ids(position_ids)[1:]

            def per_seq(x):
                out = torch.zeros(n_seg, dtype=torch.float32, device=x.device)
                return out.index_add_(0, seg, x[0])

            def min_seq(x):
                out = torch.full((n_seg,), float("inf"), dtype=torch.float32, device=x.device)
                return out.scatter_reduce_(0, seg, x[0], "amin")

            def to_tokens(w):
                return w[seg][None, :]

        else:
            if attention_mask is not None and attention_mask.dim() != 2:
                return None  # 4D custom masks: no per-row identity to recover
            keys = row_keys.padded_keys(input_ids, labels, attention_mask)

            def per_seq(x):
                return x.sum(1)

            def min_seq(x):
                return x.amin(1)

            def to_tokens(w):
                return w[:, None]

        nan = torch.full_like(keys, float("nan"), dtype=torch.float32)
        floats = torch.stack(
            [
                per_seq(-logp * maskf),
                per_seq(maskf),
                per_seq(top1 * maskf) if top1 is not None else nan,
                per_seq(entropy * maskf) if entropy is not None else nan,
                min_seq(torch.where(mask, logp, torch.inf)),  # the least likely trained token
                per_seq(margin * maskf) if margin is not None else nan,
            ]
        )
        return keys, floats, to_tokens

    def memory_per_sample(self) -> dict[str, float]:
        """Bytes per training sample: ``fixed`` statistics (incl. key), ``mapping`` (index arrays), ``history``
        (per-epoch sums) and ``visits`` (the per-visit log, :data:`VisitLog.BYTES_PER_VISIT` per visit)."""
        n = max(1, len(self.index.keys)) if self.index is not None else 1
        idx = self.index.nbytes() if self.index is not None else {"per_sample": 0, "mapping": 0}
        stats_fixed = self.stats.nbytes_fixed if self.stats is not None else 0
        history = self.stats.nbytes_history if self.stats is not None else 0
        return {"fixed": (stats_fixed + idx["per_sample"]) / n, "mapping": idx["mapping"] / n, "history": history / n,
                "visits": self.visits.nbytes / n}

    # -- loss weighting ------------------------------------------------------------------------------------
    def set_loss_weights(self, sample_weights: np.ndarray | None) -> None:
        """Per-sample loss weights (indexed like :attr:`stats`), applied from the next training forward.

        A weight scales the sample's per-token log-probabilities inside the forward's output, so the Trainer's
        own loss (summed over tokens, divided by the tokens of the whole optimizer step) stays exactly
        normalised under gradient accumulation and across processes. ``None`` turns weighting off.
        """
        self._loss_weights = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
        self._loss_lookup = None  # built from the index at the next training forward

    @property
    def loss_weights(self) -> np.ndarray | None:
        """The per-sample loss weights in force (indexed like :attr:`stats`; ``None``: no weighting)."""
        return self._loss_weights

    def _sample_weights(self, keys: torch.Tensor) -> torch.Tensor:
        if self._loss_lookup is None:
            self._loss_lookup = KeyLookup(self.index.keys, self._loss_weights, missing=1.0)
        return self._loss_lookup(keys)

    def add_batch_weighting(self, rule) -> None:
        """Weight the sequences of every training micro-batch by a rule of the batch itself, from the next forward.

        ``rule(keys, floats)`` is called inside the forward hook, without grad, with the sequences' content keys
        and their statistics (the rows of ``floats``: summed token NLL, trained tokens, correct tokens, summed
        entropy, the least token log-probability, summed margin); it returns one weight per sequence (or ``None``).
        The weights multiply the per-sample loss weights (:meth:`set_loss_weights`) and scale each sequence's
        token losses the same way, so the Trainer's normalisation is unchanged.
        """
        if rule not in self._batch_weightings:
            self._batch_weightings.append(rule)

    def remove_batch_weighting(self, rule) -> None:
        """Stop applying ``rule`` (see :meth:`add_batch_weighting`)."""
        if rule in self._batch_weightings:
            self._batch_weightings.remove(rule)

    def add_loss_term(self, term) -> None:
        """Add a per-sequence term to the training loss, from the next training forward.

        ``term(kwargs, output, keys)`` is called inside the forward hook of every training micro-batch, with grad
        enabled, with the forward's keyword arguments, its output and the sequences' content keys; it returns a
        float tensor of one value per sequence (or ``None`` to add nothing). Each sequence's value is added to the
        loss of each of its trained tokens, so the Trainer's own normalisation (token sum over the whole optimizer
        step, across gradient accumulation and processes) applies to it unchanged: the step's objective gains the
        token-weighted mean of the values.
        """
        if term not in self._loss_terms:
            self._loss_terms.append(term)

    def remove_loss_term(self, term) -> None:
        """Stop adding ``term`` (see :meth:`add_loss_term`)."""
        if term in self._loss_terms:
            self._loss_terms.remove(term)

    def _extra_loss(self, kwargs, output, keys: torch.Tensor) -> torch.Tensor | None:
        total = None
        for term in self._loss_terms:
            value = term(kwargs, output, keys)
            if value is not None:
                value = value.float()
                total = value if total is None else total + value
        return total

    @staticmethod
    def _adjust_loss(kwargs, output, token_weights: torch.Tensor | None, token_extra: torch.Tensor | None):
        """Scale each token's loss by ``token_weights`` and add ``token_extra`` to it, inside the output the
        Trainer computes its loss from."""
        log_probs = getattr(output, "log_probs", None)
        if log_probs is not None:
            # TRL's SFTTrainer computes its loss from these: -(log_probs).sum() / num_items_in_batch.
            if token_weights is not None:
                log_probs = log_probs * token_weights.to(log_probs.dtype)
            if token_extra is not None:
                log_probs = log_probs - token_extra.to(log_probs.dtype) * output.label_mask.to(log_probs.dtype)
            output.log_probs = log_probs
            return output
        logits, labels = output.logits, kwargs["labels"]
        target = labels[:, 1:]
        mask = target != -100
        n_items = kwargs.get("num_items_in_batch")
        denom = n_items if n_items is not None else mask.sum()
        if token_weights is not None:
            nll = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                reduction="none",
            ).view(target.shape)
            # The transformers causal-LM loss: summed token NLL over the step's label-token count.
            output.loss = (nll * token_weights).sum() / denom
        if token_extra is not None:
            output.loss = output.loss + (token_extra * mask).sum() / denom
        return output

    # -- indexing ------------------------------------------------------------------------------------------
    def index_train(self, dataset, row_user: np.ndarray | None = None, num_user_rows: int | None = None) -> RowIndex:
        """Learn the content keys of the training rows; keeps statistics of keys already known."""
        index = RowIndex.from_dataset(dataset, row_user, num_user_rows)
        if self.stats is not None and self.index is not None and np.array_equal(self.index.keys, index.keys):
            self.index = index
            return index
        self.index = index
        self.stats = SampleStats(len(index.keys))
        self.visits = VisitLog()
        return index

    # -- flushing -------------------------------------------------------------------------------------------
    @staticmethod
    def _drain(pending: list) -> SequenceRecords:
        if not pending:
            return SequenceRecords.empty()
        keys = torch.cat([p[0] for p in pending]).cpu().numpy().view(np.uint64)
        floats = torch.cat([p[1] for p in pending], dim=1).cpu().numpy()
        steps = np.concatenate([np.full(p[0].shape[0], p[2], dtype=np.int64) for p in pending])
        epochs = np.concatenate([np.full(p[0].shape[0], p[3], dtype=np.int64) for p in pending])
        pending.clear()
        records = SequenceRecords.from_arrays(keys, floats, steps, epochs)
        return records.select(records.tokens > 0)  # sequences with no trained token (padding segments): no signal

    def flush(self) -> int:
        """Fold buffered training observations into :attr:`stats`, merged across processes. Returns how many."""
        r = SequenceRecords.concat(_gather(self._drain(self._pending)))
        if self.index is None or len(r.keys) == 0:
            return 0
        loss = r.nll_sum / r.tokens
        finite = np.isfinite(loss)
        self.nonfinite += int((~finite).sum())
        uid = self.index.lookup(r.keys)
        known = finite & (uid >= 0)
        self.unmatched += int((finite & (uid < 0)).sum())
        r, uid, loss = r.select(known), uid[known], loss[known]
        self.visits.append(uid, r.steps, loss, r.correct == r.tokens, r.min_logp, r.margin_sum / r.tokens)
        self.stats.apply(uid, loss, r.correct / r.tokens, r.entropy_sum / r.tokens, r.steps, r.epochs)
        self.observed += int(known.sum())
        return int(known.sum())

    def flush_eval(self, dataset, name: str, step: int, args=None) -> dict | None:
        """Fold buffered evaluation observations into per-row results for eval dataset ``name``."""
        r = SequenceRecords.concat(_gather(self._drain(self._eval_pending)))
        if dataset is None or len(r.keys) == 0:
            return None
        cached = self._eval_indices.get(name)
        fingerprint = getattr(dataset, "_fingerprint", None)
        if cached is not None and cached[0] == fingerprint and fingerprint is not None:
            index = cached[1]
        else:  # keys of the eval rows are computed once per eval dataset
            row_user, n_user = user_row_mapping(dataset, args) if args is not None else (None, None)
            index = RowIndex.from_dataset(dataset, row_user, n_user)
            self._eval_indices[name] = (fingerprint, index)
        uid = index.lookup(r.keys)
        loss = r.nll_sum / r.tokens
        ok = (uid >= 0) & np.isfinite(loss)
        self.nonfinite += int((~np.isfinite(loss)).sum())
        # Every eval row is seen once per evaluation (distributed samplers may repeat a few): keep the last.
        row_loss = np.full(len(index.keys), np.nan, dtype=np.float32)
        row_acc = np.full(len(index.keys), np.nan, dtype=np.float32)
        row_loss[uid[ok]] = loss[ok]
        row_acc[uid[ok]] = (r.correct / r.tokens)[ok]
        result = {
            "step": step,
            "loss_by_uid": row_loss,
            "acc_by_uid": row_acc,
            "index": index,
        }
        self.eval_results[name] = result
        return result

    # -- checkpointing ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "stats": self.stats.state_dict() if self.stats is not None else None,
            "keys": encode_array(self.index.keys) if self.index is not None else None,
            "layout": self.index.layout() if self.index is not None else None,
            "counters": {"nonfinite": self.nonfinite, "unmatched": self.unmatched, "observed": self.observed},
            "visits": self.visits.state_dict(),
        }

    def load_state_dict(self, d: dict) -> None:
        if d.get("stats") is None:
            return
        keys = decode_array(d["keys"])
        if self.index is not None and not np.array_equal(keys, self.index.keys):
            raise ValueError(
                "the checkpoint's statistics were recorded on a different training dataset (row keys differ); "
                "resume with the same dataset and tokenizer settings"
            )
        # The sampler's weights and stream follow row positions: the same rows reordered would silently move
        # every row's weight to another row.
        if self.index is not None and d.get("layout") is not None and d["layout"] != self.index.layout():
            raise ValueError(
                "the training rows are the checkpoint's, but in a different order (a shuffle, sort or select "
                "before training?): sampling weights and the index stream follow row positions, so resuming would "
                "give rows other rows' weights; resume with the rows in the checkpoint's order (the same "
                "`.shuffle(seed=...)`), or start a new run"
            )
        self.stats = SampleStats.from_state_dict(d["stats"])
        self.visits = VisitLog.from_state_dict(d["visits"]) if d.get("visits") is not None else VisitLog()
        for k, v in d.get("counters", {}).items():
            setattr(self, k, int(v))


def _token_stats(output, input_ids, labels):
    """Per trained token: ``(mask, log_prob, entropy, top1, margin)`` from TRL's fused head (no logits: entropy
    and top-1 as it gives them, no margin) or from the logits (no entropy); ``None`` when neither fits the batch."""
    log_probs = getattr(output, "log_probs", None)
    if log_probs is not None and getattr(output, "label_mask", None) is not None:
        entropy = output.entropy.detach().float() if getattr(output, "entropy", None) is not None else None
        top1 = output.is_top1.float() if getattr(output, "is_top1", None) is not None else None
        return output.label_mask, log_probs.detach().float(), entropy, top1, None
    logits = getattr(output, "logits", None)
    if logits is None and getattr(output, "loss", None) is not None and log_probs is None:
        # A loss head that keeps neither per-token log-probabilities nor logits (trl < 1.16's chunked
        # cross-entropy head, a fused-loss kernel): training would go on with nothing captured.
        raise RuntimeError(
            f"the model's training forward returned {type(output).__name__} with a loss but neither "
            "per-token log_probs nor logits, so sft-callbacks cannot capture per-sample losses. Use "
            "trl>=1.16 (its fused LM head returns log_probs) or a loss computed from the model's logits"
        )
    if logits is None or logits.shape[:2] != input_ids.shape:
        return None
    target = labels[:, 1:]
    mask = target != -100
    flat = logits[:, :-1].detach().float()
    logp = -F.cross_entropy(
        flat.reshape(-1, flat.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="none"
    ).view(target.shape)
    top2 = flat.topk(2, dim=-1)
    top1 = ((top2.indices[..., 0] == target) & mask).float()
    # AUM margin (Pleiss et al., 2020): the given token's logit minus the best other token's.
    given = flat.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    margin = given - torch.where(top1.bool(), top2.values[..., 1], top2.values[..., 0])
    return mask, logp, None, top1, margin
