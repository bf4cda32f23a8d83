"""One NVML device → the measurement fields of one GpuSample, each read on its own.

A field the device does not support (or that NVML refuses for any reason
other than a lost GPU) is null: one NVML call failing never costs the other
fields. Which call is behind each field is in the `doc` of
`schemas/avro/GpuSample/v2.avsc`. A GPU that stopped answering
(NVML_ERROR_GPU_IS_LOST) raises `DeviceLost`, so the caller can skip the
device and record that once.

`nvml` is the pynvml module or anything with its names (tests pass a fake).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

__all__ = [
    "SLOW_FIELDS",
    "UINT_MAX",
    "DeviceLost",
    "DeviceMemory",
    "FieldReader",
    "event_kind",
    "handle_key",
    "mig_devices",
    "read_fields",
    "read_processes",
]

log = structlog.get_logger("traintrail.nvml")

UINT_MAX = 0xFFFFFFFF  # NVML's "all links" scope, and "no MIG instance" in event data
_PSTATE_UNKNOWN = 32

# Per-field values of one nvmlDeviceGetFieldValues call: (body field, NVML_FI_* name, scope)
_FIELD_VALUES: tuple[tuple[str, str, int], ...] = (
    ("memory_temperature_c", "NVML_FI_DEV_MEMORY_TEMP", 0),
    ("nvlink_tx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", UINT_MAX),
    ("nvlink_rx_kib", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX", UINT_MAX),
    ("violation_power_us", "NVML_FI_DEV_PERF_POLICY_POWER", 0),
    ("violation_thermal_us", "NVML_FI_DEV_PERF_POLICY_THERMAL", 0),
    ("violation_sync_boost_us", "NVML_FI_DEV_PERF_POLICY_SYNC_BOOST", 0),
    ("violation_board_limit_us", "NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT", 0),
    ("violation_low_utilization_us", "NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION", 0),
    ("violation_reliability_us", "NVML_FI_DEV_PERF_POLICY_RELIABILITY", 0),
    # cumulative PCIe byte counters: the rate comes from two ticks (see _pcie)
    ("_pcie_tx_bytes", "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", 0),
    ("_pcie_rx_bytes", "NVML_FI_DEV_PCIE_COUNT_RX_BYTES", 0),
)

# Measured on an H100 (driver 580, bench/gpu_probe.py): nvmlDeviceGetPcieThroughput
# blocks ~21 ms per call (it samples a 20 ms window) and the total-energy read
# costs ~4 ms of CPU, against ~2-10 µs for most other calls. The PCIe rate is
# therefore derived from the byte counters between ticks, and these slow-moving
# counters are read every `slow_every` ticks and repeated in between.
SLOW_FIELDS = (
    "energy_mj",
    "ecc_corrected_aggregate",
    "ecc_uncorrected_aggregate",
    "retired_pages_sbe",
    "retired_pages_dbe",
    "retired_pages",
    "retired_pages_pending",
    "remapped_rows_correctable",
    "remapped_rows_uncorrectable",
    "remapped_rows_pending",
    "remapped_rows_failure",
    "pcie_replay_count",
)
_EVENT_KINDS = (
    ("nvmlEventTypeXidCriticalError", "xid"),
    ("nvmlEventTypeDoubleBitEccError", "ecc_double_bit"),
    ("nvmlEventTypeSingleBitEccError", "ecc_single_bit"),
    ("nvmlEventTypePState", "pstate"),
    ("nvmlEventTypeClock", "clock"),
)
_VALUE_MEMBERS = (
    ("NVML_VALUE_TYPE_DOUBLE", "dVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_INT", "uiVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG", "ulVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_LONG_LONG", "ullVal"),
    ("NVML_VALUE_TYPE_SIGNED_LONG_LONG", "sllVal"),
    ("NVML_VALUE_TYPE_SIGNED_INT", "siVal"),
    ("NVML_VALUE_TYPE_UNSIGNED_SHORT", "usVal"),
)


@dataclass
class DeviceMemory:
    """What one device's samples carry from tick to tick."""

    tick: int = 0
    slow: dict[str, Any] = field(default_factory=dict)
    pcie: tuple[float, int, int] | None = None  # (monotonic s, tx bytes, rx bytes)


class DeviceLost(Exception):
    """The GPU stopped answering NVML (fell off the bus, needs a reset)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FieldReader:
    """Calls NVML for one field of one device: the value, or None if NVML will
    not give it. Says so once per (device, field) at debug level; raises
    `DeviceLost` when the answer is that the GPU is gone."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        # pynvml raises this plain Exception for a versioned call the driver lacks
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._mismatch: tuple[type[BaseException], ...] = (mismatch,) if mismatch else ()
        self._told: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # the sampler and the event thread both read

    def __call__(self, device: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError as exc:
            self.failed(device, name, int(exc.value), str(exc))
        except self._mismatch as exc:
            self.failed(device, name, self.nvml.NVML_ERROR_FUNCTION_NOT_FOUND, str(exc))
        return None

    def failed(self, device: str, name: str, code: int, message: str) -> None:
        if code == self.nvml.NVML_ERROR_GPU_IS_LOST:
            raise DeviceLost(code, message)
        with self._lock:
            if (device, name) in self._told:
                return
            self._told.add((device, name))
        log.debug("gpu field unavailable", gpu=device, field=name, code=code, error=message)


def _attr(obj: Any, name: str) -> Any:
    return None if obj is None else getattr(obj, name)


def _scaled(value: Any, divisor: int) -> Any:
    return None if value is None else value / divisor


def _first(pair: Any) -> Any:
    return None if pair is None else int(pair[0])


def _count(pages: Any) -> int | None:
    return None if pages is None else len(pages)


def _flag(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _field_values(nv: Any, read: FieldReader, device: str, handle: Any) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(name for name, _, _ in _FIELD_VALUES)
    wanted = [(name, getattr(nv, const, None), scope) for name, const, scope in _FIELD_VALUES]
    wanted = [w for w in wanted if w[1] is not None]  # an older pynvml without the id
    ids = [(fid, scope) for _, fid, scope in wanted]
    values = read(device, "field_values", nv.nvmlDeviceGetFieldValues, handle, ids)
    if values is None:
        return out
    members = {getattr(nv, t): m for t, m in _VALUE_MEMBERS if hasattr(nv, t)}
    for (name, _, _), value in zip(wanted, values, strict=False):
        if value.nvmlReturn != nv.NVML_SUCCESS:
            read.failed(
                device, name, int(value.nvmlReturn), f"field value error {value.nvmlReturn}"
            )
            continue
        member = members.get(value.valueType)
        if member is None:
            read.failed(device, name, -1, f"unknown value type {value.valueType}")
            continue
        got = getattr(value.value, member)
        out[name] = int(got) // 1000 if name.startswith("violation_") else int(got)
    return out


def _throttle_reasons(nv: Any, read: FieldReader, device: str, handle: Any) -> Any:
    fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if fn is not None:
        try:
            return fn(handle)
        except nv.NVMLError_FunctionNotFound:
            pass  # a driver older than the name: the throttle-reasons call below
        except nv.NVMLError as exc:
            read.failed(device, "throttle_reasons", int(exc.value), str(exc))
            return None
    return read(device, "throttle_reasons", nv.nvmlDeviceGetCurrentClocksThrottleReasons, handle)


def read_fields(
    nv: Any,
    read: FieldReader,
    device: str,
    h: Any,
    memory: DeviceMemory | None = None,
    slow_every: int = 1,
) -> dict[str, Any]:
    """Every measurement field of GpuSample v2 for one device or MIG device
    (identity, MIG ids and processes excepted). With `memory`, the fields in
    SLOW_FIELDS are read every `slow_every` calls and repeated in between."""
    memory = memory or DeviceMemory()
    slow_tick = memory.tick % max(1, slow_every) == 0 or not memory.slow
    memory.tick += 1
    util = read(device, "utilization", nv.nvmlDeviceGetUtilizationRates, h)
    mem = read(device, "memory", nv.nvmlDeviceGetMemoryInfo, h)
    pstate = read(device, "pstate", nv.nvmlDeviceGetPerformanceState, h)

    def ecc(name: str, error_type: int, counter: int) -> Any:
        return read(device, name, nv.nvmlDeviceGetTotalEccErrors, h, error_type, counter)

    corrected, uncorrected = (
        nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    )
    body: dict[str, Any] = {
        "utilization_gpu": _attr(util, "gpu"),
        "utilization_memory": _attr(util, "memory"),
        "memory_used_bytes": _attr(mem, "used"),
        "memory_total_bytes": _attr(mem, "total"),
        "memory_free_bytes": _attr(mem, "free"),
        "temperature_c": read(
            device, "temperature_c", nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU
        ),
        "fan_speed_percent": read(device, "fan_speed_percent", nv.nvmlDeviceGetFanSpeed, h),
        "power_w": _scaled(read(device, "power_w", nv.nvmlDeviceGetPowerUsage, h), 1000),
        "power_limit_w": _scaled(
            read(device, "power_limit_w", nv.nvmlDeviceGetEnforcedPowerLimit, h), 1000
        ),
        "sm_clock_mhz": read(
            device, "sm_clock_mhz", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM
        ),
        "mem_clock_mhz": read(
            device, "mem_clock_mhz", nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM
        ),
        "pstate": None if pstate == _PSTATE_UNKNOWN else pstate,
        "throttle_reasons": _throttle_reasons(nv, read, device, h),
        "ecc_corrected": ecc("ecc_corrected", corrected, nv.NVML_VOLATILE_ECC),
        "ecc_uncorrected": ecc("ecc_uncorrected", uncorrected, nv.NVML_VOLATILE_ECC),
        "utilization_encoder": _first(
            read(device, "utilization_encoder", nv.nvmlDeviceGetEncoderUtilization, h)
        ),
        "utilization_decoder": _first(
            read(device, "utilization_decoder", nv.nvmlDeviceGetDecoderUtilization, h)
        ),
    }
    body.update(_field_values(nv, read, device, h))
    body.update(_pcie(nv, read, device, h, memory, body, slow_tick))
    if slow_tick:
        memory.slow = _slow_fields(nv, read, device, h)
    body.update(memory.slow)
    return body


def _pcie(
    nv: Any,
    read: FieldReader,
    device: str,
    h: Any,
    memory: DeviceMemory,
    body: dict[str, Any],
    slow_tick: bool,
) -> dict[str, Any]:
    """PCIe KB/s from the byte counters between two ticks; where the counters
    are missing (older GPUs/drivers), or on the first tick, the sampling call,
    which blocks ~20 ms, on slow ticks only."""
    tx, rx = body.pop("_pcie_tx_bytes"), body.pop("_pcie_rx_bytes")
    now = time.monotonic()
    previous, memory.pcie = memory.pcie, (None if tx is None or rx is None else (now, tx, rx))
    if previous is not None and memory.pcie is not None and now > previous[0]:
        dt = now - previous[0]
        return {
            "pcie_tx_kbps": max(0, int((tx - previous[1]) / dt / 1000)),
            "pcie_rx_kbps": max(0, int((rx - previous[2]) / dt / 1000)),
        }
    if not slow_tick and memory.pcie is None and "pcie_tx_kbps" in memory.slow:
        return {k: memory.slow[k] for k in ("pcie_tx_kbps", "pcie_rx_kbps")}
    rates = {
        "pcie_tx_kbps": read(
            device, "pcie_tx_kbps", nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_TX_BYTES
        ),
        "pcie_rx_kbps": read(
            device, "pcie_rx_kbps", nv.nvmlDeviceGetPcieThroughput, h, nv.NVML_PCIE_UTIL_RX_BYTES
        ),
    }
    if memory.pcie is None:  # no counters: carry these between slow ticks
        memory.slow.update(rates)
    return rates


def _slow_fields(nv: Any, read: FieldReader, device: str, h: Any) -> dict[str, Any]:
    """The SLOW_FIELDS: counters that move rarely, some costly to read."""
    remap = read(device, "remapped_rows", nv.nvmlDeviceGetRemappedRows, h)
    sbe = read(
        device,
        "retired_pages_sbe",
        nv.nvmlDeviceGetRetiredPages,
        h,
        nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
    )
    dbe = read(
        device,
        "retired_pages_dbe",
        nv.nvmlDeviceGetRetiredPages,
        h,
        nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
    )
    corrected, uncorrected = (
        nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    )
    aggregate = nv.NVML_AGGREGATE_ECC
    pending = read(device, "retired_pages_pending", nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
    return {
        "energy_mj": read(device, "energy_mj", nv.nvmlDeviceGetTotalEnergyConsumption, h),
        "ecc_corrected_aggregate": read(
            device,
            "ecc_corrected_aggregate",
            nv.nvmlDeviceGetTotalEccErrors,
            h,
            corrected,
            aggregate,
        ),
        "ecc_uncorrected_aggregate": read(
            device,
            "ecc_uncorrected_aggregate",
            nv.nvmlDeviceGetTotalEccErrors,
            h,
            uncorrected,
            aggregate,
        ),
        "retired_pages_sbe": _count(sbe),
        "retired_pages_dbe": _count(dbe),
        "retired_pages": None if sbe is None and dbe is None else len(sbe or ()) + len(dbe or ()),
        "retired_pages_pending": _flag(pending),
        "remapped_rows_correctable": None if remap is None else int(remap[0]),
        "remapped_rows_uncorrectable": None if remap is None else int(remap[1]),
        "remapped_rows_pending": None if remap is None else bool(remap[2]),
        "remapped_rows_failure": None if remap is None else bool(remap[3]),
        "pcie_replay_count": read(
            device, "pcie_replay_count", nv.nvmlDeviceGetPcieReplayCounter, h
        ),
    }


def read_processes(
    nv: Any, read: FieldReader, device: str, h: Any, lookup: Callable[[int], str | None]
) -> list[dict[str, Any]]:
    """Compute and graphics processes on the device, one entry per pid, each
    with the training run that registered it (or an ancestor)."""
    memory: dict[int, int | None] = {}
    for name, fn in (
        ("compute_processes", nv.nvmlDeviceGetComputeRunningProcesses),
        ("graphics_processes", nv.nvmlDeviceGetGraphicsRunningProcesses),
    ):
        for proc in read(device, name, fn, h) or ():
            pid = int(proc.pid)
            used = proc.usedGpuMemory  # None where NVML cannot tell
            used = None if used is None else int(used)
            known = memory.get(pid)
            memory[pid] = used if known is None else max(known, used or 0)
    return [
        {"pid": pid, "used_memory_bytes": used, "run_id": lookup(pid)}
        for pid, used in sorted(memory.items())
    ]


def mig_devices(
    nv: Any, read: FieldReader, parent: str, handle: Any
) -> list[tuple[Any, str, str | None, int | None, int | None]]:
    """(handle, uuid, name, GPU instance id, compute instance id) of each MIG
    device of a GPU in MIG mode; empty for a GPU without MIG."""
    mode = read(parent, "mig_mode", nv.nvmlDeviceGetMigMode, handle)
    if not mode or mode[0] != nv.NVML_DEVICE_MIG_ENABLE:
        return []
    slots = read(parent, "mig_device_count", nv.nvmlDeviceGetMaxMigDeviceCount, handle)
    found = []
    for slot in range(slots or 0):
        try:
            mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nv.NVMLError_NotFound:
            continue  # an empty slot
        except nv.NVMLError as exc:
            read.failed(parent, f"mig_device_{slot}", int(exc.value), str(exc))
            continue
        uuid = read(parent, f"mig_device_{slot}_uuid", nv.nvmlDeviceGetUUID, mig)
        if uuid is None:
            continue
        uuid = str(uuid)
        name = read(uuid, "name", nv.nvmlDeviceGetName, mig)
        gi = read(uuid, "mig_gpu_instance_id", nv.nvmlDeviceGetGpuInstanceId, mig)
        ci = read(uuid, "mig_compute_instance_id", nv.nvmlDeviceGetComputeInstanceId, mig)
        found.append((mig, uuid, None if name is None else str(name), gi, ci))
    return found


def event_kind(nv: Any, event_type: int) -> str:
    """GpuEvent.kind of an NVML event type bitmask."""
    for const, kind in _EVENT_KINDS:
        if event_type & int(getattr(nv, const, 0)):
            return kind
    return "nvml_event"


def handle_key(handle: Any) -> int:
    """The same number for every copy of one device handle (ctypes pointers
    compare by identity, not address), to match event data to a device."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (ctypes.ArgumentError, TypeError):
        return id(handle)
