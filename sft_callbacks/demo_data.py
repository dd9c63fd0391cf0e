"""The packaged demo SFT dataset (six small domains sampled from the MIT ``evals`` package).

Rows are in TRL's conversational prompt-completion format, so they go straight into
``trl.SFTTrainer``, and carry ``domain`` / ``answer`` / ``split`` / ``source`` columns. The train
split is deliberately imbalanced across domains; validation and test hold 40 rows per domain.
Provenance and licence: ``sft_callbacks/data/DEMO_DATA_LICENSE.md``; rebuilt by
``scripts/build_demo_data.py``.
"""

from __future__ import annotations

import json
from importlib import resources

import datasets

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


def _read_rows() -> list[dict]:
    # importlib.resources works from a wheel, a zip or an editable install alike.
    text = resources.files("sft_callbacks").joinpath("data").joinpath(_DATA_FILE).read_text(encoding="utf-8")
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
