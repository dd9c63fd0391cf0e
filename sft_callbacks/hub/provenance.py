"""Provenance of a curated dataset: a JSON-safe record, the plots, and a Hub dataset card built from them.

:func:`build_provenance` records where the rows came from (source dataset id + revision, or a content
fingerprint for local data), the model and the training arguments that shaped the annotations, every callback
with its configuration, the filters, counts before and after, dropped rows by reason, package versions and the
creation time. :func:`write_plots` draws the data map, the training mixture over time and the sampling-weight
histogram. :func:`build_card` turns the record into a ``huggingface_hub.DatasetCard``, merged into existing YAML
(e.g. the ``configs`` / ``dataset_info`` that ``Dataset.push_to_hub`` wrote) rather than replacing it.

Everything written is passed through :func:`sanitize`: local paths become their basename (plus a content
fingerprint where it identifies data or a model), the home directory and the local user name are scrubbed and
tokens are redacted, so a card can be published as it is.
"""

from __future__ import annotations

import copy
import getpass
import hashlib
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.columns import COLUMN_MEANINGS

#: Version tag of the ``provenance.json`` layout.
SCHEMA = "sft-callbacks/provenance/1"

#: Training arguments recorded in the card (those that change what the annotations mean). Paths such as
#: ``output_dir`` / ``logging_dir`` are left out on purpose: they are local and say nothing about the data.
TRAINING_ARGUMENTS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "lr_scheduler_type", "warmup_ratio", "warmup_steps", "weight_decay", "max_grad_norm", "optim", "seed",
    "data_seed", "bf16", "fp16", "max_length", "packing", "completion_only_loss", "assistant_only_loss",
    "dataset_text_field", "loss_type", "neftune_noise_alpha",
)  # fmt: skip

#: Packages whose versions are recorded.
PACKAGES = ("sft-callbacks", "torch", "transformers", "trl", "datasets", "huggingface_hub", "pyarrow", "numpy",
            "pandas", "accelerate")  # fmt: skip

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
# An absolute POSIX path (not the path part of a URL: no ':' or '/' or word character right before it), or a
# Windows one; matched greedily up to whitespace / quotes.
_ABS_PATH = re.compile(r"(?<![\w:/.~])(?:/|~/|[A-Za-z]:\\)[^\s\"'`<>|,;)(\]\[]+")

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))  # fmt: skip

_COLUMN_DOCS = COLUMN_MEANINGS  # one registry: sft_callbacks.engine.columns


# ----------------------------------------------------------------------------------------------- sanitising
def _secrets(extra: Sequence[str] = ()) -> list[str]:
    """Tokens known to this process (explicit, environment, the stored login): never written anywhere."""
    found = [t for t in extra if t]
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name):
            found.append(os.environ[name])
    try:
        from huggingface_hub import get_token

        token = get_token()
        if token:
            found.append(token)
    except Exception:  # no login, or an old huggingface_hub: nothing to redact
        pass
    return sorted({t for t in found if len(t) >= 4}, key=len, reverse=True)


def _private_roots() -> list[str]:
    roots = {os.path.expanduser("~"), os.getcwd()}
    import tempfile

    roots.add(tempfile.gettempdir())
    return sorted((r for r in roots if r and r not in ("/", "\\")), key=len, reverse=True)


def sanitize(obj: Any, *, tokens: Sequence[str] = ()) -> Any:
    """``obj`` (a JSON-like value) with local paths, the home directory, the user name and tokens scrubbed.

    Absolute paths become their last component, the user name as a path component becomes ``<user>``, and
    Hugging Face tokens (the given ``tokens``, ``HF_TOKEN``, the stored login and anything shaped like
    ``hf_...``) become ``<redacted>``. URLs are kept.

    Example:
        >>> sanitize({"model": "/home/alice/models/llama-ft", "note": "token hf_abcdefghijklmnopqrstuvwxyz0123"})
        {'model': 'llama-ft', 'note': 'token <redacted>'}
    """
    secrets = _secrets(tokens)
    roots = _private_roots()
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry (containers): nothing to scrub
        user = ""

    def clean(s: str) -> str:
        for t in secrets:
            s = s.replace(t, "<redacted>")
        s = _HF_TOKEN.sub("<redacted>", s)
        for root in roots:  # paths under a private root keep only their last component
            s = re.sub(re.escape(root) + r"[/\\]?([^\s\"'`<>]*)", lambda m: _basename(m.group(1)) or ".", s)
        s = _ABS_PATH.sub(lambda m: _basename(m.group(0)), s)
        if user:  # the user name as a path component or an address (user@host), not as an English word
            s = re.sub(rf"(?<=[/\\]){re.escape(user)}(?=[/\\]|$)|\b{re.escape(user)}(?=@)", "<user>", s)
        return s

    def walk(x):
        if isinstance(x, str):
            return clean(x)
        if isinstance(x, Mapping):
            return {clean(str(k)): walk(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj)


def _basename(path: str) -> str:
    return re.split(r"[/\\]", path.rstrip("/\\"))[-1]


# ----------------------------------------------------------------------------------------------- fingerprints
def fingerprint_path(path: str | os.PathLike, *, max_files: int = 10_000) -> str:
    """Content fingerprint of a file or a folder (``sha256:`` + 16 hex digits): relative names and bytes.

    The same data in another place gives the same fingerprint, so a local dataset or model can be identified
    in a card without writing where it lived.

    Example:
        >>> import tempfile, pathlib
        >>> a, b = (pathlib.Path(tempfile.mkdtemp()) / "data" for _ in "ab")
        >>> for d in (a, b): d.mkdir(); _ = (d / "rows.jsonl").write_text('{"x": 1}')
        >>> fingerprint_path(a) == fingerprint_path(b), fingerprint_path(a)[:7]
        (True, 'sha256:')
    """
    p = Path(path)
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    if len(files) > max_files:
        raise ValueError(f"{len(files)} files under the path: too many to fingerprint")
    for f in files:
        rel = f.name if f == p else f.relative_to(p).as_posix()
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return "sha256:" + h.hexdigest()[:16]


def _looks_local(name: str) -> bool:
    if os.path.exists(name):
        return True
    return not _HUB_ID.match(name) or name.startswith((".", "~"))


def describe_source(source: Any = None, *, revision: str | None = None, dataset: Any = None,
                    fetch_card: bool = True, token: str | None = None) -> dict[str, Any]:
    """Where the rows came from: ``{"id", "revision", "fingerprint", "license", "language", "local"}``.

    ``source`` is a Hub dataset id (its commit sha is looked up when ``revision`` is not given and the Hub is
    reachable, and license / language come from its card), a local file or folder (recorded as its basename
    and a content fingerprint) or a ``datasets.Dataset`` (its ``info`` and fingerprint). Without ``source``,
    ``dataset`` (the curated data) provides what its ``info`` knows.

    Example:
        >>> describe_source("my-org/my-sft-set", revision="v1.0", fetch_card=False)["id"]
        'my-org/my-sft-set'
    """
    out: dict[str, Any] = {"id": None, "revision": revision, "fingerprint": None, "license": None,
                           "language": None, "local": False}  # fmt: skip
    import datasets

    if isinstance(source, datasets.Dataset):
        dataset, source = source, None
    if dataset is not None:
        info = getattr(dataset, "info", None)
        if info is not None and info.license:
            out["license"] = info.license
        # load_dataset records hf://datasets/<id>@<sha>/... URLs of the files it read
        for url in (getattr(info, "download_checksums", None) or {}):
            m = re.match(r"hf://datasets/([^@]+)@([0-9a-f]{40})/", str(url))
            if m and source is None:
                source, out["revision"] = m.group(1), out["revision"] or m.group(2)
                break
        fp = getattr(dataset, "_fingerprint", None)
        if source is None and fp:
            out["fingerprint"] = f"datasets:{fp}"
            out["local"] = True
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        if _looks_local(name):
            out["id"] = _basename(name)
            out["local"] = True
            out["fingerprint"] = fingerprint_path(name) if os.path.exists(name) else None
        else:
            out["id"] = name
            if fetch_card:
                out.update({k: v for k, v in _hub_dataset_facts(name, revision, token).items() if v is not None})
    elif source is not None:
        raise TypeError(f"source must be a Hub id, a local path or a datasets.Dataset, got {type(source).__name__}")
    return out


def _hub_dataset_facts(repo_id: str, revision: str | None, token: str | None) -> dict[str, Any]:
    """License, language and resolved commit of a Hub dataset; empty when offline or not found."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(repo_id, revision=revision, token=token)
    except Exception:  # offline, private, gone: the card says what the caller told us
        return {}
    data = info.card_data.to_dict() if info.card_data is not None else {}
    return {"revision": info.sha, "license": data.get("license"), "language": data.get("language")}


def describe_model(model: Any = None, *, revision: str | None = None) -> dict[str, Any]:
    """The model whose training produced the annotations: ``{"id", "revision", "fingerprint", "architecture"}``.

    ``model`` is a Hub id, a local path (basename + content fingerprint), or a ``PreTrainedModel`` (its
    ``name_or_path`` and the commit it was loaded from; a model built in code gets a fingerprint of its
    configuration instead).

    Example:
        >>> describe_model("HuggingFaceTB/SmolLM2-135M-Instruct", revision="main")["id"]
        'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    out: dict[str, Any] = {"id": None, "revision": revision, "fingerprint": None, "architecture": None,
                           "local": False}  # fmt: skip
    name = None
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
    elif model is not None:
        model = getattr(model, "module", model)  # DDP / accelerate wrappers
        config = getattr(model, "config", None)
        out["architecture"] = type(model).__name__
        if config is not None:
            name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None) or None
            out["revision"] = revision or getattr(config, "_commit_hash", None)
            if not name:
                blob = json.dumps(config.to_dict(), sort_keys=True, default=str).encode()
                out["fingerprint"] = "config-sha256:" + hashlib.sha256(blob).hexdigest()[:16]
                out["note"] = "built in code (no Hub id): fingerprint of its configuration"
    if name:
        if _looks_local(name):
            out["id"], out["local"] = _basename(name), True
            out["fingerprint"] = fingerprint_path(name) if os.path.exists(name) else None
            out["revision"] = revision
        else:
            out["id"] = name
    return out


def training_arguments(args: Any) -> dict[str, Any]:
    """The :data:`TRAINING_ARGUMENTS` of a ``TrainingArguments`` / ``SFTConfig`` that are set (JSON-safe).

    Example:
        >>> from types import SimpleNamespace
        >>> training_arguments(SimpleNamespace(learning_rate=1e-4, seed=3, output_dir="/tmp/x"))
        {'learning_rate': 0.0001, 'seed': 3}
    """
    out = {}
    for name in TRAINING_ARGUMENTS:
        if hasattr(args, name):
            out[name] = _jsonable(getattr(args, name))
    return out


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`PACKAGES` plus the Python version (``None`` when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows.

    Example:
        >>> size_category(999), size_category(1_000_000)
        ('n<1K', '1M<n<10M')
    """
    for bound, label in _SIZE_CATEGORIES:
        if n < bound:
            return label
    return "n>1B"


def mixture_history(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per logging step, the share of draws per group (``sft/mixture/<group>`` metrics of the balance and
    validation-guided policies): ``[{"step": 10, "shares": {"math": 0.4, ...}}, ...]``."""
    out = []
    for entry in log_history or ():
        shares = {k[len("sft/mixture/"):]: float(v) for k, v in entry.items() if k.startswith("sft/mixture/")}
        if shares and "step" in entry:
            out.append({"step": int(entry["step"]), "shares": shares})
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, bool, int, type(None))):
        return v
    if isinstance(v, float):
        return v if np.isfinite(v) else str(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return _jsonable(v.item())
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "value") and isinstance(getattr(v, "value"), (str, int)):  # enums (lr_scheduler_type, optim)
        return v.value
    return repr(v)


# ----------------------------------------------------------------------------------------------- the record
#: The run record written beside an annotated dataset (``save_annotated_dataset``) and read by the export.
RUN_FILE = "sft_run.json"


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
    run = dict(run or {})
    # What this call was given wins; the recorded run fills in the rest.
    src = dict(fresh["source"] if source is not None or not run.get("source") else run["source"])
    if model is None and trainer is None and run.get("model"):
        fresh["model"] = run["model"]
    if trainer is None and run.get("training"):
        fresh.update(training=run["training"], seed=run.get("seed"), mixture_over_training=run.get(
            "mixture_over_training") or [])
    callbacks = list(curated.callbacks) or list(run.get("callbacks") or [])
    if license is not None:
        src["license"] = license
    if language is not None:
        src["language"] = [language] if isinstance(language, str) else list(language)
    elif isinstance(src.get("language"), str):
        src["language"] = [src["language"]]
    # the group column is input data that curate() copies into its report, not an annotation
    group = curated.filters.get("group_column")
    skip = {"kept", "drop_reason", *([group] if group not in _COLUMN_DOCS else [])}
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


# ----------------------------------------------------------------------------------------------- plots
def _rows_in_order(frame, rows: np.ndarray):
    """``frame.iloc[rows]`` (``rows`` sorted), gathered chunk by chunk: on Arrow-backed columns one ``take``
    over the whole column would first concatenate all its chunks, a copy as large as the column."""
    import pandas as pd

    parts = []
    for start in range(0, len(frame), _CHUNK_ROWS):
        lo, hi = np.searchsorted(rows, [start, start + _CHUNK_ROWS])
        if hi > lo:
            parts.append(frame.iloc[start : start + _CHUNK_ROWS].iloc[rows[lo:hi] - start])
    return pd.concat(parts) if parts else frame.iloc[:0]


def write_plots(curated, directory: str | os.PathLike, *, trainer: Any = None,
                prefix: str = "plots", run: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Draw the plots that the annotations allow into ``directory``; return ``{name: relative path}``.

    ``data_map`` (confidence vs variability, when :class:`~sft_callbacks.DataMapCallback` ran), ``mixture``
    (share of draws per group at each logging step, from ``trainer.state.log_history``, when a balance or
    validation-guided policy ran) and ``weights`` (histogram of the final sampling weights, kept vs dropped,
    when a sampling policy ran). Paths are relative to ``directory``'s parent, under ``prefix``, as they appear
    in the card. Needs matplotlib; without it, returns ``{}``.

    Example:
        >>> write_plots(curated, "export/plots", trainer=trainer)  # doctest: +SKIP
        {'data_map': 'plots/data_map.png', 'mixture': 'plots/mixture.png', 'weights': 'plots/weights.png'}
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the card just has no plots
        return {}
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = curated.annotations
    written: dict[str, str] = {}
    # PNG metadata carries matplotlib's version only (no date), so the same data gives the same bytes and a
    # second push of the same export changes nothing.
    meta = {"Software": None}

    if {"confidence", "variability", "region"} <= set(frame.columns) and any(
        np.isfinite(v).any() for _, v in _float_chunks(frame, "confidence")
    ):
        from ..policies.data_map import plot_data_map

        path = out_dir / "data_map.png"
        points = frame[["confidence", "variability", "region"] + (["flag_noisy"] if "flag_noisy" in frame else [])]
        if len(points) > 50_000:  # plot_data_map draws at most 50k points; sampling first saves a full-frame copy
            # seeded draw of row numbers without an O(rows) permutation (DataFrame.sample makes one)
            rng = np.random.default_rng(0)
            picks = np.unique(rng.integers(0, len(points), size=60_000))
            rng.shuffle(picks)
            points = _rows_in_order(points, np.sort(picks[:50_000]))
        plot_data_map(points, str(path), title=f"Data map: {int(curated.rows_in)} rows in, {int(curated.rows_out)} kept")
        written["data_map"] = f"{prefix}/data_map.png"

    history = mixture_history(getattr(getattr(trainer, "state", None), "log_history", [])) if trainer else list(
        (run or {}).get("mixture_over_training") or [])
    if history:
        groups = sorted({g for h in history for g in h["shares"]})
        steps = [h["step"] for h in history]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.stackplot(steps, [[h["shares"].get(g, 0.0) for h in history] for g in groups], labels=groups, alpha=0.85)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("share of draws")
        ax.set_ylim(0, 1)
        ax.set_title("Training mixture over time")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.tight_layout()
        fig.savefig(out_dir / "mixture.png", dpi=100, metadata=meta)
        plt.close(fig)
        written["mixture"] = f"{prefix}/mixture.png"

    if "weight" in frame.columns:
        kept = frame["kept"].to_numpy(dtype=bool)
        lo, hi = np.inf, -np.inf
        for _, w in _float_chunks(frame, "weight"):
            w = w[np.isfinite(w)]
            if w.size:
                lo, hi = min(lo, float(w.min())), max(hi, float(w.max()))
        if lo <= hi:
            # the histogram is accumulated chunk by chunk on fixed edges (what np.histogram_bin_edges gives)
            bins = np.histogram_bin_edges(np.array([lo, hi]), bins=40)
            counts = np.zeros((2, len(bins) - 1))
            for start, w in _float_chunks(frame, "weight"):
                k = kept[start : start + len(w)]
                ok = np.isfinite(w)
                counts[0] += np.histogram(w[ok & k], bins=bins)[0]
                counts[1] += np.histogram(w[ok & ~k], bins=bins)[0]
            centres = (bins[:-1] + bins[1:]) / 2
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.hist([centres, centres], bins=bins, weights=list(counts), stacked=True, label=["kept", "dropped"])
            ax.axvline(1.0, color="k", lw=0.8, ls="--")
            ax.set_xlabel("final sampling weight (1 = uniform)")
            ax.set_ylabel("rows")
            ax.set_title("Sampling weights at the end of training")
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(out_dir / "weights.png", dpi=100, metadata=meta)
            plt.close(fig)
            written["weights"] = f"{prefix}/weights.png"
    if not written and not any(out_dir.iterdir()):
        out_dir.rmdir()  # no empty plots/ folder in the export
    return written


# ----------------------------------------------------------------------------------------------- the card
def card_metadata(provenance: Mapping[str, Any], existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The card's YAML: ``existing`` (e.g. ``configs`` / ``dataset_info`` from ``push_to_hub``) updated with
    license, language, task and size categories, tags (union), ``source_datasets`` and ``pretty_name``.

    Example:
        >>> meta = card_metadata(prov, {"configs": [{"config_name": "default"}]})  # doctest: +SKIP
        >>> meta["configs"], meta["size_categories"]  # doctest: +SKIP
    """
    data = copy.deepcopy(dict(existing or {}))
    meta = provenance.get("metadata", {})
    src = provenance.get("source") or {}
    if meta.get("license"):
        data["license"] = meta["license"]
    if meta.get("language"):
        data["language"] = meta["language"]
    data["task_categories"] = list(meta.get("task_categories") or data.get("task_categories") or [])
    data["size_categories"] = list(meta.get("size_categories") or [])
    tags = data.get("tags") or []
    data["tags"] = sorted({*([tags] if isinstance(tags, str) else tags), *(meta.get("tags") or [])})
    if src.get("id") and not src.get("local"):
        data["source_datasets"] = [src["id"]]
    if provenance.get("pretty_name"):
        data["pretty_name"] = provenance["pretty_name"]
    return {k: v for k, v in data.items() if v not in (None, [], "")}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def card_text(provenance: Mapping[str, Any]) -> str:
    """The card's Markdown body: source, model, training, callbacks, curation counts, plots, versions.

    Example:
        >>> print(card_text(prov)[:60])  # doctest: +SKIP
        # Curated SFT dataset
    """
    p = provenance
    src, model, training = p.get("source") or {}, p.get("model"), p.get("training")
    counts = p["counts"]
    title = p.get("pretty_name") or (f"Curated {src['id']}" if src.get("id") else "Curated SFT dataset")
    parts = [f"# {title}", "",
             "Curated with [sft-callbacks](https://pypi.org/project/sft-callbacks/): every row carries what a "
             "fine-tuning run learnt about it (per-sample training dynamics, data-map coordinates, sampling "
             f"weights), and rows were filtered on those annotations. **{counts['rows_in']} rows in, "
             f"{counts['rows_out']} kept.** The machine-readable record is [`provenance.json`](provenance.json).",
             ""]  # fmt: skip
    parts += ["## Source", "", _table(["dataset", "revision", "fingerprint", "license", "language"], [[
        f"`{src.get('id')}`" if src.get("id") else "(in-memory dataset)", src.get("revision"), src.get("fingerprint"),
        src.get("license"), ", ".join(src.get("language") or []) or None]]), ""]  # fmt: skip
    if model:
        parts += ["## Model", "", _table(["model", "revision", "fingerprint", "architecture"], [[
            f"`{model.get('id')}`" if model.get("id") else model.get("note") or "(unknown)", model.get("revision"),
            model.get("fingerprint"), model.get("architecture")]]), ""]  # fmt: skip
    if training:
        args = training.get("arguments", {})
        parts += ["## Training", "",
                  f"{training.get('trainer')}, {training.get('global_step')} optimizer steps, "
                  f"{training.get('epochs', 0):.2f} epochs, seed {p.get('seed')}.", "",
                  _table(["argument", "value"], [[f"`{k}`", v] for k, v in args.items()]), ""]  # fmt: skip
    parts += ["## Callbacks", ""]
    if p.get("callbacks"):
        for cb in p["callbacks"]:
            parts.append(f"- **{cb['name']}**: `{json.dumps(cb.get('config', {}), sort_keys=True)}`")
    else:
        parts.append("The annotation columns came with the input dataset (no callbacks were given at curation).")
    parts += ["", "## Curation", "",
              f"Filters: `{json.dumps(p.get('filters', {}), sort_keys=True)}`", "",
              _table(["", "rows"], [["before", counts["rows_in"]], ["after", counts["rows_out"]],
                                    *[[f"dropped: {r}", n] for r, n in counts["dropped"].items()]]), ""]  # fmt: skip
    if p.get("group_counts"):
        parts += [_table(["group", "before", "after"], [[g, c["before"], c["after"]] for g, c in p["group_counts"].items()]), ""]
    parts += [_table(["split", "rows"], list(p.get("splits", {}).items())), ""]
    if p.get("annotation_columns"):
        summary = p.get("annotation_summary", {})
        parts += ["## Annotation columns", "", _table(["column", "meaning", "mean (kept)", "mean (dropped)"], [
            [f"`{c}`", _COLUMN_DOCS.get(c, ""), summary.get(c, {}).get("kept"), summary.get(c, {}).get("dropped")]
            for c in ["source_row", *p["annotation_columns"]]]), ""]  # fmt: skip
    captions = {"data_map": "Data map", "mixture": "Training mixture over time", "weights": "Final sampling weights"}
    if p.get("plots"):
        parts += ["## Plots", ""]
        for name, path in p["plots"].items():
            parts += [f"![{captions.get(name, name)}]({path})", ""]
    parts += ["## Reproducibility", "", f"Created {p.get('created_at')}.", "",
              _table(["package", "version"], list((p.get("packages") or {}).items())), ""]  # fmt: skip
    return "\n".join(parts)


def build_card(provenance: Mapping[str, Any], existing: Any = None):
    """A ``huggingface_hub.DatasetCard`` for ``provenance``, its YAML merged into ``existing``.

    ``existing`` is a ``DatasetCard``, a ``DatasetCardData``, a YAML dict or ``None``; its keys (``configs``,
    ``dataset_info``, anything the owner added) are kept, the provenance keys are set, and the body is replaced.

    Example:
        >>> from huggingface_hub import DatasetCard
        >>> card = build_card(prov, DatasetCard.load("me/curated"))  # doctest: +SKIP
        >>> card.data.configs  # the push_to_hub YAML survives  # doctest: +SKIP
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    if existing is None:
        base: dict[str, Any] = {}
    elif isinstance(existing, Mapping):
        base = dict(existing)
    else:
        data = getattr(existing, "data", existing)
        base = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    meta = card_metadata(provenance, base)
    # DatasetCard(str) parses the YAML block back; building from text avoids a jinja2 template.
    yaml_block = DatasetCardData(**meta).to_yaml()
    return DatasetCard(f"---\n{yaml_block}\n---\n\n{card_text(provenance)}")


__all__ = [
    "PACKAGES",
    "SCHEMA",
    "TRAINING_ARGUMENTS",
    "build_card",
    "build_provenance",
    "card_metadata",
    "card_text",
    "describe_model",
    "describe_source",
    "fingerprint_path",
    "mixture_history",
    "package_versions",
    "sanitize",
    "size_category",
    "training_arguments",
    "write_plots",
]
