"""Per-sample statistics as tables: the training-dynamics frame, an evaluation's frame, and dataset columns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .tracking import SampleTracker

DYNAMICS_COLUMNS = (
    "times_seen",
    "loss_last",
    "loss_mean",
    "loss_first",
    "loss_per_epoch",
    "token_accuracy",
    "token_accuracy_mean",
    "entropy_mean",
    "last_step",
    "n_trained_tokens",
    "dropped",
    "n_duplicates",
)


def dynamics_frame(tracker: SampleTracker) -> pd.DataFrame:
    """Per-sample statistics of ``tracker`` as a DataFrame indexed by the user's training-dataset row.

    Columns: ``times_seen`` (training forward passes that included the row), ``loss_last`` / ``loss_mean`` /
    ``loss_first`` (mean NLL over the row's trained tokens: latest, average over passes, first),
    ``loss_per_epoch`` (list: mean loss in each epoch, NaN where not seen), ``token_accuracy`` (latest top-1
    accuracy on trained tokens) and ``token_accuracy_mean``, ``entropy_mean`` (NaN where the forward gives no
    entropy, e.g. the plain Trainer), ``last_step`` (optimizer step it was last seen, -1 never),
    ``n_trained_tokens``, ``dropped`` (True for rows TRL dropped during preparation, e.g. left without a trained
    token by truncation: their statistics are NaN) and ``n_duplicates`` (rows with identical tokens share one
    set of statistics; this counts the rows in the group).

    With ``packing=True`` the dataloader draws packs, not rows: the frame is then indexed by packed sample
    (``sample``), with a ``pack`` column, since the user's row of a packed sample is not recorded by TRL.

    Example:
        >>> cb = TrainingDynamicsCallback()  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., callbacks=[cb]); trainer.train()  # doctest: +SKIP
        >>> cb.dynamics().sort_values("loss_mean").tail()  # doctest: +SKIP
    """
    index, stats = tracker.index, tracker.stats
    if index is None or stats is None:
        raise RuntimeError("no statistics yet: the callback has not seen a training run")
    a = stats.arrays
    seen = a["times_seen"] > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        loss_mean = np.where(seen, a["loss_sum"] / a["times_seen"], np.nan)
        acc_mean = np.where(seen, a["acc_sum"] / a["times_seen"], np.nan)
        ent_mean = np.where(seen, a["entropy_sum"] / a["times_seen"], np.nan)
        ent_mean = np.where(np.isnan(a["entropy_last"]), np.nan, ent_mean)
    per_epoch = stats.epoch_loss_matrix()
    per_uid = {
        "times_seen": a["times_seen"].astype(np.int64),
        "loss_last": a["loss_last"],
        "loss_mean": loss_mean.astype(np.float32),
        "loss_first": a["loss_first"],
        "token_accuracy": a["acc_last"],
        "token_accuracy_mean": acc_mean.astype(np.float32),
        "entropy_mean": ent_mean.astype(np.float32),
        "last_step": a["last_step"].astype(np.int64),
        "n_trained_tokens": index.n_trained,
    }
    if index.packed:
        uid = index.seq_uid
        frame = pd.DataFrame({k: v[uid] for k, v in per_uid.items()})
        frame.insert(0, "pack", index.seq_row)
        frame["loss_per_epoch"] = list(per_epoch[uid])
        frame.index.name = "sample"
        return frame
    n_user = index.num_user_rows
    user_uid = index.user_uid()
    row_uid = index.row_uid()
    dropped = user_uid < 0
    safe = np.where(dropped, 0, user_uid)
    cols = {}
    for k, v in per_uid.items():
        col = v[safe] if len(v) else np.zeros(n_user, dtype=v.dtype)
        if np.issubdtype(col.dtype, np.floating):
            col = np.where(dropped, np.nan, col).astype(col.dtype)
        elif k == "last_step":
            col = np.where(dropped, -1, col)
        else:
            col = np.where(dropped, 0, col)
        cols[k] = col
    group_size = np.bincount(row_uid, minlength=len(index.keys))
    cols["n_duplicates"] = np.where(dropped, 0, group_size[safe] if len(group_size) else 0).astype(np.int64)
    cols["dropped"] = dropped
    pe = per_epoch[safe] if len(per_epoch) else np.zeros((n_user, per_epoch.shape[1]), np.float32)
    pe = np.where(dropped[:, None], np.nan, pe)
    cols["loss_per_epoch"] = list(pe.astype(np.float32))
    frame = pd.DataFrame(cols)[list(DYNAMICS_COLUMNS)]
    frame.index.name = "row"
    return frame


#: The dynamics columns :func:`~sft_callbacks.curate` carries (``to_dataset`` carries all of DYNAMICS_COLUMNS), and
#: the names both write them under (``dropped`` becomes ``dropped_by_trl``: a flag beside the data's own columns).
CURATED_DYNAMICS = ("times_seen", "loss_mean", "loss_last", "loss_first", "token_accuracy", "entropy_mean", "dropped")
_RENAMED = {"dropped": "dropped_by_trl"}


def per_user_row(tracker: SampleTracker, values) -> np.ndarray:
    """Per-dataloader-row ``values`` (the sampler's, a policy's) as per-user-row float64 (NaN for rows TRL dropped).

    Example:
        >>> weights = per_user_row(session.tracker, session.sampler.current_weights)  # doctest: +SKIP
    """
    index = tracker.index
    out = np.full(index.num_user_rows, np.nan, dtype=np.float64)
    out[index.row_user] = np.asarray(values, dtype=np.float64)
    return out


def run_annotations(session, callbacks, *, full: bool = True) -> pd.DataFrame:
    """What a finished run knows about each row of the training dataset, indexed by that row: the dynamics
    columns (all of them with ``full``, else those of ``CURATED_DYNAMICS``; ``dropped`` as ``dropped_by_trl``),
    ``weight`` (the final sampling weight relative to uniform, when a sampling policy ran) and the columns each
    of ``callbacks`` adds through :meth:`~sft_callbacks.SFTCallback.row_annotations` (data map, difficulty).
    Column meanings: :data:`sft_callbacks.engine.columns.COLUMN_MEANINGS`. Packed runs give the dynamics frame
    only (indexed by packed sample).

    Example:
        >>> run_annotations(dyn.session, dyn.session.members).columns  # doctest: +SKIP
    """
    frame = dynamics_frame(session.tracker)
    if session.tracker.index.packed:
        return frame
    if not full:
        frame = frame[list(CURATED_DYNAMICS)]
    frame = frame.rename(columns=_RENAMED)
    if session.sampler is not None:
        weights = per_user_row(session.tracker, session.sampler.current_weights)
        mean = np.nanmean(weights) if np.isfinite(weights).any() else np.nan
        frame["weight"] = weights / mean if mean > 0 else weights
    for callback in callbacks:
        extra = callback.row_annotations()
        if extra is None:
            continue
        clash = sorted(set(extra.columns) & set(frame.columns))
        if clash:
            raise ValueError(f"{type(callback).__name__} annotates columns {clash} that another callback also wrote")
        for c in extra.columns:
            frame[c] = np.asarray(extra[c])
    return frame


def eval_frame(tracker: SampleTracker, name: str = "eval") -> pd.DataFrame:
    """The latest evaluation's per-sample loss and token accuracy, indexed by the user's eval-dataset row.

    Captured from the evaluation the Trainer runs anyway (no extra pass). Rows TRL dropped are ``dropped``.

    Example:
        >>> cb.eval_dynamics().loss.mean()  # doctest: +SKIP
    """
    result = tracker.eval_results.get(name)
    if result is None:
        known = ", ".join(sorted(tracker.eval_results)) or "none yet"
        raise KeyError(f"no evaluation named {name!r} was captured (captured: {known})")
    index = result["index"]
    uid = index.seq_uid
    if index.packed or index.row_user is None:
        frame = pd.DataFrame({"loss": result["loss_by_uid"][uid], "token_accuracy": result["acc_by_uid"][uid]})
        frame["step"] = result["step"]
        frame.index.name = "sample"
        return frame
    user_uid = index.user_uid()
    dropped = user_uid < 0
    safe = np.where(dropped, 0, user_uid)
    frame = pd.DataFrame(
        {
            "loss": np.where(dropped, np.nan, result["loss_by_uid"][safe]),
            "token_accuracy": np.where(dropped, np.nan, result["acc_by_uid"][safe]),
            "step": result["step"],
            "dropped": dropped,
        }
    )
    frame.index.name = "row"
    return frame


def annotate_dataset(dataset, frame: pd.DataFrame, prefix: str = ""):
    """Add the columns of a dynamics ``frame`` to ``dataset`` (a ``datasets.Dataset``), row by row.

    Raises ``ValueError`` if the dataset's length differs from the frame's (it must be the dataset passed to the
    trainer) or if a column name is already taken.

    Example:
        >>> annotated = annotate_dataset(train_dataset, cb.dynamics())  # doctest: +SKIP
    """
    import datasets

    if "pack" in frame.columns:
        raise ValueError(
            "with packing=True statistics are per packed sample, and TRL does not record which of your rows each "
            "packed sample came from; use `.dynamics()` (indexed by packed sample) instead"
        )
    if len(dataset) != len(frame):
        raise ValueError(
            f"the dataset has {len(dataset)} rows but the statistics cover {len(frame)}: pass the same dataset "
            "you gave the trainer as train_dataset"
        )
    taken = [prefix + c for c in frame.columns if prefix + c in dataset.column_names]
    if taken:
        raise ValueError(f"the dataset already has columns {taken}; pass prefix='sft_' to avoid the clash")
    cols = {}
    for c in frame.columns:
        v = frame[c]
        cols[prefix + c] = [np.asarray(x, dtype=np.float32).tolist() for x in v] if c == "loss_per_epoch" else v.to_numpy()
    extra = datasets.Dataset.from_dict(cols)
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
    return datasets.concatenate_datasets([dataset, extra], axis=1)
