"""spools → Kafka: produce every spooled record, ack it on its delivery report.

One thread owns the producer. It reads each spool lazily from a cursor
(critical spool first), so memory stays bounded however long Kafka is away:
what waits is on disk, and librdkafka's own queue is capped. Keys keep one
run's (or one node's) events on one partition; the idempotent producer keeps
them in order there and retries until delivered (`message.timeout.ms=0`).

A failed delivery report is a permanent error for that record (too large,
not authorized): it is logged and counted and stays in the spool, which then
cannot trim that segment, so the problem stays visible. A fatal producer
error replaces the producer and reads every spool again from its oldest
undelivered record.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import structlog
from confluent_kafka import KafkaError, Message

from agent.producer import KafkaProducer
from agent.spool import Record, Spool

__all__ = ["Shipper", "ShipperStats"]

log = structlog.get_logger("traintrail.shipper")

_READ_BATCH = 500
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


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
        # Filled by delivery reports during a poll or flush, applied right after
        # it (`_settle`): acking a spool record by record cost more than producing
        # it. A deque: appends and pops are atomic, should stop()'s flush run
        # callbacks while the thread still polls.
        self._delivered: deque[tuple[int, int, float]] = deque()
        for spool in self.spools:
            spool.on_append = self._nudge
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._run, name="shipper", daemon=True)

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            self.bootstrap,
            self.compression,
            self.linger_ms,
            extra=dict(self.producer_extra),
            on_error=self._on_error,
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
        self._settle()
        self._producer.close()
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
        its queue was full. Per record only the produce call and a C-built
        partial for its report: this loop is the shipper's whole cost per
        message (a backlog drains at its pace)."""
        produce = self._producer.producer.produce
        started = time.monotonic()  # one clock read per read of up to 500 records
        report = partial(self._on_delivery, i)
        done = 0
        for record in records:
            on_delivery = partial(report, record, started)
            while True:
                try:
                    produce(record.topic, record.value, record.key, on_delivery=on_delivery)
                    break
                except BufferError:
                    # librdkafka's queue is full (broker slow or down): wait for
                    # reports; the spool on disk keeps absorbing new events.
                    if self._stop.is_set():
                        self.stats.produced += done
                        return False
                    self._poll(0.1)
            done += 1
        self.stats.produced += done
        return True

    def _poll(self, timeout: float) -> None:
        self._producer.poll(timeout)
        self._settle()

    def _on_delivery(
        self, i: int, record: Record, started: float, err: KafkaError | None, _msg: Message
    ) -> None:
        if err is None:
            self._delivered.append((i, record.rid, started))
            return
        if self._stop.is_set() or err.code() in _PURGED:
            return  # purged (shutdown, producer rebuild): still spooled, read again
        self.stats.failed += 1
        log.error("delivery failed", topic=record.topic, error=str(err), fatal=err.fatal())
        if err.fatal():
            self._rebuild = True

    def _settle(self) -> None:
        """Ack in the spools what the last poll's delivery reports confirmed."""
        delivered, done = self._delivered, []
        try:
            for _ in range(len(delivered)):
                done.append(delivered.popleft())
        except IndexError:
            pass  # another thread settled the rest
        if not done:
            return
        now = time.monotonic()
        for i, spool in enumerate(self.spools):
            rids = [rid for j, rid, _ in done if j == i]
            if rids:
                spool.ack_many(rids)
        stats = self.stats
        stats.delivered += len(done)
        stats.last_delivery = time.time()
        stats.broker_down_since = None
        room = 100_000 - len(stats.latencies)
        stats.latencies += [now - started for _, _, started in done[: max(0, room)]]

    def _replace_producer(self) -> None:
        log.warning("replacing producer after a fatal error; re-producing undelivered records")
        self._rebuild = False
        self._producer.close()
        self._settle()  # what was delivered before the purge must not be produced again
        self._producer = self._new_producer()
        self._cursors = [spool.first_rid() for spool in self.spools]

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if self.stats.broker_down_since is None:
                self.stats.broker_down_since = time.time()
                log.warning("kafka unreachable; spooling until it is back", error=str(err))
        elif err.fatal():
            self._rebuild = True
            log.error("fatal kafka error", error=str(err))
        else:
            log.warning("kafka error", error=str(err))
