"""The sampler's hot loops compiled with numba, when it is installed (``pip install "sft-callbacks[fast]"``).

Each kernel does the same floating-point operations in the same order as the NumPy rule it stands for in
:mod:`.quotas` (no fast-math, no reassociation), so the index stream is the same bit for bit with or without numba;
tests compare them. Without numba, or with ``SFT_CALLBACKS_NUMBA=0`` in the environment, :func:`get` returns None
and the sampler runs the NumPy rules. Compiled code is cached next to this file (``cache=True``), so only the first
process of an environment pays for compiling (about 10 s for all of them on a 2-core CPU; loading them takes about
0.5 s).
The kernels marked parallel split rows between threads (numba's default threading layer is not safe to enter from
two threads at once, so every call holds a lock); their results do not depend on the number of threads.

Example:
    >>> k = get()
    >>> k is None or k.deadline_order(np.array([0.75, 0.25]), np.zeros(2), 0.5, 4).tolist() == [0, 0, 1, 0]
    True
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from functools import wraps
from types import SimpleNamespace

import numpy as np

logger = logging.getLogger(__name__)

_KERNELS: SimpleNamespace | None = None
_TRIED = False
_INSTALLED = importlib.util.find_spec("numba") is not None
_LOCK = threading.Lock()
_NAMES = ("deadline_order", "window_events", "split_lag", "gathered_sum", "all_equal_positive", "proportional",
          "stable_argsort", "earliest_split", "visited_bits", "pairwise_sum", "float32_checked")


def enabled() -> bool:
    """Whether the compiled kernels will be used: numba is installed and ``SFT_CALLBACKS_NUMBA`` is not ``0``.

    Example:
        >>> isinstance(enabled(), bool)
        True
    """
    return _INSTALLED and os.environ.get("SFT_CALLBACKS_NUMBA", "1") != "0"


def get() -> SimpleNamespace | None:
    """The compiled kernels (compiled or loaded on first use), or None when :func:`enabled` is false or numba cannot
    be imported.

    Example:
        >>> get() is None or callable(get().window_events)
        True
    """
    global _KERNELS, _TRIED
    if not enabled():
        return None
    if not _TRIED:
        _TRIED = True
        _KERNELS = _build()
    return _KERNELS


def warm(index_dtype=np.int32) -> None:
    """Load (or compile) every kernel for the sampler's argument types now, so the first weight change of a run does
    not pay for it. About 0.5 s per process once compiled code is cached; nothing without numba.

    Example:
        >>> warm()
    """
    k = get()
    if k is None:
        return
    w = np.ones(2, dtype=np.float32)
    rows = np.arange(2, dtype=index_dtype)
    every_row = np.empty(0, dtype=np.int32)
    k.deadline_order(np.array([0.5, 0.5]), np.zeros(2), 0.5, 1)
    for r in (rows, every_row):
        k.window_events(w, r, 1.0, w, np.uint64(1), 0, 2, -np.inf, 1.0)
        k.gathered_sum(w, r)
        k.pairwise_sum(w, r)
        k.all_equal_positive(w, r)
        k.proportional(w, 1.0, w, 1.0, r, 1e-6)
    k.split_lag(k.visited_bits(rows, 2), rows, np.float32(0), np.float32(1))
    k.earliest_split(rows, np.array([0.5, 0.25]), 0.3)
    k.stable_argsort(np.array([0.5, 0.25]))
    for dtype in (np.float32, np.float64):
        k.float32_checked(np.ones(2, dtype=dtype))


def _locked(kernel):
    @wraps(kernel)
    def call(*args):
        with _LOCK:
            return kernel(*args)

    return call


def _build() -> SimpleNamespace | None:
    try:
        from . import _compiled
    except Exception as err:  # an installed numba that cannot load (e.g. built for another numpy)
        logger.warning("sft-callbacks: numba could not be imported (%s); the sampler runs its NumPy rules", err)
        return None
    return SimpleNamespace(**{name: _locked(getattr(_compiled, name)) for name in _NAMES})
