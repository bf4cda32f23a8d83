"""Valid sample records for every event type, shared by the tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

__all__ = ["body", "envelope", "record"]


def envelope(stream: str = "run/r1", seq: int = 0, prev: bytes = b"") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "time_us": int(time.time() * 1e6),
        "node": "node-1",
        "stream": stream,
        "seq": seq,
        "prev_hash": prev,
    }


def body(kind: str, run_id: str = "r1") -> dict[str, Any]:
    now = int(time.time() * 1e6)
    bodies: dict[str, dict[str, Any]] = {
        "RunStarted": {
            "run_id": run_id,
            "project": "p",
            "name": "n",
            "user": "u",
            "host": "h",
            "pid": 42,
            "command": ["train.py", "--lr", "0.1"],
            "cwd": "/work",
            "config": {"lr": "0.1", "model.depth": "4"},
            "git": {"commit": "a" * 40, "branch": "main", "dirty": True, "remote": None},
            "python": {"version": "3.11.7", "implementation": "CPython", "executable": "/py"},
            "os": "Linux-6.1",
            "packages": {"numpy": "2.0.0"},
        },
        "Metrics": {
            "run_id": run_id,
            "names": ["loss", "acc"],
            "step": [0, 0, 1, 1],
            "time_us": [now, now, now + 1, now + 1],
            "name_idx": [0, 1, 0, 1],
            "value": [2.5, 0.1, float("nan"), float("inf")],
        },
        "CheckpointSaved": {
            "run_id": run_id,
            "path": "/ckpt/1.pt",
            "size_bytes": 1234,
            "sha256": "ab" * 32,
            "step": 1,
            "metrics": {"loss": 0.5},
        },
        "DatasetUsed": {
            "run_id": run_id,
            "name": "digits",
            "version": "1",
            "uri": "s3://d",
            "content_hash": "cd" * 32,
            "license": "CC BY 4.0",
            "preprocessing": ["scale"],
            "path": None,
        },
        "RunFinished": {
            "run_id": run_id,
            "status": "finished",
            "summary": {"loss": 0.4},
            "error": None,
        },
        "GpuSample": {
            "gpu_uuid": "GPU-1",
            "index": 0,
            "name": "H100",
            "utilization_gpu": 97,
            "utilization_memory": None,
            "memory_used_bytes": 10,
            "memory_total_bytes": 80,
            "temperature_c": 60,
            "power_w": 300.5,
            "power_limit_w": 700.0,
            "sm_clock_mhz": 1980,
            "mem_clock_mhz": 2619,
            "pstate": 0,
            "throttle_reasons": 0,
            "ecc_corrected": 0,
            "ecc_uncorrected": None,
            "retired_pages": None,
            "pcie_tx_kbps": 1,
            "pcie_rx_kbps": 2,
            "mig_parent_uuid": None,
            "mig_gpu_instance_id": None,
            "mig_compute_instance_id": None,
            "memory_free_bytes": 70,
            "memory_temperature_c": 72,
            "fan_speed_percent": None,
            "energy_mj": 123_456_789,
            "utilization_encoder": 0,
            "utilization_decoder": 0,
            "pcie_replay_count": 3,
            "nvlink_tx_kib": 1_000_000,
            "nvlink_rx_kib": 2_000_000,
            "ecc_corrected_aggregate": 5,
            "ecc_uncorrected_aggregate": 0,
            "retired_pages_sbe": None,
            "retired_pages_dbe": None,
            "retired_pages_pending": None,
            "remapped_rows_correctable": 1,
            "remapped_rows_uncorrectable": 0,
            "remapped_rows_pending": False,
            "remapped_rows_failure": False,
            "violation_power_us": 1_500,
            "violation_thermal_us": 0,
            "violation_sync_boost_us": 0,
            "violation_board_limit_us": 0,
            "violation_low_utilization_us": 0,
            "violation_reliability_us": None,
            "processes": [{"pid": 42, "used_memory_bytes": 5, "run_id": run_id}],
        },
        "GpuEvent": {
            "gpu_uuid": "GPU-1",
            "index": 0,
            "kind": "xid",
            "code": 79,
            "detail": {"event_type": "0x8", "event_data": "79"},
            "run_ids": [run_id],
        },
        "HostSample": {
            "cpu_percent": 12.5,
            "load1": 1.0,
            "load5": 0.5,
            "load15": 0.25,
            "memory_used_bytes": 1,
            "memory_total_bytes": 2,
            "disk_read_bytes": 3,
            "disk_write_bytes": 4,
            "net_rx_bytes": 5,
            "net_tx_bytes": 6,
            "processes": [{"pid": 42, "run_id": run_id, "cpu_percent": 99.0, "rss_bytes": 7}],
        },
        "AccessEvent": {
            "source": "sdk",
            "action": "read",
            "path": "/data/x",
            "user": "u",
            "uid": 1000,
            "pid": 42,
            "exe": "/py",
            "success": True,
            "run_id": run_id,
            "detail": {"k": "v"},
        },
        "Alert": {
            "run_id": run_id,
            "detector": "loss_spike",
            "metric": "loss",
            "step": 1,
            "value": 9.0,
            "baseline": 1.0,
            "severity": "warning",
            "state": "firing",
            "message": "loss jumped",
            "params": {"k": "3"},
        },
    }
    return bodies[kind]


def record(kind: str, run_id: str = "r1", **env: Any) -> dict[str, Any]:
    return {**body(kind, run_id), "envelope": envelope(f"run/{run_id}", **env)}
