"""The GPU source: an NVML sample of every GPU each interval, XID/ECC errors as they happen.

Every `interval_s` (monotonic deadlines, no drift) every GPU and MIG device
is sampled, and the samples go to `emit` as one GpuSamples message (columns
packed per message: `schemas/gpu_packed.py`), or, with `ticks_per_message`
above 1, the samples of that many ticks as one message. A second thread waits on an NVML
event set (XID, double- and single-bit ECC) with a short timeout and emits a
GpuEvent the moment one arrives, naming the training runs on that GPU, so an
XID is on record even if the process it killed never reaches another sample.

A GPU that stops answering (NVML_ERROR_GPU_IS_LOST) becomes one `device_lost`
GpuEvent and is skipped, re-probed each tick, until it answers again
(`device_back`). A node without NVML (no library, no driver, no pynvml) logs
one line and the source returns; the agent goes on without it.
"""

from __future__ import annotations

import importlib
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.runs import RunRegistry
from agent.sources.base import Emit, SourceStats, event, now_us
from agent.sources.nvml_fields import (
    UINT_MAX,
    DeviceLost,
    DeviceMemory,
    FieldReader,
    event_kind,
    handle_key,
    mig_devices,
    read_fields,
    read_processes,
)
from schemas.gpu_packed import pack_readable

__all__ = ["GpuConfig", "NvmlSource"]

log = structlog.get_logger("traintrail.nvml")

_WANTED_EVENTS = (
    "nvmlEventTypeXidCriticalError",
    "nvmlEventTypeDoubleBitEccError",
    "nvmlEventTypeSingleBitEccError",
)
# Identity calls failing with these mean the GPU is gone, not that we may not see it.
_LOST = ("GPU_IS_LOST", "UNKNOWN", "RESET_REQUIRED", "GPU_NOT_FOUND")
_NOT_THERE = ("LIBRARY_NOT_FOUND", "DRIVER_NOT_LOADED")
_MAX_PENDING_EVENTS = 10_000
# A GpuSamples message is sent once it holds this many samples, whatever
# ticks_per_message says: ~350 bytes a sample keeps it far below Kafka's
# default 1 MB message limit (message.max.bytes).
MAX_SAMPLES_PER_MESSAGE = 1024


@dataclass(frozen=True)
class GpuConfig:
    """Settings of the GPU source."""

    interval_s: float = 1.0  # one sample of every GPU per interval
    events: bool = True  # XID/ECC errors through an NVML event set, as they happen
    event_wait_ms: int = 500  # longest NVML event wait; bounds how long a stop takes
    # Slow-moving, costly counters (energy, aggregate ECC, retired pages, remapped
    # rows, PCIe replays) are read every this many ticks and repeated in between.
    slow_every: int = 10
    # Samples of this many ticks travel as one GpuSamples message: fewer, larger
    # messages for the whole path, at the price of hardware detectors seeing a
    # sample up to ticks_per_message x interval_s later. XID/ECC events and
    # lost devices are never held back.
    ticks_per_message: int = 1

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"gpu interval_s must be > 0, got {self.interval_s!r}")
        if self.slow_every < 1:
            raise ValueError(f"gpu slow_every must be >= 1, got {self.slow_every!r}")
        if self.ticks_per_message < 1:
            raise ValueError(f"gpu ticks_per_message must be >= 1, got {self.ticks_per_message!r}")
        if self.event_wait_ms <= 0:
            raise ValueError(f"gpu event_wait_ms must be > 0, got {self.event_wait_ms!r}")


@dataclass
class _Mig:
    uuid: str
    handle: Any
    runs: frozenset[str] = frozenset()


@dataclass
class _Device:
    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    lost: bool = False
    runs: frozenset[str] = frozenset()  # on the GPU or its MIG devices, at the last sample
    mig: dict[int, _Mig] = field(default_factory=dict)  # by GPU instance id


class _Hidden(Exception):
    """NVML lists the GPU but will not show it to us (permissions, cgroup)."""


class NvmlSource:
    """GPU samples and GPU events of this node, from NVML."""

    name = "gpu"

    def __init__(
        self, config: GpuConfig, node: str, runs: RunRegistry, nvml: Any | None = None
    ) -> None:
        self.config = config
        self.node = node
        self.runs = runs
        self.stats = SourceStats()
        self.stream = f"gpu/{node}"
        self._nv: Any = nvml  # the pynvml module, or a stand-in with its names
        self._read: FieldReader | None = None
        self._devices: list[_Device] = []
        self._told: set[tuple[int, str]] = set()
        self._register: queue.SimpleQueue[_Device] = queue.SimpleQueue()
        self._memory: dict[str, DeviceMemory] = {}
        # Samples not yet sent: (sample body, time) of the ticks since the last message.
        self._held: list[tuple[dict[str, Any], int]] = []
        self._held_ticks = 0

    # -- lifecycle -------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        nv = self._open()
        if nv is None:
            return
        done = threading.Event()
        watcher: threading.Thread | None = None
        try:
            count = int(nv.nvmlDeviceGetCount())
            if count == 0:
                self._off("NVML sees no GPU on this node")
                return
            self._read = FieldReader(nv)
            self._devices = [_Device(i) for i in range(count)]
            self.stats.alive = True
            self.stats.detail = f"{count} GPU(s), every {self.config.interval_s:g} s"
            log.info("gpu source started", gpus=count, interval_s=self.config.interval_s)
            started = time.monotonic()
            self._tick(emit)  # identifies every GPU before events are registered
            if self.config.events:
                watcher = threading.Thread(
                    target=self._watch, args=(emit, stop, done), name="nvml-events", daemon=True
                )
                watcher.start()
            self._loop(emit, stop, started)
            self._send(emit, self._flush())  # held samples of a partial message
        except nv.NVMLError as exc:
            self._off(f"NVML failed: {exc}")
        finally:
            done.set()
            if watcher is not None:
                watcher.join(timeout=2 * self.config.event_wait_ms / 1000 + 1)
            self.stats.alive = False
            try:
                nv.nvmlShutdown()
            except nv.NVMLError as exc:
                log.warning("nvmlShutdown failed", error=str(exc))

    def _open(self) -> Any | None:
        nv = self._nv
        if nv is None:
            try:
                nv = importlib.import_module("pynvml")
            except ImportError as exc:
                self._off(f"pynvml is not installed ({exc})", expected=True)
                return None
            self._nv = nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            expected = exc.value in {getattr(nv, f"NVML_ERROR_{c}") for c in _NOT_THERE}
            self._off(f"nvmlInit: {exc}", expected=expected)
            return None
        return nv

    def _off(self, why: str, expected: bool = False) -> None:
        self.stats.alive = False
        self.stats.detail = f"off: {why}"
        message = f"NVML not available: {why}; GPU source off"
        if expected:  # a CPU node: nothing is wrong
            log.info(message)
        else:
            log.warning(message)

    def _loop(self, emit: Emit, stop: threading.Event, started: float) -> None:
        interval = self.config.interval_s
        deadline = started + interval
        while not stop.wait(max(0.0, deadline - time.monotonic())):
            self._tick(emit)
            deadline += interval
            now = time.monotonic()
            if deadline < now:  # a tick overran: skip the slots it ate, keep the phase
                deadline += math.ceil((now - deadline) / interval) * interval

    def _send(self, emit: Emit, events: list[dict[str, Any]]) -> bool:
        if not events:
            return True
        try:
            emit(events)
        except Exception as exc:
            self.stats.count(errors=1)
            log.warning("gpu events not accepted", events=len(events), error=str(exc))
            return False
        self.stats.count(emitted=len(events))
        return True

    # -- samples ---------------------------------------------------------------

    def _tick(self, emit: Emit) -> None:
        t = now_us()
        events: list[dict[str, Any]] = []
        for dev in self._devices:
            try:
                bodies, back = self._sample(dev, t)
                events.extend(back)
                self._held.extend((b, t) for b in bodies)
            except DeviceLost as exc:
                if not dev.lost:
                    dev.lost = True
                    log.warning("gpu lost", gpu=dev.uuid, index=dev.index, error=exc.message)
                    events.append(
                        self._event(dev, "device_lost", exc.code, {"error": exc.message}, t)
                    )
            except _Hidden as exc:
                if self._first(dev, "hidden"):
                    log.info("gpu not visible to the agent", index=dev.index, error=str(exc))
            except Exception as exc:  # a bug or a library surprise: the other GPUs go on
                self.stats.count(errors=1)
                if self._first(dev, type(exc).__name__):
                    log.exception("gpu sample failed", gpu=dev.uuid, index=dev.index)
        self._held_ticks += 1
        full = len(self._held) >= MAX_SAMPLES_PER_MESSAGE
        if full or self._held_ticks >= self.config.ticks_per_message:
            events.extend(self._flush())
        self._send(emit, events)

    def _flush(self) -> list[dict[str, Any]]:
        """The held samples as one GpuSamples event (none if nothing is held)."""
        held, self._held, self._held_ticks = self._held, [], 0
        body, first_us, dropped = pack_readable([b for b, _ in held], [t for _, t in held])
        if dropped:  # a reading no column holds (a driver's 2**64-1): counted and said
            self.stats.count(errors=len(dropped))
            log.warning("gpu samples dropped", dropped=len(dropped), error=dropped[0])
        if body is None:
            return []
        return [event("GpuSamples", self.stream, self.node, body, time_us=first_us)]

    def _first(self, dev: _Device, what: str) -> bool:
        """True the first time `what` happens to `dev`: say it once, not every tick."""
        seen = (dev.index, what) in self._told
        self._told.add((dev.index, what))
        return not seen

    def _identify(self, dev: _Device) -> None:
        nv = self._nv
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(dev.index)
            uuid = str(nv.nvmlDeviceGetUUID(handle))
        except nv.NVMLError as exc:
            if exc.value in {getattr(nv, f"NVML_ERROR_{c}", None) for c in _LOST}:
                raise DeviceLost(int(exc.value), str(exc)) from exc
            raise _Hidden(str(exc)) from exc
        assert self._read is not None
        dev.handle, dev.uuid = handle, uuid
        dev.name = str(self._read(uuid, "name", nv.nvmlDeviceGetName, handle) or "")

    def _sample(self, dev: _Device, t: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The sample bodies of `dev` and its MIG devices, and the events to send
        before them (`device_back`)."""
        read = self._read
        assert read is not None
        was_lost = dev.lost
        if dev.handle is None or dev.lost:
            self._identify(dev)
        parts = [self._body(dev.handle, dev.uuid, dev.index, dev.name)]
        mig: dict[int, _Mig] = {}
        for handle, uuid, name, gi, ci in mig_devices(self._nv, read, dev.uuid, dev.handle):
            body = self._body(handle, uuid, dev.index, name or dev.name)
            body.update(
                mig_parent_uuid=dev.uuid, mig_gpu_instance_id=gi, mig_compute_instance_id=ci
            )
            parts.append(body)
            if gi is not None:
                mig[gi] = _Mig(uuid, handle, _run_ids(body))
        dev.mig = mig
        dev.runs = frozenset().union(*(_run_ids(b) for b in parts))
        back = []
        if was_lost:
            dev.lost = False
            log.info("gpu back", gpu=dev.uuid, index=dev.index)
            self._register.put(dev)
            back.append(self._event(dev, "device_back", None, {}, t))
        return parts, back

    def _body(self, handle: Any, uuid: str, index: int, name: str) -> dict[str, Any]:
        nv, read = self._nv, self._read
        assert read is not None
        body: dict[str, Any] = {
            "gpu_uuid": uuid,
            "index": index,
            "name": name,
            "mig_parent_uuid": None,
            "mig_gpu_instance_id": None,
            "mig_compute_instance_id": None,
        }
        memory = self._memory.setdefault(uuid, DeviceMemory())
        body.update(read_fields(nv, read, uuid, handle, memory, self.config.slow_every))
        body["processes"] = read_processes(nv, read, uuid, handle, self.runs.lookup)
        return body

    def _event(
        self, dev: _Device, kind: str, code: int | None, detail: dict[str, str], t: int | None
    ) -> dict[str, Any]:
        body = {
            "gpu_uuid": dev.uuid,
            "index": dev.index,
            "kind": kind,
            "code": code,
            "detail": detail,
            "run_ids": sorted(dev.runs),
        }
        return event("GpuEvent", self.stream, self.node, body, time_us=t)

    # -- events ----------------------------------------------------------------

    def _watch(self, emit: Emit, stop: threading.Event, done: threading.Event) -> None:
        nv = self._nv
        wanted = 0
        for name in _WANTED_EVENTS:
            wanted |= int(getattr(nv, name, 0))
        try:
            evset = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            log.warning("no NVML event set: XID/ECC errors only show in samples", error=str(exc))
            return
        try:
            for dev in self._devices:
                self._subscribe(evset, dev, wanted)
            pending: list[dict[str, Any]] = []
            told = False
            while not (stop.is_set() or done.is_set()):
                while not self._register.empty():
                    self._subscribe(evset, self._register.get(), wanted)
                if pending and self._send(emit, pending):
                    pending = []
                try:
                    data = nv.nvmlEventSetWait_v2(evset, self.config.event_wait_ms)
                except nv.NVMLError_Timeout:
                    continue
                except nv.NVMLError as exc:
                    if not told:
                        told = True
                        log.warning("NVML event wait failed", error=str(exc))
                    stop.wait(self.config.event_wait_ms / 1000)
                    continue
                pending.append(self._gpu_event(data))
                if self._send(emit, pending):
                    pending = []
                del pending[:-_MAX_PENDING_EVENTS]
        finally:
            try:
                nv.nvmlEventSetFree(evset)
            except nv.NVMLError as exc:
                log.debug("nvmlEventSetFree failed", error=str(exc))

    def _subscribe(self, evset: Any, dev: _Device, wanted: int) -> None:
        nv = self._nv
        if dev.handle is None or dev.lost:
            return  # registered when it answers again
        try:
            mask = int(nv.nvmlDeviceGetSupportedEventTypes(dev.handle)) & wanted
            if mask:
                nv.nvmlDeviceRegisterEvents(dev.handle, mask, evset)
        except nv.NVMLError as exc:
            log.info("gpu reports no XID/ECC events", gpu=dev.uuid, error=str(exc))
            return
        if not mask:
            log.info("gpu reports no XID/ECC events", gpu=dev.uuid)

    def _gpu_event(self, data: Any) -> dict[str, Any]:
        nv = self._nv
        etype, edata = int(data.eventType), int(data.eventData)
        kind = event_kind(nv, etype)
        key = handle_key(data.device)
        dev = next((d for d in self._devices if handle_key(d.handle) == key), None)
        if dev is None:
            dev = _Device(index=0, uuid="", handle=data.device)
        detail = {"event_type": hex(etype), "event_data": str(edata)}
        handles, runs = [dev.handle], set(dev.runs)
        gi = int(getattr(data, "gpuInstanceId", UINT_MAX))
        ci = int(getattr(data, "computeInstanceId", UINT_MAX))
        if gi != UINT_MAX:
            detail["gpu_instance_id"] = str(gi)
            mig = dev.mig.get(gi)
            if mig is not None:
                detail["mig_uuid"] = mig.uuid
                handles, runs = [mig.handle], set(mig.runs)
        if ci != UINT_MAX:
            detail["compute_instance_id"] = str(ci)
        runs |= self._runs_now(handles, dev.uuid)
        body = {
            "gpu_uuid": dev.uuid,
            "index": dev.index,
            "kind": kind,
            "code": edata if kind == "xid" else None,
            "detail": detail,
            "run_ids": sorted(runs),
        }
        log.warning("gpu event", gpu=dev.uuid, kind=kind, code=body["code"], runs=body["run_ids"])
        return event("GpuEvent", self.stream, self.node, body)

    def _runs_now(self, handles: list[Any], uuid: str) -> set[str]:
        """Runs with a process on the device right now (the last sample's are kept too:
        the process an XID killed may already be gone)."""
        assert self._read is not None
        found: set[str] = set()
        for handle in handles:
            try:
                procs = read_processes(self._nv, self._read, uuid, handle, self.runs.lookup)
            except DeviceLost:
                continue
            found |= {p["run_id"] for p in procs if p["run_id"]}
        return found


def _run_ids(body: dict[str, Any]) -> frozenset[str]:
    return frozenset(p["run_id"] for p in body["processes"] if p["run_id"])
