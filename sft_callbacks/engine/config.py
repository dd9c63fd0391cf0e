"""The one shape of a strategy's options: a frozen, keyword-only dataclass validated when it is built.

As with ``SFTConfig``, the config is the one list of a strategy's options: its fields are what the callback reads
(``self.config.beta``), what goes into ``trainer_state.json`` and what the provenance card lists. A bad value fails
when the config is built, before any training.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, kw_only=True)
    ... class PreferShortConfig(CallbackConfig):
    ...     power: float = 1.0
    ...     def __post_init__(self):
    ...         self.require(self.power >= 0, "power must be >= 0", self.power)
    >>> PreferShortConfig(power=2).to_dict()
    {'power': 2}
    >>> PreferShortConfig(power=-1)
    Traceback (most recent call last):
    ...
    ValueError: power must be >= 0 (got -1)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class CallbackConfig:
    """Base class of every strategy's config. Subclasses are ``@dataclass(frozen=True, kw_only=True)`` and check
    their fields in ``__post_init__`` with :meth:`require`."""

    @staticmethod
    def require(ok: bool, message: str, value: Any = dataclasses.MISSING) -> None:
        """Raise ``ValueError(message)`` (with the offending value) unless ``ok``."""
        if not ok:
            raise ValueError(message if value is dataclasses.MISSING else f"{message} (got {value!r})")

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field while the frozen instance is being built (e.g. a Mapping to a dict)."""
        object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """Every field and its value (mappings as dicts), in declaration order."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    def jsonable(self) -> dict[str, Any]:
        """The fields as JSON values: what a checkpoint and a card record (a callable as its ``repr``)."""
        return {k: v if is_json(v) else repr(v) for k, v in self.to_dict().items()}


def is_json(value) -> bool:
    """Whether ``json.dumps`` can write ``value`` as it is.

    Example:
        >>> is_json({"a": [1, 2.5, None]}), is_json(print)
        (True, False)
    """
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
