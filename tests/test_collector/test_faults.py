"""The collector under faults, against the real broker and engine: the store
down, a collector dying mid-stream, garbage and fuzz, dead-letter replay."""

from __future__ import annotations

import math
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import CollectorConfig
from collector.errors import StoreError
from collector.pipeline import Pipeline
from collector.router import Batch, InvalidEventError, route
from collector.store import Store
from collector.topics import ensure_topics, provision
from collector.validate import Limits, validate
from schemas import Registry, SchemaError, decode, default_registry, encode
from tests.procs import CollectorProc, stack_env, wait_for
from tests.samples import packed_points, record, registry_with_field
from tests.test_collector.kit import config_for, pipeline_for, produce, run_until, training_topic


def _metrics(run_id: str, n: int, per: int = 4) -> list[tuple[bytes, bytes]]:
    """n Metrics messages of `per` points each, steps distinct across messages."""
    reg = default_registry()
    out = []
    for seq in range(n):
        rec = record("Metrics", run_id, seq=seq)
        now = rec["envelope"]["time_us"]
        rec.update(
            packed_points(
                [seq * per + i for i in range(per)], [now] * per, [0, 1] * (per // 2),
                [float(i) for i in range(per)],
            )
        )  # fmt: skip
        out.append((run_id.encode(), encode(reg, "Metrics", rec)))
    return out


def _count(store: Store, sql: str, **params: Any) -> int:
    return int(store.query(sql, params)[0]["n"])


def _points(store: Store, run_id: str) -> tuple[int, int]:
    """(rows as queries see them, distinct point identities)."""
    row = store.query(
        "SELECT count() AS n, uniqExact(event_id, idx) AS u FROM metrics FINAL "
        "WHERE run_id = {r:String}",
        {"r": run_id},
    )[0]
    return int(row["n"]), int(row["u"])


def _all_stored(store: Store, run_ids: list[str], points: int) -> bool:
    return all(_points(store, run_id) == (points, points) for run_id in run_ids)


def _committed(config: CollectorConfig, topic: str, partitions: int) -> list[int]:
    probe = Consumer({"bootstrap.servers": config.kafka_bootstrap,
                      "group.id": config.collector_group_id})  # fmt: skip
    try:
        tps = probe.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return [max(tp.offset, 0) for tp in tps]  # no commit yet: -1001
    finally:
        probe.close()


class FlakyStore(Store):
    """The real store, with its insert path raising while `down` is set."""

    def __init__(self, inner: Store) -> None:
        self.__dict__.update(inner.__dict__)
        self.down = threading.Event()
        self.refused = 0

    def insert_arrow(self, table: str, data: Any) -> None:
        if self.down.is_set():
            self.refused += 1
            raise StoreError("injected: ClickHouse unavailable")
        super().insert_arrow(table, data)


def test_store_outage_pauses_commits_nothing_and_recovers(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config, topic = training_topic(kafka_bootstrap, 2, collector_retry_max_s=0.5)
    run_id = f"outage-{uuid.uuid4().hex[:8]}"
    flaky = FlakyStore(ch_store)
    pipeline = pipeline_for(config, flaky)
    produce(kafka_bootstrap, topic, _metrics(run_id, 40))
    run_until(pipeline, lambda: pipeline.totals.messages >= 40)
    assert _points(ch_store, run_id) == (160, 160)
    before = _committed(config, topic, 2)
    assert sum(before) == 40

    flaky.down.set()
    produce(kafka_bootstrap, topic, _metrics(f"{run_id}-b", 60))
    worker = threading.Thread(target=pipeline.run, daemon=True)
    worker.start()
    wait_for("inserts refused", lambda: flaky.refused >= 3, timeout=30)
    assert pipeline.metrics.paused._value.get() == 1  # consumption paused
    assert pipeline.metrics.store_up._value.get() == 0
    time.sleep(1.0)  # the outage lasts: still nothing may be committed
    assert _committed(config, topic, 2) == before
    assert _points(ch_store, f"{run_id}-b") == (0, 0)

    flaky.down.clear()
    wait_for(
        "everything stored after recovery",
        lambda: _points(ch_store, f"{run_id}-b") == (240, 240),
        timeout=60,
    )
    wait_for("offsets committed", lambda: sum(_committed(config, topic, 2)) == 100, timeout=30)
    assert pipeline.metrics.paused._value.get() == 0
    assert pipeline.metrics.insert_retries._value.get() >= 3
    pipeline.stop()
    worker.join(30)
    assert not worker.is_alive()
    assert _points(ch_store, run_id) == (160, 160)


def test_hung_collector_loses_its_partitions_and_each_event_is_seen_once(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    """Two collectors in one group; one stops mid-batch (stored, not committed) and
    never polls again. The group moves its partitions to the other after
    max.poll.interval, which redelivers the uncommitted batch: stored twice,
    seen once. (Two *processes* cannot share one chDB directory; the SIGKILL
    variant below runs where a ClickHouse server is available.)"""
    config, topic = training_topic(kafka_bootstrap, 4, collector_batch_max_messages=20)
    run_ids = [f"hang{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    for i, run_id in enumerate(run_ids):  # two runs a partition: both collectors get work
        produce(kafka_bootstrap, topic, _metrics(run_id, 25), partition=i % 4)
    total = 8 * 25

    hang = threading.Event()
    release = threading.Event()

    def stall(_result: object) -> None:
        hang.set()
        release.wait(120)

    quick = {"session.timeout.ms": 6000, "max.poll.interval.ms": 7000}
    a = pipeline_for(config, ch_store, quick, after_insert=stall)
    b = pipeline_for(config, ch_store, quick)
    thread_a = threading.Thread(target=lambda: run_until(a, hang.is_set, 60), daemon=True)
    try:
        thread_a.start()
        wait_for("collector A stored a batch and hung before its commit", hang.is_set, 60)
        assert a.totals.messages == 0  # A's batch is stored but not counted: no commit
        # B gets A's partitions once A misses max.poll.interval and reads them from
        # the last commit. B's own commit may fail in a rebalance too (that batch is
        # read, and counted, again), so the end is what is stored and committed, not
        # B's count of messages.
        run_until(b, lambda: _all_stored(ch_store, run_ids, 100), timeout=120)
        run_until(b, lambda: sum(_committed(config, topic, 4)) == total, timeout=60)
    finally:
        release.set()
        thread_a.join(30)
        a.consumer.close()
        b.consumer.close()
    for run_id in run_ids:
        assert _points(ch_store, run_id) == (100, 100), run_id
    # A never committed, so B read every message from the last commit, A's stored
    # batch included (committed above): that batch is stored twice, and FINAL
    # shows each point once (checked above)
    assert b.totals.messages >= total


def test_two_collector_processes_one_sigkilled_every_event_once(
    kafka_bootstrap: str, ch_dsn: str, tmp_path: Path
) -> None:
    """Two collector processes share a ClickHouse server; one is SIGKILLed while
    the stream flows. Runs where a server is at hand (a Docker engine for
    testcontainers, or TRAINTRAIL_CLICKHOUSE_DSN=http://...)."""
    if not ch_dsn.startswith(("http://", "https://")):
        pytest.skip(
            "two collector processes need a ClickHouse server: chDB opens a data directory "
            "from one process only (the hung-collector test covers rebalance here)"
        )
    prefix = f"k{uuid.uuid4().hex[:8]}"
    env = {
        **stack_env(tmp_path, kafka_bootstrap, prefix),
        "TRAINTRAIL_KAFKA_PARTITIONS": "4",
        "TRAINTRAIL_COLLECTOR_SESSION_TIMEOUT_MS": "6000",
        "TRAINTRAIL_CLICKHOUSE_DSN": ch_dsn,  # both processes share the server
    }
    first = CollectorProc(tmp_path / "c1", env).start()
    second = CollectorProc(tmp_path / "c2", env).start()
    run_ids = [f"kill{i}-{uuid.uuid4().hex[:6]}" for i in range(8)]
    where = "run_id IN (" + ", ".join(f"'{r}'" for r in run_ids) + ")"
    for run_id in run_ids[:4]:
        produce(kafka_bootstrap, f"{prefix}.training", _metrics(run_id, 200))
    wait_for(  # mid-stream: the first has stored some (and maybe committed less)
        "points stored",
        lambda: first.scalar(f"SELECT count() FROM metrics WHERE {where}") > 0,
        timeout=60,
    )
    first.kill()  # SIGKILL: no flush, no commit, no leaving the group
    for run_id in run_ids[4:]:
        produce(kafka_bootstrap, f"{prefix}.training", _metrics(run_id, 200))
    wait_for(
        "every point stored",
        lambda: (
            second.scalar(f"SELECT uniqExact(event_id, idx) FROM metrics FINAL WHERE {where}")
            >= 8 * 800
        ),
        timeout=120,
    )
    for run_id in run_ids:
        n = second.scalar(f"SELECT count() FROM metrics FINAL WHERE run_id = '{run_id}'")
        assert n == 800, run_id
    second.stop()


# -- fuzz -------------------------------------------------------------------------------------

_KINDS = sorted(k for k in default_registry().versions if k != "Envelope")


def _mutants() -> st.SearchStrategy[bytes]:
    """Valid messages of every type, then broken: byte flips, cuts, junk tails, a
    wrong fingerprint, random bytes, or a field made semantically invalid."""
    reg = default_registry()

    def valid(kind: str) -> bytes:
        return encode(reg, kind, record(kind, f"fz-{kind}"))

    def semantic(kind: str, how: int) -> bytes:
        rec = record(kind, f"fz-{kind}")
        if how == 0:
            rec["envelope"]["time_us"] = 5  # 1970
        elif how == 1:
            rec["envelope"]["time_us"] = (time.time_ns() // 1000) + 400 * 86_400 * 10**6
        elif how == 2 and kind == "Metrics":
            rec["step_le"] = struct.pack("<4q", -1, 0, 1, 2)
        elif how == 2 and "step" in rec and rec["step"] is not None:
            rec["step"] = -7
        elif how == 3 and kind in {"GpuSample", "HostSample"}:
            field = "power_w" if kind == "GpuSample" else "cpu_percent"
            rec[field] = float("nan")
        elif kind == "GpuSamples" and how in (2, 3, 5):  # the first sample's packed value
            field, code, value = {
                2: ("utilization_gpu", "q", 300),  # not a uint8
                3: ("power_w", "d", math.inf),
                5: ("time_us", "q", 5),  # 1970, in an envelope of now
            }[how]
            rec[field] = struct.pack(f"<{code}", value) + rec[field][8:]
        elif kind == "GpuSamples":
            rec["devices"][0]["gpu_uuid"] = "x" * 70_000
        else:
            key = "run_id" if "run_id" in rec else "gpu_uuid" if "gpu_uuid" in rec else None
            if key is None:
                rec["envelope"]["time_us"] = 5
            else:
                rec[key] = "x" * 70_000
        return encode(reg, kind, rec)

    base = st.sampled_from(_KINDS).map(valid)
    flips = st.tuples(base, st.integers(0, 10**6), st.integers(1, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[0][t[1] % len(t[0])] ^ t[2]])
        + t[0][t[1] % len(t[0]) + 1 :]
    )  # fmt: skip
    cuts = st.tuples(base, st.integers(0, 10**6)).map(lambda t: t[0][: t[1] % len(t[0])])
    tails = st.tuples(base, st.binary(min_size=1, max_size=16)).map(lambda t: t[0] + t[1])
    wrong_fp = st.tuples(base, st.binary(min_size=8, max_size=8)).map(
        lambda t: t[0][:2] + t[1] + t[0][10:]
    )
    junk = st.binary(max_size=300)
    bad_meaning = st.tuples(st.sampled_from(_KINDS), st.integers(0, 5)).map(lambda t: semantic(*t))
    return st.one_of(flips, cuts, tails, wrong_fp, junk, bad_meaning)


def _verdict(registry: Registry, value: bytes) -> str | None:
    """The oracle: None if the collector must store it, else the error type."""
    try:
        decoded = decode(registry, value)
        validate(decoded, Limits())
        route(Batch(), decoded)
    except (SchemaError, InvalidEventError) as exc:
        return type(exc).__name__
    return None


def test_ten_thousand_fuzzed_messages_interleaved_with_good_ones(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    fuzzed: list[bytes] = []

    @settings(
        max_examples=10_000,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_mutants())
    def collect(value: bytes) -> None:
        fuzzed.append(value)

    collect()
    fuzzed = fuzzed[:10_000]
    assert len(fuzzed) >= 9_000  # hypothesis may stop early only when it runs dry
    registry = default_registry()
    verdicts = [_verdict(registry, v) for v in fuzzed]
    bad = sum(v is not None for v in verdicts)
    assert bad > 0.75 * len(fuzzed)  # most mutations break something (a flipped byte in
    # a string may not: those are good messages and must be stored)

    config, topic = training_topic(kafka_bootstrap, collector_batch_max_messages=2000)
    run_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    good = _metrics(run_id, 500)
    mixed: list[tuple[bytes, bytes]] = []
    for i, value in enumerate(fuzzed):
        mixed.append((b"fz", value))
        if i % 20 == 0 and good:
            mixed.append(good.pop())
    mixed += good
    produce(kafka_bootstrap, topic, mixed)

    pipeline = pipeline_for(config, ch_store)
    run_until(pipeline, lambda: pipeline.totals.messages >= len(mixed), timeout=300)
    pipeline.consumer.close()
    assert pipeline.totals.messages == len(mixed)
    assert pipeline.totals.dead_letters == bad
    assert _points(ch_store, run_id) == (2000, 2000)  # every good one stored
    rows = ch_store.query(
        "SELECT error_type, count() AS n, countIf(reason = '') AS no_reason "
        "FROM dead_letters FINAL WHERE topic = {t:String} GROUP BY error_type",
        {"t": topic},
    )
    by_type = {r["error_type"]: int(r["n"]) for r in rows}
    assert sum(by_type.values()) == bad
    assert all(int(r["no_reason"]) == 0 for r in rows)
    expected: dict[str, int] = {}
    for v in verdicts:
        if v is not None:
            expected[v] = expected.get(v, 0) + 1
    assert by_type == expected


# -- dead-letter topic and replay ----------------------------------------------------------


def test_dead_letter_topic_and_replay_after_a_schema_fix(
    kafka_bootstrap: str, ch_store: Store, tmp_path: Path
) -> None:
    """A writer ships CheckpointSaved v2 before the collectors know it: dead letters
    (table and topic). The registry gets v2; `dlq replay` stores them once."""
    from collector.deadletters import DeadLetters, replay
    from collector.queries import dead_letters_raw

    fixed = registry_with_field(
        tmp_path, "CheckpointSaved", {"name": "owner", "type": "string", "default": "-"}
    )

    config = config_for(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, [*config.topics(), config.dead_letter_topic()], 1, 1)
    topic = f"{config.kafka_topic_prefix}.training"
    run_id = f"dlq-{uuid.uuid4().hex[:8]}"
    messages = []
    for i in range(5):
        rec = {**record("CheckpointSaved", run_id, seq=i), "owner": "alice", "sha256": f"{i:064x}"}
        messages.append((run_id.encode(), encode(fixed, "CheckpointSaved", rec)))
    produce(kafka_bootstrap, topic, messages)

    old = pipeline_for(
        config, ch_store, dead_letters=DeadLetters(kafka_bootstrap, config.dead_letter_topic())
    )
    run_until(old, lambda: old.totals.messages >= 5)
    old.consumer.close()
    assert old.dead_letters is not None
    old.dead_letters.close()
    old.dead_letters = None  # its producer goes now, not after the session's broker
    assert old.totals.dead_letters == 5

    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"r{run_id}",
                       "auto.offset.reset": "earliest"})  # fmt: skip
    reader.subscribe([config.dead_letter_topic()])
    published: list[Any] = []
    deadline = time.monotonic() + 30
    while len(published) < 5 and time.monotonic() < deadline:
        msg = reader.poll(0.5)
        if msg is not None and msg.error() is None:
            published.append(msg)
    reader.close()
    assert len(published) == 5
    headers = dict(published[0].headers())
    assert headers["source_topic"] == topic.encode()
    assert headers["error_type"] == b"UnknownFingerprintError"
    assert {m.value() for m in published} == {v for _k, v in messages}

    rows = [r for r in dead_letters_raw(ch_store, topic=topic) if r["topic"] == topic]
    assert len(rows) == 5
    dry = replay(rows, default_registry(), None)
    assert dry.sent == 0 and dry.still_bad == {"UnknownFingerprintError": 5}
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    assert replay(rows, fixed, producer).sent == 5
    assert replay(rows, fixed, producer).sent == 5  # twice: still stored once
    del producer

    new = pipeline_for(config, ch_store, registry=fixed)
    run_until(new, lambda: new.totals.messages >= 10)
    new.consumer.close()
    n = _count(
        ch_store, "SELECT count() AS n FROM checkpoints FINAL WHERE run_id = {r:String}", r=run_id
    )
    assert n == 5


def test_kafka_init_is_idempotent_and_sets_retention(kafka_bootstrap: str) -> None:
    config = config_for(kafka_bootstrap, kafka_partitions=2, kafka_retention_hours=24)
    first = provision(config)
    assert sorted(first.created) == sorted([*config.topics(), config.dead_letter_topic()])
    again = provision(config)
    assert again.created == [] and again.retention_set == []
    assert set(again.existing.values()) == {2}
    longer = config_for(kafka_bootstrap, kafka_topic_prefix=config.kafka_topic_prefix,
                        kafka_partitions=2, kafka_retention_hours=48)  # fmt: skip
    changed = provision(longer)
    assert sorted(changed.retention_set) == sorted(config.topics())  # dead letters: unchanged
    assert provision(longer).retention_set == []


def test_collector_metrics_report_rows_lag_and_dead_letters(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config, topic = training_topic(kafka_bootstrap)
    produce(kafka_bootstrap, topic, [*_metrics(f"m-{uuid.uuid4().hex[:6]}", 30), (b"k", b"junk")])
    pipeline: Pipeline = pipeline_for(config, ch_store)
    run_until(pipeline, lambda: pipeline.totals.messages >= 31)
    lag = f'traintrail_collector_consumer_lag{{partition="0",topic="{topic}"}} 0.0'
    deadline = time.monotonic() + 30
    while lag not in pipeline.metrics.render().decode():
        assert time.monotonic() < deadline, "no lag reported"
        pipeline._lag_at = 0.0  # refresh now, not in 5 s
        pipeline.step()
    pipeline.consumer.close()
    text = pipeline.metrics.render().decode()
    assert 'traintrail_collector_rows_total{table="metrics"} 120.0' in text
    assert 'traintrail_collector_dead_letters_total{error_type="NotSingleObjectError"} 1.0' in text
    assert "traintrail_collector_insert_seconds_count" in text


class PickyStore(Store):
    """The real store, refusing (as ClickHouse refuses unparsable data) any insert
    that holds a row of the poison run."""

    def __init__(self, inner: Store, poison: str) -> None:
        self.__dict__.update(inner.__dict__)
        self.poison = poison

    def insert_arrow(self, table: str, data: Any) -> None:
        if "run_id" in data.column_names and self.poison in data.column("run_id").to_pylist():
            raise StoreError(f"insert into {table}: Code: 27. CANNOT_PARSE_INPUT_ASSERTION_FAILED")
        super().insert_arrow(table, data)


def test_data_the_store_refuses_becomes_a_dead_letter_not_a_stall(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config, topic = training_topic(kafka_bootstrap)
    run_id = f"picky-{uuid.uuid4().hex[:8]}"
    poison = f"poison-{uuid.uuid4().hex[:8]}"
    good = _metrics(run_id, 20)
    junk = (b"j", b"not avro")  # a dead letter of the decode stage, in the same batch
    produce(kafka_bootstrap, topic, [*good[:10], *_metrics(poison, 1), junk, *good[10:]])
    pipeline = pipeline_for(config, PickyStore(ch_store, poison))
    run_until(pipeline, lambda: pipeline.totals.messages >= 22, timeout=60)
    pipeline.consumer.close()
    assert _points(ch_store, run_id) == (80, 80)
    assert _points(ch_store, poison) == (0, 0)
    rows = ch_store.query(
        "SELECT offset, reason FROM dead_letters FINAL WHERE topic = {t:String} ORDER BY offset",
        {"t": topic},
    )
    assert [r["offset"] for r in rows] == [10, 11]
    assert "CANNOT_PARSE" in rows[0]["reason"] and "single-object" in rows[1]["reason"]
    assert pipeline.totals.dead_letters == 2
    assert sum(_committed(config, topic, 1)) == 22
