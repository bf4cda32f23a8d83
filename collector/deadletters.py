"""Dead letters: the topic they are published to, and replay after a fix.

A message the collector cannot store as it claims to be (undecodable bytes,
an unknown schema fingerprint, a semantically invalid event) is kept twice:
as a `dead_letters` row (raw bytes, source position, reason; what `traintrail
dlq list` shows) and as a message on `<prefix>.dead-letters` with the raw
bytes and the same facts as headers, for consumers outside traintrail. Once
the writer or the schema registry is fixed, `traintrail dlq replay` decodes
each stored dead letter again and sends the ones that now pass back to their
source topic, where the collector stores them like any other message; rows
carry the event identity, so replaying twice stores nothing twice.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Message, Producer

from collector.router import Batch, InvalidEventError, route
from collector.validate import Limits, validate
from schemas import Registry, SchemaError, decode

__all__ = ["DeadLetters", "Replay", "replay"]

log = structlog.get_logger("traintrail.deadletters")


class DeadLetters:
    """Publishes dead letters to their topic; `flush` before the batch commits."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "compression.type": "lz4",
            }
        )
        self._failed = 0

    def publish(self, message: Message, value: bytes, exc: Exception) -> None:
        headers = {
            "source_topic": message.topic() or "",
            "source_partition": str(message.partition()),
            "source_offset": str(message.offset()),
            "error_type": type(exc).__name__,
            "reason": str(exc)[:4096],
        }
        self._producer.produce(
            self.topic,
            value=value,
            key=message.key(),
            headers=list(headers.items()),
            on_delivery=self._delivered,
        )
        self._producer.poll(0)

    def _delivered(self, err: Any, _msg: Message) -> None:
        if err is not None:
            self._failed += 1
            log.error("dead letter not published", topic=self.topic, error=str(err))

    def flush(self, timeout: float = 10.0) -> bool:
        """True when every dead letter so far is in Kafka."""
        left = self._producer.flush(timeout)
        return left == 0 and self._failed == 0

    def close(self) -> None:
        self._producer.flush(5.0)


@dataclass
class Replay:
    """What a replay did (or, with dry_run, would do)."""

    examined: int = 0
    sent: int = 0
    still_bad: dict[str, int] = field(default_factory=dict)  # error type -> count


def replay(
    rows: list[dict[str, Any]],
    registry: Registry,
    producer: Producer | None,
    limits: Limits | None = None,
) -> Replay:
    """Decode each dead letter again (raw bytes base64 in `raw_b64`); send those
    that now decode, validate and route to their source topic with their key.
    `producer=None` is a dry run."""
    result = Replay()
    for row in rows:
        result.examined += 1
        raw = base64.b64decode(row["raw_b64"])
        try:
            decoded = decode(registry, raw)
            validate(decoded, limits or Limits())
            route(Batch(), decoded)  # the router's own checks: stored, not refused again
        except (SchemaError, InvalidEventError) as exc:
            kind = type(exc).__name__
            result.still_bad[kind] = result.still_bad.get(kind, 0) + 1
            continue
        result.sent += 1
        if producer is not None:
            key = row.get("key") or None
            producer.produce(row["topic"], value=raw, key=key.encode() if key else None)
            producer.poll(0)
    if producer is not None and producer.flush(30) != 0:
        raise TimeoutError("replayed messages not all delivered within 30 s")
    return result
