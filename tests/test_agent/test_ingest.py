"""Which spool an event lands in: the full-disk policy depends on it.

Hardware samples go to the bounded spool that drops its oldest segments when
full (and is not fsynced per batch by default); everything else goes to the
critical spool, which refuses rather than drops.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.envelope import Chain
from agent.errors import SpoolFullError
from agent.ingest import SAMPLE_TYPES, Ingest
from agent.spool import Spool
from schemas import decode, default_registry
from schemas.topics import TOPIC_OF
from tests.samples import body


def _event(kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "time_us": 1_700_000_000_000_000,
        "stream": "gpu/n1" if TOPIC_OF[kind] == "hardware" else "run/r1",
        "key": "n1",
        "body": body(kind),
    }


def _kinds(spool: Spool) -> list[str]:
    spool.open()
    return [decode(default_registry(), r.value).name for r in spool.pending()]


@pytest.mark.parametrize("kind", ["GpuSamples", "GpuSample", "HostSample"])
def test_hardware_samples_go_to_the_droppable_spool(tmp_path: Path, kind: str) -> None:
    critical, samples = Spool(tmp_path / "c"), Spool(tmp_path / "s", overflow="drop_oldest")
    critical.open()
    samples.open()
    ingest = Ingest(Chain(), critical, samples, default_registry(), "n1", "tt")
    accepted, rejected = ingest.accept([_event(kind), _event("GpuEvent"), _event("RunStarted")])
    assert (accepted, rejected) == (3, [])
    critical.close()
    samples.close()
    assert _kinds(Spool(tmp_path / "s")) == [kind]
    assert _kinds(Spool(tmp_path / "c")) == ["GpuEvent", "RunStarted"]


def test_every_hardware_sample_type_is_a_sample_type() -> None:
    """A new sample type left out of SAMPLE_TYPES would be fsynced per batch and
    refuse when full, like a training event."""
    samples = {k for k, topic in TOPIC_OF.items() if topic == "hardware" and "Sample" in k}
    assert samples == set(SAMPLE_TYPES)


def test_the_chain_runs_through_a_batch_and_across_batches(tmp_path: Path) -> None:
    """Two streams interleaved in one batch, a refused event and a repeated one
    among them, then a second batch: each stream's seq counts its spooled
    events only, and each prev_hash is the SHA-256 of that stream's previous
    event's bytes."""
    critical, samples = Spool(tmp_path / "c"), Spool(tmp_path / "s", overflow="drop_oldest")
    critical.open()
    samples.open()
    ingest = Ingest(Chain(), critical, samples, default_registry(), "n1", "tt")
    a1, b1, bad = _event("RunStarted"), _event("GpuEvent"), _event("RunStarted")
    a2 = _event("Metrics")
    a1["stream"] = bad["stream"] = a2["stream"] = "run/a"
    b1["stream"] = "gpu/b"
    bad["body"] = {**bad["body"], "pid": "not a number"}
    accepted, rejected = ingest.accept([a1, b1, bad, a1, a2])
    assert accepted == 4 and [r.event_id for r in rejected] == [bad["event_id"]]
    b2, a3 = _event("GpuEvent"), _event("RunFinished")
    b2["stream"], a3["stream"] = "gpu/b", "run/a"
    assert ingest.accept([b2, a3, b1]) == (3, [])  # b1 again: already spooled
    critical.close()
    spool = Spool(tmp_path / "c")
    spool.open()
    values = [r.value for r in spool.pending()]
    envelopes = [decode(default_registry(), v).record["envelope"] for v in values]
    assert [(e["event_id"], e["stream"], e["seq"]) for e in envelopes] == [
        (a1["event_id"], "run/a", 0),
        (b1["event_id"], "gpu/b", 0),
        (a2["event_id"], "run/a", 1),
        (b2["event_id"], "gpu/b", 1),
        (a3["event_id"], "run/a", 2),
    ]
    last: dict[str, bytes] = {}
    for value, env in zip(values, envelopes, strict=True):
        assert env["prev_hash"] == last.get(env["stream"], b"")
        assert env["node"] == "n1"
        last[env["stream"]] = hashlib.sha256(value).digest()
    assert {s: link.hash for s, link in ingest.chain.links.items()} == last


def test_a_resent_event_is_taken_once_while_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK resends a batch it got no answer for: ids still remembered are
    accepted without being spooled again; the window keeps the newest ids."""
    monkeypatch.setattr("agent.ingest._RECENT_IDS", 3)
    critical, samples = Spool(tmp_path / "c"), Spool(tmp_path / "s", overflow="drop_oldest")
    critical.open()
    samples.open()
    ingest = Ingest(Chain(), critical, samples, default_registry(), "n1", "tt")
    events = [_event("RunStarted") for _ in range(5)]
    assert ingest.accept(events[:2]) == (2, [])
    assert ingest.accept(events[:2]) == (2, [])  # resent: nothing new spooled
    assert critical.stats().pending == 2
    assert ingest.accept(events[2:]) == (3, [])  # the window now holds events 2-4
    assert ingest.accept(events[2:]) == (3, [])
    assert critical.stats().pending == 5
    assert ingest.accept(events[:1]) == (1, [])  # forgotten: spooled again
    assert critical.stats().pending == 6
    assert len(ingest._recent) == len(ingest._recent_order) == 3


def test_a_full_critical_spool_raises_and_sends_one_alert(tmp_path: Path) -> None:
    """The refused batch raises; an Alert goes through the samples spool,
    chained on the agent's stream like any event."""
    critical = Spool(tmp_path / "c", max_bytes=200)
    samples = Spool(tmp_path / "s", overflow="drop_oldest")
    critical.open()
    samples.open()
    ingest = Ingest(Chain(), critical, samples, default_registry(), "n1", "tt")
    with pytest.raises(SpoolFullError):
        ingest.accept([_event("RunStarted")])
    with pytest.raises(SpoolFullError):
        ingest.accept([_event("RunStarted")])  # within the minute: no second alert
    assert ingest.refused == 2
    records = list(samples.pending())
    assert len(records) == 1 and records[0].topic == "tt." + TOPIC_OF["Alert"]
    alert = decode(default_registry(), records[0].value).record
    assert alert["detector"] == "agent_spool_full" and alert["severity"] == "critical"
    assert (alert["envelope"]["stream"], alert["envelope"]["seq"]) == ("agent/n1", 0)
    link = ingest.chain.links["agent/n1"]
    assert (link.seq, link.hash) == (0, hashlib.sha256(records[0].value).digest())
