"""Decoded events → table rows, accumulated column by column.

Each event type has one routing function that appends its row(s) to a
`Batch`. A Metrics message becomes one row per point, each keeping the event
identity and its index within the batch, so the stored rows can be put back
together into the exact message that was hashed into the chain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from collector.tables import TABLES
from schemas import Decoded

__all__ = ["ROUTES", "Batch", "InvalidEventError", "route"]


class InvalidEventError(ValueError):
    """Schema-valid bytes whose content cannot be stored as it claims to be."""


Columns = dict[str, list[Any]]


@dataclass
class Batch:
    """Rows for every table, as Python lists per column, until inserted."""

    columns: dict[str, Columns] = field(default_factory=dict)

    def table(self, name: str) -> Columns:
        cols = self.columns.get(name)
        if cols is None:
            cols = {f.name: [] for f in TABLES[name]}
            self.columns[name] = cols
        return cols

    def rows(self, name: str) -> int:
        cols = self.columns.get(name)
        return len(next(iter(cols.values()))) if cols else 0

    def arrow(self) -> dict[str, pa.Table]:
        return {
            name: pa.table(cols, schema=TABLES[name])
            for name, cols in self.columns.items()
            if self.rows(name)
        }

    def __len__(self) -> int:
        return sum(self.rows(name) for name in self.columns)


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


def _metrics(batch: Batch, d: Decoded) -> None:
    r = d.record
    names, idx = r["names"], r["name_idx"]
    n = len(idx)
    if not (len(r["step"]) == len(r["time_us"]) == len(r["value"]) == n):
        raise InvalidEventError("Metrics: step, time_us, name_idx and value differ in length")
    try:
        point_names = [names[i] for i in idx]
    except IndexError:
        raise InvalidEventError(f"Metrics: name_idx outside names (0..{len(names) - 1})") from None
    if min(idx, default=0) < 0:
        raise InvalidEventError("Metrics: negative name_idx")
    cols = batch.table("metrics")
    cols["run_id"].extend([r["run_id"]] * n)
    cols["name"].extend(point_names)
    cols["step"].extend(r["step"])
    cols["time"].extend(r["time_us"])
    cols["value"].extend(r["value"])
    cols["idx"].extend(range(n))
    _identity(cols, d, n)


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
    "GpuSample": _gpu,
    "GpuEvent": _gpu_event,
    "HostSample": _host,
    "AccessEvent": _access,
    "Alert": _alert,
}


def route(batch: Batch, decoded: Decoded) -> None:
    """Append the rows of one event; a half-appended event would corrupt the
    batch's columns, so content errors are found before any append."""
    handler = ROUTES.get(decoded.name)
    if handler is None:
        raise InvalidEventError(f"{decoded.name}: not a storable event type")
    handler(batch, decoded)
