"""DSIR-style importance (Xie et al., 2023): how much each training row resembles the validation set, from
hashed n-gram bag-of-words models of both, computed in Arrow and numpy in bounded memory.

Used by :class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback` (``dsir_strength``).

Example:
    >>> w = dsir_importance(["cats purr", "stocks fell"], ["my cats purr"], num_buckets=256)
    >>> bool(w[0] > w[1])
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.hashing import mix64


_TEXT_COLUMNS = (("messages",), ("prompt", "completion"), ("text",))
_SPLIT = r"[\s\p{P}\p{S}]+"  # RE2: whitespace, punctuation, symbols (letters of any script stay words)
_PRIME = np.uint64(0x100000001B3)
_CHUNK_ROWS = 65536


def _column_as_text(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One string per row: a string column as is, a list of strings / chat messages joined by spaces."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pc.fill_null(arr, "")
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = t.value_type
        flat = arr.flatten()
        if pa.types.is_struct(item) and item.get_field_index("content") >= 0:
            values = pc.struct_field(flat, "content")
        elif pa.types.is_string(item) or pa.types.is_large_string(item):
            values = flat
        else:
            values = None
        if values is not None and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            offsets = pc.subtract(arr.offsets, arr.offsets[0])
            lists = pa.ListArray.from_arrays(offsets, pc.fill_null(values, ""))
            return pc.fill_null(pc.binary_join(lists, " "), "")
    return pa.array([("" if v is None else str(v)) for v in arr.to_pylist()], type=pa.string())


def dataset_texts(dataset, text_column: str | None = None) -> pa.Array:
    """One string per row of a ``datasets.Dataset`` (in its row order), for :func:`dsir_importance`.

    With ``text_column``, that column (a string, or a list of chat messages whose ``content`` is joined).
    Otherwise the conversational / text columns TRL trains on: ``messages``, else ``prompt`` + ``completion``,
    else ``text``. Done in Arrow (no Python object per row for string and message columns).

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"prompt": ["a b"], "completion": ["c"]})
        >>> dataset_texts(ds).to_pylist()
        ['a b c']
    """
    names = dataset.column_names
    if text_column is not None:
        if text_column not in names:
            raise ValueError(f"dsir_text_column {text_column!r} is not a column of the dataset (it has {sorted(names)})")
        cols = [text_column]
    else:
        cols = next((list(c) for c in _TEXT_COLUMNS if all(x in names for x in c)), None)
        if cols is None:
            cols = [c for c in ("prompt", "completion") if c in names]
        if not cols:
            raise ValueError(
                "DSIR needs the rows' text: the dataset has none of the columns messages / prompt / completion / "
                f"text (it has {sorted(names)}); pass dsir_text_column=<a string or chat-messages column>"
            )
    table = dataset.select_columns(cols).with_format("arrow")[:]
    parts = [_column_as_text(table.column(c)) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = pc.binary_join_element_wise(out, p, " ")
    return out


def _as_arrow_text(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if isinstance(texts, pa.Array):
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            texts = texts.cast(pa.string())
        return pc.fill_null(texts, "")
    return pa.array(["" if t is None else str(t) for t in texts], type=pa.large_string())


def hashed_ngram_features(texts, num_buckets: int = 2**16, ngram: Sequence[int] = (1, 2)) -> tuple[np.ndarray, np.ndarray]:
    """Hashed word n-grams of every text: ``(row, bucket)`` arrays, one entry per n-gram occurrence.

    Texts are lower-cased and split on whitespace, punctuation and symbols (Arrow's RE2, vectorised); each
    distinct word is hashed once (``pandas.util.hash_array``: deterministic across processes and runs); n-grams
    combine consecutive word hashes within a text. Accepts a list of strings or an Arrow string array.

    Example:
        >>> rows, buckets = hashed_ngram_features(["a b", "a"], num_buckets=64, ngram=(1, 2))
        >>> rows.tolist()
        [0, 0, 0, 1]
    """
    arr = _as_arrow_text(texts)
    if num_buckets < 1:
        raise ValueError("num_buckets must be >= 1")
    words = pc.split_pattern_regex(pc.utf8_lower(arr), _SPLIT)
    flat = pc.list_flatten(words)
    parent = pc.list_parent_indices(words).to_numpy().astype(np.int64)
    keep = pc.greater(pc.utf8_length(flat), 0)
    flat = flat.filter(keep)
    parent = parent[keep.to_numpy(zero_copy_only=False)]
    if len(flat) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    enc = pc.dictionary_encode(flat).combine_chunks() if isinstance(flat, pa.ChunkedArray) else pc.dictionary_encode(flat)
    vocab = enc.dictionary.to_numpy(zero_copy_only=False).astype(object)
    h = pd.util.hash_array(vocab, categorize=False).astype(np.uint64)[enc.indices.to_numpy().astype(np.int64)]
    rows_out, buckets_out = [], []
    for n in ngram:
        n = int(n)
        if n < 1:
            raise ValueError(f"n-gram orders must be >= 1 (got {n})")
        m = len(h) - n + 1
        if m <= 0:
            continue
        x = h[:m].copy()
        for k in range(1, n):
            x = x * _PRIME + h[k : k + m]
        valid = parent[:m] == parent[n - 1 : n - 1 + m]  # all n words in the same text
        x = mix64(x[valid] ^ np.uint64(n * 0x9E3779B97F4A7C15 % 2**64))
        rows_out.append(parent[:m][valid])
        buckets_out.append((x % np.uint64(num_buckets)).astype(np.int64))
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, buckets = np.concatenate(rows_out), np.concatenate(buckets_out)
    order = np.argsort(rows, kind="stable")
    return rows[order], buckets[order]


def _chunks(texts):
    arr = _as_arrow_text(texts)
    for start in range(0, len(arr), _CHUNK_ROWS):
        yield start, arr.slice(start, _CHUNK_ROWS)


def dsir_log_ratio(train_texts, val_texts, num_buckets: int = 2**16, ngram: Sequence[int] = (1, 2)) -> np.ndarray:
    """Per training text, ``log p_val(x) - log p_train(x)`` under hashed n-gram bag-of-words models.

    The two models are categorical distributions over ``num_buckets`` hashed n-gram buckets fitted on the
    validation and on the training texts with add-one smoothing; a text's log-likelihood is the sum over its
    n-grams (DSIR, Xie et al. 2023). Streams over the texts in chunks: memory is O(chunk + buckets).
    """
    train_counts = np.zeros(num_buckets, dtype=np.float64)
    for _, chunk in _chunks(train_texts):
        _, b = hashed_ngram_features(chunk, num_buckets, ngram)
        train_counts += np.bincount(b, minlength=num_buckets)
    val_counts = np.zeros(num_buckets, dtype=np.float64)
    for _, chunk in _chunks(val_texts):
        _, b = hashed_ngram_features(chunk, num_buckets, ngram)
        val_counts += np.bincount(b, minlength=num_buckets)
    log_val = np.log(val_counts + 1.0) - np.log(val_counts.sum() + num_buckets)
    log_train = np.log(train_counts + 1.0) - np.log(train_counts.sum() + num_buckets)
    ratio = log_val - log_train
    out = []
    for _, chunk in _chunks(train_texts):
        r, b = hashed_ngram_features(chunk, num_buckets, ngram)
        out.append(np.bincount(r, weights=ratio[b], minlength=len(chunk)))
    return np.concatenate(out) if out else np.zeros(0)


def dsir_importance(
    train_texts,
    val_texts,
    num_buckets: int = 2**16,
    ngram: Sequence[int] = (1, 2),
    *,
    strength: float = 1.0,
    clip: float = 3.0,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Bounded importance weights preferring training texts that resemble the validation texts (DSIR style).

    ``w = exp(strength * clip(z, -clip, clip))`` where ``z`` is the z-scored :func:`dsir_log_ratio` over the
    training texts: rows typical of the validation set get up to ``e^(strength*clip)`` times the weight of an
    average row, atypical ones down to ``e^(-strength*clip)``. With ``groups`` (a group id per text) ``z`` is
    standardised within each group, so the weights rank rows against the other rows of their group (what a
    preference applied within fixed group shares needs). ``strength=0`` gives all ones. No model, no GPU: a
    second or two per hundred thousand rows of a few dozen words on one CPU core.

    Example:
        >>> w = dsir_importance(["cats purr", "stocks fell"], ["my cats purr"], num_buckets=256)
        >>> bool(w[0] > w[1])
        True
    """
    if not (np.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be finite and >= 0 (got {strength})")
    if not clip > 0:
        raise ValueError(f"clip must be > 0 (got {clip})")
    lr = dsir_log_ratio(train_texts, val_texts, num_buckets, ngram)
    if lr.size == 0:
        return lr
    g = np.zeros(lr.size, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
    if g.shape != lr.shape:
        raise ValueError(f"{g.shape[0]} group ids for {lr.shape[0]} texts")
    count = np.bincount(g).astype(np.float64)
    safe = np.maximum(count, 1.0)
    mean = np.bincount(g, weights=lr) / safe
    sd = np.sqrt(np.maximum(np.bincount(g, weights=lr * lr) / safe - mean**2, 0.0))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(sd[g] > 1e-12 * (1.0 + np.abs(mean[g])), (lr - mean[g]) / sd[g], 0.0)
    return np.exp(strength * np.clip(z, -clip, clip))
