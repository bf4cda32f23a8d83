"""The collector's topics: created with partitions, replication and retention.

Subscribing to a missing topic with auto-creation off leaves a consumer idle
forever; creating them up front makes a fresh cluster work. `provision` is
what `traintrail kafka init` and `collector run` call: it creates what is
missing and brings the retention of existing topics to the configured value,
and running it again changes nothing. Partition counts are only ever reported,
never changed: adding partitions would move runs to other partitions and
break their per-run order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from collector.config import CollectorConfig

__all__ = ["TopicReport", "ensure_topics", "provision"]


@dataclass
class TopicReport:
    created: list[str] = field(default_factory=list)
    existing: dict[str, int] = field(default_factory=dict)  # name -> partitions
    retention_set: list[str] = field(default_factory=list)


def provision(config: CollectorConfig, timeout: float = 30.0) -> TopicReport:
    """Create the data and dead-letter topics; set retention where it differs."""
    hours = {t: config.kafka_retention_hours for t in config.topics()}
    if config.collector_dead_letter_topic:
        hours[config.dead_letter_topic()] = config.kafka_dead_letter_retention_hours
    report = TopicReport()
    admin = AdminClient({"bootstrap.servers": config.kafka_bootstrap})
    metadata = admin.list_topics(timeout=timeout).topics
    for name in hours:
        if name in metadata:
            report.existing[name] = len(metadata[name].partitions)
    report.created = ensure_topics(
        config.kafka_bootstrap,
        list(hours),
        config.kafka_partitions,
        config.kafka_replication,
        timeout,
        {t: {"retention.ms": str(h * 3_600_000)} for t, h in hours.items()},
    )
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in report.existing]
    if resources:
        current = admin.describe_configs(resources, request_timeout=timeout)
        for resource, future in current.items():
            want = str(hours[resource.name] * 3_600_000)
            entry = future.result(timeout).get("retention.ms")
            if entry is None or entry.value != want:
                update = ConfigResource(
                    ResourceType.TOPIC,
                    resource.name,
                    incremental_configs=[
                        ConfigEntry(
                            "retention.ms", want, incremental_operation=AlterConfigOpType.SET
                        )
                    ],
                )
                for done in admin.incremental_alter_configs([update]).values():
                    done.result(timeout)
                report.retention_set.append(resource.name)
    return report


def ensure_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    replication: int,
    timeout: float = 30.0,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the missing topics (with per-topic `configs`); return the names created."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=partitions,
                replication_factor=replication,
                config=(configs or {}).get(t, {}),
            )
            for t in missing
        ],
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
