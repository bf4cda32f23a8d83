"""What every event source of the agent is: a loop that emits events until stopped.

A source never encodes, spools or talks to Kafka: it builds event dicts in
the same shape the SDK sends over the socket and hands them to `emit`, which
is `Ingest.accept` behind the daemon (envelope, hash chain, spool, shipper).
A source that cannot work on this node (no NVML, no audit log) says so once
in the log and returns from `run`; the agent carries on without it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Emit", "Source", "SourceStats", "event", "now_us"]

Emit = Callable[[list[dict[str, Any]]], None]


def now_us() -> int:
    return time.time_ns() // 1000


def event(
    kind: str,
    stream: str,
    key: str,
    body: dict[str, Any],
    time_us: int | None = None,
) -> dict[str, Any]:
    """One event for `emit`: the Avro type name, its stream and Kafka key, and
    the body (the type's fields without the envelope)."""
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "time_us": now_us() if time_us is None else time_us,
        "stream": stream,
        "key": key,
        "body": body,
    }


@dataclass
class SourceStats:
    """Counters every source keeps; exported as Prometheus metrics and in `status`."""

    emitted: int = 0
    errors: int = 0
    skipped: int = 0  # malformed input lines, unsupported records
    last_emit: float | None = None
    alive: bool = False
    detail: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, emitted: int = 0, errors: int = 0, skipped: int = 0) -> None:
        with self._lock:
            self.emitted += emitted
            self.errors += errors
            self.skipped += skipped
            if emitted:
                self.last_emit = time.time()


class Source(Protocol):
    """A named producer of events with its own loop."""

    name: str
    stats: SourceStats

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Emit events until `stop` is set; return early if the source cannot
        work on this node (after logging why)."""
        ...
