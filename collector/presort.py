"""Rows in the table's key order before they leave for ClickHouse.

A MergeTree insert sorts its block by the table's ORDER BY unless the block
is sorted already, which it checks first (one pass). For the large tables
that sort is a good part of the insert: half of it for a 500,000-point
metrics batch on this project's machine. The collector knows the shape of
its rows: a message's points, or a node's GPU samples, arrive in step or
time order per series, interleaved across series (20 metric names, 8 GPUs).
So a stable sort by the key's leading string columns (run and metric name;
node and GPU) usually leaves the whole key in order, and costs a radix sort
of small integers plus one `take`. When it does not (two messages with the
same step, a clock step back), ClickHouse sees an unsorted block and sorts
it as before: correctness never depends on this, only speed.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["SORT_PREFIX", "presort"]

# Leading ORDER BY columns (schemas/clickhouse) of the tables worth sorting here.
SORT_PREFIX: dict[str, tuple[str, ...]] = {
    "metrics": ("run_id", "name"),
    "gpu_samples": ("node", "gpu_uuid"),
}


def _ranks(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """Each row's rank among the column's distinct values in ClickHouse's
    String order (bytewise; for UTF-8 the same as code point order), and how
    many distinct values there are."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    values = array.dictionary.to_pylist()
    order = sorted(range(len(values)), key=lambda i: "" if values[i] is None else values[i])
    rank = np.empty(max(1, len(values)), dtype=np.int64)
    rank[order] = np.arange(len(values))
    indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return rank[indices], len(values)


def presort(table: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """`table` stably sorted by `keys` (string columns); the table itself
    when already in that order."""
    if table.num_rows < 2 or not keys:
        return table
    combined = np.zeros(table.num_rows, dtype=np.int64)
    for name in keys:
        ranks, distinct = _ranks(table.column(name))
        combined = combined * max(1, distinct) + ranks
    if bool(np.all(combined[1:] >= combined[:-1])):
        return table
    if int(combined.max()) < 2**16:  # numpy's stable sort is a radix sort for these
        combined = combined.astype(np.uint16)
    return table.take(pa.array(np.argsort(combined, kind="stable")))
