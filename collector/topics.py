"""Make sure the collector's topics exist before it subscribes.

Subscribing to a missing topic with auto-creation off leaves a consumer idle
forever; creating them up front (idempotently) makes a fresh cluster work.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

__all__ = ["ensure_topics"]


def ensure_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    replication: int,
    timeout: float = 30.0,
) -> list[str]:
    """Create the missing topics; return the names created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in missing],
        operation_timeout=timeout,
    )
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(missing) <= set(admin.list_topics(timeout=timeout).topics):
            return missing
        time.sleep(0.1)
    raise TimeoutError(f"topics {missing} not visible after {timeout}s")
