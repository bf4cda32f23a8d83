"""The collector's Kafka consumer settings, in one place.

Manual commits (the pipeline commits after storing), cooperative-sticky
assignment (a rebalance moves only the partitions that must move), committed
reads only, and fetch sizes for large messages: a Metrics message carries up
to 10,000 packed points.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer

from collector.config import CollectorConfig

__all__ = ["make_consumer"]


def make_consumer(config: CollectorConfig, **extra: Any) -> Consumer:
    settings: dict[str, Any] = {
        "bootstrap.servers": config.kafka_bootstrap,
        "group.id": config.collector_group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": config.collector_session_timeout_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        # Only messages of committed transactions and idempotent producers.
        "isolation.level": "read_committed",
        # Large batches: fetch a lot per request (points are packed per message).
        "fetch.max.bytes": 64 * 1024 * 1024,
        "max.partition.fetch.bytes": 16 * 1024 * 1024,
    }
    settings.update(extra)
    return Consumer(settings)
