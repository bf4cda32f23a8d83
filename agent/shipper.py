"""spool → Kafka: produce every spooled record, trim it on its delivery report.

One thread owns the producer. Records are produced in spool order; keys keep
one run's (or one node's) events on one partition, and the idempotent
producer keeps them in order there. A failed delivery report (only permanent
errors reach us, retries are librdkafka's) leaves the record in the spool and
queues it again after a pause; a fatal producer error replaces the producer
and produces everything still undelivered again, in order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import structlog
from confluent_kafka import KafkaError, Message

from agent.producer import DeliveryCallback, KafkaProducer
from agent.spool import Record, Spool

__all__ = ["Shipper", "ShipperStats"]

log = structlog.get_logger("traintrail.shipper")

_RETRY_PAUSE = 1.0


@dataclass
class ShipperStats:
    produced: int = 0
    delivered: int = 0
    failed: int = 0
    last_delivery: float | None = None
    broker_down_since: float | None = None


@dataclass
class Shipper:
    spool: Spool
    make_producer: type[KafkaProducer] | None = None
    bootstrap: str = "127.0.0.1:19092"
    compression: str = "lz4"
    linger_ms: int = 5
    stats: ShipperStats = field(default_factory=ShipperStats)

    def __post_init__(self) -> None:
        self._queue: deque[Record] = deque()
        self._inflight: dict[int, Record] = {}
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._rebuild = False
        self._producer = self._new_producer()
        self._thread = threading.Thread(target=self._run, name="shipper", daemon=True)

    def _new_producer(self) -> KafkaProducer:
        return KafkaProducer(
            self.bootstrap, self.compression, self.linger_ms, on_error=self._on_error
        )

    def start(self) -> None:
        self._thread.start()

    def submit(self, records: list[Record]) -> None:
        with self._wake:
            self._queue.extend(records)
            self._wake.notify()

    def pending(self) -> int:
        with self._wake:
            return len(self._queue) + len(self._inflight)

    def stop(self, timeout: float) -> int:
        """Stop producing new records, wait up to `timeout` for delivery
        reports; return how many stay undelivered (they remain spooled)."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(timeout)
        left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._producer.close()
        return left + len(self._queue)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._rebuild:
                self._replace_producer()
            record = self._next()
            if record is None:
                self._producer.poll(0.05)
                continue
            self._produce(record)

    def _next(self) -> Record | None:
        with self._wake:
            if not self._queue:
                self._wake.wait(0.05)
            return self._queue.popleft() if self._queue else None

    def _produce(self, record: Record) -> None:
        self._inflight[record.rid] = record
        while not self._stop.is_set():
            try:
                self._producer.produce(
                    record.topic, record.key, record.value, self._callback(record)
                )
                self.stats.produced += 1
                self._producer.poll(0)
                return
            except BufferError:
                # librdkafka's queue is full (broker slow or down): wait for
                # reports; the spool on disk keeps absorbing new events.
                self._producer.poll(0.1)
        # Stopping with this record unproduced: put it back, it stays spooled.
        self._inflight.pop(record.rid, None)
        with self._wake:
            self._queue.appendleft(record)

    def _callback(self, record: Record) -> DeliveryCallback:
        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is None:
                self._inflight.pop(record.rid, None)
                self.spool.ack(record.rid)
                self.stats.delivered += 1
                self.stats.last_delivery = time.time()
                self.stats.broker_down_since = None
                return
            if self._stop.is_set():
                return  # purged at shutdown: it stays spooled for the next start
            self.stats.failed += 1
            log.error("delivery failed", topic=record.topic, error=str(err), fatal=err.fatal())
            if err.fatal():
                self._rebuild = True
            else:
                threading.Timer(_RETRY_PAUSE, self._requeue, (record,)).start()

        return on_delivery

    def _requeue(self, record: Record) -> None:
        self._inflight.pop(record.rid, None)
        self.submit([record])

    def _replace_producer(self) -> None:
        log.warning("replacing producer after a fatal error; re-producing undelivered records")
        self._rebuild = False
        self._producer.close()
        self._producer = self._new_producer()
        with self._wake:
            again = sorted(self._inflight.values(), key=lambda r: r.rid)
            self._inflight.clear()
            self._queue.extendleft(reversed(again))

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
