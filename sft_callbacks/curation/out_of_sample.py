"""Out-of-sample scores: each training row read by a model that never trained on it (K-fold cross-fitting).

A loss read during training is in-sample: once the model has fitted a wrong answer, its loss no longer says it is
wrong. cleanlab's guidance and Chong, Hong and Manning (2022, "Detecting Label Errors by Using Pre-Trained
Language Models") both rank by out-of-sample losses. This module trains K copies of your own trainer, each on
the other folds, and reads every row's loss in the evaluation its trainer runs on the held-out fold, captured
per row by the same tracker as in training (no separate scoring code).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd


def fold_assignment(n: int, folds: int, seed: int = 0, groups=None) -> np.ndarray:
    """Fold of each of ``n`` rows: a seeded shuffle dealt round-robin, within each group when ``groups`` is given
    (so every fold keeps the group mix; groups are visited in sorted order).

    The deal goes on from group to group where the last one stopped, so the groups' odd rows go to different folds:
    every fold holds ``n // folds`` or ``n // folds + 1`` rows (each fold model trains on about ``(folds - 1) /
    folds`` of them), and within each group the folds' counts differ by at most one.

    Example:
        >>> fold_assignment(6, 2, groups=["a", "a", "a", "a", "b", "b"]).tolist()
        [1, 0, 0, 1, 1, 0]
        >>> np.bincount(fold_assignment(30, 2, groups=[g for g in range(10) for _ in range(3)])).tolist()
        [15, 15]
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    if n < folds:
        raise ValueError(f"{n} rows cannot be split into {folds} folds")
    rng = np.random.default_rng(seed)
    labels = (np.zeros(n, dtype=np.int64) if groups is None
              else pd.factorize(np.asarray(groups, dtype=object), sort=True)[0])  # fmt: skip
    if len(labels) != n:
        raise ValueError(f"groups has {len(labels)} values for {n} rows")
    out = np.zeros(n, dtype=np.int64)
    start = 0
    for g in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == g))
        out[idx] = (start + np.arange(idx.size)) % folds
        start = (start + idx.size) % folds
    return out


def out_of_sample_losses(make_trainer: Callable, dataset, *, folds: int = 2, seed: int = 0,
                         group_column: str | None = None) -> pd.DataFrame:  # fmt: skip
    """Each row's loss and token accuracy from a model that did not train on it.

    ``make_trainer(train_dataset, eval_dataset)`` builds your usual trainer (``SFTTrainer`` or ``Trainer``, same
    model, arguments and callbacks as your run) on the rows it is given, passing ``eval_dataset`` as its only
    evaluation set. It is called ``folds`` times: each trainer trains on the other folds and then runs one
    ``evaluate()`` on its own fold, whose per-row losses are captured by a
    :class:`~sft_callbacks.TrainingDynamicsCallback` (added when the trainer has none).

    Cost: ``folds`` trainings on ``(folds - 1) / folds`` of the rows each, so ``folds - 1`` times the training
    compute of one run over the dataset with the same number of epochs, plus one evaluation pass over the
    dataset. With ``folds=2``: about one extra run. The rows' order, count and columns are unchanged.

    Returns a DataFrame indexed by row: ``loss`` (mean NLL over the trained tokens), ``token_accuracy``,
    ``fold``, and ``noise_score`` (``1 - exp(-loss)``: higher = more likely a wrong answer).

    Example:
        >>> def make_trainer(train, held_out):  # doctest: +SKIP
        ...     return SFTTrainer(model=load_model(), args=SFTConfig(..., eval_strategy="no"),
        ...                       train_dataset=train, eval_dataset=held_out, processing_class=tokenizer)
        >>> scores = out_of_sample_losses(make_trainer, train, folds=2, group_column="domain")  # doctest: +SKIP
        >>> scores.nlargest(20, "noise_score")  # doctest: +SKIP
    """
    from ..engine.dynamics import TrainingDynamicsCallback

    n = len(dataset)
    groups = None
    if group_column is not None:
        if group_column not in dataset.column_names:
            raise ValueError(f"group_column {group_column!r} is not a column of the dataset ({dataset.column_names})")
        groups = dataset[group_column]
    fold = fold_assignment(n, folds, seed, groups)
    loss = np.full(n, np.nan)
    accuracy = np.full(n, np.nan)
    for k in range(folds):
        held = np.flatnonzero(fold == k)
        trainer = _fold_trainer(make_trainer, dataset, fold, k)
        recorder = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TrainingDynamicsCallback)),
                        None)  # fmt: skip
        if recorder is None:
            recorder = TrainingDynamicsCallback()
            trainer.add_callback(recorder)
        if trainer.eval_dataset is None or isinstance(trainer.eval_dataset, dict):
            raise ValueError("make_trainer must pass its eval_dataset argument to the trainer as its one eval_dataset")
        trainer.train()
        trainer.evaluate()
        frame = recorder.eval_dynamics("eval")
        if len(frame) != held.size:
            raise RuntimeError(f"fold {k}: {len(frame)} evaluated rows for {held.size} held-out rows")
        loss[held] = frame["loss"].to_numpy(np.float64)
        accuracy[held] = frame["token_accuracy"].to_numpy(np.float64)
    out = pd.DataFrame({"loss": loss, "token_accuracy": accuracy, "fold": fold, "noise_score": 1.0 - np.exp(-loss)})
    out.index.name = "row"
    return out


def _fold_trainer(make_trainer: Callable, dataset, fold: np.ndarray, k: int):
    """Fold ``k``'s trainer, refused before it trains when it has no rows to train on."""
    train = np.flatnonzero(fold != k)
    empty = (f"fold {k}: the trainer has no training rows left of the {train.size} it was given (rows dropped by "
             "make_trainer or the trainer's preprocessing: filtered, empty or too long); check the dataset and "
             "make_trainer before scoring out of sample")
    try:
        trainer = make_trainer(dataset.select(train), dataset.select(np.flatnonzero(fold == k)))
    except StopIteration as e:  # TRL reads the first training row when it is built; an empty set ends its iterator
        raise ValueError(empty) from e
    if trainer.train_dataset is None or len(trainer.train_dataset) == 0:
        raise ValueError(empty)
    return trainer
