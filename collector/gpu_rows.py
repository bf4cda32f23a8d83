"""GpuSamples columns → gpu_samples rows as Arrow, with no Python object per value.

A GpuSamples message packs each measurement as one little-endian array and
lists its devices and run ids once (schemas/gpu_packed.py). `read` takes a
message's arrays with numpy.frombuffer and checks every value at once against
the table's column types: one comparison over a fields × samples block, so a
uint8 column refuses 300, as the router's per-row range check does for a
GpuSample. `to_arrow` turns the arrays of all the messages of a batch into one
Arrow table: building an Arrow array costs a few microseconds whatever its
length, too much to pay for each of ~55 columns of an 8-row message.

The rows are those the same samples give sent as GpuSample messages: the
sample's time as event_time, its device's uuid, index, name and parent, the
envelope's identity repeated on every row, sentinels as NULL, a process of no
run as "", processes as list columns.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from collector.errors import InvalidEventError
from collector.tables import TABLES
from schemas.gpu_packed import BOOL_NULL, INT_NULL, NUMERIC, PackError, check

__all__ = ["FLOATS", "GpuPart", "checked", "column", "floats", "read", "to_arrow"]

Array = npt.NDArray[Any]

_SCHEMA = TABLES["gpu_samples"]
_TS = pa.timestamp("us", tz="UTC")
_INTS = tuple(name for name, code in NUMERIC if code == "q")  # every one nullable
FLOATS = tuple(name for name, code in NUMERIC if code == "d")
_BOOLS = tuple(name for name, code in NUMERIC if code == "b")
_INT_TYPES = tuple(_SCHEMA.field(name).type for name in _INTS)
_INDEX_TYPE = _SCHEMA.field("gpu_index").type
_PID_TYPE = _SCHEMA.field("process_pid").type.value_type
_MEMORY_TYPE = _SCHEMA.field("process_memory_bytes").type.value_type


def _range(kind: pa.DataType) -> tuple[int, int]:
    """What an int64 on the wire may hold to fit `kind`."""
    info = np.iinfo(kind.to_pandas_dtype())
    return int(info.min), min(int(info.max), 2**63 - 1)


_RANGES = tuple(_range(kind) for kind in _INT_TYPES)
_INDEX_MAX = _range(_INDEX_TYPE)[1]
_PID_MAX = _range(_PID_TYPE)[1]
_BOOL_BYTES = bytes([0, 1, BOOL_NULL & 0xFF])  # the only bytes an int8 boolean column holds
_LITTLE = sys.byteorder == "little"
_BOUNDS: dict[tuple[int, int], tuple[Array, Array]] = {}  # (samples, processes) -> low, span
_INDEX_OF = itemgetter("index")
_IDENTITY = attrgetter("identity")


@dataclass(slots=True)
class GpuPart:
    """One message's samples, checked; arrays and raw columns until the batch
    is inserted (a numpy call costs µs even for 8 values: the fewer the better)."""

    num_rows: int
    procs: int
    values: Array  # int64: the measurements (field-major), process memory, process pid
    floats: Array  # (len(FLOATS), samples) float64, NaN for null
    bools: bytes  # int8 per sample, field-major, BOOL_NULL for null
    time_us: bytes  # the packed columns as they came
    device: bytes
    process_count: bytes
    process_run: bytes
    devices: list[dict[str, Any]]
    runs: list[str]
    identity: tuple[str, str, str, int, str, str]  # event_id .. schema_fp, as _identity


def checked(record: Mapping[str, Any]) -> int:
    """The message's process count; InvalidEventError when its columns do not
    have the lengths its sample and process counts need."""
    try:
        return check(record)
    except PackError as exc:
        raise InvalidEventError(str(exc)) from exc


def column(raw: bytes, dtype: str) -> Array:
    """A packed little-endian column as a native array (a view on little-endian hosts)."""
    packed = np.frombuffer(raw, dtype=dtype)
    return packed if _LITTLE else packed.astype(packed.dtype.newbyteorder("="))


def floats(record: Mapping[str, Any]) -> Array:
    """The float columns of a checked message as a (fields × samples) block.
    NaN is the null sentinel; ±Inf is no reading, so InvalidEventError (as
    validate refuses a GpuSample's non-finite value)."""
    block = column(b"".join([record[name] for name in FLOATS]), "<f8")
    block = block.reshape(len(FLOATS), record["count"])
    infinite = np.isinf(block)
    if np.count_nonzero(infinite):  # count_nonzero: a C call; ndarray.any() costs µs more
        j, i = (int(x) for x in np.argwhere(infinite)[0])
        raise InvalidEventError(
            f"GpuSamples: {FLOATS[j]} is {block[j, i]} (sample {i}); "
            "hardware readings must be finite (NaN only as null)"
        )
    return block


def _bounds(n: int, procs: int) -> tuple[Array, Array]:
    """Lowest value and span of each entry of a message's `values`: low <= v <=
    low + span as one comparison, (v - low) as uint64 <= span (wrapping). By
    shape, since a node sends the same shape every tick."""
    got = _BOUNDS.get((n, procs))
    if got is None:
        low = [*(lo for lo, _ in _RANGES for _ in range(n)), *[0] * (2 * procs)]
        high = [*(hi for _, hi in _RANGES for _ in range(n)), *[2**63 - 1] * procs]
        high += [_PID_MAX] * procs
        lows = np.array(low, dtype=np.int64)
        got = lows, (np.array(high, dtype=np.int64) - lows).astype(np.uint64)
        if len(_BOUNDS) < 4096:
            _BOUNDS[(n, procs)] = got
    return got


def read(record: Mapping[str, Any], schema_fp: str) -> GpuPart:
    """A GpuSamples record's rows, every value checked against its column."""
    procs = checked(record)
    n = record["count"]
    env = record["envelope"]
    if env["seq"] < 0:
        raise InvalidEventError(f"GpuSamples: seq = {env['seq']} outside 0..{2**64 - 1}")
    devices = record["devices"]
    index = list(map(_INDEX_OF, devices))
    if index and (min(index) < 0 or max(index) > _INDEX_MAX):
        bad = next(i for i in index if not 0 <= i <= _INDEX_MAX)
        raise InvalidEventError(f"GpuSamples: device index = {bad} outside 0..{_INDEX_MAX}")
    packed = [record[name] for name in _INTS]
    packed += (record["process_used_memory_bytes"], record["process_pid"])
    values = column(b"".join(packed), "<i8")
    low, span = _bounds(n, procs)
    nullable = len(_INTS) * n + procs  # all but the pids
    outside = np.count_nonzero((values - low).view(np.uint64) > span)  # nulls too
    if outside != np.count_nonzero(values[:nullable] == INT_NULL):
        _refuse_integer(values, n, procs)
    flags = b"".join([record[name] for name in _BOOLS])
    if flags.translate(None, _BOOL_BYTES):
        _refuse_boolean(flags, n)
    return GpuPart(
        n,
        procs,
        values,
        floats(record),
        flags,
        record["time_us"],
        record["device"],
        record["process_count"],
        record["process_run"],
        devices,
        record["runs"],
        (
            str(env["event_id"]),
            env["node"],
            env["stream"],
            env["seq"],
            env["prev_hash"].hex(),
            schema_fp,
        ),
    )


def _refuse_integer(values: Array, n: int, procs: int) -> NoReturn:
    low, span = _bounds(n, procs)
    measured, nullable = len(_INTS) * n, len(_INTS) * n + procs
    bad = (values - low).view(np.uint64) > span
    bad[:nullable] &= values[:nullable] != INT_NULL
    at = int(np.argmax(bad))
    value = int(values[at])
    if at < measured:
        j, i = divmod(at, n)
        low_j, high_j = _RANGES[j]
        what = f"{_INTS[j]} = {value} (sample {i}) outside {low_j}..{high_j}"
    elif at < nullable:
        what = f"process_used_memory_bytes = {value} (process {at - measured}) is negative"
    else:
        pid = "null" if value == INT_NULL else value
        what = f"process_pid = {pid} (process {at - nullable}) outside 0..{_PID_MAX}"
    raise InvalidEventError(f"GpuSamples: {what}")


def _refuse_boolean(flags: bytes, n: int) -> NoReturn:
    block = column(flags, "i1").reshape(len(_BOOLS), n)
    j, i = (int(x) for x in np.argwhere((block < BOOL_NULL) | (block > 1))[0])
    raise InvalidEventError(
        f"GpuSamples: {_BOOLS[j]} = {int(block[j, i])} (sample {i}) is not 1, 0 or -1 (null)"
    )


def _cat(arrays: list[Array], axis: int = 0) -> Array:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=axis)


def _joined(parts: list[GpuPart], name: str, dtype: str) -> Array:
    """One raw per-sample (or per-process) column of every part, as one array."""
    return column(b"".join([getattr(p, name) for p in parts]), dtype)


def _strings(values: Iterable[str | None]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _offsets(sizes: list[int], first: int = 0) -> Array:
    """Where each part's entries start once the parts' lists are joined."""
    out = np.empty(len(sizes), dtype=np.int64)
    out[0] = first
    np.cumsum(sizes[:-1], out=out[1:])
    out[1:] += first
    return out


def to_arrow(parts: list[GpuPart]) -> pa.Table:
    """One gpu_samples table of every part (message) of a batch."""
    columns: dict[str, pa.Array] = {}
    k = len(_INTS)
    rows = [p.num_rows for p in parts]
    ints = _cat([p.values[: k * p.num_rows].reshape(k, p.num_rows) for p in parts], axis=1)
    null = ints == INT_NULL
    for j, (name, kind) in enumerate(zip(_INTS, _INT_TYPES, strict=True)):
        values = ints[j].astype(kind.to_pandas_dtype())  # nulls wrap: masked
        columns[name] = pa.array(values, kind, mask=null[j])
    reals = _cat([p.floats for p in parts], axis=1)
    for j, name in enumerate(FLOATS):
        columns[name] = pa.array(reals[j], pa.float64(), mask=np.isnan(reals[j]))
    flags = _cat([column(p.bools, "i1").reshape(len(_BOOLS), p.num_rows) for p in parts], 1)
    for j, name in enumerate(_BOOLS):
        columns[name] = pa.array(flags[j] == 1, pa.bool_(), mask=flags[j] == BOOL_NULL)

    # Devices: each message lists its own; a sample points into its message's list.
    devices = list(itertools.chain.from_iterable(p.devices for p in parts))
    start = _offsets([len(p.devices) for p in parts])
    device = pa.array(_joined(parts, "device", "<i4") + np.repeat(start, rows), pa.int64())
    for name, key in (
        ("gpu_uuid", "gpu_uuid"),
        ("gpu_name", "name"),
        ("mig_parent_uuid", "mig_parent_uuid"),
    ):
        listed = _strings(map(itemgetter(key), devices))  # the loop in C, not per device
        columns[name] = listed.take(device)
    index = np.fromiter(map(_INDEX_OF, devices), dtype=np.uint8, count=len(devices))
    columns["gpu_index"] = pa.array(index, _INDEX_TYPE).take(device)

    counts = _joined(parts, "process_count", "<i4")
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    starts = pa.array(offsets, pa.int32())
    memory = _cat([p.values[k * p.num_rows : k * p.num_rows + p.procs] for p in parts])
    pid = _cat([p.values[k * p.num_rows + p.procs :] for p in parts])
    columns["process_pid"] = pa.ListArray.from_arrays(
        starts, pa.array(pid.astype(np.uint32), _PID_TYPE)
    )
    columns["process_memory_bytes"] = pa.ListArray.from_arrays(
        starts, pa.array(memory.astype(np.uint64), _MEMORY_TYPE, mask=memory == INT_NULL)
    )
    # Run ids: "" first, for a process of no run (-1), then each message's list.
    run = _joined(parts, "process_run", "<i4").astype(np.int64)
    run_start = np.repeat(_offsets([len(p.runs) for p in parts], 1), [p.procs for p in parts])
    names = _strings(itertools.chain([""], *(p.runs for p in parts)))
    picked = pa.array(np.where(run < 0, 0, run + run_start), pa.int64())
    columns["process_run_id"] = pa.ListArray.from_arrays(starts, names.take(picked))

    event_id, node, stream, seq, prev_hash, schema_fp = zip(*map(_IDENTITY, parts), strict=True)
    columns["event_time"] = pa.array(_joined(parts, "time_us", "<i8"), pa.int64()).view(_TS)
    columns["seq"] = pa.array(np.repeat(np.array(seq, dtype=np.uint64), rows), pa.uint64())
    # A message's identity on each of its rows: one string per message, repeated
    # by Arrow (take), not a Python object per row.
    part_of_row = pa.array(np.repeat(np.arange(len(parts), dtype=np.int64), rows))
    for name, values in (
        ("event_id", event_id),
        ("node", node),
        ("stream", stream),
        ("prev_hash", prev_hash),
        ("schema_fp", schema_fp),
    ):
        columns[name] = _strings(values).take(part_of_row)
    return pa.table(columns, schema=_SCHEMA)
