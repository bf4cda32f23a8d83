"""Decoded events → table rows, accumulated column by column.

Each event type has one routing function that appends its row(s) to a
`Batch`. A Metrics message becomes one `metrics` row per point (event_id and
its index within the message) and one `metric_batches` row with the message's
envelope, so the stored rows can be put back together into the exact message
that was hashed into the chain. A GpuSamples message becomes one
`gpu_samples` row per sample, the rows an old agent's GpuSample messages
(one sample each) give; its columns are read as arrays (collector/gpu_rows.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from collector import gpu_rows
from collector.batch import Batch, Columns, length
from collector.errors import InvalidEventError
from collector.tables import TABLES
from schemas import Decoded

__all__ = ["ROUTES", "Batch", "InvalidEventError", "metric_columns", "route"]


def _identity(cols: Columns, decoded: Decoded, times: int = 1) -> None:
    env = decoded.record["envelope"]
    values = (
        str(env["event_id"]),
        env["time_us"],
        env["node"],
        env["stream"],
        env["seq"],
        env["prev_hash"].hex(),
        decoded.writer.fingerprint.hex(),
    )
    for name, value in zip(
        ("event_id", "event_time", "node", "stream", "seq", "prev_hash", "schema_fp"),
        values,
        strict=True,
    ):
        if times == 1:
            cols[name].append(value)
        else:
            cols[name].extend([value] * times)


def _copy(cols: Columns, record: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        cols[name].append(record[name])


_RUN_SCALARS = (
    "run_id", "project", "name", "user", "host", "pid", "command", "cwd", "os",
    # RunStarted v2; a v1 message resolves to the schema defaults
    "script_path", "script_sha256", "kernel", "distro", "container_image", "container_id",
    "cuda_driver", "cuda_runtime", "cudnn", "gpus", "rank", "world_size", "attached",
)  # fmt: skip
_RUN_MAPS = ("config", "packages", "frameworks", "seeds", "deterministic", "env", "scheduler")


def _run_started(batch: Batch, d: Decoded) -> None:
    r = d.record
    if r["rank"] < 0 or r["world_size"] < 1:
        raise InvalidEventError(
            f"RunStarted: rank {r['rank']} / world_size {r['world_size']} out of range"
        )
    cols = batch.table("runs")
    _copy(cols, r, _RUN_SCALARS)
    for key in _RUN_MAPS:
        cols[key].append(list(r[key].items()))
    for key in ("commit", "branch", "dirty", "remote", "diff_sha256"):
        cols[f"git_{key}"].append(r["git"][key])
    cols["git_changed_files"].append(r["git"]["changed_files"])
    cols["git_untracked_files"].append(r["git"]["untracked_files"])
    for key in ("version", "implementation", "executable"):
        cols[f"python_{key}"].append(r["python"][key])
    _identity(cols, d)


_POINT_COLUMNS = (("step_le", "<i8", 8), ("time_us_le", "<i8", 8), ("name_idx_le", "<i4", 4))
_IDX = np.arange(0, dtype=np.uint32)


def _point_index(n: int) -> pa.Array:
    """0..n-1 as UInt32, sliced from one shared buffer (zero-copy)."""
    global _IDX
    if len(_IDX) < n:
        _IDX = np.arange(max(n, 16_384), dtype=np.uint32)
    return pa.array(_IDX[:n])


def metric_columns(r: dict[str, Any]) -> tuple[npt.NDArray[Any], ...]:
    """(step, time_us, name_idx, value) as numpy arrays, from either wire form.

    Version 2 packs each column little-endian in a bytes field: the arrays are
    views of the message's bytes, no loop per point. Version 1 messages (read
    through schema resolution, their packed fields empty) carry Avro arrays."""
    if r["step"] or r["time_us"] or r["name_idx"] or r["value"]:
        if any(r[name] for name, _, _ in _POINT_COLUMNS) or r["value_le"]:
            raise InvalidEventError("Metrics: points both as arrays and packed")
        return (
            np.asarray(r["step"], dtype=np.int64),
            np.asarray(r["time_us"], dtype=np.int64),
            np.asarray(r["name_idx"], dtype=np.int64),
            np.asarray(r["value"], dtype=np.float64),
        )
    cols = []
    for name, dtype, width in (*_POINT_COLUMNS, ("value_le", "<f8", 8)):
        raw = r[name]
        if len(raw) % width:
            raise InvalidEventError(
                f"Metrics: {name} is {len(raw)} bytes, not a multiple of {width}"
            )
        packed = np.frombuffer(raw, dtype=dtype)
        cols.append(packed.astype(packed.dtype.newbyteorder("="), copy=False))
    return tuple(cols)


def _metrics(batch: Batch, d: Decoded) -> None:
    r = d.record
    names = r["names"]
    step, time_us, idx, value = metric_columns(r)
    n = len(idx)
    if not (len(step) == len(time_us) == len(value) == n):
        raise InvalidEventError("Metrics: step, time_us, name_idx and value differ in length")
    if n and int(idx.min()) < 0:
        raise InvalidEventError("Metrics: negative name_idx")
    if n and int(idx.max()) >= len(names):
        raise InvalidEventError(f"Metrics: name_idx outside names (0..{len(names) - 1})")
    cols = batch.table("metric_batches")  # the message, even with no points: chain complete
    cols["run_id"].append(r["run_id"])
    cols["points"].append(n)
    _identity(cols, d)
    if n == 0:
        return
    zeros = pa.array(np.zeros(n, dtype=np.int32))
    columns = {
        "run_id": pa.DictionaryArray.from_arrays(zeros, pa.array([r["run_id"]], pa.string())),
        "name": pa.DictionaryArray.from_arrays(
            pa.array(idx.astype(np.int32, copy=False)), pa.array(names, pa.string())
        ),
        "step": pa.array(step),
        "time": pa.array(time_us).view(pa.timestamp("us", tz="UTC")),
        "value": pa.array(value),
        "idx": _point_index(n),
        "event_id": pa.DictionaryArray.from_arrays(
            zeros, pa.array([str(r["envelope"]["event_id"])], pa.string())
        ),
    }
    batch.add("metrics", pa.table(columns, schema=TABLES["metrics"]))


def _checkpoint(batch: Batch, d: Decoded) -> None:
    cols = batch.table("checkpoints")
    _copy(cols, d.record, ("run_id", "path", "size_bytes", "sha256", "step"))
    cols["metrics"].append(list(d.record["metrics"].items()))
    _identity(cols, d)


def _dataset(batch: Batch, d: Decoded) -> None:
    cols = batch.table("datasets")
    fields = ("run_id", "name", "version", "uri", "content_hash", "license", "preprocessing")
    _copy(cols, d.record, (*fields, "path"))
    _identity(cols, d)


def _evaluation(batch: Batch, d: Decoded) -> None:
    cols = batch.table("evaluations")
    _copy(cols, d.record, ("run_id", "name", "dataset", "step"))
    cols["metrics"].append(list(d.record["metrics"].items()))
    _identity(cols, d)


def _run_event(batch: Batch, d: Decoded) -> None:
    cols = batch.table("run_events")
    _copy(cols, d.record, ("run_id", "kind", "step"))
    cols["attrs"].append(list(d.record["attrs"].items()))
    _identity(cols, d)


def _run_finished(batch: Batch, d: Decoded) -> None:
    cols = batch.table("run_finished")
    _copy(cols, d.record, ("run_id", "status", "error"))
    cols["summary"].append(list(d.record["summary"].items()))
    _identity(cols, d)


_GPU_FIELDS = tuple(
    f.name
    for f in TABLES["gpu_samples"]
    if f.name not in {"gpu_uuid", "gpu_index", "gpu_name"}
    and not f.name.startswith("process_")
    and f.name not in {"event_id", "event_time", "node", "stream", "seq", "prev_hash", "schema_fp"}
)


def _gpu(batch: Batch, d: Decoded) -> None:
    r = d.record
    cols = batch.table("gpu_samples")
    cols["gpu_uuid"].append(r["gpu_uuid"])
    cols["gpu_index"].append(r["index"])
    cols["gpu_name"].append(r["name"])
    _copy(cols, r, _GPU_FIELDS)
    procs = r["processes"]
    cols["process_pid"].append([p["pid"] for p in procs])
    cols["process_memory_bytes"].append([p["used_memory_bytes"] for p in procs])
    cols["process_run_id"].append([p["run_id"] or "" for p in procs])
    _identity(cols, d)


def _gpu_samples(batch: Batch, d: Decoded) -> None:
    part = gpu_rows.read(d.record, d.writer.fingerprint.hex())
    if part.num_rows:  # an empty message: no rows (its envelope is in no table)
        batch.defer("gpu_samples", part, gpu_rows.to_arrow)


def _gpu_event(batch: Batch, d: Decoded) -> None:
    r = d.record
    cols = batch.table("gpu_events")
    cols["gpu_uuid"].append(r["gpu_uuid"])
    cols["gpu_index"].append(r["index"])
    _copy(cols, r, ("kind", "code", "run_ids"))
    cols["detail"].append(list(r["detail"].items()))
    _identity(cols, d)


def _host(batch: Batch, d: Decoded) -> None:
    r = d.record
    cols = batch.table("host_samples")
    scalars = ("cpu_percent", "load1", "load5", "load15", "memory_used_bytes")
    counters = ("disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes")
    _copy(cols, r, (*scalars, "memory_total_bytes", *counters))
    procs = r["processes"]
    cols["process_pid"].append([p["pid"] for p in procs])
    cols["process_run_id"].append([p["run_id"] or "" for p in procs])
    cols["process_cpu"].append([p["cpu_percent"] for p in procs])
    cols["process_rss_bytes"].append([p["rss_bytes"] for p in procs])
    _identity(cols, d)


def _access(batch: Batch, d: Decoded) -> None:
    r = d.record
    cols = batch.table("access_log")
    _copy(cols, r, ("source", "action", "uid", "pid", "success"))
    for key in ("path", "user", "exe", "run_id"):
        cols[key].append(r[key] or "")
    cols["detail"].append(list(r["detail"].items()))
    _identity(cols, d)


def _alert(batch: Batch, d: Decoded) -> None:
    r = d.record
    cols = batch.table("alerts")
    _copy(cols, r, ("detector", "step", "value", "baseline", "severity", "state", "message"))
    cols["run_id"].append(r["run_id"] or "")
    cols["metric"].append(r["metric"] or "")
    cols["params"].append(list(r["params"].items()))
    _identity(cols, d)


ROUTES: dict[str, Callable[[Batch, Decoded], None]] = {
    "RunStarted": _run_started,
    "Metrics": _metrics,
    "CheckpointSaved": _checkpoint,
    "DatasetUsed": _dataset,
    "RunFinished": _run_finished,
    "EvalLogged": _evaluation,
    "RunEvent": _run_event,
    "GpuSample": _gpu,
    "GpuSamples": _gpu_samples,
    "GpuEvent": _gpu_event,
    "HostSample": _host,
    "AccessEvent": _access,
    "Alert": _alert,
}


def route(batch: Batch, decoded: Decoded) -> None:
    """Append the rows of one event, or none of them.

    Avro's int and long are signed; the tables use unsigned and narrower types
    where the meaning allows (a pid, a percentage). A value outside its
    column's range would fail the whole batch's Arrow conversion, one bad
    event stopping the collector, so the new rows are range-checked here and
    an event that does not fit is taken back out and refused."""
    handler = ROUTES.get(decoded.name)
    if handler is None:
        raise InvalidEventError(f"{decoded.name}: not a storable event type")
    before = {name: length(cols) for name, cols in batch.columns.items()}
    parts = {name: len(tables) for name, tables in batch.parts.items()}
    deferred = {name: len(held) for name, held in batch.deferred.items()}
    try:
        handler(batch, decoded)
        for name, cols in batch.columns.items():
            start = before.get(name, 0)
            if length(cols) > start:
                _check_ranges(decoded.name, name, cols, start)
    except (
        InvalidEventError, KeyError, TypeError, ValueError, IndexError, OverflowError,
        pa.ArrowException,
    ) as exc:  # fmt: skip
        for name, cols in batch.columns.items():
            keep = before.get(name, 0)
            for values in cols.values():
                del values[keep:]
        for name, tables in batch.parts.items():
            del tables[parts.get(name, 0) :]
        for name, held in batch.deferred.items():
            del held[deferred.get(name, 0) :]
        if isinstance(exc, InvalidEventError):
            raise
        raise InvalidEventError(f"{decoded.name}: cannot be stored: {exc}") from exc


def _bounds(kind: pa.DataType) -> tuple[int, int] | None:
    if pa.types.is_unsigned_integer(kind):
        return 0, 2**kind.bit_width - 1
    if pa.types.is_signed_integer(kind):
        return -(2 ** (kind.bit_width - 1)), 2 ** (kind.bit_width - 1) - 1
    return None


def _integer_columns(schema: pa.Schema) -> list[tuple[str, int, int, bool]]:
    """(column, low, high, is a list) for every integer column of a table."""
    out = []
    for f in schema:
        listed = pa.types.is_list(f.type)
        bounds = _bounds(f.type.value_type if listed else f.type)
        if bounds is not None:
            out.append((f.name, bounds[0], bounds[1], listed))
    return out


_INTEGERS = {name: _integer_columns(schema) for name, schema in TABLES.items()}


def _check_ranges(event: str, table: str, cols: Columns, start: int) -> None:
    for column, low, high, listed in _INTEGERS[table]:
        for value in cols[column][start:]:
            if listed:
                if value and None in value:  # Array(Nullable(..)): a process's unknown memory
                    value = [v for v in value if v is not None]
                if value and not (low <= min(value) and max(value) <= high):
                    raise InvalidEventError(f"{event}: {column} {value} outside {low}..{high}")
            elif value is not None and not low <= value <= high:
                raise InvalidEventError(f"{event}: {column} = {value} outside {low}..{high}")
