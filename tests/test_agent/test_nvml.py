"""The GPU source against a scripted NVML (tests/fake_nvml.py; there is no GPU here).

Every field of GpuSample v2 lands with NVML's value in the schema's unit (the
samples of a tick travel as one packed GpuSamples message), an
unsupported field is null, a lost GPU is one event and no crash, an XID is
emitted within the event wait (not at the next sample), processes map to
their runs, MIG devices are sampled, a node without NVML switches the source
off, and everything emitted fits the schema.
"""

from __future__ import annotations

import ctypes
import inspect
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pynvml
import pytest
import structlog
from structlog.testing import capture_logs

import agent.sources.nvml as nvml_module
import tests.fake_nvml as fake_module
from agent.runs import RunRegistry
from agent.sources.nvml import GpuConfig, NvmlSource
from agent.sources.nvml_fields import handle_key
from schemas import Registry, decode, default_registry, encode
from schemas.gpu_packed import unpack_rows
from schemas.registry import AVRO_DIR
from tests.fake_nvml import FakeGpu, FakeNvml
from tests.samples import body as sample_body
from tests.samples import envelope

NODE = "node-1"
GIB = 2**30


class Sink:
    """The `emit` of a test: every call kept with its arrival time."""

    def __init__(self, fail: Callable[[list[dict[str, Any]]], bool] | None = None) -> None:
        self.calls: list[tuple[float, list[dict[str, Any]]]] = []
        self.fail = fail
        self._cond = threading.Condition()

    def __call__(self, events: list[dict[str, Any]]) -> None:
        if self.fail is not None and self.fail(events):
            raise OSError("spool full")
        with self._cond:
            self.calls.append((time.monotonic(), list(events)))
            self._cond.notify_all()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for _, batch in self.calls for e in batch if kind in (None, e["type"])]

    def rows(self) -> list[dict[str, Any]]:
        """Every sample of every GpuSamples message, in order, with its time_us."""
        return [r for e in self.events("GpuSamples") for r in unpack_rows(e["body"])]

    def samples(self, uuid: str) -> list[dict[str, Any]]:
        """The GpuSample bodies of one device, as the packed messages carry them."""
        return [
            {k: v for k, v in r.items() if k != "time_us"}
            for r in self.rows()
            if r["gpu_uuid"] == uuid
        ]

    def tick_rows(self, call: int) -> list[dict[str, Any]]:
        (message,) = [e for e in self.calls[call][1] if e["type"] == "GpuSamples"]
        return unpack_rows(message["body"])

    def gpu_events(self, kind: str) -> list[dict[str, Any]]:
        return [e["body"] for e in self.events("GpuEvent") if e["body"]["kind"] == kind]

    def wait_for(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, "the source did not get there in time"
                self._cond.wait(min(left, 0.05))


@contextmanager
def running(source: NvmlSource, sink: Sink | None = None) -> Iterator[Sink]:
    sink = sink or Sink()
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "the source did not stop"


def _source(nvml: FakeNvml, runs: RunRegistry | None = None, **config: Any) -> NvmlSource:
    return NvmlSource(GpuConfig(**config), NODE, runs or RunRegistry(), nvml=nvml)


def _fits_schema(events: list[dict[str, Any]]) -> None:
    """Every emitted body encodes with the current schema and decodes back equal."""
    reg = default_registry()
    for e in events:
        data = encode(reg, e["type"], {**e["body"], "envelope": envelope(e["stream"])})
        record = decode(reg, data).record
        del record["envelope"]
        assert record == e["body"], e["type"]


def _gpu(**kw: Any) -> FakeGpu:
    return FakeGpu(**kw)


class TestFakeIsPynvml:
    """The fake only counts if the source would call the same things on a real GPU."""

    def test_every_name_and_value_exists_in_pynvml(self) -> None:
        for name, value in vars(fake_module).items():
            if name.startswith(("NVML_", "nvmlEventType", "nvmlClocksEventReason")):
                assert getattr(pynvml, name) == value, name
            elif name.startswith("NVMLError_"):
                real = getattr(pynvml, name)
                assert real(0).value == value(0).value, name
        for name, fn in vars(FakeNvml).items():
            if name.startswith("nvml") and callable(fn):
                real_params = list(inspect.signature(getattr(pynvml, name)).parameters)
                assert list(inspect.signature(fn).parameters)[1:] == real_params, name

    def test_errors_construct_like_pynvml(self) -> None:
        for code in (3, 4, 10, 15, 999):
            mine, real = fake_module.NVMLError(code), pynvml.NVMLError(code)
            assert type(mine).__name__ == type(real).__name__
            assert mine.value == real.value == code
        assert isinstance(fake_module.NVMLError_GpuIsLost(), fake_module.NVMLError)
        assert fake_module.NVMLError_NotSupported().value == pynvml.NVML_ERROR_NOT_SUPPORTED


class TestSample:
    def test_every_field_lands_with_its_unit(self) -> None:
        gpu = _gpu(uuid="GPU-a", compute_processes=[(4242, 3 * GIB)])
        runs = RunRegistry()
        runs.register(4242, "run-a")
        with running(_source(FakeNvml([gpu]), runs, interval_s=60)) as sink:
            sink.wait_for(lambda: len(sink.samples("GPU-a")) >= 1)
        (message,) = sink.events("GpuSamples")
        assert (message["stream"], message["key"]) == (f"gpu/{NODE}", NODE)
        (row,) = unpack_rows(message["body"])
        assert row.pop("time_us") == message["time_us"]
        expected = {
            "gpu_uuid": "GPU-a",
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "utilization_gpu": 97,
            "utilization_memory": 41,
            "memory_used_bytes": 60 * GIB,
            "memory_total_bytes": 80 * GIB,
            "memory_free_bytes": 20 * GIB,
            "temperature_c": 61,
            "memory_temperature_c": 72,
            "fan_speed_percent": 35,
            "power_w": 612.345,  # mW → W
            "power_limit_w": 700.0,
            "energy_mj": 9_876_543_210,
            "sm_clock_mhz": 1980,
            "mem_clock_mhz": 2619,
            "pstate": 0,
            "throttle_reasons": pynvml.nvmlClocksEventReasonSwPowerCap,
            "ecc_corrected": 3,  # volatile
            "ecc_uncorrected": 1,
            "ecc_corrected_aggregate": 30,
            "ecc_uncorrected_aggregate": 2,
            "retired_pages_sbe": 2,
            "retired_pages_dbe": 1,
            "retired_pages": 3,
            "retired_pages_pending": True,
            "remapped_rows_correctable": 4,
            "remapped_rows_uncorrectable": 1,
            "remapped_rows_pending": True,
            "remapped_rows_failure": False,
            "pcie_tx_kbps": 123_456,
            "pcie_rx_kbps": 654_321,
            "pcie_replay_count": 7,
            "nvlink_tx_kib": sum(1000 + i for i in range(18)),  # all links, not link 0
            "nvlink_rx_kib": sum(5000 + i for i in range(18)),
            "utilization_encoder": 5,
            "utilization_decoder": 6,
            "violation_power_us": 1_000,  # ns → µs
            "violation_thermal_us": 2_000,
            "violation_sync_boost_us": 3_000,
            "violation_board_limit_us": 4_000,
            "violation_low_utilization_us": 5_000,
            "violation_reliability_us": 6_000,
            "mig_parent_uuid": None,
            "mig_gpu_instance_id": None,
            "mig_compute_instance_id": None,
            "processes": [{"pid": 4242, "used_memory_bytes": 3 * GIB, "run_id": "run-a"}],
        }
        assert row == expected
        schema = json.loads((AVRO_DIR / "GpuSample" / "v2.avsc").read_text())
        assert set(expected) == {f["name"] for f in schema["fields"]} - {"envelope"}
        _fits_schema(sink.events())

    def test_unsupported_fields_are_null_not_errors(self) -> None:
        calls = [n for n in vars(FakeNvml) if n.startswith("nvmlDeviceGet")]
        identity = {"nvmlDeviceGetUUID", "nvmlDeviceGetHandleByIndex"}
        fields = {pynvml.NVML_FI_DEV_MEMORY_TEMP, pynvml.NVML_FI_DEV_PERF_POLICY_THERMAL}
        bare = _gpu(uuid="GPU-bare", unsupported={*calls} - identity)
        partial = _gpu(
            uuid="GPU-partial",
            unsupported=set(fields),
            errors={
                "nvmlDeviceGetFanSpeed": pynvml.NVML_ERROR_NO_PERMISSION,
                "nvmlDeviceGetPowerUsage": pynvml.NVML_ERROR_UNKNOWN,
                "nvmlDeviceGetCurrentClocksEventReasons": pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,
            },
            pstate=32,  # NVML_PSTATE_UNKNOWN
        )
        source = _source(FakeNvml([bare, partial]), interval_s=0.02)
        with _debug_logs() as logs, running(source) as sink:
            sink.wait_for(lambda: len(sink.samples("GPU-partial")) >= 3)
        first = sink.samples("GPU-bare")[0]
        assert first["name"] == ""
        assert first["processes"] == []
        nullable = set(first) - {"gpu_uuid", "index", "name", "processes"}
        assert {k: first[k] for k in nullable} == dict.fromkeys(nullable)
        part = sink.samples("GPU-partial")[0]
        assert part["memory_temperature_c"] is None
        assert part["violation_thermal_us"] is None
        assert part["violation_power_us"] == 1_000  # the other field values still came
        assert part["fan_speed_percent"] is None
        assert part["power_w"] is None
        assert part["pstate"] is None
        assert part["throttle_reasons"] == pynvml.nvmlClocksEventReasonSwPowerCap  # old name
        assert part["temperature_c"] == 61
        assert source.stats.errors == 0
        assert sink.events("GpuEvent") == []
        told = [(e["gpu"], e["field"]) for e in logs if e["event"] == "gpu field unavailable"]
        assert len(told) == len(set(told)), "said more than once per (device, field)"
        assert ("GPU-partial", "fan_speed_percent") in told
        _fits_schema(sink.events())

    def test_processes_map_to_their_runs(self, tmp_path: Path) -> None:
        proc = tmp_path / "proc"
        (proc / "4300").mkdir(parents=True)
        (proc / "4300" / "stat").write_text("4300 (pt_data_worker 0) S 4242 1 1 0\n")
        runs = RunRegistry(proc=proc)
        runs.register(4242, "run-a")
        runs.register(5000, "run-b")
        gpu = _gpu(
            uuid="GPU-p",
            compute_processes=[(4242, 10 * GIB), (4300, GIB), (999, None)],
            graphics_processes=[(5000, 2 * GIB), (4242, 10 * GIB)],
        )
        with running(_source(FakeNvml([gpu]), runs, interval_s=60)) as sink:
            sink.wait_for(lambda: len(sink.samples("GPU-p")) >= 1)
        assert sink.samples("GPU-p")[0]["processes"] == [
            {"pid": 999, "used_memory_bytes": None, "run_id": None},
            {"pid": 4242, "used_memory_bytes": 10 * GIB, "run_id": "run-a"},
            {"pid": 4300, "used_memory_bytes": GIB, "run_id": "run-a"},  # a child of 4242
            {"pid": 5000, "used_memory_bytes": 2 * GIB, "run_id": "run-b"},
        ]

    def test_mig_devices_are_sampled_with_their_parent(self) -> None:
        mig_only = {"nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature"}
        parent = _gpu(
            uuid="GPU-p",
            mig=[
                _gpu(
                    uuid="MIG-1",
                    name="NVIDIA H100 80GB HBM3 MIG 3g.40gb",
                    gpu_instance_id=1,
                    compute_instance_id=0,
                    memory_total=40 * GIB,
                    memory_used=GIB,
                    unsupported=mig_only,
                    compute_processes=[(4242, GIB)],
                ),
                _gpu(uuid="MIG-2", gpu_instance_id=2, compute_instance_id=0, unsupported=mig_only),
            ],
        )
        plain = _gpu(uuid="GPU-plain", unsupported={"nvmlDeviceGetMigMode"})
        runs = RunRegistry()
        runs.register(4242, "run-mig")
        with running(_source(FakeNvml([parent, plain]), runs, interval_s=60)) as sink:
            sink.wait_for(lambda: len(sink.rows()) >= 4)
        assert len(sink.calls) == 1
        tick = sink.tick_rows(0)  # one tick, one message
        assert [r["gpu_uuid"] for r in tick] == ["GPU-p", "MIG-1", "MIG-2", "GPU-plain"]
        assert len({r["time_us"] for r in tick}) == 1  # one tick, one time
        mig1 = sink.samples("MIG-1")[0]
        assert mig1["index"] == 0
        assert mig1["name"] == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
        assert (mig1["mig_parent_uuid"], mig1["mig_gpu_instance_id"]) == ("GPU-p", 1)
        assert mig1["mig_compute_instance_id"] == 0
        assert mig1["memory_total_bytes"] == 40 * GIB
        assert mig1["utilization_gpu"] is None
        assert mig1["temperature_c"] is None
        assert mig1["processes"] == [{"pid": 4242, "used_memory_bytes": GIB, "run_id": "run-mig"}]
        assert sink.samples("MIG-2")[0]["name"] == "NVIDIA H100 80GB HBM3"
        assert sink.samples("GPU-p")[0]["mig_parent_uuid"] is None
        assert sink.samples("GPU-plain")[0]["index"] == 1
        _fits_schema(sink.events())

    def test_ticks_keep_their_schedule_when_sampling_is_slow(self) -> None:
        slow = _gpu(uuid="GPU-slow", delays={"nvmlDeviceGetUtilizationRates": 0.03})
        interval = 0.1
        with running(_source(FakeNvml([slow]), interval_s=interval, events=False)) as sink:
            sink.wait_for(lambda: len(sink.calls) >= 11)
        times = [t for t, _ in sink.calls]
        # each tick is due at start + n * interval; sleeping `interval` after
        # every 30 ms sample would be 300 ms late by the 10th
        late = times[10] - (times[0] + 10 * interval)
        assert -0.03 < late < 0.1, late

    def test_ticks_per_message_packs_several_ticks_and_flushes_the_rest_at_stop(self) -> None:
        gpus = [_gpu(uuid="GPU-t0"), _gpu(uuid="GPU-t1")]
        source = _source(FakeNvml(gpus), interval_s=0.02, events=False, ticks_per_message=3)
        with running(source) as sink:
            sink.wait_for(lambda: len(sink.events("GpuSamples")) >= 2)
            # stopping mid-message must still send what is held: poll until the
            # next tick has happened so that something is held
            sink.wait_for(lambda: source._held_ticks > 0)
        messages = [unpack_rows(e["body"]) for e in sink.events("GpuSamples")]
        assert all(len(m) == 6 for m in messages[:-1])
        assert len(messages[-1]) in (2, 4, 6)  # the partial message sent at stop
        for m in messages:
            assert [r["gpu_uuid"] for r in m] == ["GPU-t0", "GPU-t1"] * (len(m) // 2)
            times = [r["time_us"] for r in m]
            assert times == sorted(times) and len(set(times)) == len(m) // 2
        for e in sink.events("GpuSamples"):  # the message's time is its first sample's
            assert e["time_us"] == unpack_rows(e["body"])[0]["time_us"]
        _fits_schema(sink.events())

    def test_a_message_is_sent_once_it_holds_the_most_samples_allowed(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """However many ticks a message may hold, it never outgrows Kafka's
        message size limit: it goes out at MAX_SAMPLES_PER_MESSAGE."""
        monkeypatch.setattr(nvml_module, "MAX_SAMPLES_PER_MESSAGE", 4)
        gpus = [_gpu(uuid="GPU-m0"), _gpu(uuid="GPU-m1")]
        source = _source(FakeNvml(gpus), interval_s=0.02, events=False, ticks_per_message=1000)
        with running(source) as sink:
            sink.wait_for(lambda: len(sink.events("GpuSamples")) >= 3)
        sizes = [e["body"]["count"] for e in sink.events("GpuSamples")]
        assert all(n == 4 for n in sizes[:-1]) and sizes[-1] in (2, 4), sizes

    def test_a_reading_no_column_can_hold_drops_that_sample_only(self) -> None:
        bad = _gpu(uuid="GPU-bad", energy_mj=2**64 - 5)  # beyond int64: not packable
        good = _gpu(uuid="GPU-good")
        source = _source(FakeNvml([bad, good]), interval_s=0.02, events=False)
        with running(source) as sink:
            sink.wait_for(lambda: len(sink.samples("GPU-good")) >= 3)
        assert sink.samples("GPU-bad") == []
        assert source.stats.errors >= 3  # one a tick, counted
        _fits_schema(sink.events())


class TestCostlyFields:
    """Measured on an H100: the PCIe sampling call blocks ~21 ms and the energy
    read costs ~4 ms CPU, so the source avoids them on most ticks."""

    def test_pcie_rate_comes_from_the_byte_counters_between_ticks(self) -> None:
        gpu = _gpu(uuid="GPU-pcie", pcie_tx_bytes=0, pcie_rx_bytes=0)
        calls: list[str] = []
        nvml = FakeNvml([gpu])
        original = nvml.nvmlDeviceGetPcieThroughput

        def counted(handle: Any, counter: int) -> int:
            calls.append("throughput")
            return int(original(handle, counter))

        nvml.nvmlDeviceGetPcieThroughput = counted  # type: ignore[method-assign]
        with running(_source(nvml, interval_s=0.2, events=False)) as sink:
            sink.wait_for(lambda: len(sink.calls) >= 1)
            gpu.pcie_tx_bytes, gpu.pcie_rx_bytes = 2_000_000, 1_000_000  # ~0.2 s later
            sink.wait_for(lambda: len(sink.calls) >= 3)
        bodies = [sink.tick_rows(i)[0] for i in range(3)]
        assert calls == ["throughput", "throughput"]  # first tick only (tx and rx)
        second = bodies[1]
        # 2 MB in ~0.2 s is ~10,000 KB/s; 1 MB ~5,000 KB/s
        assert 6_000 < second["pcie_tx_kbps"] < 14_000, second["pcie_tx_kbps"]
        assert 3_000 < second["pcie_rx_kbps"] < 7_000, second["pcie_rx_kbps"]
        assert bodies[2]["pcie_tx_kbps"] == 0  # no bytes moved since

    def test_slow_counters_are_read_every_n_ticks_and_repeated(self) -> None:
        gpu = _gpu(uuid="GPU-slowfields", energy_mj=1000)
        with running(_source(FakeNvml([gpu]), interval_s=0.05, events=False, slow_every=3)) as sink:
            sink.wait_for(lambda: len(sink.calls) >= 1)
            gpu.energy_mj = 2000
            sink.wait_for(lambda: len(sink.calls) >= 5)
        energy = [sink.tick_rows(i)[0]["energy_mj"] for i in range(5)]
        assert energy[:3] == [1000, 1000, 1000]  # read at tick 0, repeated at 1 and 2
        assert energy[3:5] == [2000, 2000]  # read again at tick 3
        assert all(e is not None for e in energy)


class TestLostDevice:
    def test_lost_gpu_is_one_event_then_skipped_until_back(self) -> None:
        gone = _gpu(uuid="GPU-gone", compute_processes=[(4242, GIB)])
        other = _gpu(uuid="GPU-other")
        runs = RunRegistry()
        runs.register(4242, "run-a")
        fake = FakeNvml([gone, other])
        source = _source(fake, runs, interval_s=0.02)
        with running(source) as sink:
            sink.wait_for(lambda: len(sink.samples("GPU-gone")) >= 2)
            gone.lost = True
            sink.wait_for(lambda: len(sink.gpu_events("device_lost")) == 1)
            before = len(sink.samples("GPU-other"))
            sink.wait_for(lambda: len(sink.samples("GPU-other")) >= before + 5)
            samples_while_lost = len(sink.samples("GPU-gone"))
            gone.lost = False
            sink.wait_for(lambda: len(sink.samples("GPU-gone")) > samples_while_lost + 1)
            assert fake.post_event(gone, pynvml.nvmlEventTypeXidCriticalError, 31) >= 1
            sink.wait_for(lambda: len(sink.gpu_events("xid")) == 1)
        (lost,) = sink.gpu_events("device_lost")
        assert lost["gpu_uuid"] == "GPU-gone"
        assert lost["index"] == 0
        assert lost["code"] == pynvml.NVML_ERROR_GPU_IS_LOST
        assert lost["run_ids"] == ["run-a"]  # what was running when it went
        assert lost["detail"]["error"]
        (back,) = sink.gpu_events("device_back")
        assert back["gpu_uuid"] == "GPU-gone"
        assert source.stats.errors == 0
        _fits_schema(sink.events())

    def test_gpu_lost_at_start_is_reported_and_picked_up_later(self) -> None:
        gpu = _gpu(uuid="GPU-late", lost=True)
        with running(_source(FakeNvml([gpu]), interval_s=0.02)) as sink:
            sink.wait_for(lambda: len(sink.gpu_events("device_lost")) == 1)
            gpu.lost = False
            sink.wait_for(lambda: len(sink.samples("GPU-late")) >= 1)
        assert sink.gpu_events("device_lost")[0]["gpu_uuid"] == ""  # never answered yet
        assert sink.gpu_events("device_back")[0]["gpu_uuid"] == "GPU-late"


class TestEvents:
    def test_xid_is_emitted_within_the_event_wait_not_at_the_next_sample(self) -> None:
        gpu = _gpu(uuid="GPU-x", compute_processes=[(4242, GIB)])
        runs = RunRegistry()
        runs.register(4242, "run-a")
        fake = FakeNvml([gpu])
        source = _source(fake, runs, interval_s=60, event_wait_ms=500)
        stop_took = 0.0
        with running(source) as sink:
            sink.wait_for(lambda: fake.registered(gpu) & pynvml.nvmlEventTypeXidCriticalError)
            assert fake.registered(gpu) == (
                pynvml.nvmlEventTypeXidCriticalError
                | pynvml.nvmlEventTypeDoubleBitEccError
                | pynvml.nvmlEventTypeSingleBitEccError
            )
            posted = time.monotonic()
            fake.post_event(gpu, pynvml.nvmlEventTypeXidCriticalError, 79)
            sink.wait_for(lambda: len(sink.gpu_events("xid")) == 1, timeout=0.5)
            fake.post_event(gpu, pynvml.nvmlEventTypeDoubleBitEccError)
            sink.wait_for(lambda: len(sink.gpu_events("ecc_double_bit")) == 1, timeout=0.5)
            stopping = time.monotonic()
        stop_took = time.monotonic() - stopping
        arrived, batch = next((t, b) for t, b in sink.calls if b[0]["type"] == "GpuEvent")
        assert arrived - posted < 0.5
        assert len(batch) == 1  # its own emit, not riding on a sample
        assert len(sink.rows()) == 1  # the next sample is a minute away
        xid = batch[0]["body"]
        assert xid == {
            "gpu_uuid": "GPU-x",
            "index": 0,
            "kind": "xid",
            "code": 79,
            "detail": {"event_type": "0x8", "event_data": "79"},
            "run_ids": ["run-a"],
        }
        assert (batch[0]["stream"], batch[0]["key"]) == (f"gpu/{NODE}", NODE)
        assert sink.gpu_events("ecc_double_bit")[0]["code"] is None
        assert set(fake.wait_timeouts) == {500}
        assert stop_took < 1.5  # the wait's timeout lets stop through
        assert fake.initialized == 0 and fake.shutdowns == 1
        assert all(s.freed for s in fake.event_sets)
        _fits_schema(sink.events())

    def test_event_in_a_mig_instance_names_that_instance_and_its_runs(self) -> None:
        parent = _gpu(
            uuid="GPU-m",
            compute_processes=[(4242, GIB), (5000, GIB)],
            mig=[
                _gpu(uuid="MIG-a", gpu_instance_id=3, compute_instance_id=0),
                _gpu(
                    uuid="MIG-b",
                    gpu_instance_id=5,
                    compute_instance_id=1,
                    compute_processes=[(5000, GIB)],
                ),
            ],
        )
        runs = RunRegistry()
        runs.register(4242, "run-a")
        runs.register(5000, "run-b")
        fake = FakeNvml([parent])
        with running(_source(fake, runs, interval_s=60)) as sink:
            sink.wait_for(lambda: fake.registered(parent) != 0)
            fake.post_event(parent, pynvml.nvmlEventTypeXidCriticalError, 43, 5, 1)
            sink.wait_for(lambda: len(sink.gpu_events("xid")) == 1)
        (xid,) = sink.gpu_events("xid")
        assert xid["gpu_uuid"] == "GPU-m"
        assert xid["detail"]["mig_uuid"] == "MIG-b"
        assert (xid["detail"]["gpu_instance_id"], xid["detail"]["compute_instance_id"]) == (
            "5",
            "1",
        )
        assert xid["run_ids"] == ["run-b"]

    def test_only_supported_event_types_are_registered(self) -> None:
        xid_only = _gpu(uuid="GPU-1", supported_events=pynvml.nvmlEventTypeXidCriticalError)
        none = _gpu(uuid="GPU-2", supported_events=0)
        fake = FakeNvml([xid_only, none])
        with running(_source(fake, interval_s=60)) as sink:
            sink.wait_for(lambda: fake.registered(xid_only) != 0)
            fake.post_event(xid_only, pynvml.nvmlEventTypeXidCriticalError, 13)
            sink.wait_for(lambda: len(sink.gpu_events("xid")) == 1)
        assert fake.registered(none) == 0
        assert fake.calls["nvmlDeviceRegisterEvents"] == 1

    def test_event_data_finds_its_device_by_pointer_value(self) -> None:
        # real handles are ctypes pointers: two copies of one never compare equal
        def device(address: int) -> Any:
            return ctypes.cast(ctypes.c_void_p(address), pynvml.c_nvmlDevice_t)

        data = pynvml.c_nvmlEventData_t()
        data.device = device(0x5000)
        assert device(0x5000) != data.device
        assert handle_key(data.device) == handle_key(device(0x5000)) != handle_key(device(0x6000))

    def test_an_event_emit_refused_is_sent_again(self) -> None:
        refusals = []

        def refuse_first_event(events: list[dict[str, Any]]) -> bool:
            if events[0]["type"] == "GpuEvent" and not refusals:
                refusals.append(events)
                return True
            return False

        gpu = _gpu(uuid="GPU-r")
        fake = FakeNvml([gpu])
        source = _source(fake, interval_s=60, event_wait_ms=50)
        with running(source, Sink(fail=refuse_first_event)) as sink:
            sink.wait_for(lambda: fake.registered(gpu) != 0)
            fake.post_event(gpu, pynvml.nvmlEventTypeXidCriticalError, 48)
            sink.wait_for(lambda: len(sink.gpu_events("xid")) == 1)
        assert len(refusals) == 1
        assert sink.events("GpuEvent")[0]["event_id"] == refusals[0][0]["event_id"]
        assert source.stats.errors == 1


class TestNoNvml:
    @pytest.mark.parametrize(
        "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
    )
    def test_cpu_node_turns_the_source_off_in_one_line(self, code: int) -> None:
        fake = FakeNvml([_gpu()], init_error=code)
        source = _source(fake)
        sink = Sink()
        started = time.monotonic()
        with _debug_logs() as logs:
            source.run(sink, threading.Event())
        assert time.monotonic() - started < 1.0
        assert sink.calls == []
        assert not source.stats.alive
        assert source.stats.detail.startswith("off: nvmlInit: ")
        (line,) = logs
        assert line["log_level"] == "info"
        assert line["event"].startswith("NVML not available: ")
        assert line["event"].endswith("; GPU source off")

    def test_without_pynvml(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
        source = NvmlSource(GpuConfig(), NODE, RunRegistry())
        with _debug_logs() as logs:
            source.run(Sink(), threading.Event())
        assert "pynvml is not installed" in source.stats.detail
        assert [e["event"] for e in logs] == [
            f"NVML not available: {source.stats.detail[5:]}; GPU source off"
        ]

    def test_real_pynvml_on_this_machine(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            pass
        else:
            pynvml.nvmlShutdown()
            pytest.skip("this machine has NVML; the CPU-node path needs one without")
        source = NvmlSource(GpuConfig(), NODE, RunRegistry())
        started = time.monotonic()
        source.run(Sink(), threading.Event())
        assert time.monotonic() - started < 1.0
        assert source.stats.detail.startswith("off: nvmlInit: ")

    def test_no_gpu_at_all(self) -> None:
        fake = FakeNvml([])
        source = _source(fake)
        source.run(Sink(), threading.Event())
        assert source.stats.detail == "off: NVML sees no GPU on this node"
        assert fake.initialized == 0


class TestSchema:
    def test_a_v1_gpu_sample_reads_into_v2_with_new_fields_null(self) -> None:
        v1 = Registry()
        v1.add("GpuSample", 1, AVRO_DIR / "GpuSample" / "v1.avsc")
        old = {k: v for k, v in sample_body("GpuSample").items() if k in _v1_fields()}
        data = encode(v1, "GpuSample", {**old, "envelope": envelope("gpu/node-1")})
        decoded = decode(default_registry(), data)
        assert (decoded.writer.version, default_registry().current("GpuSample").version) == (1, 2)
        record = decoded.record
        added = set(record) - _v1_fields() - {"envelope"}
        assert len(added) == 27
        assert {name: record[name] for name in added} == dict.fromkeys(added)
        assert {k: record[k] for k in old} == old

    def test_gpu_config_rejects_nonsense(self) -> None:
        with pytest.raises(ValueError, match="interval_s"):
            GpuConfig(interval_s=0)
        with pytest.raises(ValueError, match="ticks_per_message"):
            GpuConfig(ticks_per_message=0)
        with pytest.raises(ValueError, match="event_wait_ms"):
            GpuConfig(event_wait_ms=0)


def _v1_fields() -> set[str]:
    schema = json.loads((AVRO_DIR / "GpuSample" / "v1.avsc").read_text())
    return {f["name"] for f in schema["fields"]} - {"envelope"}


@contextmanager
def _debug_logs() -> Iterator[list[dict[str, Any]]]:
    """Captured structlog entries, debug included, whatever the suite configured."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)
