"""Content keys that identify a training sequence from its tokens, both in a batch and in the dataset.

A row is identified by its token ids and by which of them are trained on (the label mask), not by its position:
that survives shuffling, dataloader workers, sharding across processes, padding-free concatenation and packing,
with nothing added to the batch. The key is a multilinear hash (random 64-bit multiplier per position, wrapping
arithmetic), cheap to compute on the accelerator inside the forward hook without a host sync, then finalised
with the sequence length on the host. Identical rows get identical keys, and so share statistics.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from .hashing import splitmix64

_MULT_SEED = np.uint64(0x5DEECE66D1234567)
# Mixes the length into the key; the same wrapping product is computed on the device and on the host.
_LENGTH_MULT = np.uint64(0x9E3779B97F4A7C15)
_LENGTH_MULT_I64 = int(_LENGTH_MULT.view(np.int64))
_tables: dict[tuple[str, int], torch.Tensor] = {}


def position_multipliers(n: int) -> np.ndarray:
    """Odd 64-bit multipliers for positions ``0..n-1`` (a fixed function of the position).

    Example:
        >>> m = position_multipliers(3)
        >>> bool((m & np.uint64(1)).all())
        True
    """
    return splitmix64(np.arange(n, dtype=np.uint64) ^ _MULT_SEED) | np.uint64(1)


def _device_table(n: int, device: torch.device) -> torch.Tensor:
    size = 4096
    while size < n:
        size *= 2
    key = (str(device), size)
    table = _tables.get(key)
    if table is None:
        table = torch.from_numpy(position_multipliers(size).view(np.int64)).to(device)
        _tables[key] = table
    return table


def finalize_keys(raw: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Mix the raw multilinear sums with the sequence lengths into the final ``uint64`` keys (host side)."""
    raw = np.asarray(raw).view(np.uint64) if np.asarray(raw).dtype == np.int64 else np.asarray(raw, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return raw ^ (np.asarray(lengths, dtype=np.uint64) * _LENGTH_MULT)


def _finalize_on_device(raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    # int64 wraps like uint64 bit for bit; the host reads the result with ``.view(np.uint64)``.
    return raw ^ (lengths * _LENGTH_MULT_I64)


@torch.no_grad()
def padded_keys(input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Final keys ``(B,)`` (int64 bits of the uint64 key) of a padded ``(B, T)`` batch, on its device."""
    return _finalize_on_device(*raw_keys_padded(input_ids, labels, attention_mask))


@torch.no_grad()
def segment_keys(
    input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor, num_segments: int
) -> torch.Tensor:
    """Final keys ``(num_segments,)`` of a padding-free / packed ``(1, N)`` row, on its device."""
    return _finalize_on_device(*raw_keys_segments(input_ids, labels, position_ids, num_segments))


@torch.no_grad()
def raw_keys_padded(
    input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw keys and lengths ``(B,)`` of a padded ``(B, T)`` batch (left or right padding), on its device."""
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        mask = attention_mask.bool()
    pos = (mask.long().cumsum(1) - 1).clamp_(min=0)
    trained = (labels != -100) & mask & (pos > 0)
    values = (input_ids.long() * 2 + trained.long() + 1) * mask.long()
    table = _device_table(input_ids.shape[1], input_ids.device)
    raw = (table[pos] * values).sum(1)
    return raw, mask.sum(1)


@torch.no_grad()
def segment_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Segment index of every token of a padding-free ``(1, N)`` row: a new segment starts where position is 0."""
    return (position_ids[0] == 0).long().cumsum(0) - 1


@torch.no_grad()
def raw_keys_segments(
    input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw keys and lengths ``(num_segments,)`` of a padding-free / packed ``(1, N)`` row."""
    pos = position_ids[0].long()
    seg = segment_ids(position_ids)
    trained = (labels[0] != -100) & (pos > 0)
    values = input_ids[0].long() * 2 + trained.long() + 1
    table = _device_table(int(input_ids.shape[1]), input_ids.device)
    raw = torch.zeros(num_segments, dtype=torch.long, device=input_ids.device)
    raw.index_add_(0, seg, table[pos] * values)
    lengths = torch.zeros(num_segments, dtype=torch.long, device=input_ids.device)
    lengths.index_add_(0, seg, torch.ones_like(seg))
    return raw, lengths


def _flat_keys(ids: np.ndarray, trained: np.ndarray, pos: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
    mult = position_multipliers(int(pos.max()) + 1 if pos.size else 1)
    with np.errstate(over="ignore"):
        contrib = mult[pos] * (ids.astype(np.uint64) * np.uint64(2) + trained.astype(np.uint64) + np.uint64(1))
    raw = np.zeros(len(starts), dtype=np.uint64)
    nonempty = lengths > 0
    if nonempty.any():
        raw[nonempty] = np.add.reduceat(contrib, starts[nonempty])
    return finalize_keys(raw, lengths)


def _list_array(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if isinstance(arr, pa.ChunkedArray):  # empty chunked array
        arr = pa.concat_arrays(arr.chunks) if arr.num_chunks else pa.array([], type=arr.type)
    offsets = arr.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = arr.values.to_numpy(zero_copy_only=False)
    base = offsets[0]
    return offsets - base, values[base : offsets[-1]] if len(offsets) else values[:0]


def iter_dataset_keys(dataset, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Keys of every sequence in a tokenised ``datasets.Dataset``, batch by batch.

    Yields ``(row, keys, n_trained)``: for an unpacked dataset one key per row; for a packed one (a
    ``seq_lengths`` column) one key per packed segment, ``row`` giving the pack it sits in. ``labels`` default to
    ``input_ids`` (everything after the first token is trained).
    """
    columns = [c for c in ("input_ids", "labels", "seq_lengths") if c in dataset.column_names]
    if "input_ids" not in columns:
        raise ValueError(
            "the training dataset seen by the dataloader has no `input_ids` column; sft-callbacks tracks tokenised "
            "datasets (TRL's SFTTrainer tokenises for you; with the plain Trainer, tokenise before training)"
        )
    view = dataset.select_columns(columns).with_format("arrow")
    for start in range(0, len(dataset), batch_rows):
        table = view[start : start + batch_rows]
        offsets, ids = _list_array(table.column("input_ids"))
        if "labels" in columns:
            loff, labels = _list_array(table.column("labels"))
            if not np.array_equal(loff, offsets):
                raise ValueError("`labels` and `input_ids` differ in length in some rows of the training dataset")
            is_label = labels != -100
        else:
            is_label = np.ones(ids.shape[0], dtype=bool)
        n = len(offsets) - 1
        if "seq_lengths" in columns:
            soff, seg_lengths = _list_array(table.column("seq_lengths"))
            rows = np.repeat(np.arange(start, start + n), np.diff(soff))
            seg_lengths = seg_lengths.astype(np.int64)
        else:
            rows = np.arange(start, start + n)
            seg_lengths = np.diff(offsets)
        seg_starts = np.concatenate([[0], np.cumsum(seg_lengths)[:-1]]).astype(np.int64)
        seg_of_token = np.repeat(np.arange(len(seg_lengths)), seg_lengths)
        pos = np.arange(ids.shape[0], dtype=np.int64) - seg_starts[seg_of_token]
        trained = is_label & (pos > 0)
        keys = _flat_keys(ids, trained, pos, seg_starts, seg_lengths)
        n_trained = np.bincount(seg_of_token, weights=trained, minlength=len(seg_lengths)).astype(np.int64)
        yield rows, keys, n_trained
