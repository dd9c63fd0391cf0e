"""Memory-mapped row subsets (sft_callbacks.curation.arrow_rows) and the chunked random split of an export."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from datasets.table import MemoryMappedTable

import sft_callbacks.hub.publish as publish
from sft_callbacks.curation.arrow_rows import subset


def test_subset_is_a_memory_mapped_mapping_composed_with_the_one_the_dataset_has(tmp_path):
    ds = datasets.Dataset.from_dict({"x": list(range(20)), "s": [f"r{i}" for i in range(20)]})
    chunks = [(0, np.array([0, 4])), (5, np.array([], dtype=np.int64)), (10, np.array([1, 2, 9]))]
    out = subset(ds, chunks)
    assert out["x"][:] == [0, 4, 11, 12, 19] and out["s"][:] == ["r0", "r4", "r11", "r12", "r19"]
    assert isinstance(out._indices, MemoryMappedTable)
    buffer = lambda d: d.data.table.column("s").chunk(0).buffers()[2].address  # noqa: E731
    assert buffer(out) == buffer(ds)  # the data is shared, not copied
    shuffled = ds.shuffle(seed=0)  # already an indices mapping: positions are the shuffled dataset's
    out = subset(shuffled, chunks)
    assert out["x"][:] == [shuffled[i]["x"] for i in (0, 4, 11, 12, 19)]
    out.save_to_disk(str(tmp_path / "saved"))  # datasets' own tools work on it
    assert datasets.load_from_disk(str(tmp_path / "saved"))["x"][:] == out["x"][:]


@pytest.mark.parametrize("indexed", [False, True])
def test_random_split_has_exact_sizes_partitions_the_rows_and_keeps_input_order(monkeypatch, indexed):
    monkeypatch.setattr(publish, "_SPLIT_CHUNK_ROWS", 7)  # many draws on a small set
    ds = datasets.Dataset.from_dict({"x": list(range(101))})
    ds = ds.shuffle(seed=1) if indexed else ds
    parts = publish._splits(ds, {"train": 0.8, "validation": 0.15, "test": 0.05}, seed=3)
    assert {k: len(v) for k, v in parts.items()} == {"train": 81, "validation": 15, "test": 5}
    rows = {k: v["x"][:] for k, v in parts.items()}
    assert sorted(sum(rows.values(), [])) == list(range(101))  # every row once
    position = {x: i for i, x in enumerate(ds["x"][:])}
    for values in rows.values():  # input order within each split
        assert [position[x] for x in values] == sorted(position[x] for x in values)
    again = publish._splits(ds, {"train": 0.8, "validation": 0.15, "test": 0.05}, seed=3)
    other = publish._splits(ds, {"train": 0.8, "validation": 0.15, "test": 0.05}, seed=4)
    assert again["test"]["x"][:] == rows["test"] != other["test"]["x"][:]


def test_random_split_gives_every_row_the_same_chance(monkeypatch):
    monkeypatch.setattr(publish, "_SPLIT_CHUNK_ROWS", 7)
    n, draws, sizes = 50, 400, np.array([40, 10])
    in_test = np.zeros(n)
    for seed in range(draws):
        for start, offsets in publish._split_rows(n, sizes, 1, seed):
            in_test[start + offsets] += 1
    # each row lands in the 20% split 80 times in expectation (binomial sd 8): early and late chunks alike
    assert in_test.sum() == draws * 10 and in_test.min() > 40 and in_test.max() < 120
    assert abs(in_test[:25].mean() - in_test[25:].mean()) < 8


def test_split_fractions_that_leave_a_split_empty_are_refused():
    ds = datasets.Dataset.from_dict({"x": list(range(10))})
    with pytest.raises(ValueError, match="split 'test' would be empty"):
        publish._splits(ds, {"train": 0.99, "test": 0.01}, seed=0)
