"""What each annotation column means: the one registry the card, the Space and the docs read.

Every column sft-callbacks writes onto a user's rows (``to_dataset``, :func:`~sft_callbacks.curate`,
:func:`~sft_callbacks.find_conflicts`, the data map) is listed here with a one-line meaning, in the order the
sample viewer shows them. A new annotation is added here first; ``tests/engine/test_columns.py`` fails when a
column that the callbacks write has no meaning, or when README's column table and this registry disagree.
"""

from __future__ import annotations

#: Annotation column -> its meaning, in display order.
COLUMN_MEANINGS: dict[str, str] = {
    "source_row": "row of the input dataset this row comes from",
    "times_seen": "training forward passes that included the row",
    "loss_mean": "mean per-token loss (NLL of the trained tokens) over those passes",
    "loss_last": "per-token loss at the row's latest pass",
    "loss_first": "per-token loss at the row's first pass",
    "loss_per_epoch": "list: mean per-token loss in each epoch (NaN where the row was not drawn)",
    "token_accuracy": "top-1 accuracy on the trained tokens at the latest pass",
    "token_accuracy_mean": "top-1 accuracy on the trained tokens, mean over passes",
    "entropy_mean": "mean predictive entropy on the trained tokens (empty where the forward gives none, e.g. the "
                    "plain Trainer)",
    "last_step": "optimizer step of the row's latest pass (-1: never drawn)",
    "n_trained_tokens": "tokens of the row that carry a loss (after TRL's preparation and truncation)",
    "dropped_by_trl": "TRL dropped the row during preparation, e.g. no trained token left (statistics are empty)",
    "dropped": "older name of dropped_by_trl (annotated datasets written by sft-callbacks 0.1.0)",
    "n_duplicates": "rows with identical tokens share one set of statistics: the size of this row's group "
                    "(1 = unique)",
    "weight": "final sampling weight relative to uniform (2.0 = drawn twice as often)",
    "confidence": "data map: mean probability of the reference tokens across epochs",
    "variability": "data map: standard deviation of that confidence across epochs (empty: seen in < 2 epochs)",
    "correctness": "data map: fraction of epochs the row was predicted correctly",
    "forgetting_events": "data map: times the row went from learnt to not learnt",
    "epochs_seen": "data map: epochs in which the row was drawn (it is placed on the map from 2)",
    "region": "data map region (easy-to-learn / ambiguous / hard-to-learn; empty: seen in < 2 epochs)",
    "noise_score": "data map: suspicion of a wrong answer (default: 1 - confidence over the window of trust)",
    "flag_noisy": "data map flag: likely mislabeled",
    "withheld": "denoising: not drawn (or down-weighted) for the rest of training as a likely wrong answer",
    "withheld_reason": "denoising: why and from which step the row was withheld (empty: trained on throughout)",
    "difficulty": "curriculum difficulty score (higher = harder)",
    "conflict": "the prompt has conflicting answers in the data",
    "conflict_kind": "exact: the same prompt has disagreeing answers; near: through a near-duplicate prompt",
    "conflict_group": "rows that disagree on one prompt share this id (-1: none)",
    "duplicate_group": "rows with the same normalised prompt share this id (-1: none)",
}

#: Columns holding a list per row (kept in the data; the report, summaries and table show scalars only).
LIST_COLUMNS = ("loss_per_epoch",)


def column_meaning(name: str) -> str | None:
    """The meaning of annotation column ``name``, or ``None`` for a column that is not ours.

    Example:
        >>> column_meaning("weight")
        'final sampling weight relative to uniform (2.0 = drawn twice as often)'
        >>> column_meaning("prompt") is None
        True
    """
    return COLUMN_MEANINGS.get(name)


def columns_markdown() -> str:
    """The registry as a Markdown table (README's "Annotation columns" section is this text).

    Example:
        >>> columns_markdown().splitlines()[0]
        '| column | meaning |'
    """
    rows = [f"| `{name}` | {meaning} |" for name, meaning in COLUMN_MEANINGS.items()]
    return "\n".join(["| column | meaning |", "|---|---|", *rows])


__all__ = ["COLUMN_MEANINGS", "LIST_COLUMNS", "column_meaning", "columns_markdown"]
