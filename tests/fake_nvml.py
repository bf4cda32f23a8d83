"""A stand-in for pynvml (nvidia-ml-py), driven by scripted device states.

There is no GPU in CI, so the GPU source is tested against this: the same
function names, signatures, constants and exception classes as pynvml
(`tests/test_agent/test_nvml.py` checks every name and value against the
installed pynvml), answering from `FakeGpu` dataclasses a test edits while the
source runs. A name in `FakeGpu.unsupported` answers NVML_ERROR_NOT_SUPPORTED,
one in `FakeGpu.errors` its scripted error code, and a `lost` GPU answers
NVML_ERROR_GPU_IS_LOST to everything, as a GPU that fell off the bus does.
`FakeNvml.post_event` delivers an event to every event set that registered
for it, and `nvmlEventSetWait_v2` honours its timeout like the real call.

Only NVML is faked: Kafka and ClickHouse are always the real thing.
"""

from __future__ import annotations

import queue
import string
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["FakeGpu", "FakeNvml", "NVMLError"]

# ---- constants: the same names and values as pynvml -------------------------

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_ALREADY_INITIALIZED = 5
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_INSUFFICIENT_POWER = 8
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_IRQ_ISSUE = 11
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_CORRUPTED_INFOROM = 14
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_RESET_REQUIRED = 16
NVML_ERROR_OPERATING_SYSTEM = 17
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_IN_USE = 19
NVML_ERROR_MEMORY = 20
NVML_ERROR_NO_DATA = 21
NVML_ERROR_GPU_NOT_FOUND = 28
NVML_ERROR_UNKNOWN = 999

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
NVML_PCIE_UTIL_TX_BYTES = 0
NVML_PCIE_UTIL_RX_BYTES = 1
NVML_DEVICE_MIG_DISABLE = 0x0
NVML_DEVICE_MIG_ENABLE = 0x1

NVML_VALUE_TYPE_DOUBLE = 0
NVML_VALUE_TYPE_UNSIGNED_INT = 1
NVML_VALUE_TYPE_UNSIGNED_LONG = 2
NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3
NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4
NVML_VALUE_TYPE_SIGNED_INT = 5
NVML_VALUE_TYPE_UNSIGNED_SHORT = 6

NVML_FI_DEV_PERF_POLICY_POWER = 74
NVML_FI_DEV_PERF_POLICY_THERMAL = 75
NVML_FI_DEV_PERF_POLICY_SYNC_BOOST = 76
NVML_FI_DEV_PERF_POLICY_BOARD_LIMIT = 77
NVML_FI_DEV_PERF_POLICY_LOW_UTILIZATION = 78
NVML_FI_DEV_PERF_POLICY_RELIABILITY = 79
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_FI_DEV_PCIE_COUNT_TX_BYTES = 197
NVML_FI_DEV_PCIE_COUNT_RX_BYTES = 198
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138
NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139

nvmlEventTypeSingleBitEccError = 0x0000000000000001
nvmlEventTypeDoubleBitEccError = 0x0000000000000002
nvmlEventTypePState = 0x0000000000000004
nvmlEventTypeXidCriticalError = 0x0000000000000008
nvmlEventTypeClock = 0x0000000000000010
nvmlEventTypeNone = 0x0000000000000000

nvmlClocksEventReasonGpuIdle = 0x0000000000000001
nvmlClocksEventReasonSwPowerCap = 0x0000000000000004
nvmlClocksEventReasonHwSlowdown = 0x0000000000000008
nvmlClocksEventReasonSwThermalSlowdown = 0x0000000000000020

_UINT_MAX = 0xFFFFFFFF
_PERF_POLICY_FIELDS = range(NVML_FI_DEV_PERF_POLICY_POWER, NVML_FI_DEV_PERF_POLICY_RELIABILITY + 1)


# ---- errors: NVMLError(value) builds the subclass for that code, as pynvml does


class NVMLError(Exception):
    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: RUF012
    value: int

    def __new__(cls, value: int) -> NVMLError:
        typ = NVMLError._valClassMapping.get(value, cls) if cls is NVMLError else cls
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return f"NVML error {self.value} (fake)"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


def _error_classes() -> dict[str, type[NVMLError]]:
    made: dict[str, type[NVMLError]] = {}
    for const, code in list(globals().items()):
        if not const.startswith("NVML_ERROR_"):
            continue
        name = "NVMLError_" + string.capwords(const.replace("NVML_ERROR_", ""), "_").replace(
            "_", ""
        )

        def new(typ: type[NVMLError], *_args: Any, _code: int = code) -> NVMLError:
            return NVMLError.__new__(typ, _code)

        cls = type(name, (NVMLError,), {"__new__": new, "__module__": __name__})
        NVMLError._valClassMapping[code] = cls
        made[name] = cls
    return made


globals().update(_error_classes())


class NVMLLibraryMismatchError(Exception):
    """pynvml's error for a versioned function the driver lacks (not an NVMLError)."""


# ---- scripted state ------------------------------------------------------------


@dataclass
class FakeGpu:
    """Everything one device answers. Units are NVML's (mW, KB/s, KiB, ns)."""

    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    name: str = "NVIDIA H100 80GB HBM3"
    utilization_gpu: int = 97
    utilization_memory: int = 41
    memory_total: int = 80 * 2**30
    memory_used: int = 60 * 2**30
    temperature: int = 61
    memory_temperature: int = 72
    fan_speed: int = 35
    power_mw: int = 612_345
    power_limit_mw: int = 700_000
    energy_mj: int = 9_876_543_210
    sm_clock: int = 1980
    mem_clock: int = 2619
    pstate: int = 0
    clocks_event_reasons: int = nvmlClocksEventReasonSwPowerCap
    ecc: dict[tuple[int, int], int] = field(
        default_factory=lambda: {
            (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC): 3,
            (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC): 1,
            (NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_AGGREGATE_ECC): 30,
            (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_AGGREGATE_ECC): 2,
        }
    )
    retired_sbe: list[int] = field(default_factory=lambda: [0x1000, 0x2000])
    retired_dbe: list[int] = field(default_factory=lambda: [0x3000])
    retired_pending: int = 1
    remapped_rows: tuple[int, int, int, int] = (4, 1, 1, 0)  # corr, unc, pending, failure
    pcie_tx_kbps: int = 123_456
    pcie_rx_kbps: int = 654_321
    pcie_replay: int = 7
    # cumulative PCIe bytes (NVML_FI_DEV_PCIE_COUNT_*); None: not supported, as on older GPUs
    pcie_tx_bytes: int | None = None
    pcie_rx_bytes: int | None = None
    nvlink_tx_kib: list[int] = field(default_factory=lambda: [1000 + i for i in range(18)])
    nvlink_rx_kib: list[int] = field(default_factory=lambda: [5000 + i for i in range(18)])
    encoder_util: int = 5
    decoder_util: int = 6
    violation_ns: dict[int, int] = field(
        default_factory=lambda: {fid: (fid - 73) * 1_000_000 for fid in _PERF_POLICY_FIELDS}
    )
    compute_processes: list[tuple[int, int | None]] = field(default_factory=list)
    graphics_processes: list[tuple[int, int | None]] = field(default_factory=list)
    # NVML function names, or NVML_FI_* field ids, that answer NOT_SUPPORTED / an error code
    unsupported: set[str | int] = field(default_factory=set)
    errors: dict[str | int, int] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)  # NVML function name → seconds
    lost: bool = False
    supported_events: int = (
        nvmlEventTypeXidCriticalError
        | nvmlEventTypeDoubleBitEccError
        | nvmlEventTypeSingleBitEccError
        | nvmlEventTypePState
        | nvmlEventTypeClock
    )
    mig: list[FakeGpu] = field(default_factory=list)  # non-empty: MIG mode on, these its devices
    gpu_instance_id: int | None = None  # set on a MIG device
    compute_instance_id: int | None = None
    parent: FakeGpu | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for child in self.mig:
            child.parent = self


class _Obj:
    """A plain attribute bag, like pynvml's friendly objects and ctypes structs."""

    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


_MEMBERS = {
    NVML_VALUE_TYPE_DOUBLE: "dVal",
    NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
    NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
    NVML_VALUE_TYPE_SIGNED_INT: "siVal",
    NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
}


def _value(value_type: int, value: int) -> _Obj:
    # A C union: only the member named by valueType holds the value; reading
    # another one gets garbage, so a reader that ignores valueType is caught.
    members: dict[str, Any] = {m: -7_777_777 for m in _MEMBERS.values()}
    members["dVal"] = float("nan")
    members[_MEMBERS[value_type]] = float(value) if value_type == 0 else value
    return _Obj(**members)


class _EventSet:
    def __init__(self) -> None:
        self.registered: dict[int, tuple[FakeGpu, int]] = {}
        self.queue: queue.Queue[_Obj] = queue.Queue()
        self.freed = False


class FakeNvml:
    """One fake NVML library instance: pass it as `nvml=` where pynvml would be."""

    def __init__(self, gpus: list[FakeGpu] | None = None, init_error: int | None = None) -> None:
        self.gpus = list(gpus or [])
        self.init_error = init_error
        self.initialized = 0
        self.shutdowns = 0
        self.calls: Counter[str] = Counter()
        self.wait_timeouts: list[int] = []
        self.event_sets: list[_EventSet] = []
        self._lock = threading.Lock()

    # -- test controls -------------------------------------------------------

    def post_event(
        self,
        gpu: FakeGpu,
        event_type: int,
        data: int = 0,
        gpu_instance_id: int = _UINT_MAX,
        compute_instance_id: int = _UINT_MAX,
    ) -> int:
        """Deliver an event as the driver would; returns how many sets got it."""
        delivered = 0
        for evset in list(self.event_sets):
            reg = evset.registered.get(id(gpu))
            if reg is not None and reg[1] & event_type and not evset.freed:
                evset.queue.put(
                    _Obj(
                        device=gpu,
                        eventType=event_type,
                        eventData=data,
                        gpuInstanceId=gpu_instance_id,
                        computeInstanceId=compute_instance_id,
                    )
                )
                delivered += 1
        return delivered

    def registered(self, gpu: FakeGpu) -> int:
        """The event mask registered for `gpu` across live event sets."""
        mask = 0
        for evset in self.event_sets:
            if not evset.freed and id(gpu) in evset.registered:
                mask |= evset.registered[id(gpu)][1]
        return mask

    # -- plumbing ------------------------------------------------------------

    def _check(self, fn: str) -> None:
        with self._lock:
            self.calls[fn] += 1
        if not self.initialized:
            raise NVMLError(NVML_ERROR_UNINITIALIZED)

    def _dev(self, handle: Any, fn: str) -> FakeGpu:
        self._check(fn)
        if not isinstance(handle, FakeGpu):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        if handle.lost or (handle.parent is not None and handle.parent.lost):
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if fn in handle.unsupported:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if fn in handle.errors:
            raise NVMLError(handle.errors[fn])
        if fn in handle.delays:
            time.sleep(handle.delays[fn])
        return handle

    # -- library -------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.initialized += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.initialized -= 1
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        if "nvmlDeviceGetHandleByIndex" in gpu.errors:
            raise NVMLError(gpu.errors["nvmlDeviceGetHandleByIndex"])
        return gpu

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return self._dev(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return self._dev(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> _Obj:
        gpu = self._dev(handle, "nvmlDeviceGetUtilizationRates")
        return _Obj(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> _Obj:
        gpu = self._dev(handle, "nvmlDeviceGetMemoryInfo")
        free = gpu.memory_total - gpu.memory_used
        return _Obj(total=gpu.memory_total, free=free, used=gpu.memory_used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetFanSpeed").fan_speed

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetEnforcedPowerLimit").power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetTotalEnergyConsumption").energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetClockInfo")
        clocks = {NVML_CLOCK_SM: gpu.sm_clock, NVML_CLOCK_MEM: gpu.mem_clock}
        if type not in clocks:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return clocks[type]

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetPerformanceState").pstate

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons").clocks_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return gpu.clocks_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        gpu = self._dev(handle, "nvmlDeviceGetTotalEccErrors")
        key = (errorType, counterType)
        if key not in gpu.ecc:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.ecc[key]

    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]:
        gpu = self._dev(device, "nvmlDeviceGetRetiredPages")
        if sourceFilter == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS:
            return list(gpu.retired_sbe)
        if sourceFilter == NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
            return list(gpu.retired_dbe)
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        return self._dev(device, "nvmlDeviceGetRetiredPagesPendingStatus").retired_pending

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        return self._dev(device, "nvmlDeviceGetRemappedRows").remapped_rows

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        gpu = self._dev(device, "nvmlDeviceGetPcieThroughput")
        if counter == NVML_PCIE_UTIL_TX_BYTES:
            return gpu.pcie_tx_kbps
        if counter == NVML_PCIE_UTIL_RX_BYTES:
            return gpu.pcie_rx_kbps
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetPcieReplayCounter").pcie_replay

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        return [self._dev(handle, "nvmlDeviceGetEncoderUtilization").encoder_util, 167_000]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        return [self._dev(handle, "nvmlDeviceGetDecoderUtilization").decoder_util, 167_000]

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[Any]) -> list[_Obj]:
        gpu = self._dev(handle, "nvmlDeviceGetFieldValues")
        out = []
        for fid in fieldIds:
            try:
                field_id, scope = fid
            except TypeError:  # a bare id leaves scopeId at 0, as in pynvml
                field_id, scope = fid, 0
            out.append(self._field(gpu, field_id, scope))
        return out

    def _field(self, gpu: FakeGpu, field_id: int, scope: int) -> _Obj:
        def answer(ret: int, vtype: int = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, v: int = 0) -> _Obj:
            return _Obj(
                fieldId=field_id,
                scopeId=scope,
                timestamp=0,
                latencyUsec=0,
                valueType=vtype,
                nvmlReturn=ret,
                value=_value(vtype, v),
            )

        if field_id in gpu.unsupported:
            return answer(NVML_ERROR_NOT_SUPPORTED)
        if field_id in gpu.errors:
            return answer(gpu.errors[field_id])
        if field_id == NVML_FI_DEV_MEMORY_TEMP:
            return answer(NVML_SUCCESS, NVML_VALUE_TYPE_UNSIGNED_INT, gpu.memory_temperature)
        if field_id in (
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
            NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX,
        ):
            links = (
                gpu.nvlink_tx_kib
                if field_id == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
                else gpu.nvlink_rx_kib
            )
            if scope == _UINT_MAX:  # every link summed
                return answer(NVML_SUCCESS, v=sum(links))
            if scope < len(links):
                return answer(NVML_SUCCESS, v=links[scope])
            return answer(NVML_ERROR_INVALID_ARGUMENT)
        if field_id in (NVML_FI_DEV_PCIE_COUNT_TX_BYTES, NVML_FI_DEV_PCIE_COUNT_RX_BYTES):
            count = (
                gpu.pcie_tx_bytes
                if field_id == NVML_FI_DEV_PCIE_COUNT_TX_BYTES
                else (gpu.pcie_rx_bytes)
            )
            if count is None:
                return answer(NVML_ERROR_NOT_SUPPORTED)
            return answer(NVML_SUCCESS, NVML_VALUE_TYPE_UNSIGNED_INT, count)
        if field_id in gpu.violation_ns:
            return answer(NVML_SUCCESS, v=gpu.violation_ns[field_id])
        return answer(NVML_ERROR_INVALID_ARGUMENT)

    def _processes(self, procs: list[tuple[int, int | None]], gpu: FakeGpu) -> list[_Obj]:
        gi = gpu.gpu_instance_id if gpu.gpu_instance_id is not None else _UINT_MAX
        ci = gpu.compute_instance_id if gpu.compute_instance_id is not None else _UINT_MAX
        return [
            _Obj(pid=pid, usedGpuMemory=mem, gpuInstanceId=gi, computeInstanceId=ci)
            for pid, mem in procs
        ]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[_Obj]:
        gpu = self._dev(handle, "nvmlDeviceGetComputeRunningProcesses")
        return self._processes(gpu.compute_processes, gpu)

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: Any) -> list[_Obj]:
        gpu = self._dev(handle, "nvmlDeviceGetGraphicsRunningProcesses")
        return self._processes(gpu.graphics_processes, gpu)

    # -- MIG -----------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        gpu = self._dev(device, "nvmlDeviceGetMigMode")
        mode = NVML_DEVICE_MIG_ENABLE if gpu.mig else NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        gpu = self._dev(device, "nvmlDeviceGetMaxMigDeviceCount")
        return 7 if gpu.mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> FakeGpu:
        gpu = self._dev(device, "nvmlDeviceGetMigDeviceHandleByIndex")
        if index >= len(gpu.mig):
            raise NVMLError(NVML_ERROR_NOT_FOUND)
        return gpu.mig[index]

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> FakeGpu:
        gpu = self._dev(migDevice, "nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        if gpu.parent is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.parent

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        gpu = self._dev(device, "nvmlDeviceGetGpuInstanceId")
        if gpu.gpu_instance_id is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        gpu = self._dev(device, "nvmlDeviceGetComputeInstanceId")
        if gpu.compute_instance_id is None:
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return gpu.compute_instance_id

    # -- events --------------------------------------------------------------

    def nvmlEventSetCreate(self) -> _EventSet:
        self._check("nvmlEventSetCreate")
        evset = _EventSet()
        self.event_sets.append(evset)
        return evset

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        return self._dev(handle, "nvmlDeviceGetSupportedEventTypes").supported_events

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: _EventSet) -> None:
        gpu = self._dev(handle, "nvmlDeviceRegisterEvents")
        if eventTypes & ~gpu.supported_events:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        eventSet.registered[id(gpu)] = (gpu, eventTypes)

    def nvmlEventSetWait_v2(self, eventSet: _EventSet, timeoutms: int) -> _Obj:
        self._check("nvmlEventSetWait_v2")
        self.wait_timeouts.append(timeoutms)
        try:
            return eventSet.queue.get(timeout=timeoutms / 1000)
        except queue.Empty:
            raise NVMLError(NVML_ERROR_TIMEOUT) from None

    def nvmlEventSetFree(self, eventSet: _EventSet) -> None:
        self._check("nvmlEventSetFree")
        eventSet.freed = True


# The module's constants and error classes are attributes of every instance
# too, so an instance stands where the pynvml module would.
for _name, _val in list(globals().items()):
    if _name.startswith(
        ("NVML_", "nvmlEventType", "nvmlClocksEventReason", "NVMLError", "NVMLLib")
    ):
        setattr(FakeNvml, _name, _val)
