"""Which spool an event lands in: the full-disk policy depends on it.

Hardware samples go to the bounded spool that drops its oldest segments when
full (and is not fsynced per batch by default); everything else goes to the
critical spool, which refuses rather than drops.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.envelope import Chain
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
