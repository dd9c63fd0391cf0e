"""The cells and tables of the benchmarks' markdown reports (BENCHMARKS.md quotes them)."""

from __future__ import annotations

import numpy as np


def cell(x, spec=".3f") -> str:
    """One value, or a dash where there is none.

    Example:
        >>> cell(0.12345), cell(None), cell(float("nan"))
        ('0.123', '—', '—')
    """
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def cell_ci(c: dict | None, spec=".3f", signed=False) -> str:
    """``mean [lo, hi]`` of a :func:`~sft_callbacks.evaluation.mean_ci` entry (the mean alone with one value).

    Example:
        >>> cell_ci({"mean": 0.1, "lo": -0.05, "hi": 0.25, "n": 5}, signed=True)
        '+0.100 [-0.050, +0.250]'
    """
    if not c or c.get("n", 0) == 0:
        return "—"
    s = "+" + spec if signed else spec
    if not np.isfinite(c["lo"]):
        return format(c["mean"], s)
    return f"{format(c['mean'], s)} [{format(c['lo'], s)}, {format(c['hi'], s)}]"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    """A markdown table.

    Example:
        >>> print(md_table(["a", "b"], [["1", "2"]]))
        | a | b |
        |---|---|
        | 1 | 2 |
    """
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
