"""One split of a curated dataset read with pyarrow: the columns filters and sorting need, kept as arrays;
pages read only the row groups that hold their rows. Shared constants of the preview app."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..engine.columns import COLUMN_MEANINGS, LIST_COLUMNS


#: Columns holding the sample text (TRL's conversational or plain formats).
TEXT_COLUMNS = ("messages", "prompt", "completion", "text")

#: Annotation columns the curated format may carry, in the order the sample viewer lists them.
ANNOTATION_COLUMNS = tuple(c for c in COLUMN_MEANINGS if c not in LIST_COLUMNS)  # engine.columns

#: What a run with the training-dynamics callback, a sampling policy and the data map records; the app says when
#: one of these is absent.
CORE_COLUMNS = ("times_seen", "loss_mean", "weight", "confidence", "variability", "region")

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


def _preview(value: Any) -> str:
    """Short one-line text for a table cell: the last user turn for a prompt, the reply for a completion."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if m.get("role") == "user"]
        value = (users[-1] if users else value[-1]).get("content")
    text = " ".join(_content_text(value).split())
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 1] + "…"


def _map_limits(dm: dict[str, np.ndarray]) -> tuple[tuple[float, float], tuple[float, float]]:
    x1 = max(0.05, float(np.nanmax(dm["x"])) * 1.05) if dm["x"].size else 0.5
    return (0.0, x1), (-0.02, 1.02)


def _content_text(content: Any) -> str:
    """A message's content as text: strings as they are, multimodal parts joined, anything else as JSON."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "\n".join(str(p.get("text", "")) if p.get("type", "text") == "text" else f"[{p.get('type')}]" for p in content)
    return json.dumps(content, ensure_ascii=False, default=str)
