"""The collector's Prometheus metrics, served at /metrics beside the query API.

What an operator pages on: consumer lag per partition (is it keeping up?),
rows/s per table, batch sizes and insert latency (is the store the
bottleneck?), dead letters by error type, retries and whether the store is
up. Each collector process has its own registry, so a test or a second
pipeline in one process never double-registers.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["CollectorMetrics"]

_SIZE_BUCKETS = (1, 10, 100, 500, 1000, 5000, 10_000, 50_000, 100_000, 500_000, 1_000_000)
_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CollectorMetrics:
    """One process's metrics; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "traintrail_collector_messages", "Kafka messages consumed.", ["topic"], registry=r
        )
        self.rows = Counter(
            "traintrail_collector_rows", "Rows inserted, per table.", ["table"], registry=r
        )
        self.dead_letters = Counter(
            "traintrail_collector_dead_letters",
            "Messages stored as dead letters, by error type.",
            ["error_type"],
            registry=r,
        )
        self.alerts = Counter(
            "traintrail_collector_alerts", "Alerts raised or resolved by the detectors.", registry=r
        )
        self.insert_retries = Counter(
            "traintrail_collector_insert_retries",
            "Failed insert attempts retried (store unavailable or refusing).",
            registry=r,
        )
        self.commit_failures = Counter(
            "traintrail_collector_commit_failures",
            "Offset commits that failed (the batch is redelivered; FINAL hides the copy).",
            registry=r,
        )
        self.batch_messages = Histogram(
            "traintrail_collector_batch_messages",
            "Messages per batch.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "traintrail_collector_batch_rows",
            "Rows per batch, all tables.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.insert_seconds = Histogram(
            "traintrail_collector_insert_seconds",
            "Time to store one batch (all its tables), retries included.",
            buckets=_TIME_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "traintrail_collector_consumer_lag",
            "Messages behind the partition's high watermark.",
            ["topic", "partition"],
            registry=r,
        )
        self.store_up = Gauge(
            "traintrail_collector_store_up",
            "1 while the last insert succeeded, 0 while retrying.",
            registry=r,
        )
        self.store_up.set(1)
        self._lagging: set[tuple[str, str]] = set()
        self.paused = Gauge(
            "traintrail_collector_paused",
            "1 while consumption is paused waiting for the store.",
            registry=r,
        )

    def update_lag(self, consumer: Consumer) -> None:
        """Lag per assigned partition: high watermark (as of the last fetch) minus
        position; partitions without a position yet are left out."""
        try:
            assignment = consumer.assignment()
            positions = consumer.position(assignment) if assignment else []
        except KafkaException:
            return
        for tp in positions:
            try:
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                self._lagging.add((tp.topic, str(tp.partition)))
                self.lag.labels(tp.topic, str(tp.partition)).set(high - tp.offset)

    def forget_lag(self, partitions: list[TopicPartition]) -> None:
        """Partitions revoked: their lag is another process's to report now."""
        for tp in partitions:
            labels = (tp.topic, str(tp.partition))
            if labels in self._lagging:
                self._lagging.discard(labels)
                self.lag.remove(*labels)

    def watch_alert_sinks(self, sinks: Any) -> None:
        """Export the alert sinks' own counts (read at scrape time)."""
        r = self.registry
        Gauge(
            "traintrail_collector_alerts_undelivered",
            "Alerts the alerts topic refused (the log still has them).",
            registry=r,
        ).set_function(lambda: sinks.undelivered)
        hook = sinks.webhook
        if hook is None:
            return
        for name, what, read in (
            ("sent", "Alerts the webhook accepted.", lambda: hook.sent),
            (
                "failures",
                "Webhook attempts that failed (each retried).",
                lambda: hook.failed_attempts,
            ),
            (
                "dropped",
                "Alerts not posted: queue full or retried past give_up_s.",
                lambda: hook.dropped,
            ),
        ):
            Gauge(f"traintrail_collector_webhook_{name}", what, registry=r).set_function(read)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
