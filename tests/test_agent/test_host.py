"""The host sampler against this machine's real psutil readings and processes."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from agent.runs import RunRegistry
from agent.sources.host import HostConfig, HostSource
from schemas import default_registry, encode
from tests.samples import envelope

# A training process with a dataloader-like child: the child burns CPU.
_PARENT = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'while True: pass'])\n"
    "print(child.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _encodes(body: dict[str, Any]) -> None:
    encode(default_registry(), "HostSample", {**body, "envelope": envelope("host/gpu-01")})


@pytest.fixture
def training() -> Iterator[tuple[int, int]]:
    proc = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    yield proc.pid, child
    for p in psutil.Process(proc.pid).children(recursive=True):
        p.kill()
    proc.kill()
    proc.wait()


def test_sample_reads_the_node() -> None:
    source = HostSource(HostConfig(), "gpu-01", RunRegistry())
    source.sample()
    time.sleep(0.1)
    body = source.sample()
    _encodes(body)
    assert 0.0 <= body["cpu_percent"] <= 100.0
    assert 0 < body["memory_used_bytes"] <= body["memory_total_bytes"]
    assert body["memory_total_bytes"] == psutil.virtual_memory().total
    assert body["load1"] >= 0.0 and body["load15"] >= 0.0
    assert body["net_rx_bytes"] >= 0 and body["disk_read_bytes"] >= 0
    assert body["processes"] == []  # no run registered


def test_counters_are_cumulative() -> None:
    source = HostSource(HostConfig(), "gpu-01", RunRegistry())
    first = source.sample()
    psutil.net_io_counters()  # some traffic on lo would only make them grow
    second = source.sample()
    for key in ("disk_read_bytes", "disk_write_bytes", "net_rx_bytes", "net_tx_bytes"):
        assert second[key] >= first[key]


def test_run_processes_and_their_children(training: tuple[int, int]) -> None:
    parent, child = training
    runs = RunRegistry()
    runs.register(parent, "run-7")
    runs.register(999_999_999, "run-gone")  # a pid that does not exist is left out
    source = HostSource(HostConfig(), "gpu-01", runs)
    source.sample()  # primes per-process cpu_percent
    time.sleep(0.5)
    body = source.sample()
    _encodes(body)
    by_pid = {p["pid"]: p for p in body["processes"]}
    assert set(by_pid) == {parent, child}
    assert {p["run_id"] for p in body["processes"]} == {"run-7"}
    assert by_pid[child]["cpu_percent"] > 20.0  # the busy loop
    assert by_pid[parent]["rss_bytes"] > 1_000_000

    runs.register(child, "run-8")  # a child that registered itself keeps its own run
    assert {p["pid"]: p["run_id"] for p in source.sample()["processes"]} == {
        parent: "run-7",
        child: "run-8",
    }
    runs.finish("run-7")
    runs.finish("run-8")
    assert source.sample()["processes"] == []


def test_run_loop_ticks_and_stops() -> None:
    source = HostSource(HostConfig(interval_s=0.1), "gpu-01", RunRegistry())
    got: list[dict[str, Any]] = []
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(got.extend, stop))
    began = time.monotonic()
    thread.start()
    time.sleep(0.75)
    stop.set()
    thread.join(2)
    assert not thread.is_alive() and time.monotonic() - began < 1.5
    assert 4 <= len(got) <= 8
    assert {(e["type"], e["stream"], e["key"]) for e in got} == {
        ("HostSample", "host/gpu-01", "gpu-01")
    }
    times = [e["time_us"] for e in got]
    mean_gap = (times[-1] - times[0]) / (len(times) - 1)
    assert 80_000 < mean_gap < 130_000, times  # on the 0.1 s grid: no drift piles up
    assert source.stats.emitted == len(got) and not source.stats.alive
    for e in got:
        _encodes(e["body"])


def test_emit_failure_is_counted_and_sampling_goes_on() -> None:
    source = HostSource(HostConfig(interval_s=0.05), "gpu-01", RunRegistry())
    stop = threading.Event()
    calls: list[int] = []

    def emit(events: list[dict[str, Any]]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            raise OSError("spool full")

    thread = threading.Thread(target=source.run, args=(emit, stop))
    thread.start()
    time.sleep(0.3)
    stop.set()
    thread.join(2)
    assert source.stats.errors == 1 and source.stats.emitted == len(calls) - 1 >= 2


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        HostConfig(interval_s=0)


def test_registry_forgets_processes_that_ended() -> None:
    """Attached ranks never send RunFinished: their pids go when they die."""
    import subprocess
    import sys

    from agent.runs import RunRegistry

    runs = RunRegistry()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    runs.register(child.pid, "r-attached")
    assert runs.pids() == {child.pid: "r-attached"}
    child.kill()
    child.wait()
    assert runs.pids() == {}
