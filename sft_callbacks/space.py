"""A Gradio app (also the Hugging Face Space in ``spaces/``) that previews a curated dataset.

It opens an export folder written by :func:`~sft_callbacks.publish.save_curated_dataset` (``README.md``,
``provenance.json``, ``data/<split>-*.parquet``, ``plots/*.png``), or the Hub dataset repo it was pushed to,
and shows a paged, sortable, filterable table, a sample viewer (chat turns by role, with the row's
statistics), the data map (click a point to open its sample), the weight histogram, the group mixture over
training and the provenance card.

Two layers:

* :class:`CuratedSource` reads the parquet shards with ``pyarrow`` and answers queries on the server: the few
  columns that filters and sorting need are read once (column projection) and kept as arrays; a page reads
  only the row groups that hold its rows. A 1M-row dataset opens without reading its text, and the browser
  only ever receives one page.
* :func:`build_app` wires it to Gradio. Sample text is always shown as text: it goes through
  :func:`html.escape` into HTML this module builds, or into ``gr.Code`` / ``gr.Dataframe`` cells; it never
  reaches ``gr.Markdown`` / ``gr.Chatbot``. Every handler turns errors into a message in the page.

Run it with ``sft-callbacks preview DIR_OR_REPO`` (:func:`launch`) or deploy ``spaces/`` as a Space.
"""

from __future__ import annotations

import collections
import dataclasses
import html
import json
import math
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Before gradio / huggingface_hub are imported: no analytics or telemetry calls leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

#: Columns holding the sample text (TRL's conversational or plain formats).
TEXT_COLUMNS = ("messages", "prompt", "completion", "text")

#: Annotation columns the curated format may carry, in the order the sample viewer lists them.
ANNOTATION_COLUMNS = (
    "source_row", "times_seen", "loss_mean", "loss_last", "loss_first", "token_accuracy", "entropy_mean",
    "dropped_by_trl", "weight", "confidence", "variability", "correctness", "forgetting_events", "region",
    "flag_noisy", "conflict", "conflict_kind", "difficulty",
)  # fmt: skip

#: Boolean columns offered as flag filters.
FLAG_COLUMNS = ("flag_noisy", "conflict", "dropped_by_trl")

#: Numeric columns shown in the table when present (the rest are in the sample viewer).
TABLE_NUMBERS = ("weight", "loss_mean", "confidence", "variability", "correctness", "difficulty", "times_seen")

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")
NO_REGION = "(none)"
ROW_ORDER = "row (file order)"
PAGE_SIZES = (25, 50, 100, 200)
DATA_MAP_POINTS = 20_000
_SPLIT_FILE = re.compile(r"^(\w+(?:\.\w+)*)-\d+(?:-of-\d+)?\.parquet$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PREVIEW_CHARS = 120
_REGION_COLOURS = {"easy-to-learn": "#2a9d8f", "ambiguous": "#e9a23b", "hard-to-learn": "#d1495b", "": "#9e9e9e"}


class SourceError(ValueError):
    """A dataset that cannot be opened; the message is meant for the page, as it is."""


# ================================================================================================ reading
class _Split:
    """One split's parquet shards: row-group offsets for positional reads, cached columns and masks."""

    def __init__(self, name: str, files: Sequence[Path]):
        self.name = name
        self.files = list(files)
        try:
            self.dataset = pads.dataset([str(f) for f in self.files], format="parquet")
            self._parquet = [pq.ParquetFile(f) for f in self.files]
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"cannot read the parquet files of split {name!r}: {e}") from None
        starts, groups = [], []
        total = 0
        for i, f in enumerate(self._parquet):
            for g in range(f.metadata.num_row_groups):
                starts.append(total)
                groups.append((i, g))
                total += f.metadata.row_group(g).num_rows
        self.num_rows = total
        self._rg_starts = np.asarray(starts, dtype=np.int64)
        self._rg = groups
        self.schema = self.dataset.schema
        self._lock = threading.RLock()
        self._columns: dict[str, pa.Array] = {}
        self._rg_cache: collections.OrderedDict = collections.OrderedDict()
        self._search_cache: collections.OrderedDict = collections.OrderedDict()
        self._data_map: dict[str, Any] = {}

    # -- whole columns (only the small ones that filters / sorting / plots need)
    def column(self, name: str) -> pa.Array:
        """The whole column ``name`` as one array, read once (projection: nothing else is read)."""
        with self._lock:
            if name not in self._columns:
                # to_table keeps fragment and batch order, so position i is row i of the split
                table = self.dataset.to_table(columns=[name])
                self._columns[name] = table.column(name).combine_chunks()
            return self._columns[name]

    def numbers(self, name: str) -> np.ndarray:
        """A numeric or boolean column as float64, null -> NaN."""
        col = self.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.dictionary_decode()
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)

    # -- rows by position
    def _row_group(self, k: int, columns: tuple[str, ...]) -> pa.Table:
        key = (k, columns)
        with self._lock:
            if key in self._rg_cache:
                self._rg_cache.move_to_end(key)
                return self._rg_cache[key]
        i, g = self._rg[k]
        table = self._parquet[i].read_row_group(g, columns=list(columns))
        with self._lock:
            self._rg_cache[key] = table
            while len(self._rg_cache) > 8:  # paging forward stays in the same few row groups
                self._rg_cache.popitem(last=False)
        return table

    def take(self, positions: Sequence[int] | np.ndarray, columns: Sequence[str]) -> pa.Table:
        """Rows at ``positions`` (in that order), reading only the row groups that hold them."""
        positions = np.asarray(positions, dtype=np.int64)
        columns = tuple(columns)
        if positions.size == 0:
            return self.schema.empty_table().select(list(columns))
        if positions.min() < 0 or positions.max() >= self.num_rows:
            raise IndexError(f"row out of range: the split has {self.num_rows} rows")
        which = np.searchsorted(self._rg_starts, positions, side="right") - 1
        pieces, order = [], []
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            table = self._row_group(int(k), columns)
            pieces.append(table.take(pa.array(positions[sel] - self._rg_starts[k])))
            order.append(sel)
        table = pa.concat_tables(pieces)
        back = np.empty(positions.size, dtype=np.int64)
        back[np.concatenate(order)] = np.arange(positions.size)
        return table.take(pa.array(back))

    # -- text search
    def search_mask(self, term: str, text_columns: Sequence[str]) -> np.ndarray:
        """Rows whose text (any text column, any message) contains ``term``, case-insensitive."""
        key = (term, tuple(text_columns))
        with self._lock:
            if key in self._search_cache:
                return self._search_cache[key]
        parts = []
        # streams the text columns batch by batch: the text of a 1M-row split is never held at once
        # one row group at a time, in order: memory stays near one row group of text, not the split's
        for i, g in self._rg:
            batch = self._parquet[i].read_row_group(g, columns=list(text_columns), use_threads=False)
            hit = np.zeros(batch.num_rows, dtype=bool)
            for name in text_columns:
                hit |= _contains(batch.column(name), term)
            parts.append(hit)
        mask = np.concatenate(parts) if parts else np.zeros(0, dtype=bool)
        with self._lock:
            self._search_cache[key] = mask
            while len(self._search_cache) > 8:
                self._search_cache.popitem(last=False)
        return mask


def _contains(array: pa.Array, term: str) -> np.ndarray:
    """Per row: does this text column (string, or list of {role, content} messages) contain ``term``."""
    n = len(array)
    t = array.type
    if pa.types.is_dictionary(t):
        array, t = array.dictionary_decode(), t.value_type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return np.asarray(pc.fill_null(pc.match_substring(array, term, ignore_case=True), False).to_numpy(zero_copy_only=False))
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_struct(t.value_type):
        fields = [t.value_type.field(i).name for i in range(t.value_type.num_fields)]
        if "content" not in fields:
            return np.zeros(n, dtype=bool)
        flat = pc.list_flatten(array)
        content = pc.struct_field(flat, "content")
        if not (pa.types.is_string(content.type) or pa.types.is_large_string(content.type)):
            content = pc.cast(content, pa.string()) if pa.types.is_primitive(content.type) else None
        if content is None:
            return np.zeros(n, dtype=bool)
        hit = np.asarray(pc.fill_null(pc.match_substring(content, term, ignore_case=True), False).to_numpy(zero_copy_only=False))
        parents = np.asarray(pc.list_parent_indices(array).to_numpy())
        out = np.zeros(n, dtype=bool)
        out[parents[hit]] = True
        return out
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_string(t.value_type):
        hit = np.asarray(pc.fill_null(pc.match_substring(pc.list_flatten(array), term, ignore_case=True), False).to_numpy(zero_copy_only=False))
        parents = np.asarray(pc.list_parent_indices(array).to_numpy())
        out = np.zeros(n, dtype=bool)
        out[parents[hit]] = True
        return out
    return np.zeros(n, dtype=bool)


@dataclasses.dataclass
class Page:
    """One page of a query: ``rows`` (a pandas frame, ``row`` = position in the split) out of ``total``."""

    rows: Any
    total: int
    page: int
    pages: int
    page_size: int

    def describe(self) -> str:
        if self.total == 0:
            return "No rows match the filters."
        first = (self.page - 1) * self.page_size + 1
        last = min(self.total, self.page * self.page_size)
        return f"Rows {first:,}–{last:,} of {self.total:,} (page {self.page:,} of {self.pages:,})"


class CuratedSource:
    """A curated dataset opened for browsing: provenance, card, plots and one :class:`_Split` per split.

    Open one with :func:`open_source`. Filtering, sorting and paging run here, on the server.

    Example:
        >>> src = open_source("export")  # doctest: +SKIP
        >>> page = src.query("train", regions=["hard-to-learn"], sort_by="loss_mean", descending=True)  # doctest: +SKIP
        >>> page.total, list(page.rows["row"][:3])  # doctest: +SKIP
        (1840, [51, 7, 802])
    """

    def __init__(self, root: Path, label: str, revision: str | None, provenance: dict | None, card: str | None,
                 splits: dict[str, _Split], plots: dict[str, Path], warnings: list[str]):  # fmt: skip
        self.root, self.label, self.revision = root, label, revision
        self.provenance, self.card, self.splits, self.plots, self.warnings = provenance, card, splits, plots, warnings
        first = next(iter(splits.values()))
        self.schema = first.schema
        self.columns = list(self.schema.names)
        self.text_columns = [c for c in TEXT_COLUMNS if c in self.columns]
        self.annotation_columns = [c for c in ANNOTATION_COLUMNS if c in self.columns]
        self.flag_columns = [c for c in FLAG_COLUMNS if c in self.columns and _is_bool(self.schema.field(c).type)]
        self.numeric_columns = [c for c in self.columns if _is_number(self.schema.field(c).type)]
        self.group_candidates = self._group_candidates()
        self.group_column = self._default_group()

    # -- metadata
    def _group_candidates(self) -> list[str]:
        """String columns with few distinct values (looked at in the first row group), e.g. ``domain``."""
        skip = {*TEXT_COLUMNS, *ANNOTATION_COLUMNS}
        split = next(iter(self.splits.values()))
        out = []
        for c in self.columns:
            if c in skip or not _is_stringish(self.schema.field(c).type) or split.num_rows == 0:
                continue
            sample = split._row_group(0, (c,)).column(c)
            if len(pc.unique(sample)) <= 50:
                out.append(c)
        prov = ((self.provenance or {}).get("filters") or {}).get("group_column")
        if prov in self.columns and prov not in out:
            out.insert(0, prov)
        return out

    def _default_group(self) -> str | None:
        prov = ((self.provenance or {}).get("filters") or {}).get("group_column")
        if prov in self.columns:
            return prov
        for name in ("domain", "group", "category", "source", "task"):
            if name in self.group_candidates:
                return name
        return self.group_candidates[0] if self.group_candidates else None

    def split(self, name: str | None) -> _Split:
        """The split ``name`` (default: the first)."""
        if not name:
            return next(iter(self.splits.values()))
        if name not in self.splits:
            raise SourceError(f"no split {name!r}: the dataset has {', '.join(self.splits)}")
        return self.splits[name]

    def values(self, split: str | None, column: str | None) -> list[str]:
        """Distinct values of a string column (for the group / region filters), sorted."""
        if not column or column not in self.columns:
            return []
        col = self.split(split).column(column)
        uniq = col.dictionary if pa.types.is_dictionary(col.type) else pc.unique(col)
        values = sorted({NO_REGION if v in (None, "") else str(v) for v in uniq.to_pylist()})
        if column == "region":  # the data map's order, not the alphabet
            values = [r for r in (*REGIONS, NO_REGION) if r in values] + [v for v in values if v not in (*REGIONS, NO_REGION)]
        return values

    def weight_range(self, split: str | None) -> tuple[float, float] | None:
        if "weight" not in self.numeric_columns:
            return None
        w = self.split(split).numbers("weight")
        w = w[np.isfinite(w)]
        return (float(w.min()), float(w.max())) if w.size else None

    def sort_choices(self) -> list[str]:
        extra = [c for c in (self.group_column, "region") if c and c in self.columns]
        return [ROW_ORDER, *self.numeric_columns, *[c for c in extra if c not in self.numeric_columns]]

    # -- queries
    def mask(self, split: str | None = None, *, group_column: str | None = None, groups: Sequence[str] = (),
             regions: Sequence[str] = (), flags: Sequence[str] = (), weight_min: float | None = None,
             weight_max: float | None = None, search: str = "") -> np.ndarray | None:  # fmt: skip
        """Boolean mask of the rows matching every filter (``None`` = no filter). See :meth:`query`."""
        s = self.split(split)
        mask: np.ndarray | None = None

        def both(m):
            nonlocal mask
            mask = m if mask is None else (mask & m)

        group_column = group_column or self.group_column
        if groups and group_column in self.columns:
            both(_in(s.column(group_column), groups))
        if regions and "region" in self.columns:
            both(_in(s.column("region"), regions))
        for flag in flags or ():
            negate = flag.startswith("not ")
            name = flag[4:] if negate else flag
            if name not in self.flag_columns:
                raise SourceError(f"unknown flag filter {flag!r}: choose from {self.flag_choices()}")
            v = s.numbers(name)
            both((v == 0) | np.isnan(v) if negate else v == 1)
        if (weight_min is not None or weight_max is not None) and "weight" in self.numeric_columns:
            w = s.numbers("weight")
            m = np.isfinite(w)
            if weight_min is not None and not _nan(weight_min):
                m &= w >= float(weight_min)
            if weight_max is not None and not _nan(weight_max):
                m &= w <= float(weight_max)
            both(m)
        if search and search.strip() and self.text_columns:
            both(s.search_mask(search.strip(), self.text_columns))
        return mask

    def flag_choices(self) -> list[str]:
        return [x for c in self.flag_columns for x in (c, f"not {c}")]

    def query(self, split: str | None = None, *, group_column: str | None = None, groups: Sequence[str] = (),
              regions: Sequence[str] = (), flags: Sequence[str] = (), weight_min: float | None = None,
              weight_max: float | None = None, search: str = "", sort_by: str | None = None,
              descending: bool = False, page: int = 1, page_size: int = 50) -> Page:  # fmt: skip
        """One page of the rows that match the filters, in ``sort_by`` order.

        ``groups`` / ``regions``: keep rows whose group (``group_column``, default :attr:`group_column`) /
        data-map region is one of these (``"(none)"`` = empty). ``flags``: each of ``"flag_noisy"`` (keep
        flagged rows) or ``"not flag_noisy"`` (keep the others), likewise ``conflict`` / ``dropped_by_trl``.
        ``weight_min`` / ``weight_max``: inclusive bounds on ``weight``. ``search``: case-insensitive substring
        of any text column. Sorting puts missing values last, ties in row order.

        Example:
            >>> src.query("train", flags=["flag_noisy"], page_size=25).describe()  # doctest: +SKIP
            'Rows 1–25 of 1,204 (page 1 of 49)'
        """
        s = self.split(split)
        group_column = group_column if group_column in self.columns else self.group_column
        mask = self.mask(split, group_column=group_column, groups=groups, regions=regions, flags=flags,
                         weight_min=weight_min, weight_max=weight_max, search=search)  # fmt: skip
        page_size = int(page_size) if page_size and int(page_size) > 0 else 50
        page_size = min(page_size, 1000)
        ids = None if mask is None else np.flatnonzero(mask)
        total = s.num_rows if ids is None else int(ids.size)
        if sort_by and sort_by != ROW_ORDER:
            if sort_by not in self.columns:
                raise SourceError(f"cannot sort by {sort_by!r}: no such column")
            ids = np.arange(s.num_rows) if ids is None else ids
            ids = ids[_order(s, sort_by, ids, descending, numeric=sort_by in self.numeric_columns)]
        pages = max(1, math.ceil(total / page_size))
        page = min(max(1, int(page or 1)), pages)
        lo, hi = (page - 1) * page_size, min(total, page * page_size)
        positions = np.arange(lo, hi) if ids is None else ids[lo:hi]
        return Page(rows=self._table(s, positions, group_column), total=total, page=page, pages=pages, page_size=page_size)

    def _table(self, s: _Split, positions: np.ndarray, group_column: str | None):
        import pandas as pd

        wanted = [c for c in (group_column, "region", *self.text_columns, *self.flag_columns, *TABLE_NUMBERS)
                  if c and c in self.columns]  # fmt: skip
        wanted = list(dict.fromkeys(wanted))
        table = s.take(positions, wanted)
        out: dict[str, list] = {"row": [int(p) for p in positions]}
        if group_column and group_column in wanted:
            out[group_column] = [_str(v) for v in table.column(group_column).to_pylist()]
        if "region" in wanted:
            out["region"] = [_str(v) for v in table.column("region").to_pylist()]
        for c in self.text_columns:  # previews first: the text is what people scan the table for
            out[c] = [_preview(v) for v in table.column(c).to_pylist()]
        if self.flag_columns:
            cols = {c: table.column(c).to_pylist() for c in self.flag_columns}
            out["flags"] = [", ".join(c for c in self.flag_columns if cols[c][i]) for i in range(len(positions))]
        for c in TABLE_NUMBERS:
            if c in wanted and c in self.numeric_columns:
                out[c] = [_num(v) for v in table.column(c).to_pylist()]
        return pd.DataFrame(out)

    def sample(self, split: str | None, row: int) -> dict[str, Any]:
        """Every column of row ``row`` (its position in the split) as Python values."""
        s = self.split(split)
        row = int(row)
        if not 0 <= row < s.num_rows:
            raise SourceError(f"row {row} does not exist: split {s.name!r} has rows 0–{s.num_rows - 1:,}")
        return s.take([row], self.columns).to_pylist()[0]

    # -- data map
    def data_map(self, split: str | None, colour: str = "region", max_points: int = DATA_MAP_POINTS,
                 seed: int = 0) -> dict[str, np.ndarray] | None:  # fmt: skip
        """A seeded subsample of the data map: ``{"row", "x" (variability), "y" (confidence), "c" (category)}``.

        ``None`` when the dataset has no ``confidence`` / ``variability`` columns.
        """
        if not {"confidence", "variability"} <= set(self.numeric_columns):
            return None
        s = self.split(split)
        key = (colour, max_points, seed)
        with s._lock:
            if key in s._data_map:
                return s._data_map[key]
        x, y = s.numbers("variability"), s.numbers("confidence")
        ok = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
        if ok.size > max_points:  # sorted, so picking maps back to rows
            ok = np.sort(np.random.default_rng(seed).choice(ok, size=max_points, replace=False))
        if colour in self.flag_columns:
            c = np.where(s.numbers(colour)[ok] == 1, colour, f"not {colour}")
        elif colour in self.columns and colour in ("region", *self.group_candidates):
            col = s.column(colour).take(pa.array(ok))
            c = np.asarray([_str(v) for v in col.to_pylist()], dtype=object)
        else:
            c = np.full(ok.size, "", dtype=object)
        out = {"row": ok, "x": x[ok], "y": y[ok], "c": c, "total": int(np.isfinite(x).sum()),
               "unplaced": int((np.isfinite(y) & ~np.isfinite(x)).sum())}  # seen in < 2 epochs: no variability
        with s._lock:
            s._data_map[key] = out
        return out

    def nearest(self, split: str | None, variability: float, confidence: float, colour: str = "region") -> int | None:
        """Row of the data-map point nearest to (``variability``, ``confidence``), in axis-scaled units."""
        dm = self.data_map(split, colour)
        if dm is None or dm["row"].size == 0:
            return None
        (x0, x1), (y0, y1) = _map_limits(dm)
        d = ((dm["x"] - variability) / (x1 - x0)) ** 2 + ((dm["y"] - confidence) / (y1 - y0)) ** 2
        return int(dm["row"][int(np.argmin(d))])

    def mixture(self) -> list[dict[str, Any]]:
        return list((self.provenance or {}).get("mixture_over_training") or [])


def _order(s: _Split, column: str, ids: np.ndarray, descending: bool, numeric: bool) -> np.ndarray:
    """Stable argsort of ``column`` over ``ids``, missing values last in both directions."""
    if numeric:
        v = s.numbers(column)[ids]
        v = np.where(np.isnan(v), np.inf if not descending else -np.inf, v)  # NaN last either way
        key = -v if descending else v
        return np.argsort(key, kind="stable")
    col = s.column(column)
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    taken = col.take(pa.array(ids))
    return np.asarray(pc.sort_indices(taken, sort_keys=[("", "descending" if descending else "ascending")],
                                      null_placement="at_end").to_numpy())  # fmt: skip


def _in(col: pa.Array, values: Sequence[str]) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
        col = col.dictionary_decode()
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = pc.cast(col, pa.string())
    wanted = [v for v in values if v != NO_REGION]
    m = pc.fill_null(pc.is_in(col, value_set=pa.array(wanted, type=col.type)), False)
    if NO_REGION in values:
        m = pc.or_(m, pc.fill_null(pc.equal(col, ""), True))
    return np.asarray(m.to_numpy(zero_copy_only=False), dtype=bool)


def _is_bool(t: pa.DataType) -> bool:
    return pa.types.is_boolean(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _is_stringish(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _str(v: Any) -> str:
    return "" if v is None else str(v)


def _num(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if isinstance(v, bool):
        return int(v)
    return round(v, 4) if isinstance(v, float) else v


# ================================================================================================ opening
_SOURCES: collections.OrderedDict[tuple[str, str], CuratedSource] = collections.OrderedDict()
_SOURCES_LOCK = threading.Lock()


def open_source(source: str | os.PathLike, revision: str | None = None, *, allow_local: bool = True,
                endpoint: str | None = None, token: str | None = None, cache: bool = True) -> CuratedSource:  # fmt: skip
    """Open a curated dataset: a local export folder, or a Hub dataset repo id (``revision``: branch, tag, sha).

    Hub repos are fetched with ``huggingface_hub.snapshot_download`` (only the card, ``provenance.json``,
    ``data/`` and ``plots/``) and then read like a local folder. Every failure raises :class:`SourceError`
    with a message for people (unknown repo, no network, not a curated dataset, ...). ``allow_local=False``
    refuses local paths (a public Space must not browse its own disk). Opened sources are cached (4 at most).

    Example:
        >>> src = open_source("sft_callbacks_output/export")  # doctest: +SKIP
        >>> src = open_source("my-org/curated-sft", revision="v1")  # doctest: +SKIP
        >>> list(src.splits), src.group_column  # doctest: +SKIP
        (['train', 'test'], 'domain')
    """
    name = os.fspath(source).strip() if source is not None else ""
    rev = (revision or "").strip() or None
    if not name:
        raise SourceError("Enter a local export folder or a Hub dataset repo id (e.g. my-org/curated-sft).")
    key = (name, rev or "")
    if cache:
        with _SOURCES_LOCK:
            if key in _SOURCES:
                _SOURCES.move_to_end(key)
                return _SOURCES[key]
    path = Path(name).expanduser()
    if path.exists():
        if not allow_local:
            raise SourceError("Local folders cannot be opened here: enter a Hub dataset repo id (owner/name).")
        if rev:
            raise SourceError("A revision only applies to a Hub repo id, not to a local folder.")
        src = _load_folder(path, label=name, revision=None)
    elif _HUB_ID.match(name):
        src = _load_folder(_download(name, rev, endpoint=endpoint, token=token), label=name, revision=rev)
    else:
        raise SourceError(f"{name!r} is neither an existing folder nor a Hub dataset repo id (owner/name).")
    if cache:
        with _SOURCES_LOCK:
            _SOURCES[key] = src
            while len(_SOURCES) > 4:
                _SOURCES.popitem(last=False)
    return src


def _download(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf_errors

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        return Path(snapshot_download(
            repo_id, repo_type="dataset", revision=revision, endpoint=endpoint, token=token,
            allow_patterns=["README.md", "provenance.json", "data/*", "plots/*"],
        ))  # fmt: skip
    except hf_errors.RevisionNotFoundError:
        raise SourceError(f"The dataset repo {repo_id!r} has no revision {revision!r} (branch, tag or commit).") from None
    except hf_errors.GatedRepoError:
        raise SourceError(f"{repo_id!r} is gated: accept its conditions on the Hub and set HF_TOKEN.") from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceError(f"No dataset repo {repo_id!r} on the Hub (or it is private: set HF_TOKEN to a token that can read it).") from None
    except (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError):
        raise SourceError(
            f"Cannot download {where}: the Hub is not reachable (offline mode or no network) and it is not in "
            "the local cache. Check the connection, or open a local export folder."
        ) from None
    except hf_errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        raise SourceError(f"The Hub answered {status or 'an error'} for {where}: {_first_line(e)}") from None
    except Exception as e:  # connection refused, DNS, timeouts (httpx / requests / OSError)
        raise SourceError(f"Cannot reach the Hub to download {where}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _load_folder(path: Path, *, label: str, revision: str | None) -> CuratedSource:
    if not path.is_dir():
        raise SourceError(f"{label!r} is a file, not an export folder (README.md, provenance.json, data/, plots/).")
    warnings: list[str] = []
    provenance = None
    prov_path = path / "provenance.json"
    if prov_path.is_file():
        try:
            provenance = json.loads(prov_path.read_text(encoding="utf-8"))
            if not isinstance(provenance, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            warnings.append(f"provenance.json cannot be read ({e}); the card is shown without it.")
            provenance = None
        else:
            from .provenance import SCHEMA

            if provenance.get("schema") != SCHEMA:
                warnings.append(f"provenance.json has schema {provenance.get('schema')!r}, expected {SCHEMA!r}: some fields may be missing.")
    files: dict[str, list[Path]] = {}
    for f in sorted((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []:
        m = _SPLIT_FILE.match(f.name)
        files.setdefault(m.group(1) if m else f.stem, []).append(f)
    if not files:
        raise SourceError(
            f"{label!r} is not a curated dataset: no data/<split>-*.parquet files. Expected an export folder "
            "(README.md, provenance.json, data/, plots/) written by save_curated_dataset or pushed with "
            "push_curated_dataset."
        )
    order = list(((provenance or {}).get("splits") or {}).keys())
    names = [s for s in order if s in files] + [s for s in files if s not in order]
    splits = {s: _Split(s, files[s]) for s in names}
    schema_names = set(next(iter(splits.values())).schema.names)
    if provenance is None:
        if not schema_names & set(ANNOTATION_COLUMNS):
            raise SourceError(
                f"{label!r} is not a curated dataset: no provenance.json and none of the annotation columns "
                f"({', '.join(ANNOTATION_COLUMNS[:6])}, ...). Curate it with sft-callbacks first."
            )
        warnings.append("No provenance.json: the provenance card is not available.")
    if not schema_names & set(TEXT_COLUMNS):
        warnings.append(f"No text column ({', '.join(TEXT_COLUMNS)}): samples show their statistics only.")
    missing = [c for c in ("weight", "confidence", "variability", "region") if c not in schema_names]
    if missing:
        warnings.append(f"Not recorded in this dataset: {', '.join(missing)}.")
    card = (path / "README.md").read_text(encoding="utf-8", errors="replace") if (path / "README.md").is_file() else None
    plots = {p.stem: p for p in sorted((path / "plots").glob("*.png"))} if (path / "plots").is_dir() else {}
    return CuratedSource(path, label, revision, provenance, card, splits, plots, warnings)


# ================================================================================================ rendering
def escape(text: Any) -> str:
    """``text`` as inert HTML: ``html.escape`` plus ``$ { } ` `` so nothing reads as a template either.

    Example:
        >>> escape('<img src=x onerror="alert(1)"> ${x}')
        '&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &#36;&#123;x&#125;'
    """
    s = html.escape(_str(text), quote=True)
    return s.replace("$", "&#36;").replace("{", "&#123;").replace("}", "&#125;").replace("`", "&#96;")


def _content_text(content: Any) -> str:
    """A message's content as text: strings as they are, multimodal parts joined, anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "\n".join(str(p.get("text", "")) if p.get("type", "text") == "text" else f"[{p.get('type')}]" for p in content)
    return json.dumps(content, ensure_ascii=False, default=str)


def messages_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The sample's turns: ``[{"role", "content", "turn", "column"}]`` from messages / prompt+completion / text.

    ``turn`` counts user messages (a system message is turn 0); plain-string prompt / completion become the
    roles ``prompt`` / ``completion``.

    Example:
        >>> [(m["role"], m["turn"]) for m in messages_of({"prompt": [{"role": "user", "content": "hi"}],
        ...                                               "completion": [{"role": "assistant", "content": "yo"}]})]
        [('user', 1), ('assistant', 1)]
    """
    out: list[dict[str, Any]] = []
    turn = 0
    for column in TEXT_COLUMNS:
        value = row.get(column)
        if value is None:
            continue
        if isinstance(value, list) and all(isinstance(m, dict) for m in value):
            for m in value:
                role = str(m.get("role") or "?")
                if role == "user":
                    turn += 1
                out.append({"role": role, "content": _content_text(m.get("content")), "turn": turn, "column": column})
        else:
            role = column if column != "messages" else "?"
            if role in ("prompt", "text"):
                turn += 1
            out.append({"role": role, "content": _content_text(value), "turn": max(turn, 1), "column": column})
    return out


def render_messages(row: dict[str, Any]) -> str:
    """The sample's turns as HTML built here: every piece of text escaped, so it renders as text."""
    msgs = messages_of(row)
    if not msgs:
        return '<div class="sft-note">No text column in this dataset (prompt / completion / messages / text): see the statistics.</div>'
    parts = []
    for m in msgs:
        role = escape(m["role"])
        cls = re.sub(r"[^a-z]", "", m["role"].lower())[:20] or "other"
        parts.append(
            f'<div class="sft-msg sft-role-{cls}"><div class="sft-msg-head"><b>{role}</b>'
            f' <span>turn {int(m["turn"])} · {escape(m["column"])}</span></div>'
            f'<pre class="sft-msg-text">{escape(m["content"])}</pre></div>'
        )
    return '<div class="sft-chat">' + "".join(parts) + "</div>"


def render_stats(row: dict[str, Any], src: CuratedSource, row_id: int, split: str) -> str:
    """The row's statistics (every known annotation, "not recorded" when absent) and other scalar columns."""
    lines = [f"<tr><th>row</th><td>{int(row_id)} of split {escape(split)}</td></tr>"]
    for c in ANNOTATION_COLUMNS:
        if c in row:
            v = row[c]
            text = "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else (f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append(f"<tr><th>{escape(c)}</th><td>{escape(text)}</td></tr>")
        else:
            lines.append(f'<tr><th>{escape(c)}</th><td class="sft-missing">not recorded</td></tr>')
    for c, v in row.items():
        if c in ANNOTATION_COLUMNS or c in TEXT_COLUMNS or isinstance(v, (list, dict)):
            continue
        lines.append(f"<tr><th>{escape(c)}</th><td>{escape(v)}</td></tr>")
    return '<table class="sft-stats">' + "".join(lines) + "</table>"


def _preview(value: Any) -> str:
    """Short one-line text for a table cell: the last user turn for a prompt, the reply for a completion."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user"]
        value = (users[-1] if users else value[-1]).get("content")
    text = " ".join(_content_text(value).split())
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def message_html(text: str, kind: str = "info") -> str:
    """A status line: ``kind`` is ``info``, ``warn`` or ``error``; the text is escaped."""
    return f'<div class="sft-status sft-{escape(kind)}">{escape(text)}</div>'


def card_summary_html(src: CuratedSource) -> str:
    """The provenance record as an HTML summary (escaped): source, model, counts, drops, callbacks, filters."""
    p = src.provenance
    if not p:
        return message_html("No provenance.json in this dataset: provenance not recorded.", "warn")
    rows = []

    def row(k, v):
        rows.append(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>")

    s = p.get("source") or {}
    row("source", " ".join(str(x) for x in (s.get("id") or "(in-memory dataset)", f"@ {s['revision']}" if s.get("revision") else "", s.get("fingerprint") or "") if x))
    m = p.get("model") or {}
    row("model", " ".join(str(x) for x in (m.get("id") or m.get("note") or "not recorded", f"@ {m['revision']}" if m.get("revision") else "") if x))
    t = p.get("training") or {}
    if t:
        row("training", f"{t.get('trainer')}: {t.get('global_step')} steps, {t.get('epochs')} epochs, seed {p.get('seed')}")
    c = p.get("counts") or {}
    row("rows", f"{c.get('rows_in', '?')} in → {c.get('rows_out', '?')} kept")
    for reason, n in (c.get("dropped") or {}).items():
        row(f"dropped: {reason}", n)
    for name, n in (p.get("splits") or {}).items():
        row(f"split {name}", n)
    for cb in p.get("callbacks") or []:
        row(f"callback {cb.get('name')}", json.dumps(cb.get("config", {}), sort_keys=True, default=str))
    if p.get("filters"):
        row("filters", json.dumps(p["filters"], sort_keys=True, default=str))
    row("created", p.get("created_at"))
    for pkg, v in (p.get("packages") or {}).items():
        if v:
            row(pkg, v)
    return '<table class="sft-stats">' + "".join(rows) + "</table>"


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


def _map_limits(dm: dict[str, np.ndarray]) -> tuple[tuple[float, float], tuple[float, float]]:
    x1 = max(0.05, float(np.nanmax(dm["x"])) * 1.05) if dm["x"].size else 0.5
    return (0.0, x1), (-0.02, 1.02)


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
_CSS = """
.sft-status {padding: 6px 10px; border-radius: 6px; margin: 2px 0;}
.sft-info {background: #eef5ff;} .sft-warn {background: #fff6e0;} .sft-error {background: #ffe8e8; color: #8a1020;}
.sft-chat {display: flex; flex-direction: column; gap: 6px;}
.sft-msg {border: 1px solid #ddd; border-radius: 8px; padding: 6px 10px;}
.sft-role-user {background: #f3f7ff;} .sft-role-assistant {background: #f4fbf4;} .sft-role-system {background: #f7f7f7;}
.sft-msg-head span {color: #777; font-size: 0.85em;}
.sft-msg-text {white-space: pre-wrap; word-break: break-word; margin: 4px 0 0; font-family: ui-monospace, monospace; font-size: 0.9em;}
.sft-stats th {text-align: left; padding-right: 12px; font-weight: 600;} .sft-missing {color: #999; font-style: italic;}
"""


def launch_kwargs() -> dict[str, Any]:
    """Keyword arguments for ``Blocks.launch`` (Gradio 6 takes ``css`` / ``theme`` there)."""
    return {"css": _CSS, "ssr_mode": False}


def _empty_table():
    import pandas as pd

    return pd.DataFrame({"row": []})


def build_app(source: str | None = None, revision: str | None = None, *, allow_local: bool | None = None):
    """The Gradio app: ``source`` (folder or Hub repo id, optional) is opened when the page loads.

    ``allow_local`` (default: ``True`` except on a Hugging Face Space, i.e. when ``SPACE_ID`` is set) lets
    the textbox open local folders; the configured ``source`` is always allowed. Every event has an
    ``api_name`` (``/open``, ``/query``, ``/sample``, ``/plots``, ``/pick``), so ``gradio_client`` can drive it.

    Example:
        >>> demo = build_app("sft_callbacks_output/export")  # doctest: +SKIP
        >>> demo.launch(**launch_kwargs())  # doctest: +SKIP
    """
    import gradio as gr

    if allow_local is None:
        allow_local = not os.environ.get("SPACE_ID")
    default_source = (source or "").strip()
    default_revision = (revision or "").strip()

    def get(src_name: str, rev: str) -> CuratedSource:
        local_ok = allow_local or ((src_name or "").strip() == default_source and bool(default_source))
        return open_source(src_name, rev or None, allow_local=local_ok)

    def fail(e: Exception) -> str:
        if isinstance(e, (SourceError, IndexError)):
            return message_html(str(e), "error")
        # unexpected: still a message, never a traceback in the page
        return message_html(f"Something went wrong: {type(e).__name__}: {_first_line(e)}", "error")

    with gr.Blocks(title="sft-callbacks: curated dataset preview") as demo:
        gr.HTML("<h2 style='margin:0'>Curated dataset preview</h2><div>Rows, training dynamics and provenance "
                "of a dataset curated with <b>sft-callbacks</b>.</div>")  # fmt: skip
        with gr.Row():
            src_box = gr.Textbox(label="Dataset (local export folder or Hub repo id)", value=default_source, scale=4,
                                 placeholder="my-org/curated-sft or ./export")  # fmt: skip
            rev_box = gr.Textbox(label="Revision (Hub only)", value=default_revision, scale=1, placeholder="main")
            open_btn = gr.Button("Open", variant="primary", scale=0, min_width=90)
        status = gr.HTML(label="Status", value=message_html("Open a curated dataset."), elem_id="sft-status")
        # what is open now: every event reads these, so an edited textbox does nothing until "Open"
        cur_src = gr.Textbox(visible=False, label="opened source")
        cur_rev = gr.Textbox(visible=False, label="opened revision")
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tabs():
                    with gr.Tab("Rows"):
                        with gr.Row():
                            split_dd = gr.Dropdown(label="Split", choices=[], allow_custom_value=True, scale=1)
                            group_col = gr.Dropdown(label="Group column", choices=[], allow_custom_value=True, scale=1)
                            groups_dd = gr.Dropdown(label="Groups", choices=[], multiselect=True, allow_custom_value=True, scale=2)
                        with gr.Row():
                            regions_dd = gr.Dropdown(label="Region", choices=[], multiselect=True, allow_custom_value=True, elem_id="sft-region", scale=2)
                            flags_dd = gr.Dropdown(label="Flags", choices=[], multiselect=True, allow_custom_value=True, scale=2)
                            wmin = gr.Number(label="Weight ≥", value=None, scale=1)
                            wmax = gr.Number(label="Weight ≤", value=None, scale=1)
                        with gr.Row():
                            search_box = gr.Textbox(label="Search text", placeholder="substring of prompt / completion / messages", scale=3)
                            sort_dd = gr.Dropdown(label="Sort by (server-side)", choices=[ROW_ORDER], value=ROW_ORDER, allow_custom_value=True, scale=2)
                            desc_cb = gr.Checkbox(label="Descending", value=False, scale=1)
                        with gr.Row():
                            prev_btn = gr.Button("◀ Previous", size="sm", scale=1, min_width=80)
                            page_num = gr.Number(label="Page", value=1, precision=0, minimum=1, scale=1, min_width=80)
                            page_size = gr.Dropdown(label="Rows per page", choices=list(PAGE_SIZES), value=50,
                                                    allow_custom_value=True, scale=1, min_width=80)  # fmt: skip
                            next_btn = gr.Button("Next ▶", size="sm", scale=1, min_width=80)
                        page_info = gr.HTML(label="Page info", value="", elem_id="sft-page-info")
                        table = gr.Dataframe(label="Rows (click a row to open its sample)", value=_empty_table(), interactive=False,
                                             max_height=520, wrap=False, elem_id="sft-table")  # fmt: skip
                    with gr.Tab("Data map"):
                        colour_dd = gr.Dropdown(label="Colour by", choices=["region"], value="region", allow_custom_value=True)
                        map_img = gr.Image(label="Data map (click a point to open its sample)", type="numpy", interactive=False,
                                           elem_id="sft-data-map", buttons=[])  # fmt: skip
                        map_note = gr.HTML(label="Data map note")
                        with gr.Row(visible=False):
                            pick_x = gr.Number(label="variability")
                            pick_y = gr.Number(label="confidence")
                    with gr.Tab("Weights & mixture"):
                        weight_img = gr.Image(label="Weight histogram", type="numpy", interactive=False, buttons=[])
                        weight_note = gr.HTML(label="Weights note")
                        mixture_img = gr.Image(label="Per-group mixture", type="numpy", interactive=False, buttons=[])
                        mixture_note = gr.HTML(label="Mixture note")
                    with gr.Tab("Provenance card"):
                        card_html = gr.HTML(label="Provenance summary")
                        card_code = gr.Code(label="README.md (dataset card, as text)", language="markdown", interactive=False)
                        plots_gallery = gr.Gallery(label="Plots from the export", columns=3, height=260)
            with gr.Column(scale=2):
                row_num = gr.Number(label="Sample row", value=None, precision=0, elem_id="sft-row")
                sample_html = gr.HTML(label="Sample", value=message_html("Click a row or a data-map point."), elem_id="sft-sample")
                stats_html = gr.HTML(label="Statistics", elem_id="sft-stats")
                raw_code = gr.Code(label="Row as JSON", language="json", interactive=False, max_lines=16)

        filters = [cur_src, cur_rev, split_dd, group_col, groups_dd, regions_dd, flags_dd, wmin, wmax, search_box,
                   sort_dd, desc_cb, page_num, page_size]  # fmt: skip

        def do_query(src_name, rev, split, gcol, groups, regions, flags, lo, hi, search, sort_by, desc, page, size):
            try:
                src = get(src_name, rev)
                p = src.query(split or None, group_column=gcol or None, groups=groups or (), regions=regions or (),
                              flags=flags or (), weight_min=lo, weight_max=hi, search=search or "",
                              sort_by=sort_by or None, descending=bool(desc), page=int(page or 1),
                              page_size=int(size or 50))  # fmt: skip
                return p.rows, message_html(p.describe()), p.page
            except Exception as e:
                return _empty_table(), fail(e), 1

        def do_open(src_name, rev):
            try:
                src = get(src_name, rev)
            except Exception as e:
                # cur_src stays empty, so later events do nothing with a source that failed
                return (fail(e), "", "", *[gr.update()] * (len(open_outputs) - 3))
            split = next(iter(src.splits))
            p = src.query(split)
            regions = src.values(split, "region")
            wr = src.weight_range(split)
            notes = [f"Opened {src.label}" + (f" @ {src.revision}" if src.revision else "") + ": "
                     + ", ".join(f"{n} ({s.num_rows:,} rows)" for n, s in src.splits.items())]  # fmt: skip
            msg = message_html(notes[0]) + "".join(message_html(w, "warn") for w in src.warnings)
            colours = ["region"] if "region" in src.columns else []
            colours += [*src.flag_columns, *[g for g in src.group_candidates[:1]]]
            gallery = [(str(path), name) for name, path in src.plots.items()]
            return (
                msg, src_name, rev or "",
                gr.update(choices=list(src.splits), value=split),
                gr.update(choices=src.group_candidates, value=src.group_column, visible=bool(src.group_candidates)),
                gr.update(choices=src.values(split, src.group_column), value=[], visible=bool(src.group_column)),
                gr.update(choices=regions, value=[], visible=bool(regions)),
                gr.update(choices=src.flag_choices(), value=[], visible=bool(src.flag_columns)),
                gr.update(value=None, visible=wr is not None, info=f"min {wr[0]:.3g}" if wr else None),
                gr.update(value=None, visible=wr is not None, info=f"max {wr[1]:.3g}" if wr else None),
                gr.update(choices=src.sort_choices(), value=ROW_ORDER),
                p.rows, message_html(p.describe()), p.page,
                gr.update(choices=colours or ["region"], value=(colours or ["region"])[0]),
                card_summary_html(src), src.card or "(no README.md)", gallery,
            )

        open_outputs = [status, cur_src, cur_rev, split_dd, group_col, groups_dd, regions_dd, flags_dd, wmin, wmax,
                        sort_dd, table, page_info, page_num, colour_dd, card_html, card_code, plots_gallery]  # fmt: skip

        def do_plots(src_name, rev, split, gcol, colour):
            try:
                src = get(src_name, rev)
            except Exception as e:
                return None, fail(e), None, "", None, ""
            try:
                dm = src.data_map(split or None, colour or "region")
                if dm is None:
                    map_msg = message_html("Data map: not recorded (no confidence / variability columns: DataMapCallback did not run).", "warn")
                else:
                    map_msg = message_html(f"{dm['row'].size:,} points of {dm['total']:,} (seeded sample when larger than {DATA_MAP_POINTS:,})"
                                           + (f"; {dm['unplaced']:,} rows seen in fewer than 2 epochs have no variability and are not placed" if dm.get("unplaced") else "")
                                           + ". Click a point to open its sample.")
                w_img = plot_weights(src, split or None)
                w_msg = "" if w_img is not None else message_html("Weights: not recorded (no sampling policy ran).", "warn")
                m_img, m_msg = plot_mixture(src, split or None, gcol or src.group_column)
                return plot_data_map(dm, colour or "region"), map_msg, w_img, w_msg, m_img, m_msg
            except Exception as e:
                return None, fail(e), None, "", None, ""

        plot_inputs = [cur_src, cur_rev, split_dd, group_col, colour_dd]
        plot_outputs = [map_img, map_note, weight_img, weight_note, mixture_img, mixture_note]

        def do_sample(src_name, rev, split, row):
            try:
                if row is None or (isinstance(row, float) and math.isnan(row)):
                    return message_html("Click a row or a data-map point."), "", ""
                src = get(src_name, rev)
                data = src.sample(split or None, int(row))
                raw = json.dumps(data, ensure_ascii=False, indent=1, default=str)
                return render_messages(data), render_stats(data, src, int(row), split or next(iter(src.splits))), raw
            except Exception as e:
                return fail(e), "", ""

        sample_inputs = [cur_src, cur_rev, split_dd, row_num]
        sample_outputs = [sample_html, stats_html, raw_code]

        def do_pick(src_name, rev, split, colour, x, y):
            try:
                src = get(src_name, rev)
                row = src.nearest(split or None, float(x), float(y), colour or "region")
                return row
            except Exception:
                return None

        def on_table_select(evt):
            # the first column is the row's position in the split, whatever the sort order
            try:
                return int((evt.row_value or [None])[0])
            except (TypeError, ValueError):
                return None

        def on_map_select(src_name, rev, split, colour, evt):
            try:
                src = get(src_name, rev)
                dm = src.data_map(split or None, colour or "region")
                if dm is None or not isinstance(evt.index, (list, tuple)):
                    return None
                x, y = pixel_to_data(dm, float(evt.index[0]), float(evt.index[1]))
                return src.nearest(split or None, x, y, colour or "region")
            except Exception:
                return None

        # real classes, not the strings that `from __future__ import annotations` leaves: gradio injects the
        # event data by looking at the annotation
        on_table_select.__annotations__["evt"] = gr.SelectData
        on_map_select.__annotations__["evt"] = gr.SelectData

        opened = open_btn.click(do_open, [src_box, rev_box], open_outputs, api_name="open")
        src_box.submit(do_open, [src_box, rev_box], open_outputs, api_name=False).then(
            do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip
        opened.then(do_plots, plot_inputs, plot_outputs, api_name="plots")
        if default_source:
            demo.load(do_open, [src_box, rev_box], open_outputs, api_name=False).then(
                do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip

        query_outputs = [table, page_info, page_num]
        query_btn = gr.Button("Apply filters", visible=False)
        query_btn.click(do_query, filters, query_outputs, api_name="query")

        def first_page(*args):
            return do_query(*args[:-2], 1, args[-1])

        for comp in (groups_dd, regions_dd, flags_dd, sort_dd, desc_cb, page_size):
            comp.input(first_page, filters, query_outputs, api_name=False)
        for comp in (wmin, wmax, search_box):
            comp.submit(first_page, filters, query_outputs, api_name=False)
        group_col.input(lambda s, r, sp, g: gr.update(choices=_safe_values(get, s, r, sp, g), value=[]),
                        [cur_src, cur_rev, split_dd, group_col], groups_dd, api_name=False).then(
            first_page, filters, query_outputs, api_name=False)  # fmt: skip
        split_dd.input(first_page, filters, query_outputs, api_name=False).then(
            do_plots, plot_inputs, plot_outputs, api_name=False)  # fmt: skip
        page_num.submit(do_query, filters, query_outputs, api_name=False)
        prev_btn.click(lambda *a: do_query(*a[:-2], max(1, int(a[-2] or 1) - 1), a[-1]), filters, query_outputs, api_name=False)
        next_btn.click(lambda *a: do_query(*a[:-2], int(a[-2] or 1) + 1, a[-1]), filters, query_outputs, api_name=False)

        table.select(on_table_select, None, row_num, api_name=False).then(do_sample, sample_inputs, sample_outputs, api_name=False)
        row_num.submit(do_sample, sample_inputs, sample_outputs, api_name="sample")
        colour_dd.input(do_plots, plot_inputs, plot_outputs, api_name=False)
        map_img.select(on_map_select, [cur_src, cur_rev, split_dd, colour_dd], row_num, api_name=False).then(
            do_sample, sample_inputs, sample_outputs, api_name=False)  # fmt: skip
        pick_btn = gr.Button("pick", visible=False)
        pick_btn.click(do_pick, [cur_src, cur_rev, split_dd, colour_dd, pick_x, pick_y], row_num, api_name="pick")
    return demo


def _safe_values(get, s, r, split, column) -> list[str]:
    try:
        return get(s, r).values(split or None, column)
    except Exception:
        return []


def launch(source: str | None, revision: str | None = None, host: str = "127.0.0.1", port: int | None = None,
           share: bool = False, **kwargs: Any):  # fmt: skip
    """Serve the preview of ``source`` (export folder or Hub repo id) locally; blocks until interrupted.

    ``port=None`` lets Gradio pick (``GRADIO_SERVER_PORT`` or the first free port from 7860). ``share=True``
    asks Gradio for a public link (it then talks to gradio.live). Other keyword arguments go to ``launch``.

    Example:
        >>> launch("sft_callbacks_output/export", port=7861)  # doctest: +SKIP
    """
    demo = build_app(source, revision, allow_local=True)
    return demo.launch(server_name=host, server_port=port, share=share, **{**launch_kwargs(), **kwargs})


__all__ = ["CuratedSource", "Page", "SourceError", "build_app", "escape", "launch", "launch_kwargs",
           "messages_of", "open_source", "pixel_to_data", "render_messages"]  # fmt: skip
