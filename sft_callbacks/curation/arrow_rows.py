"""Row subsets and extra columns of a ``datasets.Dataset`` in memory that does not grow with its rows.

``Dataset.select(ndarray)`` turns the indices into a Python list and hashes them for the fingerprint (about
50 bytes per row), and an in-memory ``pa.array`` of millions of row numbers is one more full copy. Here row
numbers are written chunk by chunk to Arrow files in ``datasets``' temporary cache directory (removed when the
session ends) and memory-mapped, like the indices mappings ``datasets`` caches itself: their pages are the OS
page cache, not this process's heap.

Example:
    >>> import datasets
    >>> ds = datasets.Dataset.from_dict({"x": list(range(10))})
    >>> odd = subset(ds, [(0, np.array([1, 3])), (5, np.array([0, 2, 4]))])  # rows 1, 3, 5, 7, 9
    >>> odd["x"][:]
    [1, 3, 5, 7, 9]
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable

import numpy as np


def mapped_column(name: str, type_, chunks: Iterable[np.ndarray]):
    """One Arrow column written chunk by chunk to a temporary file, returned memory-mapped (a ``datasets`` table).

    Example:
        >>> import pyarrow as pa
        >>> mapped_column("n", pa.int64(), (np.arange(a, a + 3) for a in (0, 3))).column("n").to_pylist()
        [0, 1, 2, 3, 4, 5]
    """
    import pyarrow as pa
    from datasets.fingerprint import get_temporary_cache_files_directory
    from datasets.table import MemoryMappedTable

    path = os.path.join(get_temporary_cache_files_directory(), f"sft-callbacks-{name}-{uuid.uuid4().hex}.arrow")
    schema = pa.schema([(name, type_)])
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for chunk in chunks:
            writer.write_table(pa.table({name: pa.array(chunk, type=type_)}, schema=schema))
    return MemoryMappedTable.from_file(path)


def subset(dataset, row_chunks: Iterable[tuple[int, np.ndarray]]):
    """The rows of ``dataset`` given as ``(start, offsets)`` chunks (row ``start + offset``), in that order.

    An indices mapping over the dataset's own table (composed with the mapping it already has), written by
    :func:`mapped_column`; the data is not copied.
    """
    import datasets
    import pyarrow as pa
    from datasets.fingerprint import generate_random_fingerprint

    own = dataset._indices.column(0) if dataset._indices is not None else None

    def positions():
        for start, offsets in row_chunks:
            offsets = np.asarray(offsets, dtype=np.int64)
            if own is None:
                yield offsets.astype(np.uint64) + np.uint64(start)
            elif len(offsets):  # a slice first: a take over the whole chunked mapping would concatenate it
                span = int(offsets.max()) + 1
                yield own.slice(start, span).to_numpy()[offsets]

    return datasets.Dataset(dataset.data, info=dataset.info, split=dataset.split,
                            indices_table=mapped_column("indices", pa.uint64(), positions()),
                            fingerprint=generate_random_fingerprint())  # fmt: skip


def arrow_dataset(table):
    """An Arrow ``table`` (or a ``datasets`` table) as a ``datasets.Dataset``, without a copy.

    A random fingerprint, because ``datasets`` otherwise fingerprints an in-memory table by pickling all of it
    (about 300 B per row of Python memory for a typical annotation frame); these columns are never cached.

    Example:
        >>> import pyarrow as pa
        >>> arrow_dataset(pa.table({"a": [1, 2]}))["a"][:]
        [1, 2]
    """
    import datasets
    from datasets.fingerprint import generate_random_fingerprint

    if not isinstance(table, datasets.table.Table):
        table = datasets.table.InMemoryTable(table.replace_schema_metadata(None))
    return datasets.Dataset(table, fingerprint=generate_random_fingerprint())


__all__ = ["arrow_dataset", "mapped_column", "subset"]
