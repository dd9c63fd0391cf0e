"""Per-row difficulty scores of a tokenised training set: trained-token length, and the model's own loss.

Both score the rows of the dataset the Trainer's dataloader indexes (TRL's prepared dataset: ``input_ids``,
``labels``, and ``seq_lengths`` when ``packing=True``), one value per row, in row order. A row's trained tokens
are the positions after the first whose label is not ``-100``, exactly the tokens the Trainer's loss and the
:class:`~sft_callbacks.engine.tracking.SampleTracker` count. For packed data a row is a pack of several samples: its
length is the sum over its samples, its loss the mean over all their trained tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from . import row_keys

def length_difficulty(dataset=None, *, index=None) -> np.ndarray:
    """Number of trained tokens of every dataloader row (float64, one value per row).

    Give either the tokenised ``dataset`` (read once, batch by batch, through Arrow: O(tokens)) or the
    session's :class:`~sft_callbacks.engine.tracking.RowIndex` as ``index`` (it already holds the count per sample:
    O(rows), no pass over the data). For a packed dataset the value of a pack is the sum over its samples.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"input_ids": [[5, 6, 7, 8], [5, 6]],
        ...                                  "labels": [[-100, -100, 7, 8], [5, 6]]})
        >>> length_difficulty(ds).tolist()  # row 1: position 0 is never a target
        [2.0, 1.0]
    """
    if index is not None:
        per_seq = index.n_trained[index.seq_uid].astype(np.float64)
        return np.bincount(index.seq_row, weights=per_seq, minlength=index.num_rows).astype(np.float64)
    if dataset is None:
        raise ValueError("length_difficulty needs a tokenised dataset or a RowIndex")
    out = np.zeros(len(dataset), dtype=np.float64)
    for rows, _keys, n_trained in row_keys.iter_dataset_keys(dataset):
        np.add.at(out, rows, n_trained)
    return out


class LossScores(NamedTuple):
    """Result of :func:`loss_difficulty`: per-row mean NLL, trained tokens per row, and the wall time."""

    loss: np.ndarray
    n_tokens: np.ndarray
    seconds: float


def pad_right(examples: list[dict], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Default collate of :func:`loss_difficulty`: right-pad ``input_ids`` / ``labels`` into a batch.

    Returns ``input_ids`` (padded with ``pad_token_id``), ``attention_mask`` and ``labels`` (padded with -100).

    Example:
        >>> pad_right([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}])["labels"]
        tensor([[-100,    2,    3],
                [   4, -100, -100]])
    """
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.as_tensor(e["labels"], dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _list_offsets(dataset, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Arrow offsets and flat values of a list column (no Python objects per row)."""
    arr = dataset.select_columns([column]).with_format("arrow")[:][column].combine_chunks()
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return offsets - offsets[0], values


def _sequences(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, start, length)`` of every sequence: one per row, or one per packed sample for packed data."""
    offsets, _ = _list_offsets(dataset, "input_ids")
    n = len(offsets) - 1
    if "seq_lengths" not in dataset.column_names:
        return np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.diff(offsets)
    seg_offsets, seg_lengths = _list_offsets(dataset, "seq_lengths")
    seg_lengths = seg_lengths.astype(np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(seg_offsets))
    ends = np.cumsum(seg_lengths)
    row_start = np.concatenate([[0], ends])[seg_offsets[:-1]]  # cumulative length before each pack's first sample
    starts = ends - seg_lengths - np.repeat(row_start, np.diff(seg_offsets))
    return rows, starts, seg_lengths


def shard_sequences(order: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The sequences process ``rank`` scores: every ``world_size``-th of ``order``, padded to an equal count.

    Every process must run the same number of forwards (sharded models gather parameters in each one), so the
    shorter shards repeat their last sequence; the repeats are scored and dropped.

    Example:
        >>> shard_sequences(np.arange(5), 1, 2).tolist()
        [1, 3, 3]
    """
    per_rank = math.ceil(len(order) / world_size)
    mine = np.asarray(order)[rank::world_size]
    if len(mine) == 0:
        mine = np.asarray(order)[:1]
    return np.concatenate([mine, np.repeat(mine[-1:], per_rank - len(mine))])


def _has_fused_head(model) -> bool:
    """Whether ``model.forward`` is TRL's fused LM head (``fused_lm_head=True`` gives per-token log-probs).

    Looks through wrappers that keep ``__wrapped__`` (accelerate's mixed-precision autocast and fp32 casts).
    """
    fn = getattr(model.forward, "__func__", model.forward)
    for _ in range(8):
        code = getattr(fn, "__code__", None)
        if code is not None:
            keyword_only = code.co_varnames[code.co_argcount : code.co_argcount + code.co_kwonlyargcount]
            if "fused_lm_head" in keyword_only:
                return True
        fn = getattr(fn, "__wrapped__", None)
        if fn is None:
            return False
    return False


def _batch_nll(model, batch: dict[str, torch.Tensor], fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL and number of trained tokens per sequence of a padded batch (on the model's device)."""
    labels = batch["labels"]
    target = labels[:, 1:]
    mask = target != -100
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if fused:
        # Pre-shifted labels: scored position by position, without materialising the (B, T, V) logits. Passing
        # them as `shift_labels` (not `labels`) also keeps the tracker's hook from recording this forward.
        shift = torch.cat([target, torch.full_like(target[:, :1], -100)], dim=1)
        out = model(**inputs, shift_labels=shift, fused_lm_head=True)
        logp = out.log_probs[:, :-1].float()
        return -(logp * mask).sum(1), mask.sum(1)
    logits = model(**inputs, use_cache=False).logits
    nll = torch.stack(
        [  # row by row: only one row's logits are upcast to float32 at a time
            F.cross_entropy(logits[i, :-1].float(), target[i], ignore_index=-100, reduction="sum")
            for i in range(logits.shape[0])
        ]
    )
    return nll, mask.sum(1)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@torch.no_grad()
def loss_difficulty(
    model: torch.nn.Module,
    dataset,
    *,
    batch_size: int = 16,
    collate: Callable[[list[dict]], dict[str, torch.Tensor]] | None = None,
    progress: bool = True,
    desc: str = "Scoring difficulty",
) -> LossScores:
    """The model's mean NLL over the trained tokens of every dataloader row: one batched, no-grad forward pass.

    Sequences are sorted by length (longest first, so an out-of-memory error shows at once) and batched
    ``batch_size`` at a time, right-padded by ``collate`` (default :func:`pad_right`), on the model's device, in
    eval mode (no dropout; the model's training mode is restored afterwards). With TRL's fused LM head
    (``SFTTrainer`` adds it) the per-token log-probabilities come without materialising the logits; otherwise from
    the logits, one row at a time in float32. Packed rows are scored sample by sample (no attention across
    samples) and a pack gets the mean over all its trained tokens. A row without a trained token scores 0.
    In a distributed run each process scores a 1/world_size share and the results are gathered.

    Cost: one forward pass over the training set (about a third of one training epoch), reported in
    ``seconds`` (wall time on this process).

    Args:
        model: the causal LM (e.g. ``trainer.model``).
        dataset: the tokenised dataset the dataloader indexes (``input_ids``; ``labels`` default to ``input_ids``).
        batch_size: sequences per forward; lower it if the pass runs out of memory.
        collate: turns a list of ``{"input_ids", "labels"}`` dicts into the model's keyword arguments plus
            ``labels`` (padded with -100).
        progress: show a tqdm progress bar (on the local main process).

    Returns:
        :class:`LossScores` ``(loss, n_tokens, seconds)``: per-row mean NLL (float64), trained tokens per row.

    Example:
        >>> scores = loss_difficulty(trainer.model, trainer.train_dataset, batch_size=32)  # doctest: +SKIP
        >>> print(f"scored in {scores.seconds:.1f}s; hardest row: {scores.loss.argmax()}")  # doctest: +SKIP
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    start_time = time.perf_counter()
    rows, starts, lengths = _sequences(dataset)
    rank, world = _distributed()
    order = np.argsort(-lengths, kind="stable")
    mine = shard_sequences(order, rank, world) if world > 1 else order
    nll, ntok = _score_sequences(model, dataset, (rows, starts, lengths), mine, batch_size, collate or pad_right,
                                 progress and rank == 0, desc)
    seq_nll = np.zeros(len(lengths), dtype=np.float64)
    seq_n = np.zeros(len(lengths), dtype=np.float64)
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (mine, nll, ntok))
    else:
        parts = [(mine, nll, ntok)]
    for idx, part_nll, part_n in parts:
        seq_nll[idx] = part_nll  # repeated padding sequences write the same value twice
        seq_n[idx] = part_n
    row_nll = np.bincount(rows, weights=seq_nll, minlength=len(dataset))
    row_n = np.bincount(rows, weights=seq_n, minlength=len(dataset))
    loss = np.divide(row_nll, row_n, out=np.zeros(len(dataset)), where=row_n > 0)
    return LossScores(loss=loss, n_tokens=row_n, seconds=time.perf_counter() - start_time)


def _score_sequences(model, dataset, sequences, mine, batch_size, collate, progress, desc):
    """Summed NLL and trained tokens of the sequences ``mine`` (in that order), ``batch_size`` per no-grad forward."""
    rows, starts, lengths = sequences
    has_labels = "labels" in dataset.column_names
    view = dataset.select_columns(["input_ids", "labels"] if has_labels else ["input_ids"])
    device = getattr(model, "device", None) or next(model.parameters()).device
    fused = _has_fused_head(model)
    nll = np.zeros(len(mine), dtype=np.float64)
    ntok = np.zeros(len(mine), dtype=np.float64)
    n_batches = math.ceil(len(mine) / batch_size)
    bar = None
    if n_batches > 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches, desc=desc, unit="batch", disable=not progress)
    was_training = model.training
    model.eval()
    try:
        for b in range(n_batches):
            seqs = mine[b * batch_size : (b + 1) * batch_size]
            needed = np.unique(rows[seqs])
            fetched = view[needed.tolist()]
            where = {int(r): i for i, r in enumerate(needed)}
            examples = []
            for s in seqs:
                i, a, n = where[int(rows[s])], int(starts[s]), int(lengths[s])
                ids = fetched["input_ids"][i][a : a + n]
                labels = fetched["labels"][i][a : a + n] if has_labels else ids
                examples.append({"input_ids": ids, "labels": labels})
            batch = {k: v.to(device) for k, v in collate(examples).items()}
            s_nll, s_n = _batch_nll(model, batch, fused)
            nll[b * batch_size : b * batch_size + len(seqs)] = s_nll.double().cpu().numpy()
            ntok[b * batch_size : b * batch_size + len(seqs)] = s_n.double().cpu().numpy()
            bar.update(1)
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return nll, ntok
