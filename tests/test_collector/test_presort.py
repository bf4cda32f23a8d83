"""Rows leave the collector in their table's key order (what ClickHouse checks first)."""

from __future__ import annotations

import random

import pyarrow as pa

from collector.presort import presort


def _table(rows: list[tuple[str, str, int]], dictionary: bool) -> pa.Table:
    runs, names, steps = (list(c) for c in zip(*rows, strict=True))
    col = (lambda v: pa.array(v).dictionary_encode()) if dictionary else pa.array
    return pa.table({"run_id": col(runs), "name": col(names), "step": pa.array(steps)})


def test_stable_sort_by_the_string_prefix_in_bytewise_order() -> None:
    """Interleaved series come out grouped by (run, name) in ClickHouse's String
    order (bytes: "Z" < "a" < "é"), each series keeping its arrival order."""
    rng = random.Random(7)
    names = ["loss", "lr", "Zeta", "étape", "a", "grad_norm"]
    rows = [(rng.choice(["run-b", "run-a"]), rng.choice(names), step) for step in range(2000)]
    for dictionary in (True, False):
        out = presort(_table(rows, dictionary), ("run_id", "name")).to_pylist()
        got = [(r["run_id"], r["name"], r["step"]) for r in out]
        want = sorted(rows, key=lambda r: (r[0].encode(), r[1].encode()))  # stable
        assert got == want, dictionary


def test_sorted_input_is_returned_as_is() -> None:
    table = _table([("r", "a", 1), ("r", "a", 2), ("r", "b", 0)], dictionary=True)
    assert presort(table, ("run_id", "name")) is table


def test_batch_leaves_metrics_sorted() -> None:
    """The batch's metrics table, built from two messages of interleaved names,
    reaches the store in key order."""
    from collector.batch import Batch

    batch = Batch()
    for first in (0, 3):
        part = _table([("r", n, first + i // 2) for i, n in enumerate("ba" * 3)], dictionary=True)
        batch.add("metrics", part)
    out = batch.arrow()["metrics"].to_pylist()
    assert [(r["name"], r["step"]) for r in out] == [
        ("a", 0), ("a", 1), ("a", 2), ("a", 3), ("a", 4), ("a", 5),
        ("b", 0), ("b", 1), ("b", 2), ("b", 3), ("b", 4), ("b", 5),
    ]  # fmt: skip
