"""The options of :class:`~sft_callbacks.policies.validation.ValidationGuidedResamplingCallback`, checked when
built, with the defaults of ``method``, ``learning_rate`` and ``prior`` resolved.

Example:
    >>> ValidationGuidedConfig(group_column="domain", reference={"a": 1.0}).method
    'doremi'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..engine.config import CallbackConfig
from .mixing_rules import METHODS

DEFAULT_METHOD = "exp3"  # the update rule the ablation chose (method card)
DEFAULT_MAX_PASSES = 4.0  # repeated rows keep most of their value up to about 4 passes (Muennighoff et al. 2023)
DEFAULT_STALL_PATIENCE = 2  # a group is withdrawn when its loss has not fallen with its draws over 3 evaluations
REWARDS = ("loss", "evidence")


@dataclass(frozen=True, kw_only=True)
class ValidationGuidedConfig(CallbackConfig):
    """Options of :class:`ValidationGuidedResamplingCallback` (see its Args), checked when built; ``method``,
    ``learning_rate`` and ``prior`` are resolved to their defaults here.

    Example:
        >>> c = ValidationGuidedConfig(group_column="domain")
        >>> c.method, c.learning_rate, c.prior
        ('exp3', 1.0, 'target')
    """

    group_column: str
    method: str | None = None
    target: str | Mapping = "eval"
    learning_rate: float | None = None
    smoothing: float = 1e-3
    min_share: float = 0.01
    reference: str | Mapping = "first"
    prior: str | Mapping | None = None
    eval_name: str = "eval"
    dsir: bool = False
    dsir_text_column: str | None = None
    dsir_strength: float = 1.0
    paced_difficulty: bool = False
    patience: int = 1
    boost_step: float = 0.25
    max_passes: float | None = DEFAULT_MAX_PASSES
    stall_patience: int | None = DEFAULT_STALL_PATIENCE
    reward: str = "loss"
    min_evidence: float | None = None

    def __post_init__(self):
        self.require(isinstance(self.group_column, str) and bool(self.group_column),
                     "group_column must be the name of a column of the training and eval datasets")
        method = self.method
        if method is None:
            method = "doremi" if isinstance(self.reference, Mapping) else DEFAULT_METHOD
        self.require(method in METHODS, f"method must be one of {sorted(METHODS)}", method)
        rate = METHODS[method] if self.learning_rate is None else self.learning_rate
        self.require(bool(np.isfinite(rate)) and rate >= 0, "learning_rate must be finite and >= 0", rate)
        self.require(method not in ("scaling", "learnability") or rate <= 1,
                     f"with method={method!r} learning_rate is a step fraction in [0, 1]", rate)
        _check_group_weights("target", self.target, "eval", "{group: weight}")
        prior = self.prior if self.prior is not None else ("natural" if method == "doremi" else "target")
        self.require(0.0 <= self.smoothing <= 1.0, "smoothing must be in [0, 1]", self.smoothing)
        self.require(0.0 <= self.min_share < 1.0, "min_share must be in [0, 1)", self.min_share)
        if isinstance(self.reference, str):
            self.require(self.reference == "first", "reference must be 'first' or a dict {group: loss}", self.reference)
        elif isinstance(self.reference, Mapping):
            bad = {k: v for k, v in self.reference.items() if not np.isfinite(float(v))}
            self.require(not bad and bool(self.reference), "reference losses must be finite numbers, one per group",
                         dict(self.reference))
        else:
            self.require(False, "reference must be 'first' or a dict {group: loss}", type(self.reference).__name__)
        _check_group_weights("prior", prior, ("natural", "target"), "{group: share}")
        self.require(isinstance(self.eval_name, str) and self.eval_name.startswith("eval"),
                     "eval_name must be 'eval' or 'eval_<key>'", self.eval_name)
        self.require(bool(np.isfinite(self.dsir_strength)) and self.dsir_strength >= 0,
                     "dsir_strength must be finite and >= 0", self.dsir_strength)
        self.require(int(self.patience) == self.patience and self.patience >= 1, "patience must be an integer >= 1",
                     self.patience)
        self.require(0.0 < self.boost_step <= 1.0, "boost_step must be in (0, 1]", self.boost_step)
        if self.max_passes is not None:
            self.require(bool(np.isfinite(self.max_passes)) and self.max_passes > 0,
                         "max_passes must be a number > 0 (passes over a group's rows), or None for no budget",
                         self.max_passes)
        if self.stall_patience is not None:
            self.require(int(self.stall_patience) == self.stall_patience and self.stall_patience >= 1,
                         "stall_patience must be an integer >= 1, or None to never withdraw a group",
                         self.stall_patience)
        self.require(self.reward in REWARDS, f"reward must be one of {list(REWARDS)}", self.reward)
        self.require(self.reward == "loss" or method == "exp3", "reward='evidence' is an option of method='exp3'",
                     method)
        if self.min_evidence is not None:
            self.require(bool(np.isfinite(self.min_evidence)) and self.min_evidence >= 0,
                         "min_evidence must be a number of standard errors >= 0, or None", self.min_evidence)
            self.require(method == "exp3", "min_evidence is an option of method='exp3'", method)
        as_plain = lambda v: v if isinstance(v, str) else dict(v)  # noqa: E731
        self._set("method", method)
        self._set("learning_rate", float(rate))
        self._set("target", as_plain(self.target))
        self._set("reference", as_plain(self.reference))
        self._set("prior", as_plain(prior))
        self._set("smoothing", float(self.smoothing))
        self._set("min_share", float(self.min_share))
        self._set("dsir", bool(self.dsir))
        self._set("dsir_strength", float(self.dsir_strength))
        self._set("paced_difficulty", bool(self.paced_difficulty))
        self._set("patience", int(self.patience))
        self._set("boost_step", float(self.boost_step))
        self._set("max_passes", None if self.max_passes is None else float(self.max_passes))
        self._set("stall_patience", None if self.stall_patience is None else int(self.stall_patience))
        self._set("min_evidence", None if self.min_evidence is None else float(self.min_evidence))


def _check_group_weights(name: str, value, words, shape: str) -> None:
    """``value`` is one of ``words`` or a non-empty dict of finite, non-negative weights, not all zero."""
    words = (words,) if isinstance(words, str) else tuple(words)
    spelled = " or ".join(repr(w) for w in words)
    if isinstance(value, str):
        CallbackConfig.require(value in words, f"{name} must be {spelled} or a dict {shape}", value)
    elif isinstance(value, Mapping):
        ok = bool(value) and all(np.isfinite(float(v)) and float(v) >= 0 for v in value.values()) \
            and sum(float(v) for v in value.values()) > 0
        CallbackConfig.require(ok, f"{name} weights must be finite, >= 0 and not all zero", dict(value))
    else:
        CallbackConfig.require(False, f"{name} must be {spelled} or a dict {shape}", type(value).__name__)
