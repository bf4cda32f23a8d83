"""consume → decode → route → insert → commit, one batch at a time.

Offsets are committed only after every table of the batch is stored, so a
crash anywhere before the commit redelivers the batch; the tables'
ReplacingMergeTree keys (event identity) and FINAL in every query make the
second copy invisible. Bad messages never stop the loop: they become
dead-letter rows in the same batch, stored before the commit like any other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from collector.config import CollectorConfig
from collector.errors import StoreError
from collector.router import Batch, InvalidEventError, route
from collector.store import Store
from schemas import Registry, SchemaError, decode

__all__ = ["BatchResult", "Pipeline", "make_consumer"]

log = structlog.get_logger("traintrail.collector")

_RETRY_FIRST, _RETRY_CAP = 0.5, 15.0


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
    }
    settings.update(extra)
    return Consumer(settings)


@dataclass
class BatchResult:
    messages: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0


@dataclass
class Pipeline:
    config: CollectorConfig
    store: Store
    registry: Registry
    consumer: Consumer
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Test hook: called after the inserts and before the commit of each batch.
    after_insert: Callable[[BatchResult], None] | None = None
    totals: BatchResult = field(default_factory=BatchResult)

    def run(self) -> None:
        self.consumer.subscribe(self.config.topics())
        log.info("collector consuming", topics=self.config.topics())
        try:
            while not self.stop_event.is_set():
                self.step()
        finally:
            self.consumer.close()
            log.info("collector stopped", **_summary(self.totals))

    def stop(self) -> None:
        """Finish the batch in hand, commit it, then leave the loop."""
        self.stop_event.set()

    def step(self) -> BatchResult:
        messages = self.consumer.consume(
            num_messages=self.config.collector_batch_max_messages,
            timeout=self.config.collector_batch_max_seconds,
        )
        if not messages:
            return BatchResult()
        batch, result = self._decode(messages)
        if not self._insert(batch):
            return result  # stopping while the store is down: commit nothing
        if self.after_insert is not None:
            self.after_insert(result)
        if result.messages:
            try:
                self.consumer.commit(asynchronous=False)
            except KafkaException as exc:
                # Stored but not committed (e.g. the partitions moved in a
                # rebalance): the batch comes again and FINAL hides the copy.
                log.warning("commit failed; batch will be redelivered", error=str(exc))
        self._count(result)
        return result

    def _decode(self, messages: list[Message]) -> tuple[Batch, BatchResult]:
        batch = Batch()
        result = BatchResult()
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka consume error", error=str(error))
                continue
            result.messages += 1
            value = message.value() or b""
            try:
                route(batch, decode(self.registry, value))
            except (SchemaError, InvalidEventError) as exc:
                _dead_letter(batch, message, value, exc)
                result.dead_letters += 1
                log.warning(
                    "dead letter",
                    topic=message.topic(),
                    partition=message.partition(),
                    offset=message.offset(),
                    reason=str(exc),
                )
        result.rows = {name: batch.rows(name) for name in batch.columns}
        return batch, result

    def _insert(self, batch: Batch) -> bool:
        """Store every table of the batch; retry with capped backoff while the
        store refuses. A table stored before a later one failed is stored
        again on retry: its rows carry their identity, so FINAL hides the copy."""
        delay = _RETRY_FIRST
        while True:
            try:
                for table, data in batch.arrow().items():
                    self.store.insert_arrow(table, data)
                return True
            except StoreError as exc:
                log.error("insert failed, will retry", error=str(exc), retry_in_s=delay)
                if self.stop_event.wait(delay):
                    return False
                delay = min(delay * 2, _RETRY_CAP)

    def _count(self, result: BatchResult) -> None:
        self.totals.messages += result.messages
        self.totals.dead_letters += result.dead_letters
        for name, n in result.rows.items():
            self.totals.rows[name] = self.totals.rows.get(name, 0) + n


def _dead_letter(batch: Batch, message: Message, value: bytes, exc: Exception) -> None:
    cols = batch.table("dead_letters")
    cols["topic"].append(message.topic())
    cols["partition"].append(message.partition())
    cols["offset"].append(message.offset())
    key = message.key() or b""
    cols["key"].append(key.decode("utf-8", "replace"))
    cols["raw"].append(value)
    cols["reason"].append(str(exc))
    cols["error_type"].append(type(exc).__name__)


def _summary(result: BatchResult) -> dict[str, Any]:
    return {"messages": result.messages, "dead_letters": result.dead_letters, **result.rows}
