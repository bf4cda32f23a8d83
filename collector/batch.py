"""Rows for every table of one batch, held until they are inserted.

Three forms, by what is cheapest for the event type: Python lists per column
(one-row events, few a second), Arrow tables built per message (Metrics: up
to 10,000 points a message, so one conversion each pays off), and deferred
parts: checked numpy columns of a message with few rows (GpuSamples: a node's
GPUs), made Arrow together for the whole batch, because an Arrow array costs
the same few microseconds to build for 8 values as for 8,000.

The large tables leave sorted by their key's leading columns (presort.py),
so that ClickHouse finds the block in order and skips its own sort.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from collector.presort import SORT_PREFIX, presort
from collector.tables import TABLES

__all__ = ["Batch", "Columns", "Deferred", "length"]

Columns = dict[str, list[Any]]


class Deferred(Protocol):
    """One message's rows, checked, not yet Arrow."""

    @property
    def num_rows(self) -> int: ...


# Turns every deferred part of one table in a batch into a single Arrow table.
Builder = Callable[[list[Any]], pa.Table]


@dataclass
class Batch:
    """Rows for every table, in the forms above, until inserted."""

    columns: dict[str, Columns] = field(default_factory=dict)
    # Rows built as Arrow already (Metrics points): no per-row Python on the hot path.
    parts: dict[str, list[pa.Table]] = field(default_factory=dict)
    # Rows kept as numpy columns (GpuSamples), with what makes them Arrow.
    deferred: dict[str, list[Deferred]] = field(default_factory=dict)
    builders: dict[str, Builder] = field(default_factory=dict)

    def table(self, name: str) -> Columns:
        cols = self.columns.get(name)
        if cols is None:
            cols = {f.name: [] for f in TABLES[name]}
            self.columns[name] = cols
        return cols

    def add(self, name: str, table: pa.Table) -> None:
        self.parts.setdefault(name, []).append(table)

    def defer(self, name: str, part: Deferred, build: Builder) -> None:
        """Keep `part` until `arrow()`, where `build` gets all of this table's parts."""
        self.deferred.setdefault(name, []).append(part)
        self.builders[name] = build

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self.columns, *self.parts, *self.deferred]))

    def rows(self, name: str) -> int:
        listed = length(self.columns.get(name, {}))
        built = sum(int(t.num_rows) for t in self.parts.get(name, ()))
        return listed + built + sum(p.num_rows for p in self.deferred.get(name, ()))

    def arrow(self) -> dict[str, pa.Table]:
        out: dict[str, pa.Table] = {}
        for name in self.names():
            cols = self.columns.get(name)
            tables = list(self.parts.get(name, ()))
            if cols and length(cols):
                tables.insert(0, pa.table(cols, schema=TABLES[name]))
            deferred = self.deferred.get(name)
            if deferred:
                tables.append(self.builders[name](deferred))
            if len(tables) == 1:
                out[name] = tables[0]
            elif tables:  # one dictionary per column: what an Arrow IPC stream can carry
                out[name] = pa.concat_tables(tables).unify_dictionaries().combine_chunks()
            if name in out and name in SORT_PREFIX:
                out[name] = presort(out[name], SORT_PREFIX[name])
        return out

    def __len__(self) -> int:
        return sum(self.rows(name) for name in self.names())


def length(cols: Columns) -> int:
    """Rows held as lists in `cols`."""
    return len(next(iter(cols.values()))) if cols else 0
