"""Interval fsync: the spool's second durability policy.

By default the spool fsyncs every batch before the sender hears "accepted":
nothing acknowledged is lost even to a power cut, at the price of one disk
flush per batch (0.8-1 ms on the development VM, most of the agent's cost
per SDK batch). With `[spool] fsync_interval_ms = N` a batch is acknowledged
once written, which already survives the agent being killed (the page cache
belongs to the kernel), and this thread fsyncs whatever was written at most
every N ms, so a power cut loses at most the last N ms of acknowledged
batches. That is the trade PostgreSQL's `synchronous_commit = off` and
Kafka's `log.flush.interval.ms` offer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

__all__ = ["IntervalSync"]

log = structlog.get_logger("traintrail.spool")


@dataclass
class IntervalSync:
    interval_s: float
    # fsyncs everything written so far; raises OSError when the disk fails
    sync: Callable[[], None]
    name: str = "spool"
    syncs: int = 0
    errors: int = 0
    _dirty: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"fsync interval must be > 0 seconds, got {self.interval_s!r}")

    def start(self) -> None:
        self._stop.clear()  # a spool closed and opened again syncs again
        self._thread = threading.Thread(target=self._run, name=f"fsync-{self.name}", daemon=True)
        self._thread.start()

    def written(self) -> None:
        """Data was written (call after the write): the next round fsyncs it."""
        self._dirty = True

    def flush(self) -> None:
        """fsync now if anything is unsynced (each round, and at stop). A
        segment roll fsyncs the file it leaves itself (Spool._roll): this
        only ever syncs the current one."""
        if self._dirty:
            self._dirty = False  # cleared first: a write racing this sets it again
            try:
                self.sync()
                self.syncs += 1
            except OSError as exc:
                self._dirty = True
                self.errors += 1
                log.error("spool fsync failed; will retry", spool=self.name, error=str(exc))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
