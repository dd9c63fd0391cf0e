"""One registry of annotation-column meanings (sft_callbacks.engine.columns) behind the card, the Space and README."""

from __future__ import annotations

from pathlib import Path

import datasets

from sft_callbacks import find_conflicts
from sft_callbacks.app.split import ANNOTATION_COLUMNS as APP_COLUMNS
from sft_callbacks.engine.columns import COLUMN_MEANINGS, LIST_COLUMNS, column_meaning, columns_markdown
from sft_callbacks.engine.frames import CURATED_DYNAMICS, DYNAMICS_COLUMNS
from sft_callbacks.hub.card import _COLUMN_DOCS
from sft_callbacks.hub.publish import ANNOTATION_COLUMNS as EXPORT_COLUMNS
from sft_callbacks.policies.data_map import DATA_MAP_COLUMNS

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_column_the_package_writes_has_a_meaning():
    renamed = {"dropped": "dropped_by_trl"}
    written = [*DYNAMICS_COLUMNS, *(renamed.get(c, c) for c in CURATED_DYNAMICS), "weight", *DATA_MAP_COLUMNS,
               "difficulty", "source_row"]
    conflicts = find_conflicts(datasets.Dataset.from_dict({"prompt": ["a b c", "a b c", "x"],
                                                           "completion": ["1", "2", "3"]}))
    written += [c for c in conflicts.column_names if c not in ("prompt", "completion")]
    missing = [c for c in written if column_meaning(c) is None]
    assert not missing, f"give these columns a meaning in sft_callbacks/engine/columns.py: {missing}"
    assert all(m and not m.endswith(".") for m in COLUMN_MEANINGS.values())  # table cells, one style


def test_card_space_and_export_read_the_same_registry():
    assert _COLUMN_DOCS is COLUMN_MEANINGS
    assert list(APP_COLUMNS) == [c for c in COLUMN_MEANINGS if c not in LIST_COLUMNS]
    assert set(EXPORT_COLUMNS) == set(COLUMN_MEANINGS) - {"source_row"}


def test_readme_table_is_the_registry():
    text = README.read_text(encoding="utf-8")
    assert columns_markdown() in text, "README's 'Annotation columns' table differs: paste columns_markdown() there"
