"""The pipeline's one handle on detection: watch decoded messages, emit alerts.

Alerts are raised as soon as a message is decoded, not after its batch is
inserted, so they leave within the consume interval; a redelivered batch
raises them again with the same identities (see collector/watch.py). A
detector's bug is logged and skipped: it must never stop ingestion.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import Counter

from collector.alert_sinks import AlertSinks
from collector.watch import Watcher
from schemas import Decoded

__all__ = ["Alerting"]

log = structlog.get_logger("traintrail.alerting")


@dataclass
class Alerting:
    watcher: Watcher
    sinks: AlertSinks
    counter: Counter | None = None
    tick_every_s: float = 1.0
    _pending: list[dict[str, Any]] = field(default_factory=list)
    _tick_at: float = 0.0

    def observe(self, decoded: Decoded) -> None:
        try:
            self._pending += self.watcher.observe(decoded)
        except Exception as exc:
            log.exception("detector failed", type=decoded.writer.name, error=str(exc))

    def emit(self) -> None:
        """Send what the messages observed since the last call raised."""
        alerts, self._pending = self._pending, []
        self._send(alerts)

    def tick(self) -> None:
        """Time-driven checks (stalls, silent nodes), at most every `tick_every_s`."""
        now = time.monotonic()
        if now - self._tick_at >= self.tick_every_s:
            self._tick_at = now
            self._send(self.watcher.tick(int(time.time() * 1e6)))

    def close(self) -> None:
        self.sinks.close()

    def _send(self, alerts: list[dict[str, Any]]) -> None:
        if alerts:
            if self.counter is not None:
                self.counter.inc(len(alerts))
            self.sinks.emit(alerts)
