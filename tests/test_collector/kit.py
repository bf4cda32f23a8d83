"""Shared by the collector tests: a private config, an in-process pipeline, producing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer

from collector.config import CollectorConfig, load_config
from collector.pipeline import Pipeline, make_consumer
from collector.store import Store
from collector.topics import ensure_topics
from schemas import default_registry, encode

__all__ = [
    "T0",
    "config_for",
    "curve_messages",
    "pipeline_for",
    "produce",
    "run_until",
    "training_topic",
]

T0 = 1_700_000_000_000_000  # curve time zero, µs; a step a second from there


def config_for(bootstrap: str, **overrides: Any) -> CollectorConfig:
    """Topics and group of this test's own."""
    tag = uuid.uuid4().hex[:10]
    settings: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "kafka_topic_prefix": f"t{tag}",
        "collector_group_id": f"g{tag}",
        "collector_batch_max_messages": 50,
        "collector_batch_max_seconds": 0.2,
        **overrides,
    }
    return load_config(None, **settings)


def training_topic(
    bootstrap: str, partitions: int = 1, **overrides: Any
) -> tuple[CollectorConfig, str]:
    """A private config with its topics created; the training topic's name."""
    config = config_for(bootstrap, **overrides)
    ensure_topics(bootstrap, config.topics(), partitions, 1)
    return config, f"{config.kafka_topic_prefix}.training"


def pipeline_for(
    config: CollectorConfig,
    store: Store,
    consumer_settings: dict[str, Any] | None = None,
    **kw: Any,
) -> Pipeline:
    settings = {"session.timeout.ms": 6000, **(consumer_settings or {})}
    kw.setdefault("registry", default_registry())
    pipeline = Pipeline(config, store, consumer=make_consumer(config, **settings), **kw)
    pipeline.subscribe()
    return pipeline


def produce(
    bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], partition: int | None = None
) -> None:
    """Send keyed messages; to `partition` when given, else where the key hashes."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    where = {} if partition is None else {"partition": partition}
    for key, value in values:
        producer.produce(topic, value=value, key=key, **where)
    assert producer.flush(30) == 0


def run_until(pipeline: Pipeline, done: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "pipeline did not get there in time"
        pipeline.step()


def curve_messages(run_id: str, series: dict[str, Any], per: int = 100) -> list[bytes]:
    """Encoded Metrics messages of `per` steps each carrying every named
    series (equal-length sequences indexed by step), one second a step."""
    from tests.samples import packed_points, record

    reg = default_registry()
    names = list(series)
    n = len(next(iter(series.values())))
    out = []
    for first in range(0, n, per):
        s, t, i, v = [], [], [], []
        for step in range(first, min(first + per, n)):
            for k, name in enumerate(names):
                s.append(step)
                t.append(T0 + step * 1_000_000)
                i.append(k)
                v.append(float(series[name][step]))
        rec = record("Metrics", run_id, seq=first // per)
        rec.update(names=names, **packed_points(s, t, i, v))
        out.append(encode(reg, "Metrics", rec))
    return out
