"""The agent's Kafka producer: idempotent, acks=all, never gives up on its own.

`message.timeout.ms=0` means librdkafka retries a message until it is
delivered, so a Kafka outage of any length ends with delivery, in order,
without duplicates from the producer itself. The shipper hands it whole spool
reads and trims its spool only on a record's successful delivery report.

Two implementations of one interface (`DeliveryProducer`): the C one
(agent/kafkacore.py), which drives confluent-kafka's own librdkafka with no
Python call per message, and `PythonProducer` on confluent-kafka's Python
API, used where the C one was not built or is turned off
(`TRAINTRAIL_PURE_PYTHON`). Both connect lazily: creating one never touches
the network.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = [
    "FATAL",
    "PURGED",
    "UNREACHABLE",
    "ClientError",
    "DeliveryProducer",
    "Failure",
    "PythonProducer",
    "Reports",
    "new_producer",
    "producer_settings",
]

# librdkafka's error codes the shipper acts on (rdkafka.h; KafkaError's too).
FATAL = KafkaError._FATAL
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
UNREACHABLE = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


class Failure(NamedTuple):
    """A record's failed delivery report (or librdkafka refusing it outright)."""

    spool: int
    rid: int
    topic: str
    code: int
    name: str
    reason: str


class ClientError(NamedTuple):
    """An error of the client itself (broker down, fatal idempotence error)."""

    code: int
    name: str
    reason: str


@dataclass
class Reports:
    """What librdkafka reported since the last look."""

    delivered: list[tuple[int, int, float]] = field(default_factory=list)  # (spool, rid, started)
    failed: list[Failure] = field(default_factory=list)
    errors: list[ClientError] = field(default_factory=list)


class DeliveryProducer(Protocol):
    def produce(
        self, spool: int, records: Sequence[tuple[int, str, bytes, bytes]], started: float
    ) -> tuple[int, list[Failure]]:
        """Queue `records` (rid, topic, key, value) in order until librdkafka's
        queue is full; return how many were taken and those of them it
        refused outright (they will never be delivered)."""
        ...

    def poll(self, timeout: float) -> Reports:
        """Serve librdkafka's callbacks for up to `timeout` s; the reports."""
        ...

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` s for delivery; messages still undelivered.
        Their reports come with the next poll."""
        ...

    def fatal(self) -> ClientError | None: ...

    def close(self) -> Reports:
        """Drop what librdkafka still holds (it stays in the caller's spool)
        and the client; the last reports (purged records among them)."""
        ...


def producer_settings(bootstrap: str, compression: str, linger_ms: int) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": compression,
        "linger.ms": linger_ms,
        "message.timeout.ms": 0,
        # Bounded: during an outage what waits is on disk in the spool, not here.
        "queue.buffering.max.kbytes": 16 * 1024,
        "queue.buffering.max.messages": 100_000,
        "socket.keepalive.enable": True,
    }


def new_producer(
    bootstrap: str,
    compression: str = "lz4",
    linger_ms: int = 5,
    extra: dict[str, Any] | None = None,
) -> DeliveryProducer:
    """The C producer where it is available, else confluent-kafka's Python
    API; `extra` settings are applied last."""
    from agent import kafkacore

    settings = {**producer_settings(bootstrap, compression, linger_ms), **(extra or {})}
    if kafkacore.available():
        return kafkacore.NativeProducer(settings)
    return PythonProducer(settings)


class PythonProducer:
    """The DeliveryProducer on confluent-kafka's Python API: a produce call and
    a Python delivery report per message."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self._settings = {**settings, "error_cb": self._on_error}
        self._producer: Producer | None = None
        self._reports = Reports()
        # Reports arrive in whichever thread polls or flushes (stop() flushes
        # while the shipper thread may still poll): none may land in a batch
        # already taken.
        self._lock = threading.Lock()

    @property
    def _client(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(self._settings)
        return self._producer

    def produce(
        self, spool: int, records: Sequence[tuple[int, str, bytes, bytes]], started: float
    ) -> tuple[int, list[Failure]]:
        produce = self._client.produce
        report = partial(self._on_delivery, spool, started)
        refused: list[Failure] = []
        for taken, (rid, topic, key, value) in enumerate(records):
            try:
                produce(topic, value, key, on_delivery=partial(report, rid, topic))
            except BufferError:
                return taken, refused  # librdkafka's queue is full
            except KafkaException as exc:
                err = exc.args[0]
                refused.append(Failure(spool, rid, topic, err.code(), err.name(), err.str()))
        return len(records), refused

    def _on_delivery(
        self, spool: int, started: float, rid: int, topic: str, err: KafkaError | None, _m: Message
    ) -> None:
        with self._lock:
            if err is None:
                self._reports.delivered.append((spool, rid, started))
            else:
                failure = Failure(spool, rid, topic, err.code(), err.name(), err.str())
                self._reports.failed.append(failure)

    def _on_error(self, err: KafkaError) -> None:
        with self._lock:
            self._reports.errors.append(ClientError(err.code(), err.name(), err.str()))

    def _take(self) -> Reports:
        with self._lock:
            reports, self._reports = self._reports, Reports()
        return reports

    def poll(self, timeout: float) -> Reports:
        self._client.poll(timeout)
        return self._take()

    def flush(self, timeout: float) -> int:
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))

    def fatal(self) -> ClientError | None:
        return None  # confluent-kafka reports it through error_cb and the reports

    def close(self) -> Reports:
        if self._producer is not None:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
            self._producer = None
        return self._take()
