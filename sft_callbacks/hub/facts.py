"""What is looked up about a run: the source dataset (Hub id + revision, license, language, or a content
fingerprint for local data), the model, the training arguments, package versions, the Hub's size category and
the training mixture over time, as JSON-safe values."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .scrub import _basename

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

_SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))  # fmt: skip


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


__all__ = [
    "PACKAGES",
    "TRAINING_ARGUMENTS",
    "describe_model",
    "describe_source",
    "fingerprint_path",
    "mixture_history",
    "package_versions",
    "size_category",
    "training_arguments",
]
