"""Hard negatives for preference training: turn an SFT dataset into TRL DPO pairs.

:func:`build_preference_pairs` takes a dataset in one of TRL's SFT formats and returns a
``datasets.Dataset`` in the matching TRL *preference* format (``prompt`` / ``chosen`` /
``rejected``), ready for ``trl.DPOTrainer``. ``chosen`` is the row's own reference response; the
``rejected`` response is a *hard negative*:

* ``strategy="nearest"``: the response of the most similar **other** prompt (hashed word n-gram
  TF-IDF, or any ``embed_fn`` such as a sentence-transformers model), skipping rows whose
  normalised response equals this row's (those would not be negatives), optionally restricted to
  the same ``group_column`` value (same domain/task);
* ``strategy="model"``: the model's own greedy answer, kept only where it differs from the
  reference after normalisation (rows the model already gets right are dropped and counted).

Input formats (TRL's SFT formats):

* conversational prompt-completion: ``prompt`` = list of messages, ``completion`` = list with
  one assistant message → output ``prompt`` (messages), ``chosen`` / ``rejected`` (lists with one
  assistant message);
* standard prompt-completion: ``prompt`` / ``completion`` strings → string ``prompt`` /
  ``chosen`` / ``rejected``;
* conversational ``messages`` ending in an assistant turn → ``prompt`` = all earlier messages,
  ``chosen`` = ``[last message]``.

Metadata columns added: ``source_row`` (index of the row in the input), ``negative_source``
(``"nearest:<row>"`` or ``"model"``) and, for ``"nearest"``, ``similarity`` (cosine). The input's
other columns (e.g. ``domain``) are kept unless ``keep_columns=False``.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import datasets
import numpy as np
import torch

from .model_io import inference, is_messages, model_device, pad_token_id, progress

logger = logging.getLogger(__name__)

STRATEGIES = ("nearest", "model")
META_COLUMNS = ("source_row", "negative_source", "similarity")

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_SPACE_RE = re.compile(r"\s+")

#: Statistics of the most recent :func:`build_preference_pairs` call (also returned with
#: ``return_stats=True``).
last_stats: dict[str, Any] = {}


# --------------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------------


def normalize_response(text: str) -> str:
    """Default answer normalisation: casefold, collapse whitespace, strip trailing ``.``.

    Example::

        >>> normalize_response("  The Answer is 4. ")
        'the answer is 4'
    """
    text = _SPACE_RE.sub(" ", str(text)).strip().casefold()
    return text.rstrip(".").strip()


def _message_text(messages: list[dict]) -> str:
    return "\n".join(str(m.get("content") or "") for m in messages)


def _detect_format(column_names: Sequence[str], first_row: dict) -> str:
    if "prompt" in column_names and "completion" in column_names:
        prompt, completion = first_row["prompt"], first_row["completion"]
        if is_messages(prompt) and is_messages(completion):
            return "conversational"
        if isinstance(prompt, str) and isinstance(completion, str):
            return "standard"
        raise ValueError(
            "'prompt' and 'completion' must both be strings or both be lists of messages "
            f"(got {type(prompt).__name__} and {type(completion).__name__})"
        )
    if "messages" in column_names:
        if not is_messages(first_row["messages"]):
            raise ValueError("'messages' must be a list of {'role', 'content'} dicts")
        return "messages"
    raise ValueError(
        "dataset needs 'prompt' and 'completion' columns (prompt-completion format) or a 'messages' "
        f"column (conversational format); got columns {list(column_names)}"
    )


def _split_row(row: dict, fmt: str, index: int, embed_roles) -> tuple[Any, Any, str, str]:
    """(prompt, chosen, prompt_text_for_embedding, response_text) of one row."""
    if fmt == "standard":
        return row["prompt"], row["completion"], row["prompt"], row["completion"]
    if fmt == "conversational":
        completion = row["completion"]
        if len(completion) != 1 or completion[0].get("role") != "assistant":
            raise ValueError(f"row {index}: 'completion' must hold exactly one assistant message")
        prompt = row["prompt"]
    else:
        messages = row["messages"]
        if len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ValueError(f"row {index}: 'messages' must end with an assistant message after the prompt")
        prompt, completion = messages[:-1], [messages[-1]]
    shown = [m for m in prompt if embed_roles is None or m.get("role") in embed_roles] or prompt
    return prompt, completion, _message_text(shown), str(completion[0].get("content") or "")


# --------------------------------------------------------------------------------------------------
# Hashed TF-IDF (numpy + torch sparse; no scipy / sklearn)
# --------------------------------------------------------------------------------------------------


def _ngrams(text: str, ngram_range: tuple[int, int]) -> list[str]:
    words = _WORD_RE.findall(text.casefold())
    lo, hi = ngram_range
    out: list[str] = []
    for n in range(lo, hi + 1):
        out.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return out


def hashed_tfidf(
    texts: Sequence[str], n_features: int = 2**16, ngram_range: tuple[int, int] = (1, 2), max_df: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """L2-normalised hashed word n-gram TF-IDF vectors of ``texts`` as CSR arrays.

    Returns ``(indptr, indices, data)`` of an ``len(texts) x n_features`` CSR matrix. Term
    frequency is sublinear (``1 + log tf``), IDF is smoothed (``log((1+n)/(1+df)) + 1``); n-grams
    are hashed with CRC32, so vectors are stable across processes. Buckets present in more than
    ``max_df`` (a fraction) of the texts are dropped, like scikit-learn's ``max_df``.

    Example::

        >>> indptr, indices, data = hashed_tfidf(["the cat sat", "the dog sat"], n_features=1024)
        >>> indptr.tolist()
        [0, 5, 10]
        >>> round(float((data[:5] ** 2).sum()), 6)
        1.0
    """
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    idx_parts: list[np.ndarray] = []
    tf_parts: list[np.ndarray] = []
    for i, text in enumerate(texts):
        hashes = np.fromiter(
            (zlib.crc32(g.encode("utf-8")) % n_features for g in _ngrams(text, ngram_range)), dtype=np.int64
        )
        cols, counts = np.unique(hashes, return_counts=True)
        idx_parts.append(cols)
        tf_parts.append(1.0 + np.log(counts.astype(np.float64)))
        indptr[i + 1] = indptr[i] + len(cols)
    indices = np.concatenate(idx_parts) if idx_parts else np.zeros(0, dtype=np.int64)
    data = np.concatenate(tf_parts) if tf_parts else np.zeros(0)
    df = np.bincount(indices, minlength=n_features)
    idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
    data = data * idf[indices]
    rows = np.repeat(np.arange(len(texts)), np.diff(indptr))
    if max_df < 1.0:
        kept = df[indices] <= max_df * len(texts)
        indices, data, rows = indices[kept], data[kept], rows[kept]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=len(texts)))]).astype(np.int64)
    norms = np.sqrt(np.bincount(rows, weights=data**2, minlength=len(texts)))
    data = data / np.where(norms > 0, norms, 1.0)[rows]
    return indptr, indices, data.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Nearest neighbours with masks (chunked)
# --------------------------------------------------------------------------------------------------


def _masked_argmax(s: torch.Tensor, start: int, resp: torch.Tensor, grp: torch.Tensor | None, best, best_sim, drop_zero):
    """Row-wise argmax of a (chunk x n) similarity block over valid candidates; writes best/best_sim."""
    end = start + s.shape[0]
    bad = resp[start:end, None] == resp[None, :]  # same normalised response, includes the row itself
    if grp is not None:
        bad |= grp[start:end, None] != grp[None, :]
    if drop_zero:
        bad |= s <= 0  # shares no n-gram: not a neighbour
    sim, arg = s.masked_fill(bad, -math.inf).max(dim=1)  # ties: lowest index
    ok = torch.isfinite(sim).numpy()
    best[start:end][ok] = arg.numpy()[ok]
    best_sim[start:end][ok] = sim.numpy()[ok]


def _nearest_sparse(
    indptr,
    indices,
    data,
    n_features,
    response_codes,
    group_codes,
    chunk_size,
    show_progress,
    max_pairs: int = 20_000_000,
    max_dense: int = 16_000_000,
):
    """Per row: (best other row or -1, cosine), via an inverted index.

    For a chunk of rows, the posting lists of their n-grams are expanded into (row, other, product)
    triples and summed into a dense (chunk x n) block; chunks are cut so that the block stays under
    ``max_dense`` floats and the triples under ``max_pairs`` (frequent n-grams cannot blow up memory).
    """
    n = len(indptr) - 1
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    order = np.argsort(indices, kind="stable")
    t_indptr = np.zeros(n_features + 1, dtype=np.int64)
    df = np.bincount(indices, minlength=n_features)
    np.cumsum(df, out=t_indptr[1:])
    t_rows, t_vals = rows[order], data[order]
    bound = np.bincount(rows, weights=df[indices], minlength=n).astype(np.int64)
    rows_per_chunk = max(1, min(chunk_size, max_dense // max(n, 1)))
    bounds: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i in range(n):
        if i > start and (i - start >= rows_per_chunk or acc + bound[i] > max_pairs):
            bounds.append((start, i))
            start, acc = i, 0
        acc += int(bound[i])
    bounds.append((start, n))
    resp = torch.from_numpy(response_codes)
    grp = torch.from_numpy(group_codes) if group_codes is not None else None
    best = np.full(n, -1, dtype=np.int64)
    best_sim = np.zeros(n, dtype=np.float32)
    for start, end in progress(bounds, len(bounds), "nearest negatives", show_progress):
        lo, hi = indptr[start], indptr[end]
        q_feat, q_val, q_row = indices[lo:hi], data[lo:hi], rows[lo:hi] - start
        counts = df[q_feat]
        total = int(counts.sum())
        block = torch.zeros((end - start) * n, dtype=torch.float32)
        if total:
            offsets = np.cumsum(counts) - counts
            pos = np.arange(total, dtype=np.int64) + np.repeat(t_indptr[q_feat] - offsets, counts)
            keys = np.repeat(q_row, counts) * n + t_rows[pos]
            vals = np.repeat(q_val, counts) * t_vals[pos]
            block.index_add_(0, torch.from_numpy(keys), torch.from_numpy(vals))
        _masked_argmax(block.view(end - start, n), start, resp, grp, best, best_sim, drop_zero=True)
    return best, best_sim


def _nearest_dense(emb: np.ndarray, response_codes, group_codes, chunk_size, show_progress):
    n = emb.shape[0]
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    resp = torch.from_numpy(response_codes)
    grp = torch.from_numpy(group_codes) if group_codes is not None else None
    best = np.full(n, -1, dtype=np.int64)
    best_sim = np.zeros(n, dtype=np.float32)
    starts = range(0, n, chunk_size)
    for start in progress(starts, len(starts), "nearest negatives", show_progress):
        _masked_argmax(x[start : start + chunk_size] @ x.T, start, resp, grp, best, best_sim, drop_zero=False)
    return best, best_sim


# --------------------------------------------------------------------------------------------------
# Model answers
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[Any],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    show_progress: bool = True,
) -> list[str]:
    """Greedy answers of ``model`` to ``prompts`` (message lists or strings), batched with left padding.

    Message lists are rendered with the tokenizer's chat template (``add_generation_prompt=True``);
    strings are tokenised as they are. Runs on the model's device; the model's train/eval mode and
    the tokenizer's ``padding_side`` are restored afterwards.

    Example::

        >>> answers = generate_answers(model, tokenizer, [[{"role": "user", "content": "2+2?"}]],
        ...                            max_new_tokens=8)  # doctest: +SKIP
    """
    device, pad_id = model_device(model), pad_token_id(tokenizer)
    answers: list[str] = []
    with inference(model, tokenizer):
        tokenizer.padding_side = "left"
        starts = range(0, len(prompts), batch_size)
        for start in progress(starts, len(starts), "model negatives", show_progress):
            batch = prompts[start : start + batch_size]
            if is_messages(batch[0]):
                texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
                add_special = False  # the template already holds the special tokens
            else:
                texts, add_special = list(batch), True
            # no token_type_ids: a decoder-only model's generate refuses them (some tokenizers return them by default)
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special,
                            return_token_type_ids=False)
            if tokenizer.pad_token_id is None:
                enc["input_ids"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, pad_id)
            enc = {k: v.to(device) for k, v in enc.items()}
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad_id
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :]
            answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def build_preference_pairs(
    dataset: datasets.Dataset | Sequence[dict],
    strategy: str = "nearest",
    *,
    group_column: str | None = None,
    embed_fn: Callable[[list[str]], Any] | None = None,
    embed_roles: Sequence[str] | None = None,
    n_features: int = 2**16,
    ngram_range: tuple[int, int] = (1, 2),
    max_df: float = 1.0,
    chunk_size: int = 256,
    model=None,
    tokenizer=None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    normalize_fn: Callable[[str], str] = normalize_response,
    keep_columns: bool = True,
    show_progress: bool = True,
    return_stats: bool = False,
):
    """Build DPO pairs (``prompt`` / ``chosen`` / ``rejected``) with hard negatives from an SFT dataset.

    Args:
        dataset: a ``datasets.Dataset`` (or list of row dicts) in TRL's conversational or standard
            prompt-completion format, or conversational ``messages`` format.
        strategy: ``"nearest"``: rejected = response of the most similar other prompt whose
            normalised response differs from this row's; ``"model"``: rejected = the model's own
            greedy answer where it differs from the reference (rows it gets right are dropped).
        group_column: ``"nearest"`` only: look for neighbours only among rows with the same value
            of this column (e.g. ``"domain"``).
        embed_fn: ``"nearest"`` only: ``list[str] -> array (n, d)`` prompt embedder (e.g.
            ``SentenceTransformer(path).encode``). Default: hashed word n-gram TF-IDF of the
            prompt text (``n_features`` buckets, ``ngram_range`` word n-grams).
        embed_roles: conversational prompts: embed only messages with these roles, e.g.
            ``("user",)`` to ignore a shared system prompt. Default ``None``: the whole prompt.
        max_df: TF-IDF only: ignore n-grams found in more than this fraction of the prompts
            (stop words). ``0.5`` or less makes large corpora (100k rows) much faster: rows then
            only meet rows that share a rarer n-gram.
        chunk_size: at most this many rows are compared against the whole dataset at once
            (chunks also shrink automatically so a similarity block stays under ~16M floats,
            about 64 MB, whatever the dataset size).
        model, tokenizer: ``"model"`` only: a causal LM with ``generate`` and its tokenizer
            (chat template needed for conversational prompts).
        max_new_tokens, batch_size: generation settings for ``"model"``.
        normalize_fn: answer normalisation used to decide "identical" / "model is right".
        keep_columns: keep the input's other columns (``domain`` …) in the output.
        show_progress: tqdm progress bars.
        return_stats: return ``(dataset, stats)`` instead of the dataset.

    Rows without a usable negative (``"nearest"``: no other row in reach with a different
    response; ``"model"``: the model answered correctly, or produced an empty answer) are dropped.
    Counts are logged, stored in the module-level :data:`last_stats` and returned with
    ``return_stats=True``.

    Example::

        >>> rows = [
        ...     {"prompt": "Capital of France?", "completion": "Paris"},
        ...     {"prompt": "Capital of Spain?", "completion": "Madrid"},
        ...     {"prompt": "Sum of 2 and 3?", "completion": "5"},
        ... ]
        >>> pairs = build_preference_pairs(rows, "nearest", show_progress=False)
        >>> pairs[0]["prompt"], pairs[0]["chosen"], pairs[0]["rejected"], pairs[0]["negative_source"]
        ('Capital of France?', 'Paris', 'Madrid', 'nearest:1')

        With a model (its wrong answers become the rejected responses)::

            pairs, stats = build_preference_pairs(train, "model", model=model, tokenizer=tok,
                                                  max_new_tokens=32, return_stats=True)
            trainer = trl.DPOTrainer(model=model, args=DPOConfig(...), train_dataset=pairs,
                                     processing_class=tok)
    """
    opts = _PairOptions(strategy, group_column, embed_fn, embed_roles, n_features, ngram_range, max_df, chunk_size,
                        model, tokenizer, max_new_tokens, batch_size, normalize_fn, keep_columns, show_progress)
    dataset = _check_pair_args(dataset, opts)
    rows = _split_rows(dataset, embed_roles, normalize_fn)
    return _pairs_dataset(rows, strategy, _negatives(rows, opts), keep_columns, return_stats)


class _PairOptions(NamedTuple):
    """:func:`build_preference_pairs`' options, as the steps after the split read them."""

    strategy: str
    group_column: str | None
    embed_fn: Callable[[list[str]], Any] | None
    embed_roles: Sequence[str] | None
    n_features: int
    ngram_range: tuple[int, int]
    max_df: float
    chunk_size: int
    model: Any
    tokenizer: Any
    max_new_tokens: int
    batch_size: int
    normalize_fn: Callable[[str], str]
    keep_columns: bool
    show_progress: bool


def _check_pair_args(dataset: datasets.Dataset | Sequence[dict], opts: _PairOptions) -> datasets.Dataset:
    """Check :func:`build_preference_pairs`' arguments; return the input as a non-empty ``datasets.Dataset``."""
    (strategy, group_column, embed_fn, embed_roles, n_features, ngram_range, max_df, chunk_size, model, tokenizer,
     max_new_tokens, batch_size, normalize_fn, keep_columns, _) = opts
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    if not isinstance(dataset, datasets.Dataset):
        if isinstance(dataset, dict) or not isinstance(dataset, Sequence):
            raise ValueError("dataset must be a datasets.Dataset or a list of row dicts")
        dataset = datasets.Dataset.from_list(list(dataset)) if len(dataset) else datasets.Dataset.from_dict({})
    if len(dataset) == 0:
        raise ValueError("dataset is empty: nothing to build preference pairs from")
    for name, value in (("chunk_size", chunk_size), ("n_features", n_features), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size)):
        _positive_int(name, value)
    if (
        not isinstance(ngram_range, (tuple, list))
        or len(ngram_range) != 2
        or not all(isinstance(v, int) and v >= 1 for v in ngram_range)
        or ngram_range[0] > ngram_range[1]
    ):
        raise ValueError(f"ngram_range must be (min_n, max_n) with 1 <= min_n <= max_n, got {ngram_range!r}")
    if isinstance(max_df, bool) or not isinstance(max_df, (int, float)) or not 0.0 < max_df <= 1.0:
        raise ValueError(f"max_df must be a fraction in (0, 1], got {max_df!r}")
    if not callable(normalize_fn):
        raise ValueError("normalize_fn must be callable")
    if embed_fn is not None and not callable(embed_fn):
        raise ValueError("embed_fn must be a callable list[str] -> array of shape (n, d)")
    if strategy == "model":
        if model is None or tokenizer is None:
            raise ValueError("strategy='model' needs both model= and tokenizer=")
        if group_column is not None or embed_fn is not None or embed_roles is not None:
            raise ValueError("group_column, embed_fn and embed_roles only apply to strategy='nearest'")
    if group_column is not None and group_column not in dataset.column_names:
        raise ValueError(f"group_column {group_column!r} is not a column; columns: {dataset.column_names}")
    clash = [c for c in ("chosen", "rejected", *META_COLUMNS) if c in dataset.column_names]
    if clash and keep_columns:
        raise ValueError(f"input already has output column(s) {clash}; rename them or pass keep_columns=False")
    return dataset


@dataclass
class _PairRows:
    """The input rows split into what the pairs are made of, in input order."""

    dataset: datasets.Dataset
    fmt: str
    data_cols: tuple[str, ...]
    prompts: list[Any]
    chosens: list[Any]
    prompt_texts: list[str]
    norm: list[str]


@dataclass
class _Negatives:
    """The rows that got a rejected response, with it, where it came from and what was dropped."""

    keep: np.ndarray | list[int]
    rejected: dict[int, Any]
    source: dict[int, str]
    similarity: dict[int, float] | None
    dropped: dict[str, int]


def _split_rows(dataset: datasets.Dataset, embed_roles: Sequence[str] | None, normalize_fn) -> _PairRows:
    """Each row's prompt, chosen response, text to embed and normalised response, in the dataset's format."""
    fmt = _detect_format(dataset.column_names, dataset[0])
    data_cols = {
        "standard": ("prompt", "completion"), "conversational": ("prompt", "completion"), "messages": ("messages",)
    }[fmt]
    prompts, chosens, prompt_texts, responses = [], [], [], []
    for i, row in enumerate(dataset.select_columns(list(data_cols))):
        p, c, pt, r = _split_row(row, fmt, i, embed_roles)
        prompts.append(p)
        chosens.append(c)
        prompt_texts.append(pt)
        responses.append(r)
    norm = [normalize_fn(r) for r in responses]
    return _PairRows(dataset, fmt, data_cols, prompts, chosens, prompt_texts, norm)


def _negatives(rows: _PairRows, opts: _PairOptions) -> _Negatives:
    """The hard negatives of ``opts.strategy``: a nearest other row's response, or the model's own wrong answer."""
    return (_nearest_negatives if opts.strategy == "nearest" else _model_negatives)(rows, opts)


def _nearest_negatives(rows: _PairRows, opts: _PairOptions) -> _Negatives:
    """For each row, the response of the most similar other prompt whose normalised response differs."""
    group_column, embed_fn = opts.group_column, opts.embed_fn
    chunk_size, show_progress = opts.chunk_size, opts.show_progress
    dataset, n = rows.dataset, len(rows.dataset)
    _, response_codes = np.unique(np.array(rows.norm, dtype=object).astype(str), return_inverse=True)
    response_codes = response_codes.astype(np.int64).ravel()
    group_codes = None
    if group_column is not None:
        _, group_codes = np.unique(np.array([str(g) for g in dataset[group_column]]), return_inverse=True)
        group_codes = group_codes.astype(np.int64).ravel()
    if embed_fn is not None:
        emb = embed_fn(list(rows.prompt_texts))
        emb = emb.detach().cpu().numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"embed_fn must return an array of shape ({n}, d), got {emb.shape}")
        best, sim = _nearest_dense(emb, response_codes, group_codes, chunk_size, show_progress)
    else:
        indptr, indices, vals = hashed_tfidf(rows.prompt_texts, opts.n_features, tuple(opts.ngram_range), opts.max_df)
        best, sim = _nearest_sparse(
            indptr, indices, vals, opts.n_features, response_codes, group_codes, chunk_size, show_progress
        )
    keep = np.flatnonzero(best >= 0)
    return _Negatives(
        keep=keep,
        rejected={int(i): rows.chosens[int(best[i])] for i in keep},
        source={int(i): f"nearest:{int(best[i])}" for i in keep},
        similarity={int(i): float(sim[i]) for i in keep},
        dropped={"dropped_no_candidate": int(n - len(keep))},
    )


def _model_negatives(rows: _PairRows, opts: _PairOptions) -> _Negatives:
    """For each row, the model's greedy answer where it is neither right nor empty."""
    n, norm, normalize_fn = len(rows.dataset), rows.norm, opts.normalize_fn
    answers = generate_answers(opts.model, opts.tokenizer, rows.prompts, opts.max_new_tokens, opts.batch_size,
                               opts.show_progress)
    right = [normalize_fn(a) == norm[i] for i, a in enumerate(answers)]
    empty = [not right[i] and normalize_fn(a) == "" for i, a in enumerate(answers)]
    keep = [i for i in range(n) if not right[i] and not empty[i]]
    wrap = (lambda a: [{"role": "assistant", "content": a}]) if rows.fmt != "standard" else (lambda a: a)
    return _Negatives(
        keep=keep,
        rejected={i: wrap(answers[i]) for i in keep},
        source={i: "model" for i in keep},
        similarity=None,
        dropped={"dropped_model_correct": int(sum(right)), "dropped_empty_answer": int(sum(empty))},
    )


def _pairs_dataset(rows: _PairRows, strategy: str, negatives: _Negatives, keep_columns: bool, return_stats: bool):
    """The pairs as a dataset (with the stats if asked for); the stats are also logged and kept in ``last_stats``."""
    stats: dict[str, Any] = {"strategy": strategy, "format": rows.fmt, "rows": len(rows.dataset), **negatives.dropped}
    keep = [int(i) for i in negatives.keep]
    out: dict[str, list] = {
        "prompt": [rows.prompts[i] for i in keep],
        "chosen": [rows.chosens[i] for i in keep],
        "rejected": [negatives.rejected[i] for i in keep],
    }
    extra_cols = [c for c in rows.dataset.column_names if c not in rows.data_cols] if keep_columns else []
    for col in extra_cols:
        values = rows.dataset[col]
        out[col] = [values[i] for i in keep]
    out["source_row"] = keep
    out["negative_source"] = [negatives.source[i] for i in keep]
    if negatives.similarity is not None:
        out["similarity"] = [negatives.similarity[i] for i in keep]
    stats["pairs"] = len(keep)

    result = datasets.Dataset.from_dict(out)
    logger.info("build_preference_pairs: %s", stats)
    last_stats.clear()
    last_stats.update(stats)
    return (result, stats) if return_stats else result
