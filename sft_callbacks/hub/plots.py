"""The plots written beside a curated dataset (:func:`write_plots`): the data map, the training mixture over
time and the sampling-weight histogram."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .facts import mixture_history
from .provenance import _CHUNK_ROWS, _float_chunks


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
    history = mixture_history(getattr(getattr(trainer, "state", None), "log_history", [])) if trainer else list(
        (run or {}).get("mixture_over_training") or [])
    drawn = {
        "data_map": _plot_data_map(curated, frame, out_dir),
        "mixture": _plot_mixture(plt, history, out_dir) if history else False,
        "weights": _plot_weights(plt, frame, out_dir) if "weight" in frame.columns else False,
    }
    written = {name: f"{prefix}/{name}.png" for name, done in drawn.items() if done}
    if not written and not any(out_dir.iterdir()):
        out_dir.rmdir()  # no empty plots/ folder in the export
    return written


# PNG metadata carries matplotlib's version only (no date), so the same data gives the same bytes and a second push
# of the same export changes nothing.
_PNG_META = {"Software": None}


def _plot_data_map(curated, frame, out_dir: Path) -> bool:
    """``data_map.png`` when the data map's columns are there with values; whether it was drawn."""
    if not ({"confidence", "variability", "region"} <= set(frame.columns) and any(
        np.isfinite(v).any() for _, v in _float_chunks(frame, "confidence")
    )):
        return False
    from ..policies.data_map import plot_data_map

    points = frame[["confidence", "variability", "region"] + (["flag_noisy"] if "flag_noisy" in frame else [])]
    if len(points) > 50_000:  # plot_data_map draws at most 50k points; sampling first saves a full-frame copy
        # seeded draw of row numbers without an O(rows) permutation (DataFrame.sample makes one)
        rng = np.random.default_rng(0)
        picks = np.unique(rng.integers(0, len(points), size=60_000))
        rng.shuffle(picks)
        points = _rows_in_order(points, np.sort(picks[:50_000]))
    plot_data_map(points, str(out_dir / "data_map.png"),
                  title=f"Data map: {int(curated.rows_in)} rows in, {int(curated.rows_out)} kept")
    return True


def _plot_mixture(plt, history, out_dir: Path) -> bool:
    """``mixture.png``: the share of draws per group at each logging step."""
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
    fig.savefig(out_dir / "mixture.png", dpi=100, metadata=_PNG_META)
    plt.close(fig)
    return True


def _plot_weights(plt, frame, out_dir: Path) -> bool:
    """``weights.png``: the histogram of the final sampling weights, kept vs dropped, when any is finite."""
    kept = frame["kept"].to_numpy(dtype=bool)
    lo, hi = np.inf, -np.inf
    for _, w in _float_chunks(frame, "weight"):
        w = w[np.isfinite(w)]
        if w.size:
            lo, hi = min(lo, float(w.min())), max(hi, float(w.max()))
    if lo > hi:
        return False
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
    fig.savefig(out_dir / "weights.png", dpi=100, metadata=_PNG_META)
    plt.close(fig)
    return True


__all__ = ["write_plots"]
