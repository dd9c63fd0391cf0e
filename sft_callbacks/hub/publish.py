"""Save a curated dataset with its provenance card, and publish it to the Hugging Face Hub.

:func:`save_curated_dataset` writes an export folder::

    export/
      README.md            dataset card: YAML (configs, dataset_info, license, ...) + provenance in prose
      provenance.json      the same record, machine-readable
      data/train-00000-of-00001.parquet   (one or more shards per split, written batch by batch)
      plots/data_map.png, plots/mixture.png, plots/weights.png   (those the annotations allow)

``datasets.load_dataset(export_dir)`` reads it as it is. :func:`push_curated_dataset` publishes such a folder
(or a :class:`~sft_callbacks.curation.CuratedDataset`, exported to a temporary folder first): the splits
through ``DatasetDict.push_to_hub`` (which replaces the repo's data files and splits), then one commit with the card (its YAML merged into the ``configs`` /
``dataset_info`` that ``push_to_hub`` wrote), ``provenance.json`` and the plots. Every step is retried on
transient failures (5xx, 429, 412 stale parent, dropped connections); the local folder is only read, so after
a final failure the same call resumes: unchanged files are not sent again and an unchanged repo gets no commit.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..curation.arrow_rows import subset
from ..engine.columns import COLUMN_MEANINGS
from ..curation import CuratedDataset, curate
from .card import build_card
from .plots import write_plots
from .provenance import SCHEMA, build_provenance

DEFAULT_COMMIT_MESSAGE = "Upload curated dataset (sft-callbacks)"
_SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
_RETRY_STATUS = {408, 409, 412, 425, 429}
# Rows per record batch of the Arrow cache Dataset.from_parquet builds when pushing (at most: a batch never spans
# the parquet row groups, 20,000 rows in an export); see push_curated_dataset
_CACHE_BATCH_ROWS = 100_000
_SPLIT_CHUNK_ROWS = 262_144  # rows per draw of the random split assignment (part of what `seed` reproduces)


class PublishError(RuntimeError):
    """A push that failed after its retries (or on a non-transient error); the message says what to do."""


@dataclasses.dataclass
class PushResult:
    """What :func:`push_curated_dataset` did.

    Attributes:
        repo_id: the dataset repo.
        revision: the branch pushed to (``None`` = the default branch).
        commit: the head commit of that branch after the push.
        url: the dataset's page.
        splits: rows per split.
        attempts: attempts per step (1 = it went through the first time).
    """

    repo_id: str
    revision: str | None
    commit: str
    url: str
    splits: dict[str, int]
    attempts: dict[str, int]


#: Columns that :func:`curate_annotated` treats as annotations when a dataset already carries them (what
#: ``TrainingDynamicsCallback.to_dataset``, the demo's ``annotated/`` folder and ``curate`` itself write).
ANNOTATION_COLUMNS = tuple(c for c in COLUMN_MEANINGS if c != "source_row")  # source_row: curate adds it


def curate_annotated(dataset, *, annotation_columns: Sequence[str] | None = None, **curate_kwargs: Any) -> CuratedDataset:
    """:func:`~sft_callbacks.curate` for a dataset that already carries its annotation columns.

    E.g. ``datasets.load_from_disk("sft_callbacks_output/annotated")``. The scalar annotation columns
    (``annotation_columns``, default: those of :data:`ANNOTATION_COLUMNS` present) are handed to ``curate`` as
    its ``report_columns``, so they reach the report (``CuratedDataset.annotations``) that the card's summary
    and plots (data map, weight histogram) are drawn from; list columns such as ``loss_per_epoch`` stay in the
    data only. The curated rows carry the same columns in the same order, then ``source_row``.

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"text": list("abc"), "loss_mean": [0.3, 0.1, 0.2],
        ...                                  "flag_noisy": [False, False, True]})
        >>> out = curate_annotated(ds, top_k=1, score="loss_mean")
        >>> list(out.dataset["text"]), out.dropped, list(out.annotations.columns)
        (['a'], {'flag_noisy': 1, 'top_k': 1}, ['loss_mean', 'flag_noisy', 'kept', 'drop_reason'])
    """
    import datasets

    wanted = ANNOTATION_COLUMNS if annotation_columns is None else tuple(annotation_columns)
    columns = [c for c in wanted if c in dataset.column_names and isinstance(dataset.features[c], datasets.Value)]
    if annotation_columns is not None and len(columns) != len(wanted):
        raise ValueError(f"not scalar columns of the dataset: {sorted(set(wanted) - set(columns))}")
    # The columns stay where they are in the data; the report shows them without a copy (Arrow-backed pandas
    # columns over the memory-mapped table, no Python object per string).
    return curate(dataset, report_columns=columns, **curate_kwargs)


# ======================================================================================= the annotated folder
def save_annotated_dataset(
    output_dir: str | os.PathLike,
    dataset,
    *,
    trainer: Any = None,
    callbacks: Sequence[Any] = (),
    source: Any = None,
    source_revision: str | None = None,
    model: Any = None,
    model_revision: str | None = None,
    fetch_source_card: bool = True,
    token: str | None = None,
) -> Path:
    """Save an annotated training set (``cb.to_dataset(train)``) with ``datasets.save_to_disk`` and, beside it,
    the run's record (``sft_run.json``: source, model, training arguments, callbacks, mixture over training; see
    :func:`~sft_callbacks.hub.provenance.describe_run`), so that an export made later from the folder
    (``sft-callbacks export``) has a card as complete as one made in the training script.

    Example:
        >>> annotated = dyn.to_dataset(train)  # doctest: +SKIP
        >>> save_annotated_dataset("annotated", annotated, trainer=trainer, callbacks=[dyn, data_map],
        ...                        source="my-org/sft-set")  # doctest: +SKIP
        >>> # later, anywhere: sft-callbacks export annotated --output-dir curated
    """
    from .provenance import RUN_FILE, describe_run

    out = Path(output_dir)
    record = describe_run(trainer=trainer, callbacks=callbacks, source=source, source_revision=source_revision,
                          model=model, model_revision=model_revision, fetch_source_card=fetch_source_card,
                          token=token)  # fmt: skip
    dataset.save_to_disk(str(out))
    (out / RUN_FILE).write_text(_dump(record), encoding="utf-8")  # written last: a folder with it is complete
    return out


def load_run_record(annotated_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run record that :func:`save_annotated_dataset` wrote into ``annotated_dir``, or ``None`` if none.

    Example:
        >>> load_run_record("sft_callbacks_output/annotated")["model"]["id"]  # doctest: +SKIP
    """
    from .provenance import RUN_FILE, check_run_record

    path = Path(annotated_dir) / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): delete it or save the annotated dataset again") from e
    return check_run_record(record, where=str(path))


# ================================================================================================== saving
def save_curated_dataset(
    output_dir: str | os.PathLike,
    curated: CuratedDataset,
    *,
    trainer: Any = None,
    splits: Mapping[str, float] | Mapping[str, Any] | None = None,
    seed: int = 0,
    source: Any = None,
    source_revision: str | None = None,
    model: Any = None,
    model_revision: str | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = None,
    task_categories: Sequence[str] = ("text-generation",),
    tags: Sequence[str] = (),
    pretty_name: str | None = None,
    max_shard_size: int | str = "500MB",
    fetch_source_card: bool = True,
    token: str | None = None,
    run: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``curated`` (the output of :func:`~sft_callbacks.curate`) as an export folder; return its path.

    ``splits``: ``None`` puts every kept row in ``train``; ``{"train": 0.9, "test": 0.1}`` splits the rows at
    random (``seed``; each split keeps input order); ``{"train": ds1, "validation": ds2}`` writes the given
    datasets (same features). ``trainer``: the finished trainer (model, arguments, seed, mixture over
    training). ``source`` / ``source_revision``: the input dataset (Hub id, local path or ``datasets.Dataset``),
    ``model`` / ``model_revision`` override the trainer's model; ``license`` / ``language`` override what the
    source's card says. ``run``: the run record of an annotated folder (:func:`load_run_record`), for what no
    trainer is there to tell. See :func:`~sft_callbacks.hub.provenance.build_provenance`.

    The folder is written next to ``output_dir`` and moved into place at the end, so an interrupted save never
    leaves a half export; an earlier export at ``output_dir`` is replaced, any other non-empty folder is refused.

    Example:
        >>> import datasets, pandas as pd
        >>> from sft_callbacks.curation import curate
        >>> ds = datasets.Dataset.from_dict({"text": list("abcd"), "flag_noisy": [False, True, False, False]})
        >>> out = curate(ds, annotations=pd.DataFrame({"loss_mean": [0.1, 0.2, 0.3, 0.4]}))
        >>> d = save_curated_dataset(tempfile.mkdtemp() + "/export", out, license="mit", fetch_source_card=False)
        >>> sorted(p.name for p in d.iterdir()), list(datasets.load_dataset(str(d), split="train")["text"])
        (['README.md', 'data', 'provenance.json'], ['a', 'c', 'd'])
    """
    if not isinstance(curated, CuratedDataset):
        raise TypeError(f"save_curated_dataset needs the CuratedDataset that curate() returns, got {type(curated).__name__}")
    out = Path(output_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "provenance.json").is_file())):
        raise FileExistsError(f"{out} exists and is not an earlier export (no provenance.json): choose another folder")
    parts = _splits(curated.dataset, splits, seed)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        sizes = {name: _write_split(staging / "data", name, ds, max_shard_size) for name, ds in parts.items()}
        plots = write_plots(curated, staging / "plots", trainer=trainer, run=run)
        provenance = build_provenance(
            curated, trainer=trainer, source=source, source_revision=source_revision, model=model,
            model_revision=model_revision, license=license, language=language, task_categories=task_categories,
            tags=tags, pretty_name=pretty_name, splits={k: len(v) for k, v in parts.items()}, plots=plots,
            fetch_source_card=fetch_source_card, token=token, run=run,
        )  # fmt: skip
        (staging / "provenance.json").write_text(_dump(provenance), encoding="utf-8")
        card = build_card(provenance, existing=_local_yaml(parts, sizes))
        (staging / "README.md").write_text(str(card), encoding="utf-8")
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _splits(dataset, splits, seed: int) -> dict[str, Any]:
    import datasets

    if splits is None:
        return {"train": dataset}
    if not isinstance(splits, Mapping) or not splits:
        raise TypeError("splits must be None, {name: fraction} or {name: datasets.Dataset}")
    bad = [s for s in splits if not _SPLIT_RE.match(str(s))]
    if bad:
        raise ValueError(f"split names must match {_SPLIT_RE.pattern} (e.g. 'train', 'test'): {bad}")
    values = list(splits.values())
    if all(isinstance(v, datasets.Dataset) for v in values):
        features = {str(v.features) for v in values}
        if len(features) > 1:
            raise ValueError("the split datasets have different features: one config needs the same columns")
        return dict(splits)
    if not all(isinstance(v, (int, float)) and v > 0 for v in values):
        raise TypeError("splits must be all fractions > 0 or all datasets.Dataset")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {sum(values)}")
    n = len(dataset)
    sizes = np.diff(np.round(np.cumsum([0.0, *values]) * n).astype(np.int64))
    for name, size in zip(splits, sizes):
        if size <= 0:
            raise ValueError(f"split {name!r} would be empty ({n} rows): use a larger fraction")
    return {name: subset(dataset, _split_rows(n, sizes, i, seed)) for i, name in enumerate(splits)}


def _split_rows(n: int, sizes: np.ndarray, split: int, seed: int):
    """``(start, offsets)`` of the rows that fall in ``split``: a uniformly random assignment with exactly
    ``sizes`` rows per split, drawn chunk by chunk (multivariate hypergeometric counts, then shuffled labels),
    so no permutation of all rows is held. The same ``seed`` gives the same assignment for every split."""
    rng = np.random.default_rng(seed)
    remaining = sizes.copy()
    for start in range(0, n, _SPLIT_CHUNK_ROWS):
        length = min(_SPLIT_CHUNK_ROWS, n - start)
        counts = rng.multivariate_hypergeometric(remaining, length)
        labels = np.repeat(np.arange(len(sizes), dtype=np.int8), counts)
        rng.shuffle(labels)
        remaining -= counts
        yield start, np.flatnonzero(labels == split)  # input order within each split


def _nbytes(ds) -> int:
    estimate = getattr(ds, "_estimate_nbytes", None)
    try:
        return int(estimate()) if estimate else int(ds.data.nbytes)
    except Exception:  # an estimate only decides the shard count
        return int(ds.data.nbytes)


def _write_split(folder: Path, split: str, ds, max_shard_size: int | str) -> list[int]:
    """Parquet shards ``data/<split>-0000i-of-0000n.parquet`` (push_to_hub's names), batch by batch."""
    from datasets.utils.py_utils import convert_file_size_to_int

    folder.mkdir(parents=True, exist_ok=True)
    limit = convert_file_size_to_int(max_shard_size)
    num_shards = max(1, math.ceil(_nbytes(ds) / limit))
    sizes = []
    import pyarrow.parquet as pq

    schema = ds.features.arrow_schema  # carries the features as metadata, so load_dataset restores them
    for i in range(num_shards):
        shard = ds.shard(num_shards, i, contiguous=True)
        path = folder / f"{split}-{i:05d}-of-{num_shards:05d}.parquet"
        with pq.ParquetWriter(str(path), schema) as writer:
            for batch in _arrow_batches(shard, 20_000):  # streamed: memory stays at one batch
                writer.write_table(batch)
        sizes.append(path.stat().st_size)
    return sizes


def _arrow_batches(ds, batch_size: int):
    """The rows of ``ds`` as Arrow tables of ``batch_size`` rows, in order, read from its memory-mapped table.

    The kept rows of a curated dataset are an indices mapping over the annotated table; gathering them with one
    vectorized ``take`` per batch is ~10x faster than datasets' generic row-slice gather.
    """
    table = getattr(ds.data, "table", None)
    indices = getattr(ds, "_indices", None)
    if table is None:  # not an Arrow-backed dataset as we know it: the generic path
        yield from (b.combine_chunks() for b in ds.with_format("arrow").iter(batch_size=batch_size))
        return
    for start in range(0, len(ds), batch_size):
        if indices is None:
            yield table.slice(start, batch_size)
            continue
        # per batch: the mapping may be memory-mapped in many chunks, and a whole to_numpy() would copy it all
        p = indices.column(0).slice(start, batch_size).to_numpy()
        if len(p) and (np.diff(p) >= 0).all():
            # Kept rows are in input order: take from the slice that spans them. A take over the whole table
            # makes Arrow concatenate each column's chunks, a copy that grows with the dataset.
            lo = int(p[0])
            yield table.slice(lo, int(p[-1]) + 1 - lo).take(pa.array(p - lo))
        else:
            yield table.take(pa.array(p))


def _local_yaml(parts: Mapping[str, Any], sizes: Mapping[str, list[int]]) -> dict:
    """``configs`` + ``dataset_info`` YAML as push_to_hub writes them, so the folder loads as it is."""
    from datasets.info import DatasetInfo, DatasetInfosDict
    from datasets.splits import SplitDict, SplitInfo
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCardData

    first = next(iter(parts.values()))
    split_dict = SplitDict()
    for name, ds in parts.items():
        split_dict.add(SplitInfo(name=name, num_bytes=_nbytes(ds), num_examples=len(ds)))
    info = DatasetInfo(features=first.features, splits=split_dict, download_size=sum(sum(s) for s in sizes.values()),
                       dataset_size=sum(_nbytes(ds) for ds in parts.values()))  # fmt: skip
    data = DatasetCardData()
    MetadataConfigs({"default": {"data_files": [{"split": s, "path": f"data/{s}-*"} for s in parts]}}).to_dataset_card_data(data)
    DatasetInfosDict({"default": info}).to_dataset_card_data(data)
    return data.to_dict()


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def _dump(provenance: Mapping[str, Any]) -> str:
    return json.dumps(provenance, indent=2, ensure_ascii=False) + "\n"


def load_export(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    """``(provenance, {split: parquet shard paths})`` of an export folder written by :func:`save_curated_dataset`.

    Example:
        >>> provenance, shards = load_export("export")  # doctest: +SKIP
        >>> provenance["counts"], list(shards)  # doctest: +SKIP
    """
    d = Path(directory)
    prov_path = d / "provenance.json"
    if not prov_path.is_file():
        raise FileNotFoundError(f"{d} is not an export folder (no provenance.json): write one with save_curated_dataset / `sft-callbacks export`")
    provenance = json.loads(prov_path.read_text(encoding="utf-8"))
    if provenance.get("schema") != SCHEMA:
        raise ValueError(f"{prov_path.name} has schema {provenance.get('schema')!r}, expected {SCHEMA!r}")
    shards = {s: sorted((d / "data").glob(f"{s}-*.parquet")) for s in provenance.get("splits", {})}
    missing = [s for s, files in shards.items() if not files]
    if missing:
        raise FileNotFoundError(f"no parquet shards for splits {missing} under {d / 'data'}: the export is incomplete")
    for name, path in (provenance.get("plots") or {}).items():
        if not (d / path).is_file():
            raise FileNotFoundError(f"plot {name!r} ({path}) is missing from the export")
    return provenance, shards


# ================================================================================================== pushing
def push_curated_dataset(
    repo_id: str,
    curated_or_dir: CuratedDataset | str | os.PathLike,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    max_retries: int = 3,
    retry_delay: float = 1.0,
    max_shard_size: int | str | None = None,
    export_dir: str | os.PathLike | None = None,
    **save_kwargs: Any,
) -> PushResult:
    """Publish an export folder (or a ``CuratedDataset``) to the dataset repo ``repo_id``.

    Steps: the splits with ``DatasetDict.push_to_hub`` (``private`` applies when the repo is created; ``revision``
    is a branch, created when missing; ``commit_message``), then one commit with ``README.md`` (the card, its
    YAML merged into what ``push_to_hub`` wrote), ``provenance.json`` and ``plots/``. Each step is retried up to
    ``max_retries`` times on transient errors (HTTP 5xx / 408 / 409 / 412 / 429, dropped connections), waiting
    ``retry_delay`` seconds, doubling. Pushing the same content again makes no commit.

    With a ``CuratedDataset``, it is saved first to ``export_dir`` (kept; a temporary folder by default) with
    ``save_kwargs`` (see :func:`save_curated_dataset`); ``token`` is used for the source lookup too.

    Raises :class:`PublishError` naming the step that failed; nothing local is changed, so calling again
    completes the push.

    Example:
        >>> save_curated_dataset("export", curated, trainer=trainer)  # doctest: +SKIP
        >>> push_curated_dataset("me/my-curated-sft", "export", private=True).url  # doctest: +SKIP
        'https://huggingface.co/datasets/me/my-curated-sft'
    """
    if isinstance(curated_or_dir, CuratedDataset):
        if export_dir is None:
            with tempfile.TemporaryDirectory(prefix="sft-callbacks-export-") as tmp:
                return push_curated_dataset(
                    repo_id, save_curated_dataset(Path(tmp) / "export", curated_or_dir, token=token, **save_kwargs),
                    private=private, revision=revision, commit_message=commit_message, token=token,
                    max_retries=max_retries, retry_delay=retry_delay, max_shard_size=max_shard_size,
                )  # fmt: skip
        curated_or_dir = save_curated_dataset(export_dir, curated_or_dir, token=token, **save_kwargs)
    elif save_kwargs or export_dir is not None:
        raise TypeError(f"{sorted(save_kwargs) or ['export_dir']} only apply when pushing a CuratedDataset, not a folder")
    directory = Path(curated_or_dir)
    provenance, shards = load_export(directory)

    import datasets
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    message = commit_message or DEFAULT_COMMIT_MESSAGE
    attempts: dict[str, int] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        return _retry(name, fn, attempts, max_retries=max_retries, delay=retry_delay, repo_id=repo_id, directory=directory)

    # Arrow-backed (memory-mapped cache), so push_to_hub holds one parquet shard in memory at a time. The cache
    # keeps the export's row groups as its record batches (writer_batch_size): with datasets' default (1000 rows)
    # the opened table holds ~500 bytes of Arrow chunk objects per batch and column in malloc (and push_to_hub's
    # full-length job slice as much again): ~14 bytes/row here, i.e. memory growing with the dataset.
    data = datasets.DatasetDict({
        split: datasets.Dataset.from_parquet([str(f) for f in files], split=split,
                                             writer_batch_size=_CACHE_BATCH_ROWS)
        for split, files in shards.items()
    })  # fmt: skip
    counts = {split: len(ds) for split, ds in data.items()}
    # All splits in one push_to_hub: one data commit, and the YAML lists the splits in a fixed order (pushing
    # them one by one moves the re-pushed split last, so an unchanged re-push would still commit)
    step("push data", lambda: data.push_to_hub(
        repo_id, private=private, revision=revision, commit_message=message, token=token,
        max_shard_size=max_shard_size))  # fmt: skip
    step("push card, provenance.json and plots",
         lambda: _push_card(api, repo_id, directory, provenance, revision, f"{message}: card and provenance"))
    head = step("read the new head", lambda: api.repo_info(repo_id, repo_type="dataset", revision=revision).sha)
    endpoint = api.endpoint.rstrip("/")
    return PushResult(repo_id=repo_id, revision=revision, commit=head, url=f"{endpoint}/datasets/{repo_id}",
                      splits=counts, attempts=attempts)  # fmt: skip


def _push_card(api, repo_id: str, directory: Path, provenance: dict, revision: str | None, message: str):
    """One commit: README (YAML merged into the repo's), provenance.json, plots; stale plots removed."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    head = api.repo_info(repo_id, repo_type="dataset", revision=revision).sha
    files = set(api.list_repo_files(repo_id, repo_type="dataset", revision=head))
    readme = _read_remote(api, repo_id, "README.md", head) if "README.md" in files else None
    remote = _read_remote(api, repo_id, "provenance.json", head) if "provenance.json" in files else None
    provenance = dict(provenance)
    if remote is not None:
        try:
            previous = json.loads(remote)
        except ValueError:
            previous = None
        # Same record but a later export: keep the published time, so re-pushing the same data is a no-op
        if isinstance(previous, dict) and {**previous, "created_at": None} == {**provenance, "created_at": None}:
            provenance["created_at"] = previous.get("created_at")
    existing = _yaml_of(readme) if readme is not None else {}
    card = build_card(provenance, existing=existing)
    ops: list[Any] = [
        CommitOperationAdd("README.md", str(card).encode("utf-8")),
        CommitOperationAdd("provenance.json", _dump(provenance).encode("utf-8")),
    ]
    plots = set(provenance.get("plots", {}).values())
    ops += [CommitOperationAdd(p, str(directory / p)) for p in sorted(plots)]
    ops += [CommitOperationDelete(f) for f in sorted(files) if f.startswith("plots/") and f not in plots]
    return api.create_commit(repo_id, ops, commit_message=message, repo_type="dataset", revision=revision,
                             parent_commit=head)  # fmt: skip


def _read_remote(api, repo_id: str, filename: str, sha: str) -> str:
    # pinned to a commit sha: the cached copy can never be stale
    path = api.hf_hub_download(repo_id, filename, repo_type="dataset", revision=sha)
    return Path(path).read_text(encoding="utf-8")


def _yaml_of(readme: str) -> dict:
    from huggingface_hub import DatasetCard

    return DatasetCard(readme).data.to_dict()


def _transient(error: BaseException) -> bool:
    """HTTP 5xx / 408 / 409 / 412 / 425 / 429 or a transport failure, anywhere in the exception chain."""
    from huggingface_hub.errors import HfHubHTTPError

    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, HfHubHTTPError):
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status is not None and (status >= 500 or status in _RETRY_STATUS):
                return True
        # huggingface_hub talks through httpx (installed here as `httpx2`): its TransportError (dropped
        # connection, RemoteProtocolError, timeouts) is neither an HfHubHTTPError nor a builtin ConnectionError
        if isinstance(e, (ConnectionError, TimeoutError)) or any(
            c.__name__ in ("TransportError", "TimeoutException") and c.__module__.split(".")[0].startswith("httpx")
            for c in type(e).__mro__
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def _retry(name: str, fn: Callable[[], Any], attempts: dict[str, int], *, max_retries: int, delay: float,
           repo_id: str, directory: Path) -> Any:
    wait = delay
    for attempt in range(1, max_retries + 2):
        attempts[name] = attempt
        try:
            return fn()
        except Exception as e:
            transient = _transient(e)
            if transient and attempt <= max_retries:
                time.sleep(wait)
                wait *= 2
                continue
            why = "still failing after" if transient else "not a transient error; stopped after"
            raise PublishError(
                f"pushing {repo_id}: step '{name}' failed ({why} {attempt} attempt(s)): {type(e).__name__}: "
                f"{str(e).strip()[:500]}\nThe local export {directory.name!r} was not changed. Run the same push again "
                "to finish it: steps already done are detected and nothing unchanged is sent twice."
            ) from e
    raise AssertionError("unreachable")


__all__ = ["ANNOTATION_COLUMNS", "DEFAULT_COMMIT_MESSAGE", "PublishError", "PushResult", "curate_annotated",
           "load_export", "load_run_record", "push_curated_dataset", "save_annotated_dataset",
           "save_curated_dataset"]  # fmt: skip
