"""The collector loop against the real broker and the real engine.

Each test has its own topic prefix, consumer group and run ids, so they
share the session's Kafka and ClickHouse without seeing each other.
"""

from __future__ import annotations

import math
import struct
import uuid
from pathlib import Path
from typing import Any

import pytest

from collector.store import Store
from collector.topics import ensure_topics
from schemas import default_registry, encode
from tests.samples import metrics_v1_record, record, registry_without
from tests.test_collector.kit import config_for, pipeline_for, produce, run_until, training_topic

pytestmark = pytest.mark.kafka


def _count(store: Store, sql: str, **params: Any) -> int:
    return int(store.query(sql, params)[0]["n"])


def _metrics_messages(run_id: str, n: int) -> list[tuple[bytes, bytes]]:
    reg = default_registry()
    out = []
    for seq in range(n):
        rec = record("Metrics", run_id, seq=seq)
        rec["step_le"] = struct.pack("<4q", seq * 2, seq * 2, seq * 2 + 1, seq * 2 + 1)
        out.append((run_id.encode(), encode(reg, "Metrics", rec)))
    return out


def test_garbage_and_unknown_fingerprints_become_dead_letters(
    kafka_bootstrap: str, ch_store: Store
) -> None:
    config, topic = training_topic(kafka_bootstrap)
    run_id = f"dl-{uuid.uuid4().hex[:8]}"
    good = _metrics_messages(run_id, 4)
    bad = [
        (b"x", b"\x00\x01garbage that is not avro"),
        (b"x", b"\xc3\x01" + b"\xee" * 8 + b"\x02\x04"),
        (b"x", good[0][1][:-7]),  # a known fingerprint with a truncated body
    ]
    produce(kafka_bootstrap, topic, [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]])
    pipeline = pipeline_for(config, ch_store)
    run_until(pipeline, lambda: pipeline.totals.messages >= 7)
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
    config = config_for(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    run_id = f"crash-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, f"{config.kafka_topic_prefix}.training", _metrics_messages(run_id, 30))

    class Crash(Exception):
        pass

    def crash(_result: object) -> None:
        raise Crash

    first = pipeline_for(config, ch_store, after_insert=crash)
    with pytest.raises(Crash):
        run_until(first, lambda: False)
    first.consumer.close()  # the process "died": nothing was committed

    raw = "SELECT count() AS n FROM metrics WHERE run_id = {r:String}"
    stored_before = _count(ch_store, raw, r=run_id)
    assert stored_before > 0

    second = pipeline_for(config, ch_store)
    run_until(second, lambda: second.totals.messages >= 30)
    second.consumer.close()
    assert second.totals.messages == 30  # everything was redelivered and stored again...
    final = "SELECT count() AS n FROM metrics FINAL WHERE run_id = {r:String}"
    assert _count(ch_store, final, r=run_id) == 120  # ...and queries see it once
    distinct = "SELECT uniqExact(event_id, idx) AS n FROM metrics FINAL WHERE run_id = {r:String}"
    assert _count(ch_store, distinct, r=run_id) == 120


def test_every_event_type_lands_in_its_table(kafka_bootstrap: str, ch_store: Store) -> None:
    config = config_for(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    run_id = f"all-{uuid.uuid4().hex[:8]}"
    reg = default_registry()
    tables = {
        "RunStarted": ("runs", "training"),
        "Metrics": ("metric_batches", "training"),
        "CheckpointSaved": ("checkpoints", "training"),
        "DatasetUsed": ("datasets", "training"),
        "RunFinished": ("run_finished", "training"),
        "EvalLogged": ("evaluations", "training"),
        "RunEvent": ("run_events", "training"),
        "GpuSample": ("gpu_samples", "hardware"),
        "GpuSamples": ("gpu_samples", "hardware"),
        "GpuEvent": ("gpu_events", "hardware"),
        "HostSample": ("host_samples", "hardware"),
        "AccessEvent": ("access_log", "access"),
        "Alert": ("alerts", "alerts"),
    }
    for kind, (_table, suffix) in tables.items():
        rec = record(kind, run_id)
        rec["envelope"]["stream"] = f"run/{run_id}"
        produce(
            kafka_bootstrap,
            f"{config.kafka_topic_prefix}.{suffix}",
            [(run_id.encode(), encode(reg, kind, rec))],
        )
    pipeline = pipeline_for(config, ch_store)
    run_until(pipeline, lambda: pipeline.totals.messages >= len(tables))
    pipeline.consumer.close()
    assert pipeline.totals.dead_letters == 0
    rows = {"GpuSamples": 2}  # its two samples; every other kind: one row a message
    for table in {t for t, _suffix in tables.values()}:
        n = _count(
            ch_store,
            f"SELECT count() AS n FROM {table} FINAL WHERE stream = {{s:String}}",
            s=f"run/{run_id}",
        )
        assert n == sum(rows.get(k, 1) for k, (t, _) in tables.items() if t == table), table
    points = "SELECT count() AS n FROM metrics FINAL WHERE run_id = {r:String}"
    assert _count(ch_store, points, r=run_id) == 4


def test_metrics_v1_message_is_stored_after_v2_became_current(
    kafka_bootstrap: str, ch_store: Store, tmp_path: Path
) -> None:
    """A message an old SDK wrote with Metrics v1 (Avro arrays) lands in the same
    rows as its v2 twin (packed columns)."""
    config = config_for(kafka_bootstrap)
    ensure_topics(kafka_bootstrap, config.topics(), 1, 1)
    old = registry_without(tmp_path, "Metrics/v2.avsc")
    run_v1, run_v2 = (f"evo{v}-{uuid.uuid4().hex[:8]}" for v in (1, 2))
    rec_v1 = metrics_v1_record()
    rec_v1["run_id"] = run_v1
    rec_v2 = record("Metrics", run_v2)
    produce(
        kafka_bootstrap,
        f"{config.kafka_topic_prefix}.training",
        [
            (run_v1.encode(), encode(old, "Metrics", rec_v1)),
            (run_v2.encode(), encode(default_registry(), "Metrics", rec_v2)),
        ],
    )
    pipeline = pipeline_for(config, ch_store)
    run_until(pipeline, lambda: pipeline.totals.messages >= 2)
    pipeline.consumer.close()
    assert pipeline.totals.dead_letters == 0
    sql = (
        "SELECT name, step, value, idx, schema_fp FROM metrics AS m FINAL "
        "INNER JOIN (SELECT event_id, schema_fp FROM metric_batches FINAL) AS b "
        "ON m.event_id = b.event_id WHERE m.run_id = {r:String} ORDER BY idx"
    )
    rows = {run: ch_store.query(sql, {"r": run}) for run in (run_v1, run_v2)}
    for run in (run_v1, run_v2):
        got = [(r["name"], r["step"], r["idx"]) for r in rows[run]]
        assert got == [("loss", 0, 0), ("acc", 0, 1), ("loss", 1, 2), ("acc", 1, 3)], run
        values = [r["value"] for r in rows[run]]
        assert values[:2] == [2.5, 0.1] and math.isnan(values[2]) and values[3] == math.inf
    assert rows[run_v1][0]["schema_fp"] == old.current("Metrics").fingerprint.hex()
    assert rows[run_v2][0]["schema_fp"] == default_registry().current("Metrics").fingerprint.hex()
