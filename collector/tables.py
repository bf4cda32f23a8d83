"""Arrow column types of every table the router fills.

Inserts go in as Arrow tables (the fastest path into chDB and the server
alike); these schemas make each Python list land in the ClickHouse type the
migration declares: UUIDs as strings, µs integers as UTC timestamps, maps as
key/value lists.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["IDENTITY", "TABLES"]

_TS = pa.timestamp("us", tz="UTC")
_STR_MAP = pa.map_(pa.string(), pa.string())
_F64_MAP = pa.map_(pa.string(), pa.float64())
_DICT_STR = pa.dictionary(pa.int32(), pa.string())

IDENTITY: list[tuple[str, pa.DataType]] = [
    ("event_id", pa.string()),
    ("event_time", _TS),
    ("node", pa.string()),
    ("stream", pa.string()),
    ("seq", pa.uint64()),
    ("prev_hash", pa.string()),
    ("schema_fp", pa.string()),
]


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema(list(fields) + IDENTITY)


TABLES: dict[str, pa.Schema] = {
    "runs": _schema(
        ("run_id", pa.string()),
        ("project", pa.string()),
        ("name", pa.string()),
        ("user", pa.string()),
        ("host", pa.string()),
        ("pid", pa.uint32()),
        ("command", pa.list_(pa.string())),
        ("cwd", pa.string()),
        ("config", _STR_MAP),
        ("git_commit", pa.string()),
        ("git_branch", pa.string()),
        ("git_dirty", pa.bool_()),
        ("git_remote", pa.string()),
        ("python_version", pa.string()),
        ("python_implementation", pa.string()),
        ("python_executable", pa.string()),
        ("os", pa.string()),
        ("packages", _STR_MAP),
        # RunStarted v2 (0003_run_context.sql)
        ("git_diff_sha256", pa.string()),
        ("git_changed_files", pa.list_(pa.string())),
        ("git_untracked_files", pa.list_(pa.string())),
        ("script_path", pa.string()),
        ("script_sha256", pa.string()),
        ("kernel", pa.string()),
        ("distro", pa.string()),
        ("container_image", pa.string()),
        ("container_id", pa.string()),
        ("cuda_driver", pa.string()),
        ("cuda_runtime", pa.string()),
        ("cudnn", pa.string()),
        ("gpus", pa.list_(pa.string())),
        ("frameworks", _STR_MAP),
        ("seeds", pa.map_(pa.string(), pa.int64())),
        ("deterministic", _STR_MAP),
        ("env", _STR_MAP),
        ("scheduler", _STR_MAP),
        ("rank", pa.uint32()),
        ("world_size", pa.uint32()),
        ("attached", pa.bool_()),
    ),
    "run_finished": _schema(
        ("run_id", pa.string()),
        ("status", pa.string()),
        ("summary", _F64_MAP),
        ("error", pa.string()),
    ),
    "evaluations": _schema(
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("dataset", pa.string()),
        ("step", pa.int64()),
        ("metrics", _F64_MAP),
    ),
    "run_events": _schema(
        ("run_id", pa.string()),
        ("kind", pa.string()),
        ("step", pa.int64()),
        ("attrs", _STR_MAP),
    ),
    # One row per point, only what differs between points; built as Arrow by the
    # router. Repeated strings travel dictionary-encoded (one copy per message).
    "metrics": pa.schema(
        [
            ("run_id", _DICT_STR),
            ("name", _DICT_STR),
            ("step", pa.int64()),
            ("time", _TS),
            ("value", pa.float64()),
            ("idx", pa.uint32()),
            ("event_id", _DICT_STR),
        ]
    ),
    "metric_batches": _schema(("run_id", pa.string()), ("points", pa.uint32())),
    "checkpoints": _schema(
        ("run_id", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.uint64()),
        ("sha256", pa.string()),
        ("step", pa.int64()),
        ("metrics", _F64_MAP),
    ),
    "datasets": _schema(
        ("run_id", pa.string()),
        ("name", pa.string()),
        ("version", pa.string()),
        ("uri", pa.string()),
        ("content_hash", pa.string()),
        ("license", pa.string()),
        ("preprocessing", pa.list_(pa.string())),
        ("path", pa.string()),
    ),
    "gpu_samples": _schema(
        ("gpu_uuid", pa.string()),
        ("gpu_index", pa.uint8()),
        ("gpu_name", pa.string()),
        ("utilization_gpu", pa.uint8()),
        ("utilization_memory", pa.uint8()),
        ("memory_used_bytes", pa.uint64()),
        ("memory_total_bytes", pa.uint64()),
        ("temperature_c", pa.int16()),
        ("power_w", pa.float64()),
        ("power_limit_w", pa.float64()),
        ("sm_clock_mhz", pa.uint32()),
        ("mem_clock_mhz", pa.uint32()),
        ("pstate", pa.uint8()),
        ("throttle_reasons", pa.uint64()),
        ("ecc_corrected", pa.uint64()),
        ("ecc_uncorrected", pa.uint64()),
        ("retired_pages", pa.uint64()),
        ("pcie_tx_kbps", pa.uint64()),
        ("pcie_rx_kbps", pa.uint64()),
        ("process_pid", pa.list_(pa.uint32())),
        ("process_memory_bytes", pa.list_(pa.uint64())),
        ("process_run_id", pa.list_(pa.string())),
        # GpuSample v2 (0002_gpu_fields.sql)
        ("mig_parent_uuid", pa.string()),
        ("mig_gpu_instance_id", pa.uint32()),
        ("mig_compute_instance_id", pa.uint32()),
        ("memory_free_bytes", pa.uint64()),
        ("memory_temperature_c", pa.int16()),
        ("fan_speed_percent", pa.uint8()),
        ("energy_mj", pa.uint64()),
        ("utilization_encoder", pa.uint8()),
        ("utilization_decoder", pa.uint8()),
        ("pcie_replay_count", pa.uint64()),
        ("nvlink_tx_kib", pa.uint64()),
        ("nvlink_rx_kib", pa.uint64()),
        ("ecc_corrected_aggregate", pa.uint64()),
        ("ecc_uncorrected_aggregate", pa.uint64()),
        ("retired_pages_sbe", pa.uint64()),
        ("retired_pages_dbe", pa.uint64()),
        ("retired_pages_pending", pa.bool_()),
        ("remapped_rows_correctable", pa.uint32()),
        ("remapped_rows_uncorrectable", pa.uint32()),
        ("remapped_rows_pending", pa.bool_()),
        ("remapped_rows_failure", pa.bool_()),
        ("violation_power_us", pa.uint64()),
        ("violation_thermal_us", pa.uint64()),
        ("violation_sync_boost_us", pa.uint64()),
        ("violation_board_limit_us", pa.uint64()),
        ("violation_low_utilization_us", pa.uint64()),
        ("violation_reliability_us", pa.uint64()),
    ),
    "gpu_events": _schema(
        ("gpu_uuid", pa.string()),
        ("gpu_index", pa.uint8()),
        ("kind", pa.string()),
        ("code", pa.int64()),
        ("detail", _STR_MAP),
        ("run_ids", pa.list_(pa.string())),
    ),
    "host_samples": _schema(
        ("cpu_percent", pa.float64()),
        ("load1", pa.float64()),
        ("load5", pa.float64()),
        ("load15", pa.float64()),
        ("memory_used_bytes", pa.uint64()),
        ("memory_total_bytes", pa.uint64()),
        ("disk_read_bytes", pa.uint64()),
        ("disk_write_bytes", pa.uint64()),
        ("net_rx_bytes", pa.uint64()),
        ("net_tx_bytes", pa.uint64()),
        ("process_pid", pa.list_(pa.uint32())),
        ("process_run_id", pa.list_(pa.string())),
        ("process_cpu", pa.list_(pa.float64())),
        ("process_rss_bytes", pa.list_(pa.uint64())),
    ),
    "access_log": _schema(
        ("source", pa.string()),
        ("action", pa.string()),
        ("path", pa.string()),
        ("user", pa.string()),
        ("uid", pa.int64()),
        ("pid", pa.int64()),
        ("exe", pa.string()),
        ("success", pa.bool_()),
        ("run_id", pa.string()),
        ("detail", _STR_MAP),
    ),
    "alerts": _schema(
        ("run_id", pa.string()),
        ("detector", pa.string()),
        ("metric", pa.string()),
        ("step", pa.int64()),
        ("value", pa.float64()),
        ("baseline", pa.float64()),
        ("severity", pa.string()),
        ("state", pa.string()),
        ("message", pa.string()),
        ("params", _STR_MAP),
    ),
    "dead_letters": pa.schema(
        [
            ("topic", pa.string()),
            ("partition", pa.int32()),
            ("offset", pa.int64()),
            ("key", pa.string()),
            ("raw", pa.binary()),
            ("reason", pa.string()),
            ("error_type", pa.string()),
        ]
    ),
}
