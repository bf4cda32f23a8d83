"""Alerts back to the training process: the alerts topic → this node's runs.

The collector publishes every alert on `<prefix>.alerts`. The agent reads
that topic from its end (its own consumer group per process: it wants what is
raised from now on, not history, and commits nothing) and keeps, per run a
local training process has asked about, the last alerts with a sequence
number. A training process asks over the SDK socket for its run's alerts after the last number
it saw (`{"v": 1, "alerts": {"run_id": R, "after": N}}`), about four times a
second while it has `on_alert` callbacks or `stop_on` set, so an alert
reaches it within a second of being raised.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import structlog
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from schemas import Registry, SchemaError, decode
from schemas.alert_json import flat_alert
from schemas.topics import topic_for

__all__ = ["AlertRelay"]

log = structlog.get_logger("traintrail.alert_relay")

_KEEP = 100  # alerts kept per run
_REWIND_S = 60.0
_RUNS = 1000  # runs whose alerts are kept; the longest known go first


@dataclass
class AlertRelay:
    bootstrap: str
    topic_prefix: str
    registry: Registry
    node: str = ""
    ready: threading.Event = field(default_factory=threading.Event)  # partitions assigned
    _alerts: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    _seq: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"traintrail-agent-relay-{self.node or 'node'}-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
            }
        )
        self._thread = threading.Thread(target=self._run, name="alert-relay", daemon=True)

    def start(self) -> None:
        self._consumer.subscribe([topic_for(self.topic_prefix, "Alert")], on_assign=self._assigned)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def stats(self) -> dict[str, Any]:
        """For `traintrail-agent status`."""
        with self._lock:
            return {
                "enabled": True,
                "assigned": self.ready.is_set(),
                "runs_asking": len(self._alerts),
                "relayed": self._seq,
                "alive": self._thread.is_alive(),
            }

    def since(self, run_id: str, after: int) -> list[dict[str, Any]]:
        """The run's alerts numbered above `after`, oldest first; from the first
        question on, the run's alerts are kept."""
        with self._lock:
            kept = self._alerts.get(run_id)
            if kept is None:
                if len(self._alerts) >= _RUNS:
                    del self._alerts[next(iter(self._alerts))]
                self._alerts[run_id] = deque(maxlen=_KEEP)
                return []
            return [a for a in kept if a["seq"] > after]

    def add(self, alert: dict[str, Any]) -> None:
        with self._lock:
            kept = self._alerts.get(alert.get("run_id") or "")
            if kept is not None:
                self._seq += 1
                kept.append({**flat_alert(alert), "seq": self._seq})

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Start `_REWIND_S` back rather than at the end: joining the group can
        take seconds (the broker's initial rebalance delay), and an alert raised
        meanwhile must still reach a run that asked for it."""
        since = int((time.time() - _REWIND_S) * 1000)
        try:
            starts = consumer.offsets_for_times(
                [TopicPartition(tp.topic, tp.partition, since) for tp in partitions], timeout=5
            )
            consumer.assign([tp if tp.offset >= 0 else TopicPartition(tp.topic, tp.partition,
                             OFFSET_END) for tp in starts])  # fmt: skip
        except KafkaException as exc:
            log.warning("alert relay starts at the end of the topic", error=str(exc))
        self.ready.set()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.2)
                if message is None or message.error() is not None:
                    continue
                try:
                    decoded = decode(self.registry, message.value() or b"")
                except SchemaError as exc:
                    log.warning("undecodable alert skipped", error=str(exc))
                    continue
                if decoded.writer.name == "Alert":
                    self.add(decoded.record)
        except KafkaException as exc:
            log.error("alert relay stopped", error=str(exc))
        finally:
            self._consumer.close()
