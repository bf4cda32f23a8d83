"""Valid sample records for every event type, shared by the tests."""

from __future__ import annotations

import json
import shutil
import struct
import time
import uuid
from pathlib import Path
from typing import Any

from schemas import Registry
from schemas.gpu_packed import pack as gpu_pack
from schemas.registry import AVRO_DIR

__all__ = [
    "body",
    "envelope",
    "metrics_v1_record",
    "packed_points",
    "record",
    "registry_with_field",
    "registry_without",
    "unpacked_points",
]


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
            "git": {
                "commit": "a" * 40,
                "branch": "main",
                "dirty": True,
                "remote": None,
                "diff_sha256": "d" * 64,
                "changed_files": ["train.py"],
                "untracked_files": ["notes/"],
            },
            "python": {"version": "3.11.7", "implementation": "CPython", "executable": "/py"},
            "os": "Linux-6.1",
            "packages": {"numpy": "2.0.0"},
            "script_path": "/work/train.py",
            "script_sha256": "e" * 64,
            "kernel": "Linux 6.1.0 #1 SMP x86_64",
            "distro": "Debian GNU/Linux 12 (bookworm)",
            "container_image": "ghcr.io/x/train@sha256:" + "f" * 64,
            "container_id": "0" * 64,
            "cuda_driver": "550.54.15",
            "cuda_runtime": "12.4",
            "cudnn": "90100",
            "gpus": ["0: NVIDIA H100 80GB HBM3, GPU-1"],
            "frameworks": {"torch": "2.4.0"},
            "seeds": {"torch": 0, "data": 2**40},
            "deterministic": {"torch.backends.cudnn.deterministic": "true"},
            "env": {"CUDA_VISIBLE_DEVICES": "0", "HF_TOKEN": "<redacted>"},
            "scheduler": {"RANK": "0", "WORLD_SIZE": "2", "launcher": "torchrun"},
            "rank": 0,
            "world_size": 2,
            "attached": False,
        },
        "Metrics": {
            "run_id": run_id,
            "names": ["loss", "acc"],
            **packed_points(
                step=[0, 0, 1, 1],
                time_us=[now, now, now + 1, now + 1],
                name_idx=[0, 1, 0, 1],
                value=[2.5, 0.1, float("nan"), float("inf")],
            ),
        },
        "EvalLogged": {
            "run_id": run_id,
            "name": "test",
            "dataset": "digits-test",
            "step": 10,
            "metrics": {"accuracy": 0.97, "loss": float("nan")},
        },
        "RunEvent": {
            "run_id": run_id,
            "kind": "approved_by",
            "step": None,
            "attrs": {"user": "alice", "ticket": "RISK-12"},
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
    if kind == "GpuSamples":  # two GPUs of one tick: a full sample and a sparse MIG one
        full = bodies["GpuSample"]
        sparse = {
            **{k: None for k in full},
            "gpu_uuid": "MIG-2",
            "index": 1,
            "name": "H100 MIG 1g.10gb",
            "mig_parent_uuid": "GPU-2",
            "mig_gpu_instance_id": 3,
            "processes": [],
        }
        now = int(time.time() * 1e6)
        return gpu_pack([full, sparse], [now, now])
    return bodies[kind]


def packed_points(
    step: list[int], time_us: list[int], name_idx: list[int], value: list[float]
) -> dict[str, Any]:
    """Metrics v2 point columns: packed little-endian, the v1 arrays empty."""
    n = len(step)
    return {
        "step": [],
        "time_us": [],
        "name_idx": [],
        "value": [],
        "step_le": struct.pack(f"<{n}q", *step),
        "time_us_le": struct.pack(f"<{n}q", *time_us),
        "name_idx_le": struct.pack(f"<{n}i", *name_idx),
        "value_le": struct.pack(f"<{n}d", *value),
    }


def unpacked_points(body: dict[str, Any]) -> list[tuple[int, int, str, float]]:
    """(step, time_us, name, value) of each point of a Metrics body's packed columns."""
    n = len(body["value_le"]) // 8
    steps = struct.unpack(f"<{n}q", body["step_le"])
    times = struct.unpack(f"<{n}q", body["time_us_le"])
    idx = struct.unpack(f"<{n}i", body["name_idx_le"])
    vals = struct.unpack(f"<{n}d", body["value_le"])
    names = body["names"]
    return [(s, t, names[i], v) for s, t, i, v in zip(steps, times, idx, vals, strict=True)]


def record(kind: str, run_id: str = "r1", **env: Any) -> dict[str, Any]:
    return {**body(kind, run_id), "envelope": envelope(f"run/{run_id}", **env)}


def metrics_v1_record() -> dict[str, Any]:
    """A Metrics record as version 1 writers sent it: points as Avro arrays."""
    rec = record("Metrics")
    for key in ("step_le", "time_us_le", "name_idx_le", "value_le"):
        del rec[key]
    now = rec["envelope"]["time_us"]
    rec.update(
        step=[0, 0, 1, 1],
        time_us=[now, now, now + 1, now + 1],
        name_idx=[0, 1, 0, 1],
        value=[2.5, 0.1, float("nan"), float("inf")],
    )
    return rec


def registry_without(tmp_path: Path, *paths: str) -> Registry:
    """The project's schemas as they were before the given versions existed."""
    root = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, root)
    for path in paths:
        (root / path).unlink()
    return Registry.load(root)


def registry_with_field(tmp_path: Path, kind: str, field: dict[str, Any]) -> Registry:
    """The project's schemas plus a next version of `kind` that adds `field`."""
    root = tmp_path / "avro"
    shutil.copytree(AVRO_DIR, root)
    latest = max(int(p.stem[1:]) for p in (root / kind).glob("v*.avsc"))
    schema = json.loads((root / kind / f"v{latest}.avsc").read_text())
    schema["fields"] = [*schema["fields"], field]
    (root / kind / f"v{latest + 1}.avsc").write_text(json.dumps(schema))
    return Registry.load(root)
