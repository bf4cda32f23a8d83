"""Events in → envelope → encode → spool → shipper: the one way into the agent.

The SDK socket, the SDK spool import and (later) the hardware and access
sources all hand events here. Under one lock per agent each event gets its
stream position and previous hash, is encoded, and the batch is appended to
the spool; only then is the chain advanced and the caller told "accepted".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.envelope import Chain
from agent.shipper import Shipper
from agent.spool import Spool
from schemas import Registry, SchemaError, encode, event_hash
from schemas.topics import TOPIC_OF, topic_for

__all__ = ["Ingest", "Rejected"]

log = structlog.get_logger("traintrail.ingest")

_RECENT_IDS = 200_000


@dataclass(frozen=True)
class Rejected:
    event_id: str
    error: str


@dataclass
class Ingest:
    chain: Chain
    spool: Spool
    shipper: Shipper
    registry: Registry
    node: str
    topic_prefix: str
    allowed_types: frozenset[str] | None = None
    accepted_total: int = 0
    _recent: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def accept(self, events: list[dict[str, Any]]) -> tuple[int, list[Rejected]]:
        """Spool `events` durably. Returns (accepted, rejected); a resent
        event_id that was already spooled counts as accepted, not again."""
        rejected: list[Rejected] = []
        with self.chain.lock:
            staged: list[tuple[str, bytes, bytes]] = []
            links: list[tuple[str, int, bytes]] = []
            pending_links: dict[str, tuple[int, bytes]] = {}
            seen_now: list[str] = []
            for event in events:
                event_id = str(event.get("event_id", ""))
                if event_id in self._recent or event_id in seen_now:
                    continue
                try:
                    topic, key, value, stream, seq = self._encode(event, pending_links)
                except (SchemaError, KeyError, TypeError, ValueError) as exc:
                    rejected.append(Rejected(event_id, f"{type(exc).__name__}: {exc}"))
                    continue
                digest = event_hash(value)
                pending_links[stream] = (seq, digest)
                links.append((stream, seq, digest))
                staged.append((topic, key, value))
                seen_now.append(event_id)
            records = self.spool.append(staged)  # raises SpoolError: nothing accepted
            for stream, seq, digest in links:
                self.chain.link(stream, seq, digest)
            for event_id in seen_now:
                self._remember(event_id)
        self.shipper.submit(records)
        self.accepted_total += len(records)
        for r in rejected:
            log.warning("event rejected", event_id=r.event_id, error=r.error)
        return len(events) - len(rejected), rejected

    def _encode(
        self, event: dict[str, Any], pending: dict[str, tuple[int, bytes]]
    ) -> tuple[str, bytes, bytes, str, int]:
        kind = str(event["type"])
        if kind not in TOPIC_OF or (self.allowed_types and kind not in self.allowed_types):
            raise ValueError(f"event type {kind!r} is not accepted here")
        stream = str(event["stream"])
        envelope = self.chain.envelope(
            stream, str(event["event_id"]), int(event["time_us"]), self.node
        )
        if stream in pending:  # an earlier event of this batch on the same stream
            seq, digest = pending[stream]
            envelope["seq"], envelope["prev_hash"] = seq + 1, digest
        body = event["body"]
        if not isinstance(body, dict):
            raise TypeError("body must be an object")
        value = encode(self.registry, kind, {**body, "envelope": envelope})
        key = str(event.get("key") or stream).encode()
        return topic_for(self.topic_prefix, kind), key, value, stream, envelope["seq"]

    def _remember(self, event_id: str) -> None:
        self._recent[event_id] = None
        if len(self._recent) > _RECENT_IDS:
            self._recent.popitem(last=False)
