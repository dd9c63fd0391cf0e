"""Text augmentation with provenance for TRL SFT datasets.

:func:`augment` applies EDA-style operations (Wei & Zou 2019: random swap, deletion, insertion, synonym
replacement) and model-based rewrites (paraphrase, back-translation through any callable or ``transformers``
pipeline) to the text of a TRL dataset, and records on every new row where it came from (``source_row``) and how
it was made (``augment_op``). :func:`augment_hardest` does the same for the rows a
:class:`~sft_callbacks.TrainingDynamicsCallback` run found hardest.

Example:
    >>> from sft_callbacks.demo_data import load_demo_dataset
    >>> train = load_demo_dataset("train").select(range(4))
    >>> out = augment(train, [RandomSwap(n=1), RandomDeletion(p=0.2)], seed=0)
    >>> len(out), out[4]["source_row"], out[4]["augment_op"]
    (12, 0, 'random_swap(n=1)')
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "RandomSwap",
    "RandomDeletion",
    "RandomInsertion",
    "SynonymReplacement",
    "Paraphrase",
    "BackTranslation",
    "augment",
    "augment_hardest",
    "PROVENANCE_COLUMNS",
]

#: Columns :func:`augment` adds to its output.
PROVENANCE_COLUMNS: tuple[str, ...] = ("augmented", "source_row", "augment_op")

# EDA leaves stop words alone when looking for synonyms: replacing "the" or "of" adds noise, not variety.
_STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of
    off on once only or other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up very was we were what
    when where which while who whom why will with would you your yours yourself yourselves""".split()
)

# Split into words and the whitespace between them, so that newlines and indentation survive augmentation
# (prompts such as multiple-choice questions depend on their layout).
_WS = re.compile(r"(\s+)")
# A word's leading/trailing punctuation stays in place when the word is looked up or replaced.
_CORE = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)


# --------------------------------------------------------------------------------------------------
# Tokenisation helpers
# --------------------------------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    """Alternating pieces ``[ws?, word, ws, word, ..., ws?]``; words are the non-empty non-whitespace pieces."""
    return [p for p in _WS.split(text) if p != ""]


def _word_positions(pieces: list[str]) -> list[int]:
    return [i for i, p in enumerate(pieces) if not p.isspace()]


def _synonyms_of(word: str, synonyms) -> list[str]:
    """Synonyms of ``word``'s core (punctuation stripped), excluding the word itself; [] for stop words."""
    core = _CORE.match(word).group(2)
    if not core or core.lower() in _STOPWORDS:
        return []
    if callable(synonyms):
        found = synonyms(core)
    else:
        found = synonyms.get(core)
        if found is None:
            found = synonyms.get(core.lower())
    if found is None:
        return []
    if isinstance(found, str):  # a single synonym given as a plain string, not a list of its letters
        found = [found]
    out = []
    for s in found:
        if not isinstance(s, str):
            raise ValueError(f"synonyms of {core!r} must be strings, got {type(s).__name__}")
        if s and s.lower() != core.lower() and s not in out:
            out.append(s)
    return out


def _replace_core(word: str, new: str) -> str:
    pre, _, post = _CORE.match(word).groups()
    return pre + new + post


def _check_synonyms(synonyms) -> None:
    if synonyms is None or not (callable(synonyms) or isinstance(synonyms, Mapping)):
        raise ValueError("synonyms must be a dict word -> list of synonyms, or a callable word -> list of synonyms")


# --------------------------------------------------------------------------------------------------
# EDA operations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RepeatedEdit:
    """An EDA operation applied ``n`` times: checks ``n`` and names itself ``<name>(n=...)``."""

    n: int = 1
    batched = False

    def __post_init__(self):
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"{type(self).__name__}(n=...) must be a positive int, got {self.n!r}")

    @property
    def label(self) -> str:
        return f"{self.name}(n={self.n})"


@dataclass(frozen=True)
class _SynonymEdit(_RepeatedEdit):
    """A repeated edit that draws words from ``synonyms`` (a dict or a callable, checked here)."""

    synonyms: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        super().__post_init__()
        _check_synonyms(self.synonyms)


@dataclass(frozen=True)
class RandomSwap(_RepeatedEdit):
    """Swap two randomly chosen words, ``n`` times (EDA "RS"). Whitespace and line breaks stay where they were.

    Texts with fewer than two words come back unchanged.

    Example:
        >>> import numpy as np
        >>> RandomSwap(n=1)("the cat sat down", np.random.default_rng(0))
        'the cat down sat'
    """

    name: str = field(init=False, default="random_swap")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        pieces = _split(text)
        words = _word_positions(pieces)
        if len(words) < 2:
            return text
        for _ in range(self.n):
            i, j = rng.choice(len(words), size=2, replace=False)
            a, b = words[i], words[j]
            pieces[a], pieces[b] = pieces[b], pieces[a]
        return "".join(pieces)


@dataclass(frozen=True)
class RandomDeletion:
    """Delete each word independently with probability ``p`` (EDA "RD"); at least one word always survives.

    Example:
        >>> import numpy as np
        >>> RandomDeletion(p=0.5)("one two three four five six", np.random.default_rng(0))
        'one five six'
    """

    p: float = 0.1
    name: str = field(init=False, default="random_deletion")
    batched = False

    def __post_init__(self):
        if not (isinstance(self.p, (int, float)) and 0.0 <= self.p <= 1.0):
            raise ValueError(f"RandomDeletion(p=...) must be in [0, 1], got {self.p!r}")

    @property
    def label(self) -> str:
        return f"random_deletion(p={self.p})"

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        pieces = _split(text)
        words = _word_positions(pieces)
        if len(words) < 2:
            return text
        drop = rng.random(len(words)) < self.p
        if drop.all():  # EDA keeps one random word rather than returning an empty text
            drop[rng.integers(len(words))] = False
        lead = pieces[0] if pieces[0].isspace() else ""
        trail = pieces[-1] if pieces[-1].isspace() and len(pieces) > 1 else ""
        # Each kept word keeps the whitespace that followed it, so line structure survives around deletions.
        out = []
        kept = [k for k, d in enumerate(drop) if not d]
        for idx, k in enumerate(kept):
            pos = words[k]
            out.append(pieces[pos])
            if idx < len(kept) - 1:
                nxt = pos + 1
                out.append(pieces[nxt] if nxt < len(pieces) and pieces[nxt].isspace() else " ")
        return lead + "".join(out) + trail


@dataclass(frozen=True)
class RandomInsertion(_SynonymEdit):
    """Insert a synonym of a random non-stop word at a random word boundary, ``n`` times (EDA "RI").

    ``synonyms`` is a dict ``word -> list of synonyms`` (looked up as written, then lower-cased) or a callable
    ``word -> list of synonyms`` (e.g. a WordNet lookup). Texts where no word has a synonym come back unchanged.

    Example:
        >>> import numpy as np
        >>> RandomInsertion(n=1, synonyms={"quick": ["fast"]})("a quick fox", np.random.default_rng(0))
        'a quick fox fast'
    """

    name: str = field(init=False, default="random_insertion")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        pieces = _split(text)
        for _ in range(self.n):
            words = _word_positions(pieces)
            candidates = [(w, s) for w in words if (s := _synonyms_of(pieces[w], self.synonyms))]
            if not candidates:
                break
            _, syns = candidates[rng.integers(len(candidates))]
            new = syns[rng.integers(len(syns))]
            # Insert before word k (k == len(words): after the last word).
            k = int(rng.integers(len(words) + 1))
            if k < len(words):
                pos = words[k]
                pieces[pos:pos] = [new, " "]
            else:
                pos = words[-1] + 1
                pieces[pos:pos] = [" ", new]
        return "".join(pieces)


@dataclass(frozen=True)
class SynonymReplacement(_SynonymEdit):
    """Replace up to ``n`` distinct non-stop words that have a synonym with a random synonym (EDA "SR").

    ``synonyms`` is a dict ``word -> list of synonyms`` or a callable ``word -> list of synonyms``; punctuation
    around a word is kept (``"fast,"`` -> ``"quick,"``). Every occurrence of a chosen word is replaced, as in EDA.

    Example:
        >>> import numpy as np
        >>> SynonymReplacement(n=1, synonyms={"big": ["large"]})("a big dog.", np.random.default_rng(0))
        'a large dog.'
    """

    name: str = field(init=False, default="synonym_replacement")

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        pieces = _split(text)
        words = _word_positions(pieces)
        by_core: dict[str, list[int]] = {}
        for w in words:
            core = _CORE.match(pieces[w]).group(2).lower()
            by_core.setdefault(core, []).append(w)
        # Distinct words (in order of first appearance, so the rng alone decides the choice) that have synonyms.
        cands = [(c, ps, s) for c, ps in by_core.items() if (s := _synonyms_of(pieces[ps[0]], self.synonyms))]
        if not cands:
            return text
        order = rng.permutation(len(cands))[: self.n]
        for k in order:
            _, positions, syns = cands[k]
            new = syns[rng.integers(len(syns))]
            for p in positions:
                pieces[p] = _replace_core(pieces[p], new)
        return "".join(pieces)


# --------------------------------------------------------------------------------------------------
# Model-based operations
# --------------------------------------------------------------------------------------------------


def _is_pipeline(fn) -> bool:
    # Only consult transformers' pipeline module if it is already loaded: a pipeline object implies it is, and
    # touching ``transformers.Pipeline`` otherwise triggers a lazy import costing seconds for plain callables.
    base = sys.modules.get("transformers.pipelines.base")
    return base is not None and isinstance(fn, getattr(base, "Pipeline", ()))


def _fn_label(fn) -> str:
    if _is_pipeline(fn):
        model = getattr(getattr(fn, "model", None), "name_or_path", "") or type(fn.model).__name__
        return f"{fn.task}:{model}" if getattr(fn, "task", None) else str(model)
    return getattr(fn, "__name__", None) or type(fn).__name__


def _generated_text(item) -> str:
    # Pipelines return one dict per input, or a list of dicts with num_return_sequences: take the first.
    if isinstance(item, list):
        if not item:
            raise ValueError("the pipeline returned no sequence for an input")
        item = item[0]
    if isinstance(item, dict):
        for key in ("generated_text", "translation_text", "summary_text"):
            if key in item:
                item = item[key]
                break
    if not isinstance(item, str):
        raise ValueError(f"could not extract generated text from pipeline output {item!r}")
    return item


def _call_batch(fn, texts: list[str], batch_size: int, pipeline_kwargs: Mapping[str, Any]) -> list[str]:
    """Apply ``fn`` to ``texts`` in chunks of ``batch_size``; checks that it returns one string per input."""
    out: list[str] = []
    pipe = _is_pipeline(fn)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        if pipe:
            kw = dict(pipeline_kwargs)
            if getattr(fn, "task", None) == "text-generation":
                kw.setdefault("return_full_text", False)  # the rewrite only, not the prompt echoed back
            res = [_generated_text(r) for r in fn(chunk, batch_size=batch_size, **kw)]
        else:
            res = fn(chunk)
            if isinstance(res, str) or not isinstance(res, Sequence):
                raise ValueError(f"{_fn_label(fn)} must return a list of strings, got {type(res).__name__}")
            res = list(res)
            if not all(isinstance(r, str) for r in res):
                raise ValueError(f"{_fn_label(fn)} must return a list of strings")
        if len(res) != len(chunk):
            raise ValueError(f"{_fn_label(fn)} returned {len(res)} texts for {len(chunk)} inputs")
        out.extend(res)
    return out


@dataclass(frozen=True)
class Paraphrase:
    """Rewrite texts with ``fn``: any callable ``list[str] -> list[str]``, or a ``transformers`` pipeline.

    :func:`augment` calls it batched (``batch_size`` texts per call). A ``text-generation`` /
    ``text2text-generation`` pipeline is called as ``fn(texts, batch_size=..., **pipeline_kwargs)`` and its
    ``generated_text`` is used (``return_full_text=False`` for text-generation, so the prompt is not echoed).
    Randomness, if any, belongs to ``fn`` (e.g. ``do_sample=True`` in ``pipeline_kwargs``).

    Example:
        >>> op = Paraphrase(lambda texts: [t.upper() for t in texts], label="upper")
        >>> op("hello there", None), op.label
        ('HELLO THERE', 'paraphrase(upper)')
        >>> # Paraphrase(pipeline("text-generation", model=...), pipeline_kwargs={"max_new_tokens": 64})
    """

    fn: Any
    batch_size: int = 32
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False)
    label_: str | None = field(default=None, compare=False, repr=False)
    name: str = field(init=False, default="paraphrase")
    batched = True

    def __init__(self, fn, batch_size: int = 32, pipeline_kwargs: Mapping[str, Any] | None = None, label=None):
        if not callable(fn):
            raise ValueError("Paraphrase needs a callable list[str] -> list[str] or a transformers pipeline")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "pipeline_kwargs", dict(pipeline_kwargs or {}))
        object.__setattr__(self, "label_", label)
        object.__setattr__(self, "name", "paraphrase")

    @property
    def label(self) -> str:
        return f"paraphrase({self.label_ or _fn_label(self.fn)})"

    def batch(self, texts: list[str]) -> list[str]:
        """Rewrite all ``texts``, ``batch_size`` at a time."""
        return _call_batch(self.fn, list(texts), self.batch_size, self.pipeline_kwargs)

    def __call__(self, text: str, rng: np.random.Generator | None = None) -> str:
        return self.batch([text])[0]


@dataclass(frozen=True)
class BackTranslation:
    """Translate texts with ``forward`` and back with ``backward`` (each a callable ``list[str] -> list[str]``
    or a ``transformers`` pipeline, e.g. two translation models), batched.

    Example:
        >>> to_pig = lambda ts: [t[::-1] for t in ts]
        >>> op = BackTranslation(to_pig, to_pig, label="rev")
        >>> op("round trip", None), op.label
        ('round trip', 'back_translation(rev)')
    """

    forward: Any
    backward: Any
    batch_size: int = 32
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict, compare=False)
    label_: str | None = field(default=None, compare=False, repr=False)
    name: str = field(init=False, default="back_translation")
    batched = True

    def __init__(self, forward, backward, batch_size: int = 32, pipeline_kwargs=None, label=None):
        if not (callable(forward) and callable(backward)):
            raise ValueError("BackTranslation needs two callables list[str] -> list[str] or transformers pipelines")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        object.__setattr__(self, "forward", forward)
        object.__setattr__(self, "backward", backward)
        object.__setattr__(self, "batch_size", batch_size)
        object.__setattr__(self, "pipeline_kwargs", dict(pipeline_kwargs or {}))
        object.__setattr__(self, "label_", label)
        object.__setattr__(self, "name", "back_translation")

    @property
    def label(self) -> str:
        return f"back_translation({self.label_ or _fn_label(self.forward) + '->' + _fn_label(self.backward)})"

    def batch(self, texts: list[str]) -> list[str]:
        """Round-trip all ``texts``: every forward batch, then every backward batch."""
        mid = _call_batch(self.forward, list(texts), self.batch_size, self.pipeline_kwargs)
        return _call_batch(self.backward, mid, self.batch_size, self.pipeline_kwargs)

    def __call__(self, text: str, rng: np.random.Generator | None = None) -> str:
        return self.batch([text])[0]


# --------------------------------------------------------------------------------------------------
# Dataset-level augmentation
# --------------------------------------------------------------------------------------------------

_FIELDS = ("prompt", "completion", "both")


def _op_label(op) -> str:
    return getattr(op, "label", None) or getattr(op, "name", None) or type(op).__name__


def _targets(columns: list[str], fields: str) -> list[tuple[str, str | None]]:
    """(column, role) pairs to augment: role None means the column is a plain string (or augment all of it)."""
    want_prompt = fields in ("prompt", "both")
    want_completion = fields in ("completion", "both")
    if "messages" in columns:
        roles = (["user"] if want_prompt else []) + (["assistant"] if want_completion else [])
        return [("messages", r) for r in roles]
    if "prompt" in columns or "completion" in columns:
        out = []
        if want_prompt:
            if "prompt" not in columns:
                raise ValueError("fields='prompt' but the dataset has no 'prompt' column")
            out.append(("prompt", "user"))
        if want_completion:
            if "completion" not in columns:
                if fields == "completion":
                    raise ValueError("fields='completion' but the dataset has no 'completion' column")
            else:
                out.append(("completion", "assistant"))
        return out
    if "text" in columns:
        # Language-modelling data has no prompt/completion split: the whole text is augmented.
        return [("text", None)]
    raise ValueError(
        f"unrecognised dataset format (columns {columns}): expected TRL's 'prompt'/'completion', 'messages' or "
        "'text' columns"
    )


def _locate(row: dict, targets, row_idx: int) -> list[tuple]:
    """Addresses of the text pieces of ``row`` to augment: (column, message index or None)."""
    out = []
    for col, role in targets:
        value = row[col]
        if isinstance(value, str):
            out.append((col, None))
        elif isinstance(value, list):
            for m, msg in enumerate(value):
                if not isinstance(msg, dict) or "role" not in msg:
                    raise ValueError(f"row {row_idx}: column {col!r} must hold a string or a list of chat messages")
                if role is not None and msg["role"] != role:
                    continue
                if not isinstance(msg.get("content"), str):
                    raise ValueError(
                        f"row {row_idx}: the {msg['role']!r} message {m} of {col!r} has non-text content "
                        f"({type(msg.get('content')).__name__}); only string contents can be augmented"
                    )
                out.append((col, m))
        else:
            raise ValueError(
                f"row {row_idx}: column {col!r} holds {type(value).__name__}, not text or chat messages"
            )
    return out


def _get(row: dict, addr) -> str:
    col, m = addr
    return row[col] if m is None else row[col][m]["content"]


def _set(row: dict, addr, text: str) -> None:
    col, m = addr
    if m is None:
        row[col] = text
    else:
        row[col][m]["content"] = text


def _copy_row(row: dict) -> dict:
    # Messages are nested dicts: copy them so edits never leak into the originals.
    return {
        k: ([dict(m) if isinstance(m, dict) else m for m in v] if isinstance(v, list) else v) for k, v in row.items()
    }


def _check_ops(ops) -> list:
    if ops is None or isinstance(ops, (str, bytes)):
        raise ValueError("ops must be a non-empty list of augmentation operations, e.g. [RandomSwap(n=1)]")
    if callable(ops) and hasattr(ops, "name"):
        ops = [ops]
    ops = list(ops)
    if not ops:
        raise ValueError("no ops given: pass at least one operation, e.g. ops=[RandomSwap(n=1)]")
    for op in ops:
        if not callable(op):
            raise ValueError(f"{op!r} is not an augmentation operation (callable(text, rng) -> str)")
    return ops


def augment(
    dataset,
    ops,
    *,
    n_per_row: int = 1,
    fields: str = "prompt",
    seed: int = 0,
    include_original: bool = True,
    rows: Iterable[int] | None = None,
):
    """Augment the text of a TRL SFT ``dataset`` and record each new row's provenance.

    Every selected row (``rows``, default all) yields ``n_per_row`` new rows per operation in ``ops``; each new
    row applies one operation to every text piece chosen by ``fields``:

    - prompt-completion data (strings or chat message lists): ``"prompt"`` rewrites the prompt (only the
      ``user`` messages of a conversational prompt, never the system prompt), ``"completion"`` the completion
      (only ``assistant`` messages), ``"both"`` both;
    - ``messages`` data: ``"prompt"`` rewrites ``user`` turns, ``"completion"`` ``assistant`` turns;
    - ``text`` data: the whole text, whatever ``fields`` says.

    Output: all original columns plus ``augmented`` (bool), ``source_row`` (the input row a row came from; its own
    index for originals) and ``augment_op`` (e.g. ``"random_swap(n=1)"``; ``""`` for originals). The originals come
    first, unchanged and in order (dropped only with ``include_original=False``), then the new rows grouped by
    source row, operation and copy. The result is deterministic for a ``seed``: each new row draws from its own
    generator seeded by ``(seed, source_row, op index, copy)``, so it does not depend on ``rows``. Callable ops
    (:class:`Paraphrase`, :class:`BackTranslation`) are called batched over all selected rows.

    Raises ``ValueError`` for an empty dataset, no ops, an unknown ``fields``, an out-of-range row, a dataset that
    already carries provenance columns, or non-text content in a field to augment.

    Example:
        >>> from sft_callbacks.demo_data import load_demo_dataset
        >>> train = load_demo_dataset("train").select(range(10))
        >>> syn = {"sarcasm": ["irony"], "message": ["text"]}
        >>> out = augment(train, [RandomSwap(n=2), SynonymReplacement(n=1, synonyms=syn)], n_per_row=2, seed=1)
        >>> len(out), out.filter(lambda r: r["augmented"]).unique("augment_op")
        (50, ['random_swap(n=2)', 'synonym_replacement(n=1)'])
    """
    ops, selected = _check_augment(dataset, ops, n_per_row, fields, rows)
    targets = _targets(dataset.column_names, fields)
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    new_rows, addrs = _plan_rows(dataset, selected, targets, len(ops), n_per_row)
    for k, op in enumerate(ops):
        _rewrite(op, k, new_rows, addrs, seed)
    return _assemble(dataset, ops, new_rows, include_original)


def _check_augment(dataset, ops, n_per_row: int, fields: str, rows: Iterable[int] | None) -> tuple[list, list[int]]:
    """Check :func:`augment`'s arguments; return the ops as a list and the selected rows, each once, in order."""
    ops = _check_ops(ops)
    if fields not in _FIELDS:
        raise ValueError(f"unknown fields={fields!r}; choose one of {list(_FIELDS)}")
    if not isinstance(n_per_row, int) or n_per_row < 1:
        raise ValueError(f"n_per_row must be a positive int, got {n_per_row!r}")
    if dataset is None or len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to augment")
    taken = [c for c in PROVENANCE_COLUMNS if c in dataset.column_names]
    if taken:
        raise ValueError(
            f"the dataset already has provenance columns {taken}; augment the original dataset, or remove them "
            "first (dataset.remove_columns(...))"
        )
    n = len(dataset)
    if rows is None:
        return ops, list(range(n))
    selected = []
    for r in rows:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= int(r) < n:
            raise ValueError(f"rows must be indices in [0, {n}), got {r!r}")
        selected.append(int(r))
    return ops, list(dict.fromkeys(selected))  # a row listed twice is augmented once


def _plan_rows(dataset, selected: list[int], targets, n_ops: int, n_per_row: int) -> tuple[list[dict], dict]:
    """One new row per (source row, op, copy), still holding the source's texts, and each source's text addresses."""
    sources = {r: dataset[r] for r in selected}
    addrs = {r: _locate(sources[r], targets, r) for r in selected}
    new_rows: list[dict] = []
    for r in selected:
        for k in range(n_ops):
            for c in range(n_per_row):
                new_rows.append({"row": _copy_row(sources[r]), "src": r, "op": k, "copy": c})
    return new_rows, addrs


def _rewrite(op, k: int, new_rows: list[dict], addrs: dict, seed: int) -> None:
    """Apply op number ``k`` to every text piece of the new rows planned for it, in place."""
    if getattr(op, "batched", False) and hasattr(op, "batch"):
        jobs = [(j, a) for j, nr in enumerate(new_rows) if nr["op"] == k for a in addrs[nr["src"]]]
        # One batched pass over every text this op rewrites (a model call per text would be far slower).
        results = op.batch([_get(new_rows[j]["row"], a) for j, a in jobs]) if jobs else []
        for (j, a), text in zip(jobs, results):
            _set(new_rows[j]["row"], a, text)
        return
    for nr in new_rows:
        if nr["op"] != k:
            continue
        rng = np.random.default_rng([seed, nr["src"], k, nr["copy"]])
        for a in addrs[nr["src"]]:
            text = op(_get(nr["row"], a), rng)
            if not isinstance(text, str):
                raise ValueError(f"op {_op_label(op)} returned {type(text).__name__}, not a string")
            _set(nr["row"], a, text)


def _assemble(dataset, ops: list, new_rows: list[dict], include_original: bool):
    """The new rows with their provenance columns, after the unchanged originals unless they are left out."""
    import datasets

    n = len(dataset)
    features = dataset.features.copy()
    features["augmented"] = datasets.Value("bool")
    features["source_row"] = datasets.Value("int64")
    features["augment_op"] = datasets.Value("string")
    labels = [_op_label(op) for op in ops]
    new_ds = datasets.Dataset.from_list(
        [{**nr["row"], "augmented": True, "source_row": nr["src"], "augment_op": labels[nr["op"]]} for nr in new_rows],
        features=features,
    )
    if not include_original:
        return new_ds
    orig = dataset.add_column("augmented", [False] * n, feature=datasets.Value("bool"))
    orig = orig.add_column("source_row", list(range(n)), feature=datasets.Value("int64"))
    orig = orig.add_column("augment_op", [""] * n, feature=datasets.Value("string"))
    orig = orig.cast(features) if orig.features != features else orig
    return datasets.concatenate_datasets([orig, new_ds])


def _default_ops() -> list:
    return [RandomSwap(n=1), RandomDeletion(p=0.1)]


def augment_hardest(
    dataset,
    dynamics,
    fraction: float = 0.1,
    ops=None,
    by: str = "loss_last",
    *,
    ascending: bool = False,
    **kw,
):
    """Augment the hardest ``fraction`` of ``dataset``'s rows according to training ``dynamics``.

    ``dynamics`` is :meth:`TrainingDynamicsCallback.dynamics` (one row per dataset row, in order). Rows are
    ranked by the column ``by`` (highest first; ``ascending=True`` for columns where lower is harder, such as
    ``token_accuracy``), ignoring rows that were ``dropped``, never seen (``times_seen == 0``) or have a NaN
    score; the top ``ceil(fraction * n_scored)`` are augmented with ``ops`` (default: ``RandomSwap(n=1)``,
    ``RandomDeletion(p=0.1)``) via :func:`augment` (``**kw`` goes to it: ``n_per_row``, ``fields``, ``seed``,
    ``include_original``). Ties go to the lower row index.

    Returns the dataset with the new rows appended, with the provenance columns of :func:`augment` and
    ``hardness``: the ``by`` score of the row's source row (NaN for originals that were not scored).

    Raises ``ValueError`` if ``dynamics`` does not cover exactly the dataset's rows (or is per packed sample),
    ``by`` is not a numeric column, ``fraction`` is not in (0, 1], or no row has a score.

    Example:
        >>> import pandas as pd
        >>> from sft_callbacks.demo_data import load_demo_dataset
        >>> train = load_demo_dataset("train").select(range(4))
        >>> dyn = pd.DataFrame({"times_seen": [1, 1, 1, 0], "loss_last": [0.5, 2.0, 1.0, float("nan")],
        ...                     "dropped": [False, False, False, True]})
        >>> out = augment_hardest(train, dyn, fraction=0.3)
        >>> list(out.filter(lambda r: r["augmented"])["source_row"]), out[-1]["hardness"]
        ([1, 1], 2.0)
    """
    import datasets
    import pandas as pd

    if not isinstance(dynamics, pd.DataFrame):
        raise ValueError("dynamics must be the DataFrame from TrainingDynamicsCallback.dynamics()")
    if "pack" in dynamics.columns:
        raise ValueError(
            "these dynamics are per packed sample (packing=True), which TRL does not map back to dataset rows; "
            "train without packing to augment by difficulty"
        )
    if dataset is None or len(dataset) == 0:
        raise ValueError("the dataset is empty: nothing to augment")
    if len(dynamics) != len(dataset):
        raise ValueError(
            f"the dataset has {len(dataset)} rows but the dynamics cover {len(dynamics)}: pass the dataset you gave "
            "the trainer as train_dataset"
        )
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if by not in dynamics.columns:
        raise ValueError(f"unknown column by={by!r}; dynamics has {list(dynamics.columns)}")
    if not pd.api.types.is_numeric_dtype(dynamics[by]) or pd.api.types.is_bool_dtype(dynamics[by]):
        raise ValueError(f"column {by!r} is not a numeric score")
    if "hardness" in dataset.column_names:
        raise ValueError("the dataset already has a 'hardness' column; remove it first")
    n = len(dataset)
    # Position i of the frame is dataset row i; the frame's own index must agree when it names rows.
    if dynamics.index.name == "row" and not np.array_equal(dynamics.index.to_numpy(), np.arange(n)):
        raise ValueError("dynamics must be indexed by dataset row 0..n-1, in order")
    score = dynamics[by].to_numpy(dtype=np.float64)
    valid = ~np.isnan(score)
    if "dropped" in dynamics.columns:
        valid &= ~dynamics["dropped"].to_numpy(dtype=bool)
    if "times_seen" in dynamics.columns:
        valid &= dynamics["times_seen"].to_numpy() > 0
    scored = np.flatnonzero(valid)
    if len(scored) == 0:
        raise ValueError("no row has a usable score (all dropped, never seen or NaN): has training run?")
    k = max(1, math.ceil(fraction * len(scored) - 1e-9))
    key = score[scored] if ascending else -score[scored]
    hardest = scored[np.lexsort((scored, key))][:k]  # stable: ties broken by row index
    out = augment(dataset, ops if ops is not None else _default_ops(), rows=sorted(hardest.tolist()), **kw)
    hardness = np.where(valid, score, np.nan)[np.asarray(out["source_row"], dtype=np.int64)]
    return out.add_column("hardness", hardness.tolist(), feature=datasets.Value("float64"))
