"""Schema-valid but semantically wrong events: found before routing, dead-lettered.

Avro says a field is a long; it cannot say a step is never negative, a clock
reading is not from 1970, or a temperature is a number. Storing such events
would poison every audit query over them (a metric curve with step -5, a GPU
"at" a date decades away), so they go to the dead letters with the reason
and can be replayed once the writer is fixed. NaN and Inf stay valid where
they carry meaning (metric values, evaluation and checkpoint metrics, alert
values: detectors need them); hardware readings must be finite or null.
GpuSamples gets the rules of GpuSample on its packed columns, checked as
arrays: every sample's time within the envelope's bounds and no oversized
string here; the columns' lengths, ranges and ±Inf (NaN is its null) where
the router reads them (collector/gpu_rows.py), once. A caller that must
know an event would be stored (the dead-letter replay) validates and
routes it.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from collector import gpu_rows
from collector.router import InvalidEventError, metric_columns
from schemas import Decoded

__all__ = ["Limits", "validate"]

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_EARLIEST_US = 946_684_800_000_000  # 2000-01-01: no training telemetry predates it
_FINITE_ONLY = frozenset({"GpuSample", "GpuSamples", "HostSample", "GpuEvent", "AccessEvent"})
_DEVICE_STRINGS = ("gpu_uuid", "name", "mig_parent_uuid")


@dataclass(frozen=True)
class Limits:
    """What the collector accepts; from `[collector]` settings."""

    max_string_bytes: int = 65_536
    max_future_s: float = 86_400.0


def validate(decoded: Decoded, limits: Limits, now_us: int | None = None) -> None:
    """Raise InvalidEventError naming the first semantic problem of the event."""
    record = decoded.record
    name = decoded.name
    latest = (now_us if now_us is not None else time.time_ns() // 1000) + int(
        limits.max_future_s * 1e6
    )
    env = record["envelope"]
    if not _UUID.fullmatch(env["event_id"]):
        raise InvalidEventError(f"{name}: event_id {env['event_id'][:64]!r} is not a UUID")
    _check_time(f"{name}: envelope time_us", env["time_us"], latest)
    if name == "GpuSamples":  # numbers packed, strings in lists: checked as columns
        _gpu_samples(record, limits.max_string_bytes, latest)
    else:
        _check_strings(name, record, limits.max_string_bytes, "")
        if name in _FINITE_ONLY:
            _check_finite(name, record, "")
    if name == "Metrics":
        _metrics(record, latest)
    elif "step" in record and record["step"] is not None and record["step"] < 0:
        raise InvalidEventError(f"{name}: negative step {record['step']}")
    if "run_id" in record and record["run_id"] == "" and name not in _FINITE_ONLY | {"Alert"}:
        raise InvalidEventError(f"{name}: empty run_id")


def _check_time(what: str, value: int, latest: int) -> None:
    if value < _EARLIEST_US:
        raise InvalidEventError(f"{what} {value} is before 2000-01-01")
    if value > latest:
        raise InvalidEventError(f"{what} {value} is beyond the allowed clock skew into the future")


def _check_strings(name: str, value: Any, limit: int, path: str) -> None:
    """Walk dicts and lists; only str values are measured (one type check per value)."""
    items = value.items() if type(value) is dict else enumerate(value)
    quarter = limit // 4  # a str of fewer code points cannot exceed `limit` bytes
    for key, item in items:
        kind = type(item)
        if kind is str:
            if len(item) > quarter and len(item.encode("utf-8", "surrogatepass")) > limit:
                raise InvalidEventError(f"{name}: {path}{key} longer than {limit} bytes")
        elif (kind is dict or kind is list) and key != "envelope":
            _check_strings(name, item, limit, f"{path}{key}.")
        if type(key) is str and len(key) > quarter:
            raise InvalidEventError(f"{name}: a key under {path or 'the record'} is too long")


def _check_finite(name: str, value: Any, path: str) -> None:
    items = value.items() if type(value) is dict else enumerate(value)
    for key, item in items:
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                raise InvalidEventError(
                    f"{name}: {path}{key} is {item}; hardware readings must be finite"
                )
        elif kind is dict or kind is list:
            _check_finite(name, item, f"{path}{key}.")


def _metrics(record: dict[str, Any], latest: int) -> None:
    """The point columns, checked as arrays (either wire form), not point by point."""
    step, time_us, _idx, _value = metric_columns(record)
    if any(not n for n in record["names"]):
        raise InvalidEventError("Metrics: empty metric name")
    _check_column("Metrics: step", step, 0, None)
    _check_column("Metrics: time_us", time_us, _EARLIEST_US, latest)


def _gpu_samples(record: dict[str, Any], limit: int, latest: int) -> None:
    """GpuSample's rules on the columns, without walking ~50 fields of a record
    (the numeric columns: gpu_rows.read, when routed)."""
    if len(record["time_us"]) != 8 * record["count"]:
        gpu_rows.checked(record)  # raises, naming the column
    devices, runs = record["devices"], record["runs"]
    strings = [d[key] for d in devices for key in _DEVICE_STRINGS]
    if max(map(len, filter(None, strings + runs)), default=0) > limit // 4:  # else none can be
        _check_strings("GpuSamples", {"devices": devices, "runs": runs}, limit, "")
    times = gpu_rows.column(record["time_us"], "<i8")
    _check_column("GpuSamples: time_us", times, _EARLIEST_US, latest)


def _check_column(what: str, column: npt.NDArray[Any], low: int, high: int | None) -> None:
    if not len(column):
        return
    smallest = int(column.min())  # the method: np.min's dispatch costs µs a message
    if smallest < low:
        raise InvalidEventError(f"{what} {smallest} below {low}")
    if high is not None and int(column.max()) > high:
        raise InvalidEventError(f"{what} {int(column.max())} beyond the allowed clock skew")
