"""Conflict cleaning: duplicate and near-duplicate prompts whose responses disagree.

A *conflict* is a group of rows with the same prompt (exact after normalisation, or a near
duplicate by MinHash/LSH) whose normalised responses are not all equal: training on it teaches the
model two different answers to one question. :func:`find_conflicts` adds three columns to a
``datasets.Dataset``:

* ``duplicate_group`` (int): id of the duplicate group (exact or near) the row is in, ``-1`` if the
  row's prompt has no duplicate;
* ``conflict`` (bool): the row is in a duplicate group whose responses disagree;
* ``conflict_group`` (int): ``duplicate_group`` for conflicting rows, ``-1`` otherwise.

No rows are removed; filter with ``ds.filter(lambda r: not r["conflict"])`` or inspect groups.

How it works (memory stays bounded: rows are read ``batch_size`` at a time and only two ``uint64``
hashes per row plus one MinHash signature per *distinct* prompt are kept):

1. Prompt/response text is extracted from TRL's formats (:func:`extract_texts`) and normalised
   (:func:`normalize_text`: lowercase, collapse whitespace, strip punctuation at both ends).
2. Exact duplicates: rows whose normalised prompts have the same xxhash64 share an exact id.
3. Near duplicates (optional): each distinct normalised prompt gets a MinHash signature over its
   set of UTF-8 byte n-grams (:func:`minhash_signatures`). LSH banding splits the ``num_perm``
   values into ``bands`` bands of ``rows = num_perm // bands`` values (``bands * rows <=
   num_perm``); prompts that agree on a whole band become candidate pairs. A pair with Jaccard
   similarity ``s`` becomes a candidate with
   probability ``1 - (1 - s**rows)**bands``. Candidates are verified by the estimated Jaccard
   (fraction of equal signature values) ``>= threshold`` and merged with union-find.
4. A group (exact or near) whose normalised responses are not all equal is a conflict.

Caveats: near-duplicate groups are transitive (A~B and B~C put A and C together); very short
prompts that differ in one token can still exceed the threshold (``"what is 2+2"`` vs ``"what is
2+3"`` has char-3-gram Jaccard 0.8), and prompts sharing a long template (system prompt,
instruction) with short or low-entropy varying parts look alike. For such data pass ``max_df``
(ignore shingles common to many prompts) and a longer ``ngram``, raise ``threshold``, or use
``near_duplicates=False``. On the packaged demo set the defaults flag 459 of 900 train rows
(template-sharing "logic"/"food"/"binary_math" prompts, false positives), ``max_df=0.05, ngram=8``
flags none, and exact matching alone flags none.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass

import datasets
import numpy as np
import xxhash

from ..engine.hashing import mix64

__all__ = [
    "ConflictResult",
    "detect_conflicts",
    "extract_texts",
    "find_conflicts",
    "lsh_candidate_pairs",
    "minhash_signatures",
    "normalize_text",
    "choose_bands",
    "frequent_shingles",
    "resolve_columns",
    "shingle_hashes",
]

_STRIP = string.punctuation + string.whitespace
_MASK32 = np.uint64(0xFFFFFFFF)
_SHIFT32 = np.uint64(32)
_BYTE_MULT = np.uint64(0x100000001B3)  # FNV-style multiplier for the rolling byte hash
_PAIR_CAP = 32  # buckets up to this size give all pairs; bigger ones a star + chain (bounded work)

_OUT_COLUMNS = ("conflict", "conflict_kind", "conflict_group", "duplicate_group")

_PROMPT_PAIRS = (
    ("prompt", "completion"),
    ("prompt", "response"),
    ("prompt", "chosen"),
    ("instruction", "output"),
    ("question", "answer"),
    ("input", "output"),
)


# --------------------------------------------------------------------------------------------
# Text extraction and normalisation
# --------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lowercase, collapse runs of whitespace to one space and strip punctuation/space at both ends.

    Example:
        >>> normalize_text("  What IS   the capital of France?? ")
        'what is the capital of france'
    """
    return " ".join(text.lower().split()).strip(_STRIP)


def _content(message) -> str:
    content = message.get("content", "") if isinstance(message, dict) else message
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content parts: keep the text parts
        return " ".join(
            p.get("text", "") or "" if isinstance(p, dict) else str(p) for p in content
        )
    return str(content)


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value)


def _prompt_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_messages(value):
        return "\n".join(_content(m) for m in value if m.get("role") in ("system", "user", None))
    return str(value)


def _response_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if _is_messages(value):
        parts = [_content(m) for m in value if m.get("role") in ("assistant", None)]
        return "\n".join(parts)
    return str(value)


def _split_messages(messages) -> tuple[str, str]:
    if not messages:
        return "", ""
    last = None
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            last = i
            break
    if last is None:
        return "\n".join(_content(m) for m in messages), ""
    prompt = "\n".join(f"{m.get('role', '')}: {_content(m)}" for m in messages[:last])
    return prompt, _content(messages[last])


def resolve_columns(
    column_names: Sequence[str], prompt_column: str | None = None, response_column: str | None = None
) -> tuple[str, str | None]:
    """Pick the prompt/response columns: explicit names, else ``prompt``/``completion`` (and other
    common pairs), else conversational ``messages`` (returned as ``("messages", None)``).

    Example:
        >>> resolve_columns(["prompt", "completion", "domain"])
        ('prompt', 'completion')
        >>> resolve_columns(["messages"])
        ('messages', None)
    """
    cols = list(column_names)
    if prompt_column is not None or response_column is not None:
        if prompt_column is None:
            raise ValueError("response_column given without prompt_column")
        missing = [c for c in (prompt_column, response_column) if c is not None and c not in cols]
        if missing:
            raise ValueError(f"column(s) {missing} not in dataset columns {cols}")
        return prompt_column, response_column
    for p, r in _PROMPT_PAIRS:
        if p in cols and r in cols:
            return p, r
    if "messages" in cols:
        return "messages", None
    raise ValueError(
        f"no usable prompt/response columns in {cols}: expected prompt/completion, messages, "
        "or pass prompt_column= and response_column="
    )


def extract_texts(batch: dict, prompt_column: str, response_column: str | None) -> tuple[list[str], list[str]]:
    """Raw prompt and response strings for a batch (a dict of columns, as from ``ds[i:j]``).

    * prompt-completion: string columns are used as they are; for chat message lists the
      system/user contents form the prompt and the assistant contents the response;
    * ``messages`` (``response_column=None``): every turn before the last assistant turn is the
      prompt (``role: content`` lines), the last assistant turn is the response.

    Example:
        >>> extract_texts({"prompt": [[{"role": "user", "content": "Hi"}]],
        ...                "completion": [[{"role": "assistant", "content": "Hello"}]]},
        ...               "prompt", "completion")
        (['Hi'], ['Hello'])
        >>> extract_texts({"messages": [[{"role": "user", "content": "Hi"},
        ...                              {"role": "assistant", "content": "Hello"}]]}, "messages", None)
        (['user: Hi'], ['Hello'])
    """
    if response_column is None:
        pairs = [_split_messages(v) if _is_messages(v) else (_prompt_text(v), "") for v in batch[prompt_column]]
        return [p for p, _ in pairs], [r for _, r in pairs]
    prompts = [_prompt_text(v) for v in batch[prompt_column]]
    responses = [_response_text(v) for v in batch[response_column]]
    return prompts, responses


# --------------------------------------------------------------------------------------------
# MinHash and LSH
# --------------------------------------------------------------------------------------------


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(texts: Sequence[str], ngram: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every UTF-8 byte n-gram of each text, concatenated, with row offsets.

    Returns ``(hashes, starts)``: row ``i``'s shingles are ``hashes[starts[i]:starts[i+1]]`` (the
    last row runs to the end). A text shorter than ``ngram`` bytes (including ``""``) gets one
    shingle, the hash of the whole text, so every row has at least one.

    Example:
        >>> h, starts = shingle_hashes(["abcd", "ab"], ngram=3)
        >>> len(h), starts.tolist()
        (3, [0, 2])
    """
    enc = [t.encode("utf-8") for t in texts]
    lengths = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
    data = np.frombuffer(b"".join(enc) + b"\0" * ngram, dtype=np.uint8).astype(np.uint64) + np.uint64(1)
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    counts = np.maximum(lengths - ngram + 1, 1)
    starts = np.zeros(len(enc), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    total = int(counts.sum())
    row = np.repeat(np.arange(len(enc)), counts)
    pos = np.arange(total, dtype=np.int64) - starts[row] + offsets[:-1][row]
    end = offsets[1:][row]
    h = np.zeros(total, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(ngram):
            byte = np.where(pos + k < end, data[pos + k], np.uint64(0))
            h = h * _BYTE_MULT + byte
    h = mix64(h)  # keep 32 of the mixed bits
    return (h >> _SHIFT32) & _MASK32, starts


def _signatures(
    texts: Sequence[str], num_perm: int, ngram: int, seed: int = 1, stop_shingles: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    n = len(texts)
    if n == 0:
        return np.zeros((0, num_perm), dtype=np.uint32), np.zeros(0, dtype=bool)
    x, starts = shingle_hashes(texts, ngram)
    active = np.ones(n, dtype=bool)
    if stop_shingles is not None and len(stop_shingles):
        pos = np.minimum(np.searchsorted(stop_shingles, x), len(stop_shingles) - 1)
        keep = stop_shingles[pos] != x
        kept = np.add.reduceat(keep.astype(np.int64), starts)
        active = kept > 0
        keep[starts[~active]] = True  # placeholder shingle so reduceat stays per row; row is inactive
        counts = np.maximum(kept, 1)
        x = x[keep]
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
    a, b = _perm_params(num_perm, seed)
    sig = np.empty((n, num_perm), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for j in range(num_perm):
            hv = (x * a[j] + b[j]) >> _SHIFT32
            sig[:, j] = np.minimum.reduceat(hv, starts)
    return sig, active


def minhash_signatures(
    texts: Sequence[str], num_perm: int = 64, ngram: int = 3, seed: int = 1, stop_shingles: np.ndarray | None = None
) -> np.ndarray:
    """MinHash signatures, shape ``(len(texts), num_perm)`` ``uint32``, over byte n-gram shingles.

    Each shingle hash ``x`` (32 bits) is mapped by ``num_perm`` universal hash functions
    ``h_j(x) = ((a_j * x + b_j) mod 2**64) >> 32`` (multiply-shift, the power-of-two form of
    ``(a*x + b) mod p``) and min-reduced per row with ``np.minimum.reduceat`` over the shingle
    offsets. ``P[sig_i[j] == sig_k[j]]`` is the Jaccard similarity of the two shingle sets, so the
    fraction of equal values estimates it (standard error ``~ sqrt(s(1-s)/num_perm)``).
    ``stop_shingles`` (sorted ``uint64`` shingle hashes, see :func:`frequent_shingles`) are ignored.

    Example:
        >>> s = minhash_signatures(["the quick brown fox", "the quick brown fox", "lorem ipsum"])
        >>> s.shape, bool((s[0] == s[1]).all()), float((s[0] == s[2]).mean()) < 0.5
        ((3, 64), True, True)
    """
    return _signatures(texts, num_perm, ngram, seed, stop_shingles)[0]


def frequent_shingles(texts: Sequence[str], ngram: int = 3, max_df: float = 0.05) -> np.ndarray:
    """Sorted hashes of shingles that occur in more than ``max_df`` of ``texts`` (a sample is enough).

    Shared boilerplate (a system prompt, an instruction template) makes unrelated prompts look
    alike; ignoring these shingles makes the Jaccard similarity reflect the varying content.

    Example:
        >>> texts = [f"answer the question carefully: item {i} {i * 7}" for i in range(100)]
        >>> stop = frequent_shingles(texts, max_df=0.5)
        >>> h, _ = shingle_hashes(["answer the question"])
        >>> bool(np.isin(h, stop).all())
        True
    """
    if not texts:
        return np.zeros(0, dtype=np.uint64)
    x, starts = shingle_hashes(texts, ngram)
    row = np.repeat(np.arange(len(texts), dtype=np.uint64), np.diff(np.append(starts, len(x))))
    per_row = np.unique((row << _SHIFT32) | x) & _MASK32  # each shingle once per text
    vals, df = np.unique(per_row, return_counts=True)
    return np.sort(vals[df > max_df * len(texts)])


def choose_bands(num_perm: int, threshold: float, min_recall: float = 0.95) -> int:
    """Default number of LSH bands ``b`` (``r = num_perm // b`` rows each): the smallest ``b``, i.e.
    the longest bands and so the fewest chance candidates from moderately similar prompts (shared
    templates), whose detection probability ``1 - (1 - threshold**r)**b`` is at least ``min_recall``.
    Pairs above the threshold are detected with higher probability still.

    Example:
        >>> choose_bands(64, 0.8)  # 10 bands x 6 rows: P(s=0.8) = 0.952, P(s=0.9) = 0.9995, P(s=0.4) = 0.04
        10
    """
    for b in range(1, num_perm + 1):
        r = num_perm // b
        if 1.0 - (1.0 - threshold**r) ** b >= min_recall:
            return b
    return num_perm


def lsh_candidate_pairs(signatures: np.ndarray, bands: int) -> np.ndarray:
    """Candidate pairs ``(i, j)``, ``i < j``, of rows that agree on at least one whole band.

    Buckets of up to 32 rows give all their pairs; larger buckets (templated prompts) give each
    member paired with the bucket's first member and with its predecessor, so the work stays
    linear. Returns a ``(k, 2)`` ``int64`` array of unique pairs.

    Example:
        >>> sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [7, 7, 7, 7]], dtype=np.uint32)
        >>> lsh_candidate_pairs(sig, bands=2).tolist()
        [[0, 1]]
    """
    n, num_perm = signatures.shape
    if not 1 <= bands <= num_perm:
        raise ValueError(f"bands={bands} must be in [1, num_perm={num_perm}]")
    r = num_perm // bands
    rng = np.random.default_rng(12345)
    mult = rng.integers(1, 2**63, size=r, dtype=np.uint64) | np.uint64(1)
    out = []
    idx_all = np.arange(n, dtype=np.int64)
    for band in range(bands):
        cols = signatures[:, band * r : (band + 1) * r].astype(np.uint64)
        with np.errstate(over="ignore"):
            key = (cols * mult).sum(axis=1, dtype=np.uint64) ^ np.uint64(band)
            key ^= key >> np.uint64(29)
            key *= np.uint64(0x94D049BB133111EB)
        order = np.argsort(key, kind="stable")
        k = key[order]
        same_next = k[1:] == k[:-1]
        if not same_next.any():
            continue
        # bucket start / size per sorted position
        new_bucket = np.concatenate(([True], ~same_next))
        bucket_id = np.cumsum(new_bucket) - 1
        bstart = np.flatnonzero(new_bucket)
        bsize = np.diff(np.append(bstart, n))
        size = bsize[bucket_id]
        small = size <= _PAIR_CAP
        # all pairs within small buckets: distance d = 1.. cap-1
        for d in range(1, min(_PAIR_CAP, int(size[small].max(initial=1)))):
            ok = (bucket_id[d:] == bucket_id[:-d]) & small[d:]
            if not ok.any():
                break
            i = np.flatnonzero(ok)
            out.append(np.stack([order[i], order[i + d]], axis=1))
        big = ~small
        if big.any():
            pos = idx_all[big]
            first = bstart[bucket_id[pos]]
            nf = pos != first
            out.append(np.stack([order[first[nf]], order[pos[nf]]], axis=1))
            prev = pos[nf] - 1
            nc = prev != first[nf]
            out.append(np.stack([order[prev[nc]], order[pos[nf][nc]]], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(out).astype(np.int64)
    pairs.sort(axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    key = np.sort(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    key = key[np.concatenate(([True], key[1:] != key[:-1]))] if len(key) else key
    return np.stack([key // n, key % n], axis=1)


def _verify(signatures: np.ndarray, pairs: np.ndarray, threshold: float, chunk: int = 200_000) -> np.ndarray:
    keep = []
    for s in range(0, len(pairs), chunk):
        p = pairs[s : s + chunk]
        sim = (signatures[p[:, 0]] == signatures[p[:, 1]]).mean(axis=1)
        keep.append(p[sim >= threshold])
    return np.concatenate(keep) if keep else pairs[:0]


def _union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = list(range(n))

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            if ri < rj:
                parent[rj] = ri
            else:
                parent[ri] = rj
    return np.fromiter((find(i) for i in range(n)), dtype=np.int64, count=n)


# --------------------------------------------------------------------------------------------
# Grouping
# --------------------------------------------------------------------------------------------


@dataclass
class ConflictResult:
    """Per-row arrays (``conflict`` bool, ``conflict_group`` / ``duplicate_group`` int64, ``-1`` =
    none, ``conflict_kind``: ``"exact"`` when the row's own normalised prompt has disagreeing
    responses, ``"near"`` when the disagreement only comes through a near-duplicate prompt, ``""``
    otherwise) plus counts: ``num_duplicate_groups``, ``num_conflict_groups``, ``num_near_pairs``
    (verified near-duplicate pairs of distinct prompts)."""

    conflict: np.ndarray
    conflict_group: np.ndarray
    duplicate_group: np.ndarray
    num_duplicate_groups: int
    num_conflict_groups: int
    num_near_pairs: int
    conflict_kind: np.ndarray | None = None

    @property
    def num_conflict_rows(self) -> int:
        return int(self.conflict.sum())


def _group(
    prompt_uid: np.ndarray, response_hash: np.ndarray, component_of_uid: np.ndarray, num_near_pairs: int
) -> ConflictResult:
    comp = component_of_uid[prompt_uid]
    n = len(comp)
    # dense group ids, counts
    uniq, inv, counts = np.unique(comp, return_inverse=True, return_counts=True)
    is_dup_group = counts >= 2
    # distinct responses per group: sort by (group, response) and count changes
    order = np.lexsort((response_hash, inv))
    g = inv[order]
    r = response_hash[order]
    changes = (g[1:] == g[:-1]) & (r[1:] != r[:-1])
    conflict_groups = np.zeros(len(uniq), dtype=bool)
    conflict_groups[g[1:][changes]] = True
    dense = np.full(len(uniq), -1, dtype=np.int64)
    dense[is_dup_group] = np.arange(int(is_dup_group.sum()))
    duplicate_group = dense[inv]
    conflict = conflict_groups[inv]
    conflict_group = np.where(conflict, duplicate_group, -1)
    # Exact conflicts (same normalised prompt, different responses) are safe to act on; near ones
    # include contrast pairs ("more"/"less") that a lexical similarity cannot tell apart: review them.
    exact = conflict & _has_distinct(prompt_uid, response_hash)
    kind = np.where(exact, "exact", np.where(conflict, "near", "")).astype(object)
    return ConflictResult(
        conflict=conflict.astype(bool),
        conflict_group=conflict_group.astype(np.int64),
        duplicate_group=duplicate_group.astype(np.int64),
        num_duplicate_groups=int(is_dup_group.sum()),
        num_conflict_groups=int(conflict_groups.sum()),
        num_near_pairs=int(num_near_pairs),
        conflict_kind=kind,
    ) if n else ConflictResult(np.zeros(0, bool), np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 0, 0,
                               np.zeros(0, dtype=object))


def _has_distinct(key: np.ndarray, response_hash: np.ndarray) -> np.ndarray:
    """Per row: whether another row with the same ``key`` has a different response."""
    _, inv = np.unique(key, return_inverse=True)
    order = np.lexsort((response_hash, inv))
    g, r = inv[order], response_hash[order]
    changes = (g[1:] == g[:-1]) & (r[1:] != r[:-1])
    groups = np.zeros(int(inv.max()) + 1 if len(inv) else 0, dtype=bool)
    groups[g[1:][changes]] = True
    return groups[inv]


class _Accumulator:
    """Streams batches of raw texts; keeps two hashes per row and one signature per distinct prompt."""

    def __init__(self, near_duplicates: bool, num_perm: int, ngram: int, normalize: bool, stop=None):
        self.near, self.num_perm, self.ngram, self.normalize = near_duplicates, num_perm, ngram, normalize
        self.stop = stop
        self.active: list[np.ndarray] = []
        self.seen: dict[int, int] = {}
        self.prompt_uid: list[np.ndarray] = []
        self.response_hash: list[np.ndarray] = []
        self.signatures: list[np.ndarray] = []

    def add(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        if self.normalize:
            prompts = [normalize_text(p) for p in prompts]
            responses = [normalize_text(r) for r in responses]
        h64 = xxhash.xxh64_intdigest
        seen = self.seen
        uids = np.empty(len(prompts), dtype=np.int64)
        new_texts = []
        for i, p in enumerate(prompts):
            h = h64(p.encode("utf-8"))
            u = seen.get(h)
            if u is None:
                u = seen[h] = len(seen)
                new_texts.append(p)
            uids[i] = u
        self.prompt_uid.append(uids)
        rh = np.fromiter((h64(r.encode("utf-8")) for r in responses), dtype=np.uint64, count=len(responses))
        self.response_hash.append(rh)
        if self.near and new_texts:
            sig, active = _signatures(new_texts, self.num_perm, self.ngram, stop_shingles=self.stop)
            self.signatures.append(sig)
            self.active.append(active)

    def finish(self, threshold: float, bands: int | None) -> ConflictResult:
        prompt_uid = np.concatenate(self.prompt_uid) if self.prompt_uid else np.zeros(0, np.int64)
        response_hash = np.concatenate(self.response_hash) if self.response_hash else np.zeros(0, np.uint64)
        n_uid = len(self.seen)
        component = np.arange(n_uid, dtype=np.int64)
        num_near = 0
        if self.near and n_uid > 1:
            sig = np.concatenate(self.signatures)
            self.signatures = [sig]
            b = bands if bands is not None else choose_bands(self.num_perm, threshold)
            active = np.concatenate(self.active)
            pairs = lsh_candidate_pairs(sig, b)
            pairs = _verify(sig, pairs[active[pairs[:, 0]] & active[pairs[:, 1]]], threshold)
            num_near = len(pairs)
            if num_near:
                component = _union_find(n_uid, pairs)
        return _group(prompt_uid, response_hash, component, num_near)


def _sample_indices(n: int, k: int) -> list[int]:
    return np.unique(np.linspace(0, n - 1, min(n, max(k, 1))).astype(np.int64)).tolist()


def _check_params(threshold: float, num_perm: int, bands: int | None, ngram: int, batch_size: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1 or ngram < 1 or batch_size < 1:
        raise ValueError("num_perm, ngram and batch_size must be >= 1")
    if bands is not None and not 1 <= bands <= num_perm:
        raise ValueError(f"bands={bands} must be in [1, num_perm={num_perm}]")


def detect_conflicts(
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    near_duplicates: bool = True,
    threshold: float = 0.8,
    num_perm: int = 64,
    bands: int | None = None,
    ngram: int = 3,
    normalize: bool = True,
    batch_size: int = 10_000,
    max_df: float | None = None,
    df_sample: int = 20_000,
) -> ConflictResult:
    """Pure-function core of :func:`find_conflicts` on parallel lists of prompt/response strings.

    Example:
        >>> res = detect_conflicts(
        ...     ["What is 2+2?", "what is 2+2", "Name a colour of the clear daytime sky.",
        ...      "Name a color of the clear daytime sky", "Who wrote Hamlet?"],
        ...     ["4", "5", "blue", "Blue.", "Shakespeare"])
        >>> res.conflict.tolist(), res.duplicate_group.tolist()
        ([True, True, False, False, False], [0, 0, 1, 1, -1])
    """
    _check_params(threshold, num_perm, bands, ngram, batch_size)
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if len(prompts) == 0:
        raise ValueError("no rows: the input is empty")
    stop = None
    if near_duplicates and max_df is not None:
        sample = [prompts[i] for i in _sample_indices(len(prompts), df_sample)]
        stop = frequent_shingles([normalize_text(t) for t in sample] if normalize else sample, ngram, max_df)
    acc = _Accumulator(near_duplicates, num_perm, ngram, normalize, stop)
    for s in range(0, len(prompts), batch_size):
        acc.add(list(prompts[s : s + batch_size]), list(responses[s : s + batch_size]))
    return acc.finish(threshold, bands)


def find_conflicts(
    dataset: datasets.Dataset,
    *,
    prompt_column: str | None = None,
    response_column: str | None = None,
    near_duplicates: bool = True,
    threshold: float = 0.8,
    num_perm: int = 64,
    bands: int | None = None,
    ngram: int = 3,
    normalize: bool = True,
    batch_size: int = 10_000,
    max_df: float | None = None,
    df_sample: int = 20_000,
    return_result: bool = False,
):
    """Flag rows whose (near-)duplicate prompts have disagreeing responses.

    Returns ``dataset`` with columns ``conflict`` (bool), ``conflict_kind`` (``"exact"``: the same
    normalised prompt has different responses, safe to act on; ``"near"``: the disagreement is with
    a near-duplicate prompt, to review, since a one-word change can be a real contrast such as
    "more"/"less"; ``""``), ``conflict_group`` and ``duplicate_group`` (int, ``-1`` = none) added
    (replaced if present); no rows are dropped or reordered. With ``return_result=True`` returns
    ``(dataset, ConflictResult)``.

    Columns: explicit ``prompt_column``/``response_column``; else ``prompt``/``completion`` (strings
    or chat message lists) and similar pairs; else conversational ``messages`` (see
    :func:`extract_texts`).

    Near-duplicate parameters:

    * ``ngram``: shingle length in UTF-8 bytes of the normalised prompt (3 = character trigrams);
    * ``num_perm``: MinHash values per prompt (memory ``4 * num_perm`` bytes per distinct prompt;
      the Jaccard estimate's standard error is ``sqrt(s(1-s)/num_perm)``);
    * ``bands`` (``b``) with ``r = num_perm // b`` rows per band (``b * r <= num_perm``; any rest
      is unused): a pair with Jaccard ``s`` becomes an LSH candidate with probability
      ``1 - (1 - s**r)**b``. Default (:func:`choose_bands`) for ``num_perm=64, threshold=0.8`` is
      ``b=10, r=6``: ``s=0.9 -> 0.9995``, ``s=0.8 -> 0.952``, ``s=0.5 -> 0.15``, ``s=0.3 -> 0.007``.
      More bands raise recall near the threshold but also the number of candidates to verify
      (prompts sharing a long template have Jaccard ~0.3-0.5); more ``num_perm`` sharpens both;
    * ``threshold``: candidates are kept if the estimated Jaccard is ``>= threshold``;
    * ``max_df``: if set (e.g. ``0.05``), shingles found in more than this fraction of a sample of
      ``df_sample`` prompts are ignored (see :func:`frequent_shingles`), so shared system prompts and
      instruction templates do not make different questions look alike; prompts made only of such
      shingles are then left to exact matching. Recommended for templated data: on the packaged
      demo set the default (``None``) merges hundreds of template-sharing "logic"/"food" prompts
      into near-duplicate groups, while ``max_df=0.05`` does not.

    Example:
        >>> ds = datasets.Dataset.from_dict({
        ...     "prompt": ["What is 2+2?", "what is 2+2", "Who wrote Hamlet?"],
        ...     "completion": ["4", "5", "Shakespeare"]})
        >>> out = find_conflicts(ds)
        >>> out["conflict"][:], out["conflict_kind"][:], out["conflict_group"][:]
        ([True, True, False], ['exact', 'exact', ''], [0, 0, -1])
    """
    _check_params(threshold, num_perm, bands, ngram, batch_size)
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"expected a datasets.Dataset, got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty")
    pcol, rcol = resolve_columns(dataset.column_names, prompt_column, response_column)
    view = dataset.select_columns([pcol] if rcol is None else [pcol, rcol])
    stop = _dataset_stop_shingles(view, pcol, rcol, ngram, normalize, max_df, df_sample) if near_duplicates else None
    acc = _Accumulator(near_duplicates, num_perm, ngram, normalize, stop)
    for s in range(0, len(view), batch_size):
        acc.add(*extract_texts(view[s : s + batch_size], pcol, rcol))
    res = acc.finish(threshold, bands)
    params = repr((pcol, rcol, near_duplicates, threshold, num_perm, bands, ngram, normalize, max_df, df_sample))
    out = _with_result_columns(dataset, res, params)
    return (out, res) if return_result else out


def _dataset_stop_shingles(
    view: datasets.Dataset,
    pcol: str,
    rcol: str | None,
    ngram: int,
    normalize: bool,
    max_df: float | None,
    df_sample: int,
) -> np.ndarray | None:
    """Shingles too common in a sample of the prompts to tell them apart; ``None`` without ``max_df``."""
    if max_df is None:
        return None
    sample, _ = extract_texts(view.select(_sample_indices(len(view), df_sample))[:], pcol, rcol)
    return frequent_shingles([normalize_text(t) for t in sample] if normalize else sample, ngram, max_df)


def _with_result_columns(dataset: datasets.Dataset, res: ConflictResult, params: str) -> datasets.Dataset:
    """``dataset`` with the result's per-row columns, replacing any columns of those names."""
    out = dataset.remove_columns([c for c in _OUT_COLUMNS if c in dataset.column_names])
    for name in _OUT_COLUMNS:
        values = getattr(res, name)
        # an explicit fingerprint avoids datasets pickling a million-element list to hash it
        fp = xxhash.xxh64_hexdigest(f"{dataset._fingerprint}|conflicts|{params}|{name}".encode())
        out = out.add_column(name, values.tolist(), new_fingerprint=fp)
    return out
