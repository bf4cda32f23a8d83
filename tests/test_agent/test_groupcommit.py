"""Group commit: batches handed in while one is written are spooled together.

The ingest thread is held by taking the chain lock (what every commit
takes), so what is handed in meanwhile queues up for real; each test then
lets it go and checks what reached the spool, in what order, with which
answer to each sender.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.envelope import Chain
from agent.errors import SpoolFullError
from agent.groupcommit import GroupCommit, GroupCommitConfig
from agent.ingest import Accepted, Ingest
from agent.spool import Spool
from schemas import decode, default_registry
from tests.samples import body


def _event(kind: str = "HostSample", stream: str = "host/n1") -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "time_us": 1_700_000_000_000_000,
        "stream": stream,
        "key": "n1",
        "body": body(kind),
    }


def _wait(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


class _Rig:
    def __init__(self, tmp_path: Path, critical_max: int = 2**30, max_posted: int = 64) -> None:
        self.critical = Spool(tmp_path / "c", max_bytes=critical_max)
        self.samples = Spool(tmp_path / "s", overflow="drop_oldest", fsync=False)
        self.critical.open()
        self.samples.open()
        self.ingest = Ingest(Chain(), self.critical, self.samples, default_registry(), "n1", "tt")
        self.commit = GroupCommit(self.ingest, GroupCommitConfig(max_posted))
        self.appends: list[int] = []  # events per spool append, both spools
        for spool in (self.critical, self.samples):
            real = spool.append

            def counted(entries: list[Any], real: Any = real) -> list[int]:
                rids: list[int] = real(entries)
                self.appends.append(len(entries))
                return rids

            spool.append = counted  # type: ignore[method-assign]

    def spooled(self, spool: Spool) -> list[tuple[str, str, int]]:
        """(event_id, stream, seq) of each record in `spool`, in order."""
        out = []
        for record in spool.pending():
            env = decode(default_registry(), record.value).record["envelope"]
            out.append((env["event_id"], env["stream"], env["seq"]))
        return out


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[_Rig]:
    r = _Rig(tmp_path)
    r.commit.start()
    yield r
    r.commit.stop()
    r.critical.close()
    r.samples.close()


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run `call` on a thread; its result (or exception) lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_what_arrives_during_a_commit_is_written_as_one_batch(rig: _Rig) -> None:
    """One commit under way (held); two waiting senders and a poster hand in
    meanwhile: they share the next write, in the order they came, each
    stream's chain running through them."""
    first = _event()
    with rig.ingest.chain.lock:
        rig.commit.post([first])
        _wait("the first post taken", lambda: rig.commit.queued_events == 0)
        a = [_event(), _event("RunStarted", "run/a")]
        t1, r1 = _in_thread(lambda: rig.commit.accept(a))
        _wait("a queued", lambda: rig.commit.queued_events == 2)
        b = [_event()]
        rig.commit.post(b)
        c = [_event("RunStarted", "run/c"), _event()]
        t2, r2 = _in_thread(lambda: rig.commit.accept(c))
        _wait("c queued", lambda: rig.commit.queued_events == 5)
    t1.join(10)
    t2.join(10)
    assert r1 == [(2, [])] and r2 == [(2, [])]
    assert rig.commit.batches == 2 and rig.commit.requests == 4
    # first alone; then a, b, c: one append per spool
    assert rig.appends == [1, 2, 3]
    hosts = [e for e in (first, *a, *b, *c) if e["type"] == "HostSample"]
    assert rig.spooled(rig.samples) == [(e["event_id"], "host/n1", i) for i, e in enumerate(hosts)]
    assert [s for _i, s, _q in rig.spooled(rig.critical)] == ["run/a", "run/c"]


def test_each_sender_hears_of_its_own_rejections(rig: _Rig) -> None:
    bad = _event("RunStarted", "run/x")
    bad["body"] = {**bad["body"], "pid": "not a number"}
    good = [_event("RunStarted", "run/y")]
    heard: list[Accepted | Exception] = []
    with rig.ingest.chain.lock:
        rig.commit.post([_event()])
        _wait("the first post taken", lambda: rig.commit.queued_events == 0)
        t1, r1 = _in_thread(lambda: rig.commit.accept([bad, _event()]))
        _wait("queued", lambda: rig.commit.queued_events == 2)
        t2, r2 = _in_thread(lambda: rig.commit.accept(good))
        _wait("queued", lambda: rig.commit.queued_events == 3)
        rig.commit.post([{**_event(), "type": "Nope"}], heard.append)
    t1.join(10)
    t2.join(10)
    assert isinstance(r1[0], tuple) and r1[0][0] == 1
    assert [r.event_id for r in r1[0][1]] == [bad["event_id"]]
    assert r2 == [(1, [])]
    _wait("the poster told", lambda: bool(heard))
    assert isinstance(heard[0], tuple) and heard[0][0] == 0 and "Nope" in heard[0][1][0].error


def test_a_group_refused_together_is_taken_one_by_one(tmp_path: Path) -> None:
    """Two senders' events fit the critical spool apart but not together:
    the first is spooled, the second refused, and only the second hears so."""
    one = _Rig(tmp_path / "size")
    one.ingest.accept([_event("RunStarted", "run/a")])
    size = one.critical.stats().bytes
    one.critical.close()
    one.samples.close()
    rig = _Rig(tmp_path / "rig", critical_max=size + size // 2)
    rig.commit.start()
    try:
        a, b = [_event("RunStarted", "run/a")], [_event("RunStarted", "run/b")]
        with rig.ingest.chain.lock:
            rig.commit.post([_event()])
            _wait("the first post taken", lambda: rig.commit.queued_events == 0)
            t1, r1 = _in_thread(lambda: rig.commit.accept(a))
            _wait("queued", lambda: rig.commit.queued_events == 1)
            t2, r2 = _in_thread(lambda: rig.commit.accept(b))
            _wait("queued", lambda: rig.commit.queued_events == 2)
        t1.join(10)
        t2.join(10)
        assert r1 == [(1, [])]
        assert isinstance(r2[0], SpoolFullError)
        assert rig.ingest.refused == 1
        assert rig.spooled(rig.critical) == [(a[0]["event_id"], "run/a", 0)]
        assert "run/b" not in rig.ingest.chain.links
    finally:
        rig.commit.stop()


def test_posters_wait_for_room_and_nothing_is_dropped(tmp_path: Path) -> None:
    rig = _Rig(tmp_path, max_posted=2)
    rig.commit.start()
    try:
        events = [_event() for _ in range(6)]
        with rig.ingest.chain.lock:
            rig.commit.post(events[:1])
            _wait("the first post taken", lambda: rig.commit.queued_events == 0)
            rig.commit.post(events[1:3])  # fills the queue
            poster, _ = _in_thread(lambda: [rig.commit.post([e]) for e in events[3:]])
            poster.join(0.3)
            assert poster.is_alive()  # held back while the queue is full
            assert rig.commit.queued_events == 2
        poster.join(10)
        assert not poster.is_alive()
        rig.commit.stop()
        assert [i for i, _s, _q in rig.spooled(rig.samples)] == [e["event_id"] for e in events]
    finally:
        rig.commit.stop()


def test_a_sender_alone_commits_on_its_own_thread(rig: _Rig) -> None:
    """Nothing to group with: no hand-over to the ingest thread and back."""
    threads: list[str] = []
    real = rig.ingest.accept_many

    def spy(batches: Any) -> list[Accepted | Exception]:
        threads.append(threading.current_thread().name)
        return real(batches)

    rig.ingest.accept_many = spy  # type: ignore[method-assign]
    assert rig.commit.accept([_event("RunStarted", "run/a")]) == (1, [])
    assert threads == [threading.current_thread().name] and rig.commit.batches == 0


def test_stop_commits_the_queue_and_later_senders_commit_themselves(rig: _Rig) -> None:
    events = [_event() for _ in range(200)]
    for e in events:
        rig.commit.post([e])
    rig.commit.stop()
    assert rig.commit.queued_events == 0
    late = _event()
    rig.commit.post([late])  # after stop: spooled before post returns
    assert rig.commit.accept([_event("RunStarted", "run/a")]) == (1, [])
    ids = [i for i, _s, _q in rig.spooled(rig.samples)]
    assert ids == [e["event_id"] for e in events] + [late["event_id"]]


def test_many_senders_at_once_keep_every_chain_whole(rig: _Rig) -> None:
    """Four waiting senders and two posters, on shared streams, at once: every
    event is spooled exactly once, and each stream's seq counts 0, 1, 2...
    with each prev_hash the SHA-256 of that stream's previous record."""
    sent: list[str] = []
    lock = threading.Lock()

    def waiting(stream: str) -> None:
        for _ in range(60):
            batch = [_event("RunStarted", stream) for _ in range(3)]
            with lock:
                sent.extend(e["event_id"] for e in batch)
            assert rig.commit.accept(batch) == (3, [])

    def posting() -> None:
        for _ in range(150):
            e = _event()
            with lock:
                sent.append(e["event_id"])
            rig.commit.post([e])

    threads = [threading.Thread(target=waiting, args=(f"run/{i % 2}",)) for i in range(4)]
    threads += [threading.Thread(target=posting) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rig.commit.stop()
    assert rig.commit.requests >= 300  # every post, and the waiters that found a commit going
    records = [*rig.critical.pending(), *rig.samples.pending()]
    assert sorted(
        decode(default_registry(), r.value).record["envelope"]["event_id"] for r in records
    ) == sorted(sent)
    last: dict[str, tuple[int, bytes]] = {}
    for record in sorted(records, key=lambda r: (r.topic, r.rid)):
        env = decode(default_registry(), record.value).record["envelope"]
        seq, prev = last.get(env["stream"], (-1, b""))
        assert (env["seq"], env["prev_hash"]) == (seq + 1, prev), env["stream"]
        last[env["stream"]] = (env["seq"], hashlib.sha256(record.value).digest())
    assert {s: n for s, (n, _h) in last.items()} == {"run/0": 359, "run/1": 359, "host/n1": 299}
