"""Opening a curated dataset for the preview: an export folder or a Hub dataset repo, its card, provenance,
plots and splits (:class:`CuratedSource`), cached per source."""

from __future__ import annotations

import collections
import json
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .split import (
    ANNOTATION_COLUMNS,
    CORE_COLUMNS,
    DATA_MAP_POINTS,
    FLAG_COLUMNS,
    NO_REGION,
    REGIONS,
    ROW_ORDER,
    TABLE_NUMBERS,
    TEXT_COLUMNS,
    _HUB_ID,
    _SPLIT_FILE,
    Page,
    SourceError,
    _in,
    _is_bool,
    _is_number,
    _is_stringish,
    _map_limits,
    _nan,
    _num,
    _order,
    _preview,
    _Split,
    _str,
)


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
            from ..hub.provenance import SCHEMA

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
    missing = [c for c in CORE_COLUMNS if c not in schema_names]
    if missing:
        warnings.append(f"Not recorded in this dataset: {', '.join(missing)}.")
    card = (path / "README.md").read_text(encoding="utf-8", errors="replace") if (path / "README.md").is_file() else None
    plots = {p.stem: p for p in sorted((path / "plots").glob("*.png"))} if (path / "plots").is_dir() else {}
    return CuratedSource(path, label, revision, provenance, card, splits, plots, warnings)


# ================================================================================================ rendering
