"""The shipper's delivery bookkeeping and its two producers (the whole Kafka
path, broker outages and SIGKILLs included, runs in test_reliability).

Every producer test runs against both implementations: the C one on
confluent-kafka's librdkafka (agent/kafkacore.py) and confluent-kafka's
Python API (agent/producer.py's PythonProducer), which must behave alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError

from agent import kafkacore
from agent.producer import (
    FATAL,
    PURGED,
    ClientError,
    DeliveryProducer,
    Failure,
    PythonProducer,
    Reports,
    producer_settings,
)
from agent.shipper import Shipper
from agent.spool import Spool
from schemas.nativewrite import DISABLE_ENV
from tests.fixtures.kafka import new_topic

REPO = Path(__file__).resolve().parents[2]
PURGE_QUEUE = KafkaError._PURGE_QUEUE
IMPLS = ["c", "python"]
UNREACHABLE = "127.0.0.1:9"  # nothing listens: records stay queued


def _producer(impl: str, bootstrap: str, **extra: Any) -> DeliveryProducer:
    settings = {**producer_settings(bootstrap, "lz4", 5), **extra}
    if impl == "c":
        if not kafkacore.available():
            pytest.skip(f"C producer unavailable: {kafkacore.describe()}")
        return kafkacore.NativeProducer(settings)
    return PythonProducer(settings)


Rec = tuple[int, str, bytes, bytes]


def _records(n: int, topic: str = "t.training", size: int = 100) -> list[Rec]:
    return [(rid, topic, b"k%d" % (rid % 7), b"%08d" % rid + b"x" * size) for rid in range(n)]


def _poll_until(producer: DeliveryProducer, done: Any, timeout: float = 60.0) -> Reports:
    """Poll until `done(reports so far)`; every report gathered."""
    got = Reports()
    deadline = time.monotonic() + timeout
    while not done(got):
        assert time.monotonic() < deadline, f"timed out: {got}"
        r = producer.poll(0.1)
        got.delivered += r.delivered
        got.failed += r.failed
        got.errors += r.errors
    return got


def test_the_c_producer_is_built_where_a_compiler_is() -> None:
    """`pip install` builds it (optional only so that a machine without a
    compiler still installs); a silent fallback to the slower Python producer
    would only show in the benchmark."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    import agent._kafkacore as built  # type: ignore[import-not-found]

    source = Path(built.__file__).with_name("_kafkacore.c")
    if source.exists():  # an editable install builds next to the source
        assert Path(built.__file__).stat().st_mtime >= source.stat().st_mtime, (
            "agent/_kafkacore.c changed since it was built: .venv/bin/pip install --no-deps -e ."
        )
    assert kafkacore.library_path() is not None
    assert kafkacore.describe().startswith("c (librdkafka 2.")


def test_the_switch_turns_the_c_producer_off() -> None:
    code = (
        "from agent import kafkacore; from agent.producer import new_producer; "
        "print(kafkacore.describe(), type(new_producer('127.0.0.1:9')).__name__)"
    )
    env = {**os.environ, DISABLE_ENV: "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["python", f"({DISABLE_ENV}", "is", "set)", "PythonProducer"]


def test_library_path_reads_the_memory_map(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r--p 00000000 fd:01 1 /usr/lib/libc.so.6\n"
        "7f02-7f03 rw-p 00000000 00:00 0 \n"
        "7f04-7f05 r-xp 00001000 fd:01 2 /x y/confluent_kafka.libs/librdkafka-0cb9.so.1\n"
    )
    assert kafkacore.library_path(maps) == "/x y/confluent_kafka.libs/librdkafka-0cb9.so.1"
    maps.write_text("7f00-7f01 r--p 00000000 fd:01 1 /usr/lib/libc.so.6\n")
    assert kafkacore.library_path(maps) is None
    assert kafkacore.library_path(tmp_path / "absent") is None


@pytest.mark.parametrize("impl", IMPLS)
def test_delivers_every_record_once_in_order(impl: str, kafka_bootstrap: str) -> None:
    topic = new_topic(kafka_bootstrap, "shipper-produce", partitions=1)
    producer = _producer(impl, kafka_bootstrap)
    records = _records(3_000, topic)
    taken, refused = producer.produce(2, records[:1_000], 1.5)
    assert (taken, refused) == (1_000, [])
    taken, refused = producer.produce(2, records[1_000:], 2.5)
    assert (taken, refused) == (2_000, [])
    got = _poll_until(producer, lambda r: len(r.delivered) >= len(records))
    assert sorted(got.delivered) == [(2, rid, 1.5 if rid < 1_000 else 2.5) for rid in range(3_000)]
    assert got.failed == []
    assert producer.close().delivered == []
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": uuid.uuid4().hex,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < len(records) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error() is None:
                seen.append(msg.value())
    consumer.close()
    assert seen == [value for _, _, _, value in records]  # one partition: in order, once


@pytest.mark.parametrize("impl", IMPLS)
def test_a_full_queue_takes_what_fits(impl: str) -> None:
    producer = _producer(impl, UNREACHABLE, **{"queue.buffering.max.messages": 10})
    taken, refused = producer.produce(0, _records(50), 0.0)
    assert (taken, refused) == (10, [])
    closed = producer.close()
    assert sorted(f.rid for f in closed.failed) == list(range(10))
    assert {f.code for f in closed.failed} <= PURGED
    assert closed.delivered == []


@pytest.mark.parametrize("impl", IMPLS)
def test_a_record_librdkafka_refuses_is_reported_and_the_rest_go_on(impl: str) -> None:
    producer = _producer(impl, UNREACHABLE, **{"message.max.bytes": 2_000})
    records = _records(5)
    records[2] = (2, "t.training", b"k", b"x" * 5_000)
    taken, refused = producer.produce(1, records, 0.0)
    assert taken == 5
    assert [(f.spool, f.rid, f.topic, f.name) for f in refused] == [
        (1, 2, "t.training", "MSG_SIZE_TOO_LARGE")
    ]
    assert sorted(f.rid for f in producer.close().failed) == [0, 1, 3, 4]


def test_the_c_producer_holds_each_value_until_its_report() -> None:
    """No copy: librdkafka reads the bytes in place, so each is held until its
    report (a purge's here) and released then, never earlier, never leaked."""
    producer = _producer("c", UNREACHABLE)
    values = [os.urandom(64) for _ in range(100)]
    before = [sys.getrefcount(v) for v in values]
    taken, _ = producer.produce(0, [(i, "t.x", b"k", v) for i, v in enumerate(values)], 0.0)
    assert taken == 100
    assert [sys.getrefcount(v) for v in values] == [n + 1 for n in before]
    producer.close()
    assert [sys.getrefcount(v) for v in values] == before


def test_the_c_producer_refuses_bad_input() -> None:
    if not kafkacore.available():
        pytest.skip(f"C producer unavailable: {kafkacore.describe()}")
    with pytest.raises(ValueError, match=r"no\.such\.setting"):
        kafkacore.NativeProducer({"no.such.setting": "1"}).poll(0)
    producer = kafkacore.NativeProducer(producer_settings(UNREACHABLE, "lz4", 5))
    with pytest.raises(TypeError, match="a record is"):
        producer.produce(0, [(0, "t.x", "not bytes", b"v")], 0.0)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="a record is"):
        producer.produce(0, [(0, "t.x", b"k")], 0.0)  # type: ignore[list-item]
    closed = producer.close()
    assert (closed.delivered, closed.failed) == ([], [])  # the bad records were never taken


class _Scripted:
    """A DeliveryProducer that delivers the first `deliver` records it is
    given, then fails the next with a fatal error: the shipper's rebuild path
    (a real fatal idempotence error cannot be provoked on demand)."""

    def __init__(self, deliver: int, log: list[int]) -> None:
        self.deliver, self.log = deliver, log
        self.queued: list[tuple[int, int, float]] = []
        self.fatal_sent = False

    def produce(self, spool: int, records: Any, started: float) -> tuple[int, list[Any]]:
        self.queued += [(spool, rid, started) for rid, *_ in records]
        return len(records), []

    def poll(self, timeout: float) -> Reports:
        out = Reports()
        while self.queued and len(self.log) < self.deliver:
            item = self.queued.pop(0)
            self.log.append(item[1])
            out.delivered.append(item)
        if self.queued and not self.fatal_sent:
            self.fatal_sent = True
            spool, rid, _ = self.queued[0]
            out.failed.append(Failure(spool, rid, "t", FATAL, "_FATAL", "fenced"))
        return out

    def flush(self, timeout: float) -> int:
        return len(self.queued)

    def fatal(self) -> ClientError | None:
        return ClientError(FATAL, "_FATAL", "fenced") if self.fatal_sent else None

    def close(self) -> Reports:
        purged = [Failure(s, r, "t", PURGE_QUEUE, "_PURGE_QUEUE", "") for s, r, _ in self.queued]
        self.queued = []
        return Reports(failed=purged)


def test_a_fatal_error_replaces_the_producer_and_sends_the_rest_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.open()
    delivered: list[int] = []
    made: list[_Scripted] = []

    class Scripted(Shipper):
        def _new_producer(self) -> Any:
            made.append(_Scripted(300 if not made else 10**9, delivered))
            return made[-1]

    shipper = Scripted([spool], bootstrap=UNREACHABLE)
    spool.append([("t.training", b"k", b"v%05d" % i) for i in range(1_000)])
    shipper.start()
    deadline = time.monotonic() + 30
    while shipper.stats.delivered < 1_000:
        assert time.monotonic() < deadline, shipper.stats
        time.sleep(0.01)
    assert shipper.stop(5) == 0
    assert len(made) == 2  # replaced once
    assert sorted(delivered) == list(range(1_000))  # each record delivered exactly once
    assert shipper.stats.failed == 1  # the fatal report; the purge's are not failures
    assert spool.stats().pending == 0


def test_reports_settled_from_two_threads_ack_each_record_once(tmp_path: Path) -> None:
    """stop() settles a last flush's reports while a shipper thread whose join
    timed out may still settle its own: no report may be lost (its segment
    could never be trimmed) or counted twice."""
    spool = Spool(tmp_path, segment_bytes=2_000)
    spool.open()
    rids = spool.append([("t.training", b"k", b"v%05d" % i) for i in range(20_000)])
    shipper = Shipper([spool], bootstrap=UNREACHABLE)  # never connects: no poll here
    delivered = [(0, rid, 0.0) for rid in rids]

    def settle(part: list[tuple[int, int, float]]) -> None:
        for k in range(0, len(part), 97):
            shipper._settle(part[k : k + 97])

    threads = [threading.Thread(target=settle, args=(delivered[k::2],)) for k in range(2)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches between any two bytecodes, about
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert shipper.stats.delivered == len(rids)
    assert spool.stats().pending == 0
    assert spool.stats().segments == 1  # every full segment trimmed
