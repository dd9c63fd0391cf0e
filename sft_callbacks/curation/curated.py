"""Turn what training learnt about each row into a curated dataset: annotation columns plus filters.

:func:`training_annotations` gathers, per row of *your* training dataset, what the callbacks of a finished run
know (training dynamics, the final sampling weight, data-map coordinates and flags, curriculum difficulty);
:func:`curate` adds those columns to the dataset and applies filters (drop flagged rows, per-group quotas,
top-k by a score), counting every dropped row by its reason. The result keeps a ``source_row`` column, so each
curated row can be traced back to its input row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..engine.frames import run_annotations
from .arrow_rows import arrow_dataset, mapped_column, subset
from .selection import best_rows_thresholds, order_keys

_CHUNK_ROWS = 262_144  # rows per step of each pass over the data: memory per step stays bounded

#: Boolean columns that :func:`curate` drops by default when they are present.
DEFAULT_DROP_FLAGS = ("flag_noisy", "withheld", "conflict")


def _sessions(callbacks: Sequence[Any]):
    from ..engine.callbacks import SFTCallback

    ours = [cb for cb in callbacks if isinstance(cb, SFTCallback)]
    if len(ours) != len(callbacks):
        names = [type(cb).__name__ for cb in callbacks if not isinstance(cb, SFTCallback)]
        raise TypeError(f"not sft-callbacks callbacks: {names}; pass the callbacks you gave the trainer")
    sessions = {id(cb.session): cb.session for cb in ours}  # .session raises if never attached
    if len(sessions) > 1:
        raise ValueError("the callbacks come from different training runs: pass the callbacks of one trainer")
    return ours, next(iter(sessions.values()), None)


def training_annotations(callbacks: Sequence[Any]) -> pd.DataFrame:
    """What the callbacks of a finished run know about each row of the training dataset, indexed by that row.

    Columns (those the given callbacks can provide): ``times_seen``, ``loss_mean``, ``loss_last``,
    ``loss_first``, ``token_accuracy``, ``entropy_mean``, ``dropped_by_trl`` (any of our callbacks);
    ``weight`` (final sampling weight relative to uniform: 2.0 = drawn twice as often; when a sampling policy
    ran); ``confidence``, ``variability``, ``correctness``, ``forgetting_events``, ``epochs_seen``, ``region``,
    ``noise_score``, ``flag_noisy`` (:class:`~sft_callbacks.DataMapCallback`); ``difficulty``
    (:class:`~sft_callbacks.CurriculumCallback`'s score, higher = harder). Rows TRL dropped get NaN / empty
    values. Meanings: :data:`sft_callbacks.engine.columns.COLUMN_MEANINGS`.

    Example:
        >>> dyn, data_map = TrainingDynamicsCallback(), DataMapCallback()  # doctest: +SKIP
        >>> SFTTrainer(..., callbacks=[dyn, data_map]).train()  # doctest: +SKIP
        >>> training_annotations([dyn, data_map]).sort_values("confidence").head()  # doctest: +SKIP
    """
    ours, session = _sessions(list(callbacks))
    if session is None:
        raise ValueError("no callbacks given: pass the sft-callbacks callbacks of a finished training run")
    if session.tracker.index is None or session.tracker.stats is None:
        raise RuntimeError("the callbacks have not seen a training run yet: call trainer.train() first")
    if session.tracker.index.packed:
        raise ValueError(
            "with packing=True the trainer draws packs, and TRL does not record which of your rows each packed "
            "sample came from, so nothing can be attached to your rows: train with packing=False to curate"
        )
    return run_annotations(session, ours, full=False)


@dataclasses.dataclass
class CuratedDataset:
    """The outcome of :func:`curate`.

    Attributes:
        dataset: the kept rows (input order), with the annotation columns and ``source_row``.
        annotations: one row per *input* row: the annotation columns plus ``kept`` and ``drop_reason``.
        dropped: rows dropped per reason, in the order the filters ran (sums to ``rows_in - rows_out``).
        rows_in, rows_out: row counts before and after.
        filters: the filters as applied (for the provenance card).
        callbacks: class name and configuration of each callback the annotations came from.
    """

    dataset: Any
    annotations: pd.DataFrame
    dropped: dict[str, int]
    rows_in: int
    rows_out: int
    filters: dict[str, Any]
    callbacks: list[dict[str, Any]]

    def counts_by_group(self, column: str) -> dict[str, dict[str, int]]:
        """Rows before and after per value of ``column`` (e.g. ``"domain"``)."""
        if column not in self.annotations.columns:
            raise KeyError(f"no column {column!r} in the annotations; pass group_column={column!r} to curate()")
        before: dict[str, int] = {}
        after: dict[str, int] = {}
        values, kept = self.annotations[column], self.annotations["kept"].to_numpy(dtype=bool)
        for a in range(0, len(values), _CHUNK_ROWS):  # chunk by chunk: no per-row group codes for all rows
            names = values.iloc[a : a + _CHUNK_ROWS].astype(object).astype(str)
            for counts, rows in ((before, names), (after, names[kept[a : a + _CHUNK_ROWS]])):
                for k, v in rows.value_counts(sort=False).items():
                    counts[k] = counts.get(k, 0) + int(v)
        return {k: {"before": before[k], "after": after.get(k, 0)} for k in sorted(before)}


def curate(
    dataset,
    callbacks: Sequence[Any] = (),
    *,
    annotations: pd.DataFrame | None = None,
    drop: Sequence[str] | None = None,
    group_column: str | None = None,
    quotas: int | Mapping[str, int] | None = None,
    top_k: int | None = None,
    score: str | None = None,
    ascending: bool = False,
    seed: int = 0,
    report_columns: Sequence[str] = (),
):
    """Your training ``dataset`` with what training learnt about each row, filtered; every drop counted by reason.

    Annotation columns come from ``callbacks`` (see :func:`training_annotations`) and/or an ``annotations``
    frame indexed by row; columns already in ``dataset`` (e.g. ``conflict`` from
    :func:`~sft_callbacks.find_conflicts`, or a dataset saved by ``to_dataset``) are used as they are. Filters,
    in this order:

    1. ``drop``: boolean flag columns; a row where any is True is dropped, counted under the first such flag.
       Default: those of ``("flag_noisy", "withheld", "conflict")`` that exist. ``drop=()`` drops nothing.
    2. ``quotas`` (needs ``group_column``): at most that many rows per group (an int for every group, or a dict
       ``{group: n}``; groups not in the dict are not capped); the best rows by ``score`` are kept, or a
       seeded random choice without a score. Counted under ``quota``.
    3. ``top_k``: keep the best ``top_k`` rows by ``score`` (highest first, ``ascending=True`` for lowest).
       Counted under ``top_k``. Rows whose score is NaN rank last.

    ``report_columns``: columns of ``dataset`` to show in the per-row report (``CuratedDataset.annotations``,
    which the card's summary and plots read) as well, e.g. annotation columns the dataset already carries
    (:func:`~sft_callbacks.curate_annotated` passes them); they are shared with the data, not copied.

    Returns a :class:`CuratedDataset`; its ``dataset`` keeps input order and has a ``source_row`` column.

    Memory: the filters read the columns 262,144 rows at a time, and quotas / top-k rank by an exact radix
    selection over those chunks (:mod:`sft_callbacks.curation.selection`), so no score, key or sort order is held per
    row. ``source_row`` and the kept-rows mapping are written to memory-mapped Arrow files in ``datasets``'
    temporary cache directory. What stays in memory per input row is the report's ``kept`` flag and
    ``drop_reason`` code (2 bytes), plus the annotation frame when it comes from callbacks or a numpy frame.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"text": list("abcdef"), "domain": list("xxxyyy"),
        ...                                  "conflict": [False, True, False, False, False, False]})
        >>> ann = pd.DataFrame({"loss_mean": [0.1, 0.2, 0.9, 0.4, 0.8, 0.3]})
        >>> out = curate(ds, annotations=ann, group_column="domain", quotas=1, score="loss_mean")
        >>> out.dataset["text"][:], out.dropped
        (['c', 'e'], {'conflict': 1, 'quota': 3})
    """
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"curate needs a datasets.Dataset, got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to curate")
    ours, _ = _sessions(list(callbacks))
    frame = _annotation_frame(ours, annotations, n)
    flags = _check_curate(dataset, frame, drop, group_column, quotas, top_k, score, report_columns)

    # Rows are read by position from the table, so a selected / shuffled dataset is flattened first.
    base = dataset.flatten_indices() if dataset._indices is not None else dataset
    verdicts, categories, codes = _filter_rows(base, frame, flags, group_column, quotas, top_k, score, ascending, seed)
    curated = _with_rows(_annotated(base, frame, verdicts.spans), verdicts.keep, verdicts.spans)
    report = _report(frame, base, report_columns, group_column, categories, codes, verdicts)
    filters = {"drop": flags, "group_column": group_column, "quotas": _jsonable_quotas(quotas),
               "top_k": top_k, "score": score, "ascending": ascending, "seed": seed}
    return CuratedDataset(
        dataset=curated, annotations=report, dropped=verdicts.dropped, rows_in=n, rows_out=int(verdicts.keep.sum()),
        filters=filters, callbacks=[callback_config(cb) for cb in ours],
    )


def _annotation_frame(ours: list, annotations: pd.DataFrame | None, n: int) -> pd.DataFrame:
    """The annotation columns, indexed by row: the callbacks' statistics joined with the given frame."""
    frame = pd.DataFrame(index=pd.RangeIndex(n, name="row"))
    if ours:
        frame = frame.join(_checked_length(training_annotations(ours), n, "the callbacks' statistics"))
    if annotations is not None:
        extra = _checked_length(annotations, n, "annotations")
        both = sorted(set(extra.columns) & set(frame.columns))
        if both:
            raise ValueError(f"annotation columns {both} come both from the callbacks and from `annotations`")
        # Without callbacks the given frame is the frame: a join would copy every annotation once more.
        frame = extra if not len(frame.columns) else frame.join(extra.set_axis(frame.index))
    return frame


def _check_curate(
    dataset,
    frame: pd.DataFrame,
    drop: Sequence[str] | None,
    group_column: str | None,
    quotas: int | Mapping[str, int] | None,
    top_k: int | None,
    score: str | None,
    report_columns: Sequence[str],
) -> list[str]:
    """Check :func:`curate`'s filters against the dataset and annotation columns; return the flags to drop by."""
    clash = sorted(set(frame.columns) & (set(dataset.column_names) | {"source_row"}))
    if clash:
        raise ValueError(
            f"the dataset already has columns {clash}: curate the raw training dataset, or rename them first "
            "(dataset.rename_columns)"
        )
    if group_column is not None and group_column not in dataset.column_names and group_column not in frame.columns:
        raise ValueError(f"group_column {group_column!r} is not a column; columns: {dataset.column_names}")
    if score is not None and score not in frame.columns and score not in dataset.column_names:
        raise ValueError(f"score {score!r} is not a column; annotation columns: {list(frame.columns)}")
    missing = sorted(set(report_columns) - set(dataset.column_names))
    if missing:
        raise ValueError(f"report_columns {missing} are not columns of the dataset; columns: {dataset.column_names}")
    if (quotas is not None) and group_column is None:
        raise ValueError("quotas need group_column, e.g. curate(..., group_column='domain', quotas=100)")
    if top_k is not None and (top_k < 1 or score is None):
        raise ValueError("top_k needs score=<column> and top_k >= 1")
    columns = _Columns(frame, dataset)
    if drop is not None:
        flags = list(dict.fromkeys(drop))
    else:
        flags = [f for f in DEFAULT_DROP_FLAGS if f in columns]
    for flag in flags:
        if flag not in columns:
            raise ValueError(f"cannot drop by {flag!r}: no such column (annotations: {list(frame.columns)})")
        columns.check_boolean(flag)
    return flags


class _Verdicts:
    """Per row: kept or not and the reason it was dropped; per reason: how many rows it dropped."""

    def __init__(self, n: int) -> None:
        """All ``n`` rows kept, read in spans of at most ``_CHUNK_ROWS`` rows."""
        self.spans = [(a, min(a + _CHUNK_ROWS, n)) for a in range(0, n, _CHUNK_ROWS)]
        self.keep = np.ones(n, dtype=bool)
        self.reasons = [""]  # drop_reason codes: 1 byte per row, not a Python string per row
        self.reason = np.zeros(n, dtype=np.int8)
        self.dropped: dict[str, int] = {}

    def drop_rows(self, a: int, hit: np.ndarray, name: str) -> None:
        """Drop the rows ``a + i`` where ``hit[i]``, counting them under ``name``."""
        if name not in self.reasons:
            self.reasons.append(name)
        self.keep[a : a + len(hit)] &= ~hit
        self.reason[a : a + len(hit)][hit] = self.reasons.index(name)
        self.dropped[name] = self.dropped.get(name, 0) + int(hit.sum())

    def drop_flagged(self, columns: _Columns, flags: list[str]) -> None:
        """Drop the rows where a flag is True, each counted under the first such flag."""
        for flag in flags:
            self.dropped[flag] = 0
            for a, b in self.spans:
                hit = self.keep[a:b] & columns.chunk(flag, a, b).to_numpy(dtype=bool, na_value=False)
                self.drop_rows(a, hit, flag)

    def keep_best(self, stage: str, group_codes, caps: np.ndarray, keys) -> None:
        """Keep the best rows by ``keys``, at most ``caps[g]`` of group ``g``; count the others under ``stage``."""
        def chunks():
            for a, b in self.spans:
                yield group_codes(a, b), keys(a, b), self.keep[a:b]

        thresholds = best_rows_thresholds(chunks, caps)
        self.dropped[stage] = 0
        for (a, b), (g, k, candidates) in zip(self.spans, chunks()):
            self.drop_rows(a, candidates & ~thresholds.keep(g, k, candidates), stage)


def _filter_rows(
    dataset,
    frame: pd.DataFrame,
    flags: list[str],
    group_column: str | None,
    quotas: int | Mapping[str, int] | None,
    top_k: int | None,
    score: str | None,
    ascending: bool,
    seed: int,
) -> tuple[_Verdicts, list[str], np.ndarray | None]:
    """Run the filters in order (flags, quotas, top-k); return the verdicts, the group names and each row's group."""
    columns = _Columns(frame, dataset)
    verdicts = _Verdicts(len(dataset))
    verdicts.drop_flagged(columns, flags)
    categories, codes = _group_codes(columns, group_column, verdicts.spans) if group_column is not None else ([], None)

    def score_keys(a: int, b: int) -> np.ndarray:
        return order_keys(columns.chunk(score, a, b).to_numpy(dtype=np.float64, na_value=np.nan), not ascending)

    def random_keys(a: int, b: int) -> np.ndarray:  # seeded per chunk: the same keys on every pass
        return order_keys(np.random.default_rng([seed, a]).random(b - a))

    if quotas is not None:
        caps = _quota_caps(categories, quotas)
        verdicts.keep_best("quota", lambda a, b: codes[a:b], np.array([caps.get(c, -1) for c in categories]),
                           score_keys if score is not None else random_keys)  # fmt: skip
    if top_k is not None:
        verdicts.keep_best("top_k", lambda a, b: np.zeros(b - a, dtype=np.int8), np.array([top_k]), score_keys)
    if not verdicts.keep.any():
        raise ValueError(f"every row was dropped ({verdicts.dropped}): loosen the filters")
    return verdicts, categories, codes


def _report(
    frame: pd.DataFrame,
    base,
    report_columns: Sequence[str],
    group_column: str | None,
    categories: list[str],
    codes: np.ndarray | None,
    verdicts: _Verdicts,
) -> pd.DataFrame:
    """The per-input-row report: the annotation frame itself plus the report columns, group, ``kept``, reason."""
    # The report is the frame itself (its Arrow copy went into the curated data): no third copy per row.
    report = frame
    for c in report_columns:  # the table's own chunked column: a slice would make new Arrow objects per chunk
        report[c] = pd.arrays.ArrowExtensionArray(base.data.table.column(c))
    if group_column is not None and group_column not in report.columns:
        report[group_column] = pd.Categorical.from_codes(codes, categories=categories)
    report["kept"] = verdicts.keep
    report["drop_reason"] = pd.Categorical.from_codes(verdicts.reason, categories=verdicts.reasons)
    return report


class _Columns:
    """Columns by name, from the annotation frame or else the dataset's Arrow table, read a chunk at a time."""

    def __init__(self, frame: pd.DataFrame, dataset) -> None:
        self.frame, self.table = frame, dataset.data

    def __contains__(self, name: str) -> bool:
        return name in self.frame.columns or name in self.table.column_names

    def chunk(self, name: str, a: int, b: int) -> pd.Series:
        if name in self.frame.columns:
            return self.frame[name].iloc[a:b]
        return pd.Series(pd.arrays.ArrowExtensionArray(self.table.column(name).slice(a, b - a)))

    def check_boolean(self, name: str) -> None:
        dtype = self.frame[name].dtype if name in self.frame.columns else self.chunk(name, 0, 0).dtype
        ok = pd.api.types.is_bool_dtype(dtype) or (
            dtype == object and pd.api.types.infer_dtype(self.frame[name], skipna=True) in ("boolean", "empty")
        )
        if not ok:
            raise ValueError(f"drop column {name!r} must be boolean, got {dtype}")


def _group_codes(columns: _Columns, name: str, spans) -> tuple[list[str], np.ndarray]:
    """Sorted group names (as strings) and each row's index into them, in the smallest integer type."""
    def names(a: int, b: int) -> pd.Series:
        return columns.chunk(name, a, b).astype(object).astype(str)

    categories = sorted(set().union(*(set(names(a, b).unique()) for a, b in spans)))
    codes = np.empty(spans[-1][1], dtype=np.min_scalar_type(-len(categories)))
    index = pd.Index(categories)
    for a, b in spans:
        codes[a:b] = index.get_indexer(names(a, b))
    return categories, codes


def _annotated(dataset, frame: pd.DataFrame, spans):
    """``dataset`` with the annotation columns and ``source_row`` beside its own (no copy of its data)."""
    import datasets
    import pyarrow as pa

    parts = [dataset]
    if len(frame.columns):  # Arrow-backed columns are shared, numpy ones wrapped without a copy
        parts.append(arrow_dataset(pa.Table.from_pandas(frame, preserve_index=False)))
    source_row = mapped_column("source_row", pa.int64(), (np.arange(a, b, dtype=np.int64) for a, b in spans))
    parts.append(arrow_dataset(source_row))
    return datasets.concatenate_datasets(parts, axis=1)


def _with_rows(dataset, keep: np.ndarray, spans):
    """The rows of ``dataset`` where ``keep`` is True (an indices mapping, memory-mapped; no data copied)."""
    if keep.all():
        return dataset
    return subset(dataset, ((a, np.flatnonzero(keep[a:b])) for a, b in spans))


def callback_config(callback) -> dict[str, Any]:
    """``{"name": class name, "config": constructor arguments}`` of one of our callbacks (JSON-safe values)."""
    config = {}
    for k, v in getattr(callback, "_init_kwargs", {}).items():
        config[k] = v if isinstance(v, (str, int, float, bool, type(None), list, dict)) else repr(v)
    return {"name": type(callback).__name__, "config": config}


def _checked_length(frame: pd.DataFrame, n: int, what: str) -> pd.DataFrame:
    if len(frame) != n:
        raise ValueError(f"{what} cover {len(frame)} rows but the dataset has {n}: pass the dataset you trained on")
    return frame.reset_index(drop=True).set_axis(pd.RangeIndex(n, name="row"))


def _quota_caps(groups: Sequence[str], quotas) -> dict[str, int]:
    present = set(groups)
    if isinstance(quotas, Mapping):
        unknown = sorted(set(map(str, quotas)) - present)
        if unknown:
            raise ValueError(f"quotas name groups {unknown} that are not in the data; groups: {sorted(present)}")
        caps = {str(g): int(q) for g, q in quotas.items()}
    else:
        caps = {g: int(quotas) for g in present}
    if any(q < 0 for q in caps.values()):
        raise ValueError("quotas must be >= 0")
    return caps


def _jsonable_quotas(quotas):
    if isinstance(quotas, Mapping):
        return {str(k): int(v) for k, v in quotas.items()}
    return quotas


__all__ = ["CuratedDataset", "DEFAULT_DROP_FLAGS", "callback_config", "curate", "training_annotations"]
