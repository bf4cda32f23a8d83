"""The agent's Kafka producer: idempotent, acks=all, never gives up on its own.

Connects lazily (creating one never touches the network). The caller
produces on `producer` itself (one call per message, no wrapper in between:
agent/shipper.py) with a delivery callback, and trims its spool only on
success. `message.timeout.ms=0` means librdkafka retries a
message until it is delivered, so a Kafka outage of any length ends with
delivery, in order, without duplicates from the producer itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Producer

__all__ = ["KafkaProducer", "producer_settings"]


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


class KafkaProducer:
    """A thin confluent-kafka wrapper; `extra` settings are applied last."""

    def __init__(
        self,
        bootstrap: str,
        compression: str = "lz4",
        linger_ms: int = 5,
        extra: dict[str, Any] | None = None,
        on_error: Callable[[KafkaError], None] | None = None,
    ) -> None:
        self._settings = producer_settings(bootstrap, compression, linger_ms)
        self._settings.update(extra or {})
        if on_error is not None:
            self._settings["error_cb"] = on_error
        self._producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        """The librdkafka producer, created on first use; its `produce`
        raises BufferError when librdkafka's queue is full."""
        if self._producer is None:
            self._producer = Producer(self._settings)
        return self._producer

    def poll(self, timeout: float = 0.0) -> int:
        return int(self.producer.poll(timeout))

    def flush(self, timeout: float) -> int:
        """Messages still undelivered after `timeout`."""
        if self._producer is None:
            return 0
        return int(self._producer.flush(timeout))

    def close(self) -> None:
        """Drop whatever librdkafka still holds (it stays in the caller's
        spool) so the client and its threads can go away now."""
        if self._producer is not None:
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
            self._producer = None
