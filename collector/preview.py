"""Replay curves through the detectors: `traintrail alerts test`.

What would the configured rules have raised on a stored run, or on loss
curves exported from elsewhere? The points go through the same Watcher the
collector runs (in step order, in message-sized chunks), with no history and
no sinks, so tuning a rule can be checked before it ships.

Files: CSV or Parquet in wide form, one row per (run, step): a `run` column
(optional: one run named after the file), a `step` column, an optional `time`
column (seconds since the epoch; without it steps are taken as one second
apart, which is what cooldowns and stalls are then measured in), and one
column per metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from collector.watch import AlertRules, Watcher

__all__ = ["CurveFileError", "preview_file", "preview_points"]

_CHUNK = 10_000  # points per simulated message, the SDK's batch


class CurveFileError(ValueError):
    """The curves file cannot be read as run/step/metric columns."""


def preview_points(
    rules: AlertRules, run_id: str, names: list[str], step: Any, time_us: Any, value: Any
) -> list[dict[str, Any]]:
    """Alerts for one run's points (parallel sequences, any order)."""
    step = np.asarray(step, dtype=np.int64)
    time_us = np.asarray(time_us, dtype=np.int64)
    value = np.asarray(value, dtype=np.float64)
    labels, idx = np.unique(np.asarray(names, dtype=object), return_inverse=True)
    order = np.lexsort((idx, time_us, step))
    watcher = Watcher(rules)
    out: list[dict[str, Any]] = []
    names_list = [str(n) for n in labels]
    for start in range(0, len(order), _CHUNK):
        take = order[start : start + _CHUNK]
        out += watcher.observe_points(
            run_id, "preview", names_list, step[take], time_us[take], idx[take], value[take]
        )
    if len(time_us):
        out += watcher.tick(int(time_us.max()))
    return out


def preview_file(rules: AlertRules, path: Path) -> list[dict[str, Any]]:
    table = _read(path)
    columns = set(table.column_names)
    if "step" not in columns:
        raise CurveFileError(f"{path}: no 'step' column (found {sorted(columns)})")
    metrics = [c for c in table.column_names if c not in ("run", "step", "time")]
    if not metrics:
        raise CurveFileError(f"{path}: no metric columns besides run/step/time")
    runs = (
        np.asarray(table.column("run").cast(pa.string()).to_pylist(), dtype=object)
        if "run" in columns
        else np.full(table.num_rows, path.stem, dtype=object)
    )
    step = _numbers(table, "step", path).astype(np.int64)
    time_us = (
        (_numbers(table, "time", path) * 1e6).astype(np.int64)
        if "time" in columns
        else step * 1_000_000 + 1_600_000_000_000_000
    )
    out: list[dict[str, Any]] = []
    for run in dict.fromkeys(runs.tolist()):
        rows = runs == run
        names, steps, times, values = [], [], [], []
        for metric in metrics:
            v = _numbers(table, metric, path)[rows]
            present = _written(table, metric, rows)
            names += [metric] * int(present.sum())
            steps.append(step[rows][present])
            times.append(time_us[rows][present])
            values.append(v[present])
        out += preview_points(
            rules,
            str(run),
            names,
            np.concatenate(steps),
            np.concatenate(times),
            np.concatenate(values),
        )
    return out


def _read(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            # Only an empty cell is missing: "nan", "NaN", "inf" are values here.
            options = pcsv.ConvertOptions(null_values=[""], quoted_strings_can_be_null=False)
            return pcsv.read_csv(path, convert_options=options)
    except (OSError, pa.ArrowException) as exc:
        raise CurveFileError(f"{path}: {exc}") from None
    raise CurveFileError(f"{path}: expected a .csv or .parquet file")


def _numbers(table: pa.Table, column: str, path: Path) -> np.ndarray:
    col = table.column(column)
    try:
        return np.asarray(col.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    except pa.ArrowException as exc:
        raise CurveFileError(f"{path}: column {column!r} is not numeric: {exc}") from None


def _written(table: pa.Table, column: str, rows: np.ndarray) -> np.ndarray:
    """A NaN in the file is a value (a detector's business); an empty cell is not."""
    col = table.column(column)
    valid: np.ndarray = np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    written: np.ndarray = valid[rows]
    return written
