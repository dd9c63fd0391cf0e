"""The provenance record of a curated dataset (JSON-safe, sanitized), and the run record saved beside an
annotated dataset.

:func:`build_provenance` records where the rows came from (source dataset id + revision, or a content
fingerprint for local data), the model and the training arguments that shaped the annotations, every callback
with its configuration, the filters, counts before and after, dropped rows by reason, package versions and the
creation time; :func:`describe_run` is the part of it that belongs to the run. What is looked up comes from
:mod:`.facts`; everything written is passed through :func:`~.scrub.sanitize`. The card is drawn from the record
in :mod:`.card`, the plots in :mod:`.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ..engine.columns import COLUMN_MEANINGS
from .facts import (
    _jsonable,
    describe_model,
    describe_source,
    mixture_history,
    package_versions,
    size_category,
    training_arguments,
)
from .scrub import sanitize

#: Version tag of the ``provenance.json`` layout.
SCHEMA = "sft-callbacks/provenance/1"

#: The run record written beside an annotated dataset (``save_annotated_dataset``) and read by the export.
RUN_FILE = "sft_run.json"

# The run record's fields and what each must hold (None allowed for every one: a run without a trainer has none).
_RUN_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "source": ((dict,), "an object"),
    "model": ((dict,), "an object"),
    "training": ((dict,), "an object"),
    "seed": ((int,), "an integer"),
    "callbacks": ((list,), "a list of objects"),
    "mixture_over_training": ((list,), "a list of objects"),
}


def check_run_record(run: Any, where: str = "run") -> dict[str, Any]:
    """``run`` if it has the shape :func:`describe_run` writes, else ``ValueError`` naming ``where`` and the field.

    Example:
        >>> check_run_record({"model": "gpt2"}, where="out/sft_run.json")
        Traceback (most recent call last):
        ...
        ValueError: out/sft_run.json: field 'model' must be an object or null, got a str ('gpt2'); write it again with save_annotated_dataset, or fix that field
    """
    fix = "write it again with save_annotated_dataset, or fix that field"
    if not isinstance(run, Mapping):
        raise ValueError(f"{where} must hold a JSON object (the run record), got a {type(run).__name__}; write it "
                         "again with save_annotated_dataset")
    for name, (types, what) in _RUN_FIELDS.items():
        value = run.get(name)
        bad = value is not None and (not isinstance(value, types) or isinstance(value, bool)
                                     or isinstance(value, list) and not all(isinstance(v, Mapping) for v in value))
        if bad:
            raise ValueError(f"{where}: field {name!r} must be {what} or null, got a {type(value).__name__} "
                             f"({_short(value)}); {fix}")
    training = run.get("training") or {}
    for name, types, what in (("arguments", (dict,), "an object"), ("global_step", (int,), "an integer"),
                              ("epochs", (int, float), "a number")):
        value = training.get(name)
        if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
            raise ValueError(f"{where}: field 'training.{name}' must be {what} or null, got a "
                             f"{type(value).__name__} ({_short(value)}); {fix}")
    return dict(run)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_run(
    *,
    trainer: Any = None,
    callbacks: Sequence[Any] = (),
    source: Any = None,
    source_revision: str | None = None,
    model: Any = None,
    model_revision: str | None = None,
    dataset: Any = None,
    fetch_source_card: bool = True,
    token: str | None = None,
) -> dict[str, Any]:
    """Where a run's rows came from and what trained on them (JSON-safe, sanitized): ``source``
    (:func:`describe_source`), ``model`` (:func:`describe_model`, the trainer's model unless ``model`` is
    given), ``training`` (trainer class, arguments, steps, epochs), ``seed``, ``callbacks`` (class and
    configuration of each) and ``mixture_over_training``. It is the part of :func:`build_provenance` that
    belongs to the run rather than to a curation, so it can be saved with an annotated dataset
    (``save_annotated_dataset``) and the card made later from that folder is as complete.

    Example:
        >>> run = describe_run(trainer=trainer, callbacks=[dyn, data_map], source="my-org/sft-set")  # doctest: +SKIP
        >>> run["training"]["global_step"]  # doctest: +SKIP
        120
    """
    from ..curation.curated import callback_config

    training: dict[str, Any] | None = None
    mixture: list[dict[str, Any]] = []
    if trainer is not None:
        state = getattr(trainer, "state", None)
        training = {
            "arguments": training_arguments(trainer.args),
            "trainer": type(trainer).__name__,
            "global_step": int(getattr(state, "global_step", 0) or 0),
            "epochs": float(getattr(state, "epoch", 0.0) or 0.0),
        }
        mixture = mixture_history(getattr(state, "log_history", []))
    if model is None and trainer is not None:
        model = getattr(trainer, "model", None)
    record = {
        "source": describe_source(source, revision=source_revision, dataset=dataset, fetch_card=fetch_source_card,
                                  token=token),
        "model": describe_model(model, revision=model_revision) if model is not None else None,
        "training": training,
        "seed": training["arguments"].get("seed") if training is not None else None,
        "callbacks": [callback_config(cb) for cb in callbacks],
        "mixture_over_training": mixture,
    }
    return sanitize(_jsonable(record), tokens=[token] if token else ())


def build_provenance(
    curated,
    *,
    trainer: Any = None,
    source: Any = None,
    source_revision: str | None = None,
    model: Any = None,
    model_revision: str | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = None,
    task_categories: Sequence[str] = ("text-generation",),
    tags: Sequence[str] = (),
    pretty_name: str | None = None,
    splits: Mapping[str, int] | None = None,
    plots: Mapping[str, str] | None = None,
    created_at: str | None = None,
    fetch_source_card: bool = True,
    token: str | None = None,
    run: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance record of a :class:`~sft_callbacks.curation.CuratedDataset` (JSON-safe, sanitized).

    ``trainer`` (the finished ``SFTTrainer``) provides the model, the training arguments, the seed, the steps
    trained and the mixture over training; ``model`` / ``model_revision`` override the model it reports.
    ``source`` is the input dataset's Hub id, local path or ``datasets.Dataset`` (see :func:`describe_source`);
    an explicit ``license`` / ``language`` wins over what the source's card says. ``splits`` maps split names
    to row counts (default: everything in ``train``); ``plots`` maps plot names to their relative paths.
    ``run``: a recorded :func:`describe_run` (the ``sft_run.json`` of an annotated folder): its source, model,
    training, seed, callbacks and mixture fill in what ``trainer`` / ``source`` / ``model`` do not give.

    Example:
        >>> prov = build_provenance(curated, trainer=trainer, source="my-org/sft-set")  # doctest: +SKIP
        >>> prov["counts"]  # doctest: +SKIP
        {'rows_in': 240, 'rows_out': 221, 'dropped': {'flag_noisy': 19}}
    """
    fresh = describe_run(trainer=trainer, source=source, source_revision=source_revision, model=model,
                         model_revision=model_revision, dataset=curated.dataset, fetch_source_card=fetch_source_card,
                         token=token)  # fmt: skip
    run = check_run_record(run) if run is not None else {}
    src = _merged_run(fresh, run, source=source, model=model, trainer=trainer, license=license, language=language)
    callbacks = list(curated.callbacks) or list(run.get("callbacks") or [])
    # the group column is input data that curate() copies into its report, not an annotation
    group = curated.filters.get("group_column")
    skip = {"kept", "drop_reason", *([group] if group not in COLUMN_MEANINGS else [])}
    annotations = [c for c in curated.annotations.columns if c not in skip]
    record = {
        "schema": SCHEMA,
        "created_at": created_at or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pretty_name": pretty_name,
        "source": src,
        "model": fresh["model"],
        "training": fresh["training"],
        "seed": fresh["seed"],
        "callbacks": callbacks,
        "filters": dict(curated.filters),
        "counts": {"rows_in": int(curated.rows_in), "rows_out": int(curated.rows_out),
                   "dropped": {str(k): int(v) for k, v in curated.dropped.items()}},  # fmt: skip
        "splits": dict(splits) if splits is not None else {"train": int(curated.rows_out)},
        "columns": {c: str(t) for c, t in curated.dataset.features.items()},
        "annotation_columns": annotations,
        "annotation_summary": _annotation_summary(curated.annotations, annotations),
        "group_counts": _group_counts(curated),
        "mixture_over_training": fresh["mixture_over_training"],
        "plots": dict(plots or {}),
        "metadata": {
            "license": src.get("license"),
            "language": src.get("language"),
            "task_categories": list(task_categories),
            "size_categories": [size_category(int(curated.rows_out))],
            "tags": sorted({"sft-callbacks", "curated", "training-dynamics", *tags}),
        },
        "packages": package_versions(),
    }
    return sanitize(_jsonable(record), tokens=[token] if token else ())


def _merged_run(fresh: dict, run: dict, *, source, model, trainer, license, language) -> dict:
    """Fill ``fresh`` (this call's facts) from the recorded ``run`` where this call gave nothing; the source entry,
    with an explicit ``license`` / ``language`` winning over what the source's card says."""
    src = dict(fresh["source"] if source is not None or not run.get("source") else run["source"])
    if model is None and trainer is None and run.get("model"):
        fresh["model"] = run["model"]
    if trainer is None and run.get("training"):
        fresh.update(training=run["training"], seed=run.get("seed"), mixture_over_training=run.get(
            "mixture_over_training") or [])
    if license is not None:
        src["license"] = license
    if language is not None:
        src["language"] = [language] if isinstance(language, str) else list(language)
    elif isinstance(src.get("language"), str):
        src["language"] = [src["language"]]
    return src


_CHUNK_ROWS = 1 << 18  # summaries and plots read annotation columns this many rows at a time


def _float_chunks(frame, column: str):
    """``(start, float64 chunk)`` of a column; slices of Arrow-backed columns are zero-copy, so only one chunk is
    ever materialised (a whole-column ``to_numpy`` is 8 bytes per row per column)."""
    values = frame[column]
    for start in range(0, len(values), _CHUNK_ROWS):
        yield start, values.iloc[start : start + _CHUNK_ROWS].to_numpy(dtype=np.float64, na_value=np.nan)


def _annotation_summary(frame, columns: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Mean of each numeric annotation over the kept and the dropped rows (NaN-aware), chunk by chunk."""
    out = {}
    kept = frame["kept"].to_numpy(dtype=bool)
    for c in columns:
        if frame[c].dtype.kind not in "fiub":
            continue
        sums, counts = np.zeros(2), np.zeros(2, dtype=np.int64)
        try:
            for start, v in _float_chunks(frame, c):
                k = kept[start : start + len(v)]
                for i, mask in enumerate((k, ~k)):
                    part = v[mask]
                    part = part[np.isfinite(part)]
                    sums[i] += part.sum()
                    counts[i] += part.size
        except (TypeError, ValueError):  # an odd dtype: leave it out of the summary
            continue
        out[c] = {name: (round(float(sums[i] / counts[i]), 6) if counts[i] else None)
                  for i, name in enumerate(("kept", "dropped"))}  # fmt: skip
    return out


def _group_counts(curated) -> dict[str, dict[str, int]] | None:
    column = curated.filters.get("group_column")
    if column and column in curated.annotations.columns:
        return curated.counts_by_group(column)
    return None


__all__ = ["RUN_FILE", "SCHEMA", "build_provenance", "check_run_record", "describe_run"]
