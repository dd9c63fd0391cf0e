"""The packaged demo SFT dataset (six small domains sampled from the MIT ``evals`` package).

Rows are in TRL's conversational prompt-completion format, so they go straight into
``trl.SFTTrainer``, and carry ``domain`` / ``answer`` / ``split`` / ``source`` columns. The train
split is deliberately imbalanced across domains; validation and test hold 40 rows per domain.
Provenance and licence: ``sft_callbacks/data/DEMO_DATA_LICENSE.md``; rebuilt by
``scripts/build_demo_data.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources

import datasets
import numpy as np

#: Domain names, in decreasing order of their share of the train split.
DEMO_DOMAINS: tuple[str, ...] = (
    "sarcasm",
    "logic",
    "food",
    "science_mcq",
    "binary_math",
    "radio_exam",
)

DEMO_SPLITS: tuple[str, ...] = ("train", "validation", "test")

_DATA_FILE = "demo_sft.jsonl"
_BENCHMARK_FILES = {"benchmark": "benchmark_sft.jsonl", "sentiment_shift": "sentiment_shift_sft.jsonl"}


def _read_rows(name: str = _DATA_FILE) -> list[dict]:
    # importlib.resources works from a wheel, a zip or an editable install alike.
    text = resources.files("sft_callbacks").joinpath("data").joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_demo_dataset(split: str = "train") -> datasets.Dataset:
    """Load one split of the packaged demo dataset.

    Columns: ``prompt`` (list of system/user messages), ``completion`` (one assistant message),
    ``domain``, ``answer``, ``split``, ``source``.

    Example::

        >>> from sft_callbacks.demo_data import load_demo_dataset
        >>> train = load_demo_dataset("train")
        >>> sorted(set(train["domain"])) == sorted(DEMO_DOMAINS)
        True
    """
    if split not in DEMO_SPLITS:
        raise ValueError(f"unknown demo split {split!r}; choose one of {list(DEMO_SPLITS)}")
    rows = [r for r in _read_rows() if r["split"] == split]
    # from_list keeps nested message dicts as lists of structs, which TRL expects.
    return datasets.Dataset.from_list(rows)


def load_benchmark_dataset(split: str = "train", name: str = "benchmark") -> datasets.Dataset:
    """Load one split of the evidence benchmark's SFT set (``scripts/benchmark.py evidence``).

    Three many-label domains a 135M model learns on the CPU within minutes even with 20% of the answers
    corrupted (language identification in 13 languages, the kind of a chat line in 4 kinds, its topic in 10
    topics), taken from text inside the chatterbot-corpus wheel (see ``BENCHMARK_DATA_LICENSE.md``) by
    ``scripts/build_benchmark_data.py``. The train split is imbalanced (the easiest domain is the largest);
    validation and test share one mix (the target) that gives the rarest domain most of the weight. Columns as
    :func:`load_demo_dataset`.

    ``name="sentiment_shift"`` is the domain-adaptation benchmark's set instead (one task in two sources: 640
    labelled tweets and 40 movie reviews to train on, validation and test on movie reviews only; answers positive
    or negative; ``SENTIMENT_SHIFT_DATA_LICENSE.md``).

    Example::

        >>> from sft_callbacks.demo_data import load_benchmark_dataset
        >>> sorted(set(load_benchmark_dataset("validation")["domain"]))
        ['chat_kind', 'language', 'topic']
        >>> sorted(set(load_benchmark_dataset("train", name="sentiment_shift")["domain"]))
        ['movie_reviews', 'tweets']
    """
    if split not in DEMO_SPLITS:
        raise ValueError(f"unknown benchmark split {split!r}; choose one of {list(DEMO_SPLITS)}")
    if name not in _BENCHMARK_FILES:
        raise ValueError(f"unknown benchmark set {name!r}; choose one of {sorted(_BENCHMARK_FILES)}")
    return datasets.Dataset.from_list([r for r in _read_rows(_BENCHMARK_FILES[name]) if r["split"] == split])


def corrupt_answers(dataset, fraction, seed: int, confusions: Mapping | None = None):
    """Replace ``fraction`` of the answers by another answer of the same domain; add a ``corrupted`` column.

    Plants known label noise for benchmarks and the demo: a corrupted row's ``completion`` and ``answer`` hold
    a different answer drawn (with ``seed``) from the same domain's answers. Rows whose domain has a single
    answer stay clean. ``fraction`` is one rate for the whole set (rows drawn uniformly), or a mapping
    ``{domain: rate}`` with a rate for every domain (sources differ in quality): then exactly
    ``round(rate * rows of the domain)`` rows of each domain are corrupted.

    ``confusions`` (``{domain: {answer: wrong answer}}``) makes the noise *plausible*: a corrupted row gets the
    answer its true one is most easily confused with (e.g. Spanish for Portuguese), not a uniform draw; answers
    the map does not name fall back to a uniform draw.

    Example::

        >>> noisy = corrupt_answers(load_demo_dataset("train"), 0.2, seed=0)
        >>> round(sum(noisy["corrupted"]) / len(noisy), 2)
        0.2
        >>> by = corrupt_answers(load_demo_dataset("train"), {d: 0.1 for d in DEMO_DOMAINS}, seed=0)
    """
    if "domain" not in dataset.column_names or "answer" not in dataset.column_names:
        raise ValueError("corrupt_answers needs 'domain' and 'answer' columns")
    rng = np.random.default_rng(seed)
    domains = np.asarray(dataset["domain"])
    answers = np.asarray(dataset["answer"], dtype=object)
    corrupted = np.zeros(len(dataset), dtype=bool)
    if isinstance(fraction, Mapping):
        present = sorted(set(domains.tolist()))
        missing = [d for d in present if d not in fraction]
        if missing:
            raise ValueError(f"corrupt_answers: no noise rate for domain(s) {missing}; give a rate for every domain")
        for d, rate in fraction.items():
            if not 0 <= rate < 1:
                raise ValueError(f"noise rate for domain {d!r} must be in [0, 1), got {rate}")
        parts = []
        for d in present:
            rows = np.flatnonzero(domains == d)
            parts.append(rng.choice(rows, size=int(round(fraction[d] * len(rows))), replace=False))
        chosen = np.concatenate(parts).astype(int)
    else:
        if not 0 <= fraction < 1:
            raise ValueError(f"fraction must be in [0, 1), got {fraction}")
        chosen = rng.choice(len(dataset), size=int(round(fraction * len(dataset))), replace=False)
    new_answers = answers.copy()
    for i in chosen:
        pool = sorted({a for a in answers[domains == domains[i]] if a != answers[i]})
        if pool:
            draw = pool[rng.integers(len(pool))]  # drawn either way: the same rows get the same stream of draws
            confused = (confusions or {}).get(str(domains[i]), {}).get(str(answers[i]))
            if confused is not None and confused == answers[i]:
                raise ValueError(f"confusions map {answers[i]!r} to itself in domain {domains[i]!r}")
            new_answers[i] = confused if confused is not None else draw
            corrupted[i] = True

    def apply(row, idx):
        if not corrupted[idx]:
            return {"corrupted": False}
        return {
            "completion": [{"role": "assistant", "content": str(new_answers[idx])}],
            "answer": str(new_answers[idx]),
            "corrupted": True,
        }

    return dataset.map(apply, with_indices=True)
