"""Events in → envelope → encode → spool → (shipper): the one way into the agent.

The SDK socket, the SDK spool import and the hardware and access sources
all hand events here. Under one lock each event gets its stream position and
previous hash and is encoded; the batch is appended to its spool; only then
is the chain advanced and the caller told "accepted".

Two spools, two policies: hardware samples go to a bounded spool that drops
its oldest segments when full (a gap in GPU history is regrettable, a full
disk is worse); training, access and GPU error events go to the critical
spool, which refuses new batches when full: the SDK keeps them and retries,
and the agent raises an alert and counts what a local source could not hand
in. Nothing critical is dropped silently.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from agent.envelope import Chain
from agent.errors import SpoolError, SpoolFullError
from agent.runs import RunRegistry
from agent.sources.base import event
from agent.spool import Spool
from schemas import Registry, SchemaError
from schemas.codec import Sealer, sealer
from schemas.topics import TOPIC_OF, topic_for

__all__ = ["SAMPLE_TYPES", "Accepted", "Accepts", "Batch", "Ingest", "Rejected"]

log = structlog.get_logger("traintrail.ingest")

SAMPLE_TYPES = frozenset({"GpuSample", "GpuSamples", "HostSample"})
_RECENT_IDS = 200_000
_ALERT_EVERY_S = 60.0


@dataclass(frozen=True)
class Rejected:
    event_id: str
    error: str


# What accept returns: how many events were taken, and the ones rejected.
Accepted = tuple[int, list[Rejected]]
# One sender's events and the event types it may send (None: any).
Batch = tuple[list[dict[str, Any]], frozenset[str] | None]


class Accepts(Protocol):
    """What senders hand events to: `Ingest` itself, or the daemon's group
    commit in front of it (agent/groupcommit.py)."""

    def accept(
        self, events: list[dict[str, Any]], allowed: frozenset[str] | None = None
    ) -> Accepted: ...


@dataclass
class _Staged:
    """One spool's part of a batch: its entries, the last link of each stream
    it advances, its event ids and whose they are."""

    entries: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    links: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)  # each event's batch, in accept_many


@dataclass(frozen=True)
class _Kind:
    """What ingest needs of an event type, looked up once per type."""

    seal: Sealer
    topic: str
    sample: bool


@dataclass
class Ingest:
    chain: Chain
    critical: Spool
    samples: Spool
    registry: Registry
    node: str
    topic_prefix: str
    runs: RunRegistry | None = None
    accepted: int = 0
    refused: int = 0
    # The last _RECENT_IDS spooled event ids, to take a resent event once: a
    # set to look up and a deque of the same ids, oldest first, to forget by.
    _recent: set[str] = field(default_factory=set)
    _recent_order: deque[str] = field(default_factory=deque)
    _last_alert: float = 0.0
    _kinds: dict[str, _Kind] = field(default_factory=dict)

    def accept(
        self, events: list[dict[str, Any]], allowed: frozenset[str] | None = None
    ) -> Accepted:
        """Spool `events` durably. Returns (accepted, rejected); a resent
        event_id that was already spooled counts as accepted, not again.

        Raises SpoolFullError when the critical spool refuses the batch: then
        nothing of the batch's critical events was kept."""
        (result,) = self.accept_many([(events, allowed)])
        if isinstance(result, Exception):
            raise result
        return result

    def accept_many(self, batches: list[Batch]) -> list[Accepted | Exception]:
        """Spool several senders' batches as one (one write per spool, one
        fsync): for each, what `accept` returns or the exception it raises.
        When the batches fail together (a full or failing spool), each is
        taken again on its own, so one sender's refusal is not another's."""
        with self.chain.lock:
            if len(batches) > 1:
                try:
                    return list(self._accept_together(batches))
                except SpoolError:
                    pass  # nothing of it linked: the chain is where it was
            out: list[Accepted | Exception] = []
            for batch in batches:
                try:
                    out += self._accept_together([batch], alone=True)
                except SpoolError as exc:
                    out.append(exc)
            return out

    def _accept_together(self, batches: list[Batch], alone: bool = False) -> list[Accepted]:
        """Stage, seal and append `batches` as one; raises SpoolError with
        nothing of their critical events kept and the chain unchanged (a
        refusal is counted and alerted when the batch is `alone`: batches
        refused together are taken again one by one)."""
        critical, samples = _Staged(), _Staged()
        # Per stream, the link the next event follows: the chain's until an
        # earlier event of these batches took the stream on.
        pending: dict[str, tuple[int, bytes]] = {}
        seen: set[str] = set()  # these batches' ids: a batch may repeat an event
        recent = self._recent
        rejected: list[list[Rejected]] = [[] for _ in batches]
        kinds, kind_of, envelope, node = self._kinds, self._kind, self.chain.envelope, self.node
        # One loop, no call per event but the envelope and the seal: at tens of
        # thousands of small events a second, each Python call shows.
        for owner, (events, allowed) in enumerate(batches):
            for ev in events:
                event_id = ev.get("event_id", "")
                if type(event_id) is not str:
                    event_id = str(event_id)
                if event_id in recent or event_id in seen:
                    continue
                try:
                    name = ev["type"]
                    kind = kinds.get(name) or kind_of(name)
                    if allowed is not None and name not in allowed:
                        raise ValueError(f"event type {name!r} is not accepted here")
                    stream = ev["stream"]
                    if type(stream) is not str:
                        stream = str(stream)
                    body = ev["body"]
                    if not isinstance(body, dict):
                        raise TypeError("body must be an object")
                    env = envelope(stream, event_id, int(ev["time_us"]), node, pending.get(stream))
                    value, digest = kind.seal(body, env)
                    key = ev.get("key") or stream
                    key = (key if type(key) is str else str(key)).encode()
                except (SchemaError, KeyError, TypeError, ValueError) as exc:
                    rejected[owner].append(Rejected(event_id, f"{type(exc).__name__}: {exc}"))
                    continue
                link = pending[stream] = (env["seq"], digest)
                part = samples if kind.sample else critical
                part.entries.append((kind.topic, key, value))
                part.links[stream] = link
                part.event_ids.append(event_id)
                part.owners.append(owner)
                seen.add(event_id)
        if critical.entries:
            try:
                self.critical.append(critical.entries)
            except SpoolFullError as exc:
                if alone:
                    self.refused += len(critical.entries)
                    self._alert_full(exc)
                raise
            self._commit(critical)
            self._track_runs(batches, critical.event_ids)
        if samples.entries:
            try:
                self.samples.append(samples.entries)
                self._commit(samples)
            except SpoolFullError as exc:  # only a single batch larger than the limit
                for owner, event_id in zip(samples.owners, samples.event_ids, strict=True):
                    rejected[owner].append(Rejected(event_id, str(exc)))
        for rs in rejected:
            for r in rs:
                log.warning("event rejected", event_id=r.event_id, error=r.error)
        return [
            (len(events) - len(rs), rs) for (events, _), rs in zip(batches, rejected, strict=True)
        ]

    def _commit(self, part: _Staged) -> None:
        for stream, (seq, digest) in part.links.items():
            self.chain.link(stream, seq, digest)
        self._recent.update(part.event_ids)  # ids new to it: known ones were skipped
        self._recent_order.extend(part.event_ids)
        while len(self._recent_order) > _RECENT_IDS:
            self._recent.discard(self._recent_order.popleft())
        self.accepted += len(part.entries)

    def _track_runs(self, batches: list[Batch], spooled: list[str]) -> None:
        """Tell the run registry which pid trains which run, for the GPU and
        host sources' per-process attribution."""
        if self.runs is None or not spooled:
            return
        ids = set(spooled)
        for events, _allowed in batches:
            for ev in events:
                if ev.get("event_id") not in ids:
                    continue
                body = ev["body"]
                if ev["type"] == "RunStarted":
                    self.runs.register(int(body["pid"]), str(body["run_id"]))
                elif ev["type"] == "RunFinished":
                    self.runs.finish(str(body["run_id"]))

    def _kind(self, name: Any) -> _Kind:
        kind = self._kinds.get(name)
        if kind is None:
            if name not in TOPIC_OF:
                raise ValueError(f"event type {name!r} is not accepted here")
            kind = _Kind(
                sealer(self.registry.current(name)),
                topic_for(self.topic_prefix, name),
                name in SAMPLE_TYPES,
            )
            self._kinds[name] = kind
        return kind

    def _alert_full(self, exc: SpoolFullError) -> None:
        """Log an alert and send one through the samples spool (which makes
        room by dropping old samples), at most once a minute."""
        log.error("ALERT critical spool full: refusing events", error=str(exc))
        now = time.monotonic()
        if now - self._last_alert < _ALERT_EVERY_S:
            return
        self._last_alert = now
        alert = event(
            "Alert",
            f"agent/{self.node}",
            self.node,
            {
                "run_id": None,
                "detector": "agent_spool_full",
                "metric": None,
                "step": None,
                "value": float(self.critical.stats().bytes),
                "baseline": float(self.critical.max_bytes),
                "severity": "critical",
                "state": "firing",
                "message": f"agent on {self.node}: critical spool full, refusing events "
                f"({self.refused} so far); Kafka unreachable or too slow",
                "params": {"spool": str(self.critical.directory)},
            },
        )
        try:
            kind = self._kind("Alert")
            envelope = self.chain.envelope(
                alert["stream"], alert["event_id"], alert["time_us"], self.node
            )
            value, digest = kind.seal(alert["body"], envelope)
            self.samples.append([(kind.topic, self.node.encode(), value)])
            self.chain.link(alert["stream"], envelope["seq"], digest)
        except (SchemaError, SpoolFullError) as err:
            log.error("could not spool the spool-full alert", error=str(err))
