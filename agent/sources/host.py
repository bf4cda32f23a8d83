"""The node itself, sampled with psutil → HostSample on `host/<node>`.

Every `interval_s`, on a drift-free schedule (ticks at start + k·interval by
the monotonic clock; a tick missed because the machine stalled is skipped, not
made up): CPU percent since the previous sample (psutil's non-blocking form,
primed once at start), load averages, memory used (total − available, what
free(1) calls used) and total, and the cumulative
disk read/write and network rx/tx byte counters since boot (the consumer takes
differences; a counter that goes back means a reboot or a wrapped NIC counter).
Per training run: every pid the run registry knows and all their descendants,
each with its CPU percent since the previous sample (0.0 on the first sample a
process appears in) and RSS.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil
import structlog

from agent.runs import RunRegistry
from agent.sources.base import Emit, SourceStats, event

__all__ = ["HostConfig", "HostSource"]

log = structlog.get_logger("traintrail.sources.host")


@dataclass(frozen=True)
class HostConfig:
    """Args:
    interval_s: seconds between samples."""

    interval_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"host interval_s must be > 0, got {self.interval_s!r}")


class HostSource:
    """Samples the node with psutil (see the module docstring)."""

    name = "host"

    def __init__(self, config: HostConfig, node: str, runs: RunRegistry) -> None:
        self.config = config
        self.node = node
        self.runs = runs
        self.stats = SourceStats()
        self.stream = f"host/{node}"
        self._procs: dict[int, psutil.Process] = {}  # kept: cpu_percent needs the last call
        self._primed = False

    def run(self, emit: Emit, stop: threading.Event) -> None:
        try:
            self.sample()  # primes cpu_percent; its zeros are not sent
        except Exception as exc:  # psutil cannot read this system at all
            self.stats.detail = f"psutil cannot sample this node: {exc}"
            log.warning("host source disabled", error=str(exc))
            return
        self.stats.alive = True
        self.stats.detail = f"sampling every {self.config.interval_s}s"
        interval = self.config.interval_s
        deadline = time.monotonic() + interval
        try:
            while not stop.wait(max(0.0, deadline - time.monotonic())):
                now = time.monotonic()
                if now - deadline >= interval:  # stalled: skip the missed ticks
                    deadline += (now - deadline) // interval * interval
                deadline += interval
                try:
                    body = self.sample()
                except Exception as exc:
                    self.stats.count(errors=1)
                    log.error("host sample failed", error=str(exc))
                    continue
                try:
                    emit([event("HostSample", self.stream, self.node, body)])
                except Exception as exc:  # the spool refused; the next sample follows
                    self.stats.count(errors=1)
                    log.error("emit failed; host sample dropped", error=str(exc))
                    continue
                self.stats.count(emitted=1)
        finally:
            self.stats.alive = False

    def sample(self) -> dict[str, Any]:
        """One HostSample body (without the envelope)."""
        if not self._primed:
            psutil.cpu_percent(interval=None)
            self._primed = True
        cpu = psutil.cpu_percent(interval=None)
        load1, load5, load15 = psutil.getloadavg()
        mem = psutil.virtual_memory()
        disk = psutil.disk_io_counters()  # None where the kernel exposes no disks
        net = psutil.net_io_counters()
        return {
            "cpu_percent": float(cpu),
            "load1": float(load1),
            "load5": float(load5),
            "load15": float(load15),
            "memory_used_bytes": int(mem.total - mem.available),
            "memory_total_bytes": int(mem.total),
            "disk_read_bytes": int(disk.read_bytes) if disk else 0,
            "disk_write_bytes": int(disk.write_bytes) if disk else 0,
            "net_rx_bytes": int(net.bytes_recv) if net else 0,
            "net_tx_bytes": int(net.bytes_sent) if net else 0,
            "processes": self._processes(),
        }

    def _processes(self) -> list[dict[str, Any]]:
        registered = self.runs.pids()
        wanted: dict[int, str] = {}
        for pid, run_id in registered.items():
            proc = self._proc(pid)
            if proc is None:
                continue
            wanted.setdefault(pid, run_id)
            try:
                children = proc.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                # a descendant registered itself under a run: that registration wins
                wanted.setdefault(child.pid, registered.get(child.pid, run_id))
        out: list[dict[str, Any]] = []
        for pid, run_id in sorted(wanted.items()):
            proc = self._proc(pid)
            if proc is None:
                continue
            try:
                with proc.oneshot():
                    cpu = proc.cpu_percent(interval=None)
                    rss = proc.memory_info().rss
            except psutil.Error:
                self._procs.pop(pid, None)
                continue
            out.append(
                {"pid": pid, "run_id": run_id, "cpu_percent": float(cpu), "rss_bytes": int(rss)}
            )
        for pid in set(self._procs) - set(wanted):  # exited or no longer of a run
            del self._procs[pid]
        return out

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is not None and proc.is_running():  # is_running also catches pid reuse
            return proc
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            self._procs.pop(pid, None)
            return None
        self._procs[pid] = proc
        return proc
