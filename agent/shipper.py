"""spools → Kafka: produce every spooled record, ack it on its delivery report.

One thread owns the producer. It reads each spool lazily from a cursor
(critical spool first), so memory stays bounded however long Kafka is away:
what waits is on disk, and librdkafka's own queue is capped. Keys keep one
run's (or one node's) events on one partition; the idempotent producer keeps
them in order there and retries until delivered (`message.timeout.ms=0`).
Each spool read goes to the producer in one call and a poll's delivery
reports come back as one list (agent/producer.py): the C producer makes no
Python call per message.

A failed delivery report is a permanent error for that record (too large,
not authorized): it is logged and counted and stays in the spool, which then
cannot trim that segment, so the problem stays visible. A fatal producer
error replaces the producer and reads every spool again from its oldest
undelivered record.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import structlog

from agent.producer import FATAL, PURGED, UNREACHABLE, DeliveryProducer, Reports, new_producer
from agent.spool import Record, Spool

__all__ = ["Shipper", "ShipperStats"]

log = structlog.get_logger("traintrail.shipper")

_READ_BATCH = 500


@dataclass
class ShipperStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    last_delivery: float | None = None
    broker_down_since: float | None = None
    latencies: list[float] = field(default_factory=list)  # drained by the metrics exporter


@dataclass
class Shipper:
    spools: list[Spool]
    bootstrap: str = "127.0.0.1:19092"
    compression: str = "lz4"
    linger_ms: int = 5
    producer_extra: dict[str, object] = field(default_factory=dict)
    stats: ShipperStats = field(default_factory=ShipperStats)

    def __post_init__(self) -> None:
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rebuild = False
        self._cursors = [0] * len(self.spools)
        # stop() settles a last flush's reports while the thread may still run
        # (a join that timed out): counters and acks under one lock.
        self._settle_lock = threading.Lock()
        for spool in self.spools:
            spool.on_append = self._nudge
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._run, name="shipper", daemon=True)

    def _new_producer(self) -> DeliveryProducer:
        return new_producer(
            self.bootstrap, self.compression, self.linger_ms, extra=dict(self.producer_extra)
        )

    def _nudge(self) -> None:
        # Event.set takes a lock and notifies every time; while the thread is
        # busy producing the flag stays set and there is no one to wake. The
        # record is in the spool before this check, and the thread clears the
        # flag before it reads, so a set flag means a read is still to come.
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        self._cursors = [spool.first_rid() for spool in self.spools]
        self._thread.start()

    def stop(self, timeout: float) -> int:
        """Stop producing, wait up to `timeout` for delivery reports; return
        how many records stay undelivered (they remain spooled)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._apply(self._producer.poll(0))
        try:
            self._apply(self._producer.close())
        except RuntimeError as exc:  # the thread still polls it (its join timed out)
            log.warning("producer not closed", error=str(exc))
        return sum(spool.stats().pending for spool in self.spools)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._rebuild:
                self._replace_producer()
            produced = 0
            for i, spool in enumerate(self.spools):
                records, self._cursors[i] = spool.read(self._cursors[i], _READ_BATCH)
                if records and not self._produce(i, records):
                    return  # stopping; the rest stays spooled
                produced += len(records)
            if produced:
                self._poll(0)
                continue
            # Idle: serve delivery reports (a wait in librdkafka, not a spin)
            # until an append wakes us.
            while not (self._wake.is_set() or self._stop.is_set() or self._rebuild):
                self._poll(0.05)
            self._wake.clear()

    def _produce(self, i: int, records: list[Record]) -> bool:
        """Hand one read of spool `i` to librdkafka; False when stopped while
        its queue was full."""
        started = time.monotonic()  # one clock read per read of up to 500 records
        done = 0
        while True:
            taken, refused = self._producer.produce(i, records[done:] if done else records, started)
            done += taken
            for failure in refused:
                self._failed(failure.topic, failure.name, failure.reason)
            self.stats.produced += taken - len(refused)
            if done == len(records):
                return True
            # librdkafka's queue is full (broker slow or down): wait for
            # reports; the spool on disk keeps absorbing new events.
            if self._stop.is_set():
                return False
            self._poll(0.1)

    def _poll(self, timeout: float) -> None:
        self._apply(self._producer.poll(timeout))

    def _apply(self, reports: Reports) -> None:
        if reports.delivered:
            self._settle(reports.delivered)
        for failure in reports.failed:
            if self._stop.is_set() or failure.code in PURGED:
                continue  # purged (shutdown, producer rebuild): still spooled, read again
            self._failed(failure.topic, failure.name, failure.reason)
            if failure.code == FATAL:
                self._rebuild = True
        for error in reports.errors:
            self._on_error(error.code, error.name, error.reason)

    def _failed(self, topic: str, name: str, reason: str) -> None:
        self.stats.failed += 1
        log.error("delivery failed", topic=topic, error=f"{name}: {reason}")

    def _settle(self, delivered: list[tuple[int, int, float]]) -> None:
        """Ack in the spools what a poll's delivery reports confirmed: one
        lock and one trim per spool for the lot, not one per record."""
        now = time.monotonic()
        with self._settle_lock:
            if len(self.spools) == 1:
                self.spools[0].ack_many([rid for _, rid, _ in delivered])
            else:
                for i, spool in enumerate(self.spools):
                    rids = [rid for j, rid, _ in delivered if j == i]
                    if rids:
                        spool.ack_many(rids)
            stats = self.stats
            stats.delivered += len(delivered)
            stats.last_delivery = time.time()
            stats.broker_down_since = None
            room = 100_000 - len(stats.latencies)
            stats.latencies += [now - started for _, _, started in delivered[: max(0, room)]]

    def _replace_producer(self) -> None:
        log.warning("replacing producer after a fatal error; re-producing undelivered records")
        # What was delivered before the purge must not be produced again: the
        # close's reports are applied before the cursors go back.
        self._apply(self._producer.close())
        self._rebuild = False
        self._producer = self._new_producer()
        self._cursors = [spool.first_rid() for spool in self.spools]

    def _on_error(self, code: int, name: str, reason: str) -> None:
        if code in UNREACHABLE:
            if self.stats.broker_down_since is None:
                self.stats.broker_down_since = time.time()
                log.warning("kafka unreachable; spooling until it is back", error=reason)
        elif code == FATAL:
            self._rebuild = True
            fatal = self._producer.fatal()
            log.error("fatal kafka error", error=f"{name}: {fatal.reason if fatal else reason}")
        else:
            log.warning("kafka error", error=f"{name}: {reason}")
