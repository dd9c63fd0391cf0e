"""The package's one 64-bit mixing function (the splitmix64 finaliser) and the counter-based uniforms built on it.

Row keys, the sampler's thresholds, curriculum tie-breaks, DSIR's hashed n-grams and the conflict finder's MinHash
all mix their bits here.

Example:
    >>> import numpy as np
    >>> bool((mix64(np.arange(1, 4, dtype=np.uint64)) != np.arange(1, 4, dtype=np.uint64)).all())
    True
"""

from __future__ import annotations

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a ``uint64`` array (wrapping arithmetic): every input bit moves every output bit.

    Example:
        >>> mix64(np.zeros(1, dtype=np.uint64)).tolist()
        [0]
    """
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64)
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64: the golden-ratio increment, then :func:`mix64`; a fast high-quality hash of counters.

    Example:
        >>> splitmix64(np.arange(2, dtype=np.uint64)).dtype
        dtype('uint64')
    """
    with np.errstate(over="ignore"):
        return mix64((np.asarray(x, dtype=np.uint64) + GOLDEN) & _MASK64)


def counter_key(seed: int) -> np.uint64:
    """The key :func:`counter_uniforms` mixes every counter of ``seed`` with: ``splitmix64(seed)``.

    Example:
        >>> bool(counter_key(0) == splitmix64(np.zeros(1, dtype=np.uint64))[0])
        True
    """
    return splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]


def counter_uniforms(seed: int, start: int, stop: int) -> np.ndarray:
    """Uniform floats in [0, 1) for counters ``start..stop-1``; counter ``p`` always gets the same value.

    Example:
        >>> u = counter_uniforms(0, 0, 4)
        >>> bool(((u >= 0) & (u < 1)).all()) and np.array_equal(u[2:], counter_uniforms(0, 2, 4))
        True
    """
    key = counter_key(seed)
    pos = np.arange(start, stop, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = splitmix64(pos ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
