"""The collector loop against the real broker and the real engine.

Each test has its own topic prefix, consumer group and run ids, so they
share the session's Kafka and ClickHouse without seeing each other.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Producer

from collector.config import CollectorConfig, load_config
from collector.pipeline import Pipeline, make_consumer
from collector.store import Store
from collector.topics import ensure_topics
from schemas import default_registry, encode
from tests.samples import record

pytestmark = pytest.mark.kafka


def _config(bootstrap: str) -> CollectorConfig:
    tag = uuid.uuid4().hex[:10]
    return load_config(
        None,
        kafka_bootstrap=bootstrap,
        kafka_topic_prefix=f"t{tag}",
        collector_group_id=f"g{tag}",
        collector_batch_max_messages=50,
        collector_batch_max_seconds=0.2,
    )


def _pipeline(config: CollectorConfig, store: Store, **kw: Any) -> Pipeline:
    consumer = make_consumer(config, **{"session.timeout.ms": 6000})
    pipeline = Pipeline(config, store, default_registry(), consumer, **kw)
    pipeline.consumer.subscribe(config.topics())
    return pipeline


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for key, value in values:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0


def _until(pipeline: Pipeline, done: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "pipeline did not get there in time"
        pipeline.step()


def _count(store: Store, sql: str, **params: Any) -> int:
    return int(store.query(sql, params)[0]["n"])


def _metrics_messages(run_id: str, n: int) -> list[tuple[bytes, bytes]]:
    reg = default_registry()
    out = []
    for seq in range(n):
        rec = record("Metrics", run_id, seq=seq)
        rec["step"] = [seq * 2, seq * 2, seq * 2 + 1, seq * 2 + 1]
        out.append((run_id.encode(), encode(reg, "Metrics", rec)))
    return out


def test_garbage_and_unknown_fingerprints_become_dead_letters(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config = _config(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    topic = f"{config.kafka_topic_prefix}.training"
    run_id = f"dl-{uuid.uuid4().hex[:8]}"
    good = _metrics_messages(run_id, 4)
    bad = [
        (b"x", b"\x00\x01garbage that is not avro"),
        (b"x", b"\xc3\x01" + b"\xee" * 8 + b"\x02\x04"),
        (b"x", good[0][1][:-7]),  # a known fingerprint with a truncated body
    ]
    _produce(kafka_bootstrap, topic, [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]])
    pipeline = _pipeline(config, ch_store)
    _until(pipeline, lambda: pipeline.totals.messages >= 7)
    pipeline.consumer.close()

    points = _count(
        ch_store, "SELECT count() AS n FROM metrics FINAL WHERE run_id = {r:String}", r=run_id
    )
    assert points == 16
    rows = ch_store.query(
        "SELECT offset, reason, error_type, raw FROM dead_letters FINAL "
        "WHERE topic = {t:String} ORDER BY offset",
        {"t": topic},
    )
    assert [r["offset"] for r in rows] == [1, 3, 5]
    assert [r["error_type"] for r in rows] == [
        "NotSingleObjectError",
        "UnknownFingerprintError",
        "CorruptPayloadError",
    ]
    assert "eeeeeeeeeeeeeeee" in rows[1]["reason"]
    assert all(r["reason"] for r in rows)


def test_crash_between_insert_and_commit_is_invisible(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config = _config(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    run_id = f"crash-{uuid.uuid4().hex[:8]}"
    _produce(
        kafka_bootstrap, f"{config.kafka_topic_prefix}.training", _metrics_messages(run_id, 30)
    )

    class Crash(Exception):
        pass

    def crash(_result: object) -> None:
        raise Crash

    first = _pipeline(config, ch_store, after_insert=crash)
    with pytest.raises(Crash):
        _until(first, lambda: False)
    first.consumer.close()  # the process "died": nothing was committed

    raw = "SELECT count() AS n FROM metrics WHERE run_id = {r:String}"
    stored_before = _count(ch_store, raw, r=run_id)
    assert stored_before > 0

    second = _pipeline(config, ch_store)
    _until(second, lambda: second.totals.messages >= 30)
    second.consumer.close()
    assert second.totals.messages == 30  # everything was redelivered and stored again...
    final = "SELECT count() AS n FROM metrics FINAL WHERE run_id = {r:String}"
    assert _count(ch_store, final, r=run_id) == 120  # ...and queries see it once
    distinct = "SELECT uniqExact(event_id, idx) AS n FROM metrics FINAL WHERE run_id = {r:String}"
    assert _count(ch_store, distinct, r=run_id) == 120


def test_every_event_type_lands_in_its_table(kafka_bootstrap: str, ch_store: Store) -> None:
    config = _config(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    run_id = f"all-{uuid.uuid4().hex[:8]}"
    reg = default_registry()
    tables = {
        "RunStarted": ("runs", "training"),
        "Metrics": ("metrics", "training"),
        "CheckpointSaved": ("checkpoints", "training"),
        "DatasetUsed": ("datasets", "training"),
        "RunFinished": ("run_finished", "training"),
        "GpuSample": ("gpu_samples", "hardware"),
        "GpuEvent": ("gpu_events", "hardware"),
        "HostSample": ("host_samples", "hardware"),
        "AccessEvent": ("access_log", "access"),
        "Alert": ("alerts", "alerts"),
    }
    for kind, (_table, suffix) in tables.items():
        rec = record(kind, run_id)
        rec["envelope"]["stream"] = f"run/{run_id}"
        _produce(
            kafka_bootstrap,
            f"{config.kafka_topic_prefix}.{suffix}",
            [(run_id.encode(), encode(reg, kind, rec))],
        )
    pipeline = _pipeline(config, ch_store)
    _until(pipeline, lambda: pipeline.totals.messages >= len(tables))
    pipeline.consumer.close()
    assert pipeline.totals.dead_letters == 0
    for kind, (table, _suffix) in tables.items():
        n = _count(
            ch_store,
            f"SELECT count() AS n FROM {table} FINAL WHERE stream = {{s:String}}",
            s=f"run/{run_id}",
        )
        assert n == (4 if kind == "Metrics" else 1), kind
