"""consume → decode → validate → route → insert → commit, one batch at a time.

Exactly-once as queries see it. Two mechanisms, both needed:

1. Offsets are committed only after every table of the batch is stored, as
   explicit offsets (last + 1 per partition), and only for partitions this
   process still owns. A crash anywhere before the commit (before the insert,
   between insert and commit, during the commit) redelivers the batch.
2. Every table is a ReplacingMergeTree whose sorting key is the event's
   identity (event_id; plus idx, the point's index, for metrics) and every
   query reads it with FINAL. A redelivered batch, possibly cut differently
   and possibly stored by another collector after a rebalance, writes rows
   with the same keys: they replace each other, so a query sees each event
   once. (An insert deduplication token would not do: after a crash the
   redelivered batch need not have the same boundaries.)

The store down: the assigned partitions are paused and the consumer keeps
polling (it stays in the group and serves rebalances) while the insert is
retried with capped exponential backoff; nothing is committed until it is
stored; then consumption resumes. Kafka down: librdkafka reconnects by
itself; the loop logs it (once per outage) and keeps going. Bad messages
never stop the loop: they become dead-letter rows (and messages on the
dead-letter topic) stored before the commit like any other row.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from collector.alerting import Alerting
from collector.config import CollectorConfig
from collector.consumer import make_consumer
from collector.deadletters import DeadLetters
from collector.errors import StoreError
from collector.metrics import CollectorMetrics
from collector.router import Batch, InvalidEventError, route
from collector.store import Store
from collector.validate import Limits, validate
from schemas import Decoded, Registry, SchemaError, decode

__all__ = ["BatchResult", "Pipeline", "make_consumer"]

log = structlog.get_logger("traintrail.collector")

_RETRY_FIRST = 0.5
# ClickHouse refusing the data itself (not being unavailable): retrying cannot help.
_DATA_ERROR = re.compile(
    r"CANNOT_PARSE|TYPE_MISMATCH|CANNOT_CONVERT|VALUE_IS_OUT_OF_RANGE|INCORRECT_DATA|"
    r"TOO_LARGE_STRING|CANNOT_INSERT_NULL|ILLEGAL_TYPE|ARGUMENT_OUT_OF_BOUND|ArrowInvalid"
)
Routed = tuple[Message, bytes, Decoded]
Offsets = dict[tuple[str, int], int]  # (topic, partition) -> next offset to commit
_LAG_EVERY_S = 5.0


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
    metrics: CollectorMetrics = field(default_factory=CollectorMetrics)
    dead_letters: DeadLetters | None = None
    alerting: Alerting | None = None  # detectors and where their alerts go
    _kafka_down: bool = False
    _lag_at: float = 0.0
    # Rows per message seen lately: sizes the next consume so a batch stays near
    # collector_batch_max_rows whether messages carry 1 row or 10,000 points.
    _rows_per_message: float = 10_000.0
    # The batch being inserted on the writer thread while the next one is consumed
    # and decoded: (its insert attempt, batch, result, offsets, routed, start time).
    _pending: tuple[Future[None], Batch, BatchResult, Offsets, list[Routed], float] | None = None

    def __post_init__(self) -> None:
        self.limits = Limits(
            self.config.collector_max_string_bytes, self.config.collector_max_future_s
        )
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="collector-insert")

    def run(self) -> None:
        self.subscribe()
        log.info("collector consuming", topics=self.config.topics())
        try:
            while not self.stop_event.is_set():
                self.step()
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
            self.consumer.close()
            if self.dead_letters is not None:
                self.dead_letters.close()
            if self.alerting is not None:
                self.alerting.close()
            log.info("collector stopped", **_summary(self.totals))

    def subscribe(self) -> None:
        self.consumer.subscribe(
            self.config.topics(),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def stop(self) -> None:
        """Finish the batch in hand, commit it, then leave the loop."""
        self.stop_event.set()

    def step(self) -> BatchResult:
        """Consume and decode the next batch while the previous one is inserted on
        the writer thread (chDB and the HTTP client release the GIL while they
        work); then finish the previous one (commit) and start this one's insert.
        Commits stay in batch order, each after its batch is stored."""
        batch, result = Batch(), BatchResult()
        offsets: Offsets = {}
        routed: list[Routed] = []
        consumed = 0
        for messages in self._slices():
            consumed += len(messages)
            self._decode(messages, batch, result, offsets, routed)
        self._lag()
        if self.alerting is not None:
            self.alerting.tick()
        if not consumed:
            self.flush()
            return BatchResult()
        result.rows = {name: batch.rows(name) for name in batch.names()}
        self.metrics.batch_messages.observe(result.messages)
        self.metrics.batch_rows.observe(sum(result.rows.values()))
        self.flush()
        if result.messages:
            attempt = self._writer.submit(self._insert_once, batch)
            self._pending = (attempt, batch, result, offsets, routed, time.monotonic())
        return result

    def _slices(self) -> Iterator[list[Message]]:
        """The next batch's messages as they arrive: a consume waits at most
        `[collector] poll_seconds`, and each slice is decoded (and watched, and
        its alerts sent) before the next, while the batch goes on filling for up
        to `batch_max_seconds`. One long consume would hold a spike's alert back
        for the rest of the batch window."""
        want = self._batch_messages()
        deadline = time.monotonic() + self.config.collector_batch_max_seconds
        while want > 0:
            left = deadline - time.monotonic()
            wait = max(0.0, min(self.config.collector_poll_seconds, left))
            messages = self.consumer.consume(num_messages=want, timeout=wait)
            if messages:
                want -= len(messages)
                yield messages
            if left <= wait or self.stop_event.is_set():
                return

    def flush(self) -> bool:
        """Finish the batch in flight: stored (retrying while the store is down) and
        committed. False when stopping while the store is still down."""
        if self._pending is None:
            return True
        attempt, batch, result, offsets, routed, started = self._pending
        self._pending = None
        try:
            attempt.result()
        except (StoreError, pa.ArrowException):  # the full loop: backoff, pause, isolate
            if not self._insert(batch, routed, result):
                return False  # stopping while the store is down: commit nothing
        self.metrics.store_up.set(1)
        self.metrics.insert_seconds.observe(time.monotonic() - started)
        if self.after_insert is not None:
            self.after_insert(result)
        self._commit(offsets)
        self._count(result)
        rows = sum(result.rows.values()) - result.dead_letters
        self._rows_per_message = 0.5 * self._rows_per_message + 0.5 * max(
            1.0, rows / result.messages
        )
        return True

    def _insert_once(self, batch: Batch) -> None:
        """One attempt, on the writer thread; touches neither the consumer nor retries."""
        if self.dead_letters is not None and not self.dead_letters.flush():
            # the topic copy is best effort; the table row (stored below) is the record
            log.warning("dead letters not confirmed on their topic; the table keeps them")
        self._store(batch.arrow())

    def _store(self, tables: dict[str, pa.Table]) -> None:
        for table, data in tables.items():
            self.store.insert_arrow(table, data)

    def _batch_messages(self) -> int:
        by_rows = int(self.config.collector_batch_max_rows / self._rows_per_message)
        return max(1, min(self.config.collector_batch_max_messages, by_rows))

    # -- decode ---------------------------------------------------------------------------

    def _decode(
        self,
        messages: list[Message],
        batch: Batch,
        result: BatchResult,
        offsets: Offsets,
        routed: list[Routed],  # kept for _isolate, should the store reject the batch
    ) -> None:
        """Decode, validate and route `messages` into the batch; the watch sees each
        one and its alerts leave at the end of the call, before the batch is stored."""
        for message in messages:
            error = message.error()
            if error is not None:
                self._consume_error(error)
                continue
            if self._kafka_down:
                self._kafka_down = False
                log.info("kafka reachable again")
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            assert topic is not None and partition is not None and offset is not None
            offsets[(topic, partition)] = offset + 1
            result.messages += 1
            self.metrics.messages.labels(topic).inc()
            value = message.value() or b""
            try:
                decoded = decode(self.registry, value)
                validate(decoded, self.limits)
                route(batch, decoded)
                routed.append((message, value, decoded))
            except (SchemaError, InvalidEventError) as exc:
                self._dead_letter(batch, message, value, exc)
                result.dead_letters += 1
                continue
            if self.alerting is not None:
                self.alerting.observe(decoded)
        if self.alerting is not None:
            self.alerting.emit()

    def _dead_letter(self, batch: Batch, message: Message, value: bytes, exc: Exception) -> None:
        cols = batch.table("dead_letters")
        cols["topic"].append(message.topic())
        cols["partition"].append(message.partition())
        cols["offset"].append(message.offset())
        key = message.key() or b""
        cols["key"].append(key.decode("utf-8", "replace"))
        cols["raw"].append(value)
        cols["reason"].append(str(exc))
        cols["error_type"].append(type(exc).__name__)
        self.metrics.dead_letters.labels(type(exc).__name__).inc()
        if self.dead_letters is not None:
            self.dead_letters.publish(message, value, exc)
        log.warning(
            "dead letter",
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            reason=str(exc),
        )

    def _consume_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            if not self._kafka_down:
                self._kafka_down = True
                log.error("kafka unreachable; librdkafka keeps reconnecting", error=str(error))
            return
        log.warning("kafka consume error", error=str(error))

    # -- insert ---------------------------------------------------------------------------

    def _insert(self, batch: Batch, routed: list[Routed], result: BatchResult) -> bool:
        """Store every table of the batch. While the store refuses: pause the
        partitions, keep polling (group membership, rebalances), retry with
        capped backoff. A table stored before a later one failed is stored
        again on retry: its rows carry their identity, so FINAL hides the copy.

        A store that rejects the *data* (a value it cannot parse: a check the
        router lacks) would be refused forever; then the batch is stored message
        by message and the ones refused become dead letters, so one bad event
        never stops the collector."""
        delay = _RETRY_FIRST
        isolated: dict[str, pa.Table] | None = None  # set once the good rows are stored
        paused = False
        try:
            while True:
                try:
                    self._store(batch.arrow() if isolated is None else isolated)
                    self.metrics.store_up.set(1)
                    return True
                except (StoreError, pa.ArrowException) as exc:
                    error: Exception = exc
                    refused = isinstance(exc, pa.ArrowException) or _DATA_ERROR.search(str(exc))
                    if isolated is None and refused:
                        try:
                            isolated = self._isolate(batch, routed, result, str(exc))
                            continue
                        except StoreError as again:  # unavailable meanwhile: retry it all
                            error = again
                    self.metrics.store_up.set(0)
                    self.metrics.insert_retries.inc()
                    log.error("insert failed, will retry", error=str(error), retry_in_s=delay)
                    if not paused:
                        self._pause()
                        paused = True
                    if self._wait(delay):
                        return False
                    delay = min(delay * 2, self.config.collector_retry_max_s)
        finally:
            if paused:
                self._resume()

    def _isolate(
        self, batch: Batch, routed: list[Routed], result: BatchResult, why: str
    ) -> dict[str, pa.Table]:
        """Store each message alone; return the dead letters left to store: the
        batch's own and those of the messages refused. A transient failure here
        propagates (StoreError) to the retry loop, which isolates again."""
        log.error("store rejected the batch's data; storing message by message", error=why)
        refused = Batch()
        for column, values in batch.columns.get("dead_letters", {}).items():
            refused.table("dead_letters")[column].extend(values)
        for message, value, decoded in routed:
            single = Batch()
            route(single, decoded)
            try:
                self._store(single.arrow())
            except (StoreError, pa.ArrowException) as exc:
                if isinstance(exc, StoreError) and not _DATA_ERROR.search(str(exc)):
                    raise
                self._dead_letter(refused, message, value, InvalidEventError(str(exc)[:2000]))
                result.dead_letters += 1
        return refused.arrow()

    def _pause(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.pause(assignment)
        self.metrics.paused.set(1)
        log.warning("store unavailable: consumption paused", partitions=len(assignment))

    def _resume(self) -> None:
        assignment = self.consumer.assignment()
        if assignment:
            self.consumer.resume(assignment)
        self.metrics.paused.set(0)
        log.info("store available: consumption resumed")

    def _wait(self, seconds: float) -> bool:
        """Poll the paused consumer for `seconds` (heartbeats are librdkafka's;
        max.poll.interval and rebalance callbacks need these calls). True: stopping."""
        end = time.monotonic() + seconds
        while not self.stop_event.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            message = self.consumer.poll(min(left, 0.5))
            if message is not None and message.error() is None:
                # A partition assigned during the pause delivered: put it back and pause it.
                topic, partition, offset = message.topic(), message.partition(), message.offset()
                assert topic is not None and partition is not None and offset is not None
                tp = TopicPartition(topic, partition, offset)
                self.consumer.seek(tp)
                self.consumer.pause([tp])
        return True

    # -- commit and rebalance ---------------------------------------------------------------

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit what is stored, for the partitions still ours. A partition revoked
        while the store was down belongs to another consumer now, which reads it
        from the last commit again: its copy of these rows replaces ours (FINAL)."""
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        mine = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in offsets.items()
            if (topic, partition) in owned
        ]
        if not mine:
            return
        try:
            self.consumer.commit(offsets=mine, asynchronous=False)
        except KafkaException as exc:
            self.metrics.commit_failures.inc()
            log.warning("commit failed; batch will be redelivered", error=str(exc))

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=_names(partitions))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A batch may be in flight (on the writer thread, or waiting for the store):
        # it is stored, then committed only for partitions still ours; the new owner
        # reads the rest again from the last commit, and FINAL hides the copy.
        self.metrics.forget_lag(partitions)
        log.info("partitions revoked", partitions=_names(partitions))

    # -- bookkeeping ------------------------------------------------------------------------

    def _lag(self) -> None:
        now = time.monotonic()
        if now - self._lag_at >= _LAG_EVERY_S:
            self._lag_at = now
            self.metrics.update_lag(self.consumer)

    def _count(self, result: BatchResult) -> None:
        self.totals.messages += result.messages
        self.totals.dead_letters += result.dead_letters
        for name, n in result.rows.items():
            self.totals.rows[name] = self.totals.rows.get(name, 0) + n
            self.metrics.rows.labels(name).inc(n)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{tp.topic}[{tp.partition}]" for tp in partitions]


def _summary(result: BatchResult) -> dict[str, Any]:
    return {"messages": result.messages, "dead_letters": result.dead_letters, **result.rows}
