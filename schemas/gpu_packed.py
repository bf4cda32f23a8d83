"""GPU samples packed per message: the GpuSamples wire shape, built and checked.

One GpuSample record per GPU per second costs every stage a fixed price per
message (envelope, hash chain, spool frame, produce call, decode of 48
nullable fields, a Python row) that dwarfs the few hundred bytes it carries.
GpuSamples carries many samples (one tick of a node: every GPU and MIG
device, or several ticks) as columns: the devices and run ids listed once,
every number as one little-endian array in a `bytes` field, so the agent
packs with `array.tobytes()` and the collector reads with `numpy.frombuffer`,
one call per column instead of one Python object per value; the message's
encoding cost hardly grows with the number of samples.

A number a GPU does not report is null, stored in its column as a sentinel
no real reading can take: INT64_MIN for integer fields (all NVML counts are
far smaller), NaN for float fields (NaN power is not a reading; the collector
refuses non-finite hardware values), -1 for booleans (int8). Stdlib only: the
agent packs without numpy.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BOOL_NULL",
    "INT_NULL",
    "NUMERIC",
    "PackError",
    "check",
    "pack",
    "pack_readable",
    "unpack_rows",
    "unpacked",
]

INT_NULL = -(2**63)
BOOL_NULL = -1
_SWAP = sys.byteorder == "big"

# (field, array typecode): q = int64, d = float64, b = int8 boolean. Every
# measurement field of GpuSample v2, in its order.
NUMERIC: tuple[tuple[str, str], ...] = (
    ("utilization_gpu", "q"),
    ("utilization_memory", "q"),
    ("memory_used_bytes", "q"),
    ("memory_total_bytes", "q"),
    ("temperature_c", "q"),
    ("power_w", "d"),
    ("power_limit_w", "d"),
    ("sm_clock_mhz", "q"),
    ("mem_clock_mhz", "q"),
    ("pstate", "q"),
    ("throttle_reasons", "q"),
    ("ecc_corrected", "q"),
    ("ecc_uncorrected", "q"),
    ("retired_pages", "q"),
    ("pcie_tx_kbps", "q"),
    ("pcie_rx_kbps", "q"),
    ("mig_gpu_instance_id", "q"),
    ("mig_compute_instance_id", "q"),
    ("memory_free_bytes", "q"),
    ("memory_temperature_c", "q"),
    ("fan_speed_percent", "q"),
    ("energy_mj", "q"),
    ("utilization_encoder", "q"),
    ("utilization_decoder", "q"),
    ("pcie_replay_count", "q"),
    ("nvlink_tx_kib", "q"),
    ("nvlink_rx_kib", "q"),
    ("ecc_corrected_aggregate", "q"),
    ("ecc_uncorrected_aggregate", "q"),
    ("retired_pages_sbe", "q"),
    ("retired_pages_dbe", "q"),
    ("retired_pages_pending", "b"),
    ("remapped_rows_correctable", "q"),
    ("remapped_rows_uncorrectable", "q"),
    ("remapped_rows_pending", "b"),
    ("remapped_rows_failure", "b"),
    ("violation_power_us", "q"),
    ("violation_thermal_us", "q"),
    ("violation_sync_boost_us", "q"),
    ("violation_board_limit_us", "q"),
    ("violation_low_utilization_us", "q"),
    ("violation_reliability_us", "q"),
)
_NULL = {"q": INT_NULL, "d": math.nan, "b": BOOL_NULL}
_SIZE = {"q": 8, "d": 8, "b": 1, "i": 4}
# Per-sample columns that are not measurements, and the flattened processes.
_PER_SAMPLE_PACKED = (("time_us", "q"), ("device", "i"), ("process_count", "i"))
_PER_PROCESS_PACKED = (
    ("process_pid", "q"),
    ("process_used_memory_bytes", "q"),
    ("process_run", "i"),
)


class PackError(ValueError):
    """A GpuSamples body whose columns do not fit together."""


def _packed(code: str, values: Sequence[Any]) -> bytes:
    arr = array(code, values)
    if _SWAP:
        arr.byteswap()
    return arr.tobytes()


def unpacked(code: str, data: bytes) -> array[Any]:
    """A packed little-endian column as a stdlib array of native numbers."""
    arr = array(code)
    arr.frombytes(data)
    if _SWAP:
        arr.byteswap()
    return arr


def _device(sample: Mapping[str, Any]) -> tuple[str, int, str, str | None]:
    return (sample["gpu_uuid"], sample["index"], sample["name"], sample.get("mig_parent_uuid"))


def pack(samples: Sequence[Mapping[str, Any]], times_us: Sequence[int]) -> dict[str, Any]:
    """The GpuSamples body (everything but the envelope) of `samples`, each a
    GpuSample body (its fields without the envelope) taken at `times_us`."""
    if len(samples) != len(times_us):
        raise PackError(f"{len(samples)} samples but {len(times_us)} times")
    devices: dict[tuple[str, int, str, str | None], int] = {}
    device = [devices.setdefault(_device(s), len(devices)) for s in samples]
    body: dict[str, Any] = {
        "count": len(samples),
        "devices": [
            {"gpu_uuid": u, "index": i, "name": n, "mig_parent_uuid": m} for u, i, n, m in devices
        ],
        "time_us": _packed("q", times_us),
        "device": _packed("i", device),
    }
    for name, code in NUMERIC:
        null = _NULL[code]
        body[name] = _packed(code, [null if s.get(name) is None else s[name] for s in samples])
    procs = [p for s in samples for p in s.get("processes", ())]
    runs: dict[str, int] = {}
    body["process_count"] = _packed("i", [len(s.get("processes", ())) for s in samples])
    body["process_pid"] = _packed("q", [p["pid"] for p in procs])
    memory = [p.get("used_memory_bytes") for p in procs]
    body["process_used_memory_bytes"] = _packed("q", [INT_NULL if m is None else m for m in memory])
    body["process_run"] = _packed(
        "i",
        [-1 if p.get("run_id") is None else runs.setdefault(p["run_id"], len(runs)) for p in procs],
    )
    body["runs"] = list(runs)
    return body


def pack_readable(
    samples: Sequence[Mapping[str, Any]], times_us: Sequence[int]
) -> tuple[dict[str, Any] | None, int, list[str]]:
    """`pack` of the samples that fit their columns: (body or None if none
    does, the first kept sample's time, why each other sample was left out).
    A driver's out-of-range reading costs its sample, not the whole message."""
    try:
        return (pack(samples, times_us) if samples else None), (times_us or [0])[0], []
    except (TypeError, ValueError, OverflowError):
        pass
    kept: list[tuple[Mapping[str, Any], int]] = []
    errors: list[str] = []
    for sample, t in zip(samples, times_us, strict=True):
        try:
            pack([sample], [t])
        except (TypeError, ValueError, OverflowError) as exc:
            errors.append(f"{sample.get('gpu_uuid')}: {type(exc).__name__}: {exc}")
        else:
            kept.append((sample, t))
    if not kept:
        return None, 0, errors
    return pack([s for s, _ in kept], [t for _, t in kept]), kept[0][1], errors


def check(body: Mapping[str, Any]) -> int:
    """The number of processes in `body`; PackError when a column's length
    does not match the sample count (or the process count) it must have, or
    an index points outside `devices` or `runs`."""
    n = body["count"]
    if n < 0:
        raise PackError(f"GpuSamples: count {n} is negative")
    for name, code in (*_PER_SAMPLE_PACKED, *NUMERIC):
        if len(body[name]) != n * _SIZE[code]:
            raise PackError(
                f"GpuSamples: {name} holds {len(body[name])} bytes, "
                f"{n} samples need {n * _SIZE[code]}"
            )
    devices = unpacked("i", body["device"])
    if devices and not (min(devices) >= 0 and max(devices) < len(body["devices"])):
        raise PackError(f"GpuSamples: device index outside devices (0..{len(body['devices']) - 1})")
    counts = unpacked("i", body["process_count"])
    if counts and min(counts) < 0:
        raise PackError("GpuSamples: negative process_count")
    procs = int(sum(counts))
    for name, code in _PER_PROCESS_PACKED:
        if len(body[name]) != procs * _SIZE[code]:
            raise PackError(f"GpuSamples: {name} does not hold {procs} processes")
    runs = unpacked("i", body["process_run"])
    if runs and not (min(runs) >= -1 and max(runs) < len(body["runs"])):
        raise PackError(f"GpuSamples: process_run outside runs (-1..{len(body['runs']) - 1})")
    return procs


def unpack_rows(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The samples of a GpuSamples body as GpuSample bodies plus their
    `time_us`: for tests and tools; the collector reads the columns as arrays."""
    check(body)
    cols = {name: unpacked(code, body[name]) for name, code in _PACKED}
    rows: list[dict[str, Any]] = []
    p = 0
    for i in range(body["count"]):
        row: dict[str, Any] = {"time_us": cols["time_us"][i], **body["devices"][cols["device"][i]]}
        for name, code in NUMERIC:
            v = cols[name][i]
            if code == "d":
                row[name] = None if math.isnan(v) else v
            elif code == "b":
                row[name] = None if v == BOOL_NULL else bool(v)
            else:
                row[name] = None if v == INT_NULL else v
        k = cols["process_count"][i]
        row["processes"] = [
            {
                "pid": cols["process_pid"][j],
                "used_memory_bytes": (
                    None
                    if cols["process_used_memory_bytes"][j] == INT_NULL
                    else cols["process_used_memory_bytes"][j]
                ),
                "run_id": None
                if cols["process_run"][j] < 0
                else body["runs"][cols["process_run"][j]],
            }
            for j in range(p, p + k)
        ]
        p += k
        rows.append(row)
    return rows


_PACKED = (*_PER_SAMPLE_PACKED, *NUMERIC, *_PER_PROCESS_PACKED)
