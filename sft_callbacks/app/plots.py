"""The preview's figures as pixel arrays: the data map (with the pixel-to-data inverse for clicks), the weight
histogram and the group mixture over training."""

from __future__ import annotations

from typing import TYPE_CHECKING


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .render import escape, message_html
from .split import _REGION_COLOURS, NO_REGION, REGIONS, _map_limits, _str

if TYPE_CHECKING:
    from .source import CuratedSource


def _figure(width: float = 7.0, height: float = 5.0):
    # Figure + Agg canvas, not pyplot: handlers run in threads, and pyplot's global state is not thread-safe
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


#: Where the data map's axes sit in its 700x500 image (figure fractions: left, bottom, width, height);
#: fixed, so a click's pixel maps back to data coordinates.
_MAP_AXES = (0.10, 0.11, 0.62, 0.80)
_MAP_SIZE = (700, 500)


def plot_data_map(dm: dict[str, np.ndarray] | None, colour: str) -> np.ndarray | None:
    """The data map as an RGB image (confidence vs variability, one colour per category)."""
    if dm is None:
        return None
    fig = _figure(_MAP_SIZE[0] / 100, _MAP_SIZE[1] / 100)
    ax = fig.add_axes(_MAP_AXES)
    (x0, x1), (y0, y1) = _map_limits(dm)
    cats = list(dict.fromkeys(dm["c"].tolist()))
    if colour == "region":
        cats = [r for r in (*REGIONS, "") if r in cats] + [c for c in cats if c not in (*REGIONS, "")]
    palette = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]
    for i, cat in enumerate(cats[:20]):
        sel = dm["c"] == cat
        col = _REGION_COLOURS.get(cat) if colour == "region" else ("#d1495b" if cat == colour else "#9e9e9e" if cat == f"not {colour}" else palette[i % len(palette)])
        ax.scatter(dm["x"][sel], dm["y"][sel], s=6, alpha=0.6, color=col, label=f"{cat or NO_REGION} ({int(sel.sum()):,})", linewidths=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("variability (std of confidence across epochs)")
    ax.set_ylabel("confidence (mean prob. of the reference)")
    shown = dm["row"].size
    ax.set_title(f"Data map: {shown:,} of {dm['total']:,} rows" + (" (seeded sample)" if shown < dm["total"] else ""), fontsize=10)
    if dm.get("unplaced"):
        ax.scatter([], [], s=0, label=f"seen in < 2 epochs, not placed ({dm['unplaced']:,})")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=2, frameon=False)
    return _pixels(fig)


def pixel_to_data(dm: dict[str, np.ndarray], px: float, py: float) -> tuple[float, float]:
    """A click on the data-map image (pixels from its top-left) -> (variability, confidence)."""
    (x0, x1), (y0, y1) = _map_limits(dm)
    left, bottom, w, h = _MAP_AXES
    W, H = _MAP_SIZE
    fx = (px / W - left) / w
    fy = ((H - py) / H - bottom) / h
    return x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)


def plot_weights(src: CuratedSource, split: str | None) -> np.ndarray | None:
    """Histogram of the final sampling weights over the whole split (``None`` when not recorded)."""
    if "weight" not in src.numeric_columns:
        return None
    w = src.split(split).numbers("weight")
    w = w[np.isfinite(w)]
    if not w.size:
        return None
    counts, edges = np.histogram(w, bins=40)
    fig = _figure(6.0, 3.6)
    ax = fig.add_axes((0.12, 0.16, 0.84, 0.72))
    ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4477aa")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("final sampling weight (1 = uniform)")
    ax.set_ylabel("rows")
    ax.set_title(f"Sampling weights: {w.size:,} rows, mean {w.mean():.3g}", fontsize=10)
    return _pixels(fig)


def plot_mixture(src: CuratedSource, split: str | None, group_column: str | None) -> tuple[np.ndarray | None, str]:
    """The per-group share of draws over training (from provenance) or, when not recorded, the split's group
    counts; with an HTML note saying which."""
    history = src.mixture()
    fig = _figure(6.0, 3.6)
    ax = fig.add_axes((0.12, 0.16, 0.62, 0.72))
    if history:
        groups = sorted({g for h in history for g in (h.get("shares") or {})})
        steps = [h.get("step", i) for i, h in enumerate(history)]
        ax.stackplot(steps, [[(h.get("shares") or {}).get(g, 0.0) for h in history] for g in groups], labels=groups, alpha=0.85)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("share of draws")
        ax.set_ylim(0, 1)
        ax.set_title("Training mixture over time", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        note = message_html(f"Mixture over training: {len(history)} logged steps, {len(groups)} groups.")
    elif group_column and group_column in src.columns:
        values = src.split(split).column(group_column)
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        vc = pc.value_counts(values).to_pylist()
        vc = sorted(((_str(d["values"]) or NO_REGION, d["counts"]) for d in vc), key=lambda t: -t[1])[:30]
        ax.barh([k for k, _ in vc][::-1], [n for _, n in vc][::-1], color="#4477aa")
        ax.set_xlabel("rows in this split")
        ax.set_title(f"Rows per {group_column}", fontsize=10)
        note = message_html("Mixture over training: not recorded (no balance or validation-guided policy ran); "
                            f"showing the rows per {group_column} in the curated split.", "warn")  # fmt: skip
    else:
        return None, message_html("Mixture over training: not recorded, and the dataset has no group column.", "warn")
    counts = (src.provenance or {}).get("group_counts")
    if counts:
        note += '<table class="sft-stats"><tr><th>group</th><th>before</th><th>after</th></tr>' + "".join(
            f"<tr><td>{escape(g)}</td><td>{escape(c.get('before'))}</td><td>{escape(c.get('after'))}</td></tr>"
            for g, c in counts.items()) + "</table>"  # fmt: skip
    return _pixels(fig), note


# ================================================================================================ the app
