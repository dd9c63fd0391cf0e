"""Checks a ``sft-callbacks sft`` recipe passes before anything is launched: callback options of the declared
type, and data that exists and has the columns the callbacks read.

YAML (PyYAML's 1.1 rules) reads ``5e-2`` as a string; TRL's parser turns its own dataclasses' values into their
declared types, so the callbacks' options get the same treatment here from their config's type hints. The data
checks run in the launcher, so a wrong column or a missing file is one message and exit code 2, not a traceback
from every launched process.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# A number as YAML 1.2 writes it (PyYAML's 1.1 rules leave "5e-2" and "1e3" as strings).
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


class OptionError(ValueError):
    """A callback option cannot be read as the type its callback declares."""


def coerce_options(cls: type, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with each value turned into the type ``cls`` declares for it (its config's fields, else its
    ``__init__``'s annotations): numbers YAML left as strings become numbers (an integral one an ``int`` where the
    option takes one, as ``warmup: 1e1`` steps); a value of the wrong type raises
    :class:`OptionError` naming the option and the expected type. Options without a simple declared type pass as
    they are (the callback checks them).

    Example:
        >>> from sft_callbacks import DataMapCallback
        >>> coerce_options(DataMapCallback, {"noise_rate": "5e-2", "min_epochs": "3"})
        {'noise_rate': 0.05, 'min_epochs': 3}
        >>> coerce_options(DataMapCallback, {"noise_rate": "five percent"})
        Traceback (most recent call last):
        ...
        sft_callbacks.recipe_checks.OptionError: argument 'noise_rate' must be a number or null, got 'five percent' (a string)
    """
    hints = _hints(cls)
    return {name: _coerce(name, value, hints.get(name)) for name, value in options.items()}


def _hints(cls: type) -> dict[str, Any]:
    target = getattr(cls, "config_class", None) or cls.__init__
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - annotations that do not resolve: nothing to coerce by
        return {}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    if hint is None or hint is Any:
        return value
    origin = typing.get_origin(hint)
    members = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if any(_is_mapping(m) for m in members) and isinstance(value, Mapping):
        return {k: _number(v) for k, v in value.items()}
    if any(_is_number_sequence(m) for m in members) and isinstance(value, list):
        return [_number(v) for v in value]
    if not all(m in _NAMES for m in members):
        return value  # callables, sequences of sequences, ...: the callback's own checks name them
    if isinstance(value, str) and str not in members and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        if int in members and number.is_integer():  # an integral number where an int is accepted: steps, counts
            value = int(number)
        elif float in members:
            value = number
    kind = type(value)
    if kind in members or (kind is int and float in members) or (value is None and type(None) in members):
        return value
    expected = " or ".join(_NAMES[m] for m in members)
    shown = "a string" if isinstance(value, str) else f"a {kind.__name__}"
    raise OptionError(f"argument {name!r} must be {expected}, got {value!r} ({shown})")


def _is_mapping(hint: Any) -> bool:
    return (typing.get_origin(hint) or hint) in (Mapping, dict, typing.Mapping)


def _is_number_sequence(hint: Any) -> bool:
    return ((typing.get_origin(hint) or hint) in (Sequence, list, tuple)
            and typing.get_args(hint)[:1] in ((float,), (int,)))  # fmt: skip


def _number(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def missing_data_files(mixture) -> list[str]:
    """The local data files a ``datasets:`` mixture names that do not exist (globs and URLs are left to
    ``datasets``), as ``"entry i: path"``.

    Example:
        >>> from trl import DatasetMixtureConfig
        >>> missing_data_files(DatasetMixtureConfig(datasets=[{"path": "json", "data_files": "nope.jsonl"}]))
        ['datasets[0]: nope.jsonl']
    """
    out = []
    for i, config in enumerate(getattr(mixture, "datasets", None) or []):
        files = config.data_files
        if isinstance(files, Mapping):
            files = [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
        elif isinstance(files, str):
            files = [files]
        for f in files or []:
            if "://" in f or any(c in f for c in "*?["):
                continue
            if not Path(f).exists():
                out.append(f"datasets[{i}]: {f}")
    return out


def missing_columns(callbacks: Sequence[Any], column_names: Sequence[str]) -> list[str]:
    """What each callback reads (``required_columns()``) that the training data lacks, as
    ``"Callback: column"``.

    Example:
        >>> from sft_callbacks import GroupBalanceCallback
        >>> missing_columns([GroupBalanceCallback(group_column="domain")], ["prompt", "completion", "dataset"])
        ['GroupBalanceCallback: domain']
    """
    have = set(column_names)
    return [f"{type(cb).__name__}: {c}" for cb in callbacks for c in getattr(cb, "required_columns", list)()
            if c not in have]


__all__ = ["OptionError", "coerce_options", "missing_columns", "missing_data_files"]
