"""Collector throughput, Kafka → ClickHouse (chDB), next to the limits beneath it.

For the metrics table (Metrics v2 messages of POINTS points each) and the GPU
table (GpuSamples messages of GPU_PER_MESSAGE samples each: one tick of an
8-GPU node by default, several ticks if larger), in one run on the same broker
and engine:

  (a) raw consume: a confluent-kafka consumer reading the same messages,
      no decoding;
  (b) raw insert: chDB inserting pre-built Arrow tables of the same rows
      (what the router produces), in the collector's batch sizes;
  (c) the collector: the real Pipeline (consume → decode → validate → route
      → Arrow insert → commit) from a fresh consumer group;
  (d) the peer an operator might pick instead: ClickHouse's own Kafka table
      engine with a materialized view, reading the same points as JSONEachRow
      (one JSON line per point, many lines a message) from the same broker, in
      this chDB or, where its Kafka engine does not work, in the chDB of
      BENCH_PEER_PYTHON or .traintrail/peer-venv (bench/kafka_engine_peer.py);
  (e) lag recovery: a backlog of BACKLOG_S seconds at RATE points/s written
      while no collector runs, then the time one collector takes to drain it.

    python bench/collector_throughput.py [POINTS_TOTAL=3000000] [GPU_SAMPLES=100000]
        [BACKLOG_S=300] [RATE=50000] [GPU_PER_MESSAGE=8]
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench._kafka import REPO, bootstrap
from collector.alert_sinks import AlertSinks
from collector.alerting import Alerting
from collector.config import load_config
from collector.migrate import migrate
from collector.pipeline import Pipeline, make_consumer
from collector.router import Batch, route
from collector.store import Store, connect
from collector.topics import ensure_topics
from collector.watch import AlertRules, Watcher
from schemas import decode, default_registry, encode
from schemas.gpu_packed import pack
from tests.samples import packed_points, record

POINTS = 10_000  # per Metrics message: the SDK's batch size
# One name in twenty is a loss: those points go through the per-point detectors
# (spike, divergence); the rest get the vectorized NaN/Inf check only.
NAMES = ["loss"] + [f"m{k:02d}" for k in range(1, 20)]


def metrics_messages(total_points: int, run_id: str) -> list[bytes]:
    reg = default_registry()
    out = []
    for seq in range(total_points // POINTS):
        rec = record("Metrics", run_id, seq=seq)
        now = rec["envelope"]["time_us"]
        steps = [seq * (POINTS // 20) + i // 20 for i in range(POINTS)]
        rec.update(
            names=NAMES,
            **packed_points(
                steps,
                [now + s for s in steps],
                [i % 20 for i in range(POINTS)],
                [1.0 / (s + 1) for s in steps],  # smooth per metric: no alert
            ),
        )
        out.append(encode(reg, "Metrics", rec))
    return out


def gpu_messages(samples: int, per: int, gpus: int = 8) -> list[bytes]:
    """GpuSamples messages of `per` samples: ticks of a `gpus`-GPU node (one tick
    a message by default, several if `per` is larger). Ticks 1 ms apart, all
    recent: node silence is judged on the wall clock."""
    reg = default_registry()
    base = record("GpuSample", "bench")
    node = [{**base, "gpu_uuid": f"GPU-{i}", "index": i} for i in range(gpus)]
    ticks = -(-per // gpus)  # per message
    start = base["envelope"]["time_us"] - samples // gpus * 1_000
    body = pack([node[i % gpus] for i in range(per)], [start] * per)
    out = []
    for seq in range(samples // per):
        first = start + seq * ticks * 1_000
        times = [first + i // gpus * 1_000 for i in range(per)]
        rec = {
            **body,
            "time_us": struct.pack(f"<{per}q", *times),
            "envelope": {
                **base["envelope"],
                "event_id": str(uuid.uuid4()),
                "time_us": times[-1],
                "seq": seq,
                "stream": "gpu/bench-node",
            },
        }
        out.append(encode(reg, "GpuSamples", rec))
    return out


def produce(servers: str, topic: str, values: list[bytes], key: bytes) -> float:
    producer = Producer(
        {
            "bootstrap.servers": servers,
            "linger.ms": 20,
            "compression.type": "lz4",
            "message.max.bytes": 8_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
    )
    t0 = time.perf_counter()
    for value in values:
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(120) == 0
    return time.perf_counter() - t0


def raw_consume(servers: str, topic: str, n: int) -> float:
    """Read `n` messages from the start of partition 0, assigned (no group join)."""
    consumer = Consumer(
        {
            "bootstrap.servers": servers,
            "group.id": f"raw-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 2**20,
            "max.partition.fetch.bytes": 16 * 2**20,
        }
    )
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    while got < n:
        got += sum(1 for m in consumer.consume(5000, 1.0) if m.error() is None)
    elapsed = time.perf_counter() - t0
    consumer.close()
    return elapsed


def raw_insert(store: Store, table: str, values: list[bytes], per_batch: int) -> float:
    """Insert pre-built Arrow tables (built outside the timing), batch by batch."""
    reg = default_registry()
    tables = []
    for i in range(0, len(values), per_batch):
        batch = Batch()
        for value in values[i : i + per_batch]:
            route(batch, decode(reg, value))
        tables.append(batch.arrow()[table])
    t0 = time.perf_counter()
    for data in tables:
        store.insert_arrow(table, data)
    return time.perf_counter() - t0


def collector(store: Store, servers: str, topic: str, n: int, **settings: Any) -> float:
    """The real pipeline over `n` messages of `topic` (partition 0 assigned, as after
    a group join, so the timing is the pipeline's, not the rebalance protocol's)."""
    config = load_config(
        None, kafka_bootstrap=servers, collector_group_id=f"bench-{uuid.uuid4().hex}", **settings
    )
    pipeline = Pipeline(config, store, default_registry(), make_consumer(config))
    # Detectors on, as `traintrail collector run` has them (alerts would go to
    # the bench's own topic; none are expected on these curves).
    sinks = AlertSinks(default_registry(), f"bench{uuid.uuid4().hex[:6]}", servers)
    pipeline.alerting = Alerting(Watcher(AlertRules()), sinks)
    t0 = time.perf_counter()
    pipeline.consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    while pipeline.totals.messages < n:
        pipeline.step()
    elapsed = time.perf_counter() - t0
    pipeline.consumer.close()
    sinks.close()
    if sinks.emitted:
        print(f"note: the detectors raised {sinks.emitted} alerts on the bench's curves")
    return elapsed


_PEER = Path(__file__).resolve().parent / "kafka_engine_peer.py"
_PEER_VENV = REPO / ".traintrail" / "peer-venv" / "bin" / "python"


def _peer_pythons() -> list[str]:
    """This Python first (the project's chDB), then one whose chDB's Kafka engine
    works: BENCH_PEER_PYTHON, or the venv kafka_engine_peer.py describes."""
    found = [sys.executable]
    extra = os.environ.get("BENCH_PEER_PYTHON") or (str(_PEER_VENV) if _PEER_VENV.exists() else "")
    return [*found, extra] if extra else found


def kafka_engine(servers: str, total_points: int) -> tuple[float | str, str]:
    """ClickHouse's Kafka engine + materialized view reading the same points as
    JSONEachRow from the same broker: (seconds or why not, ClickHouse version)."""
    topic = f"peer-{uuid.uuid4().hex[:8]}"
    ensure_topics(servers, [topic], 1, 1)
    lines_per_message = POINTS
    messages = []
    now = time.time_ns() // 1000
    for m in range(total_points // lines_per_message):
        rows = (
            json.dumps(
                {
                    "run_id": "peer",
                    "name": NAMES[i % 20],
                    "step": m * 500 + i // 20,
                    "time": now + i,
                    "value": 1.0 / (i + 1),
                    "idx": i,
                    "event_id": str(uuid.uuid4()),
                },
                separators=(",", ":"),
            )
            for i in range(lines_per_message)
        )
        messages.append("\n".join(rows).encode())
    produce(servers, topic, messages, b"peer")
    why, version = "", ""
    for python in _peer_pythons():
        with tempfile.TemporaryDirectory(prefix="tt-peer-") as store_dir:
            done = subprocess.run(
                [python, str(_PEER), servers, topic, str(total_points), store_dir],
                capture_output=True,
                text=True,
                timeout=900,
            )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            why = f"{python}: exit {done.returncode}: {done.stderr.strip()[-200:]}"
            continue
        result = json.loads(lines[-1])
        version = str(result.get("clickhouse", ""))
        if "seconds" in result:
            return float(result["seconds"]), version
        why = f"unavailable in ClickHouse {version} ({result['error'][:120]})"
    if len(_peer_pythons()) == 1:
        why += "; a chDB that runs it: see bench/kafka_engine_peer.py"
    return why, version


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000_000
    gpu_n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    backlog_s = float(sys.argv[3]) if len(sys.argv) > 3 else 300.0
    rate = int(sys.argv[4]) if len(sys.argv) > 4 else 50_000
    per = int(sys.argv[5]) if len(sys.argv) > 5 else 8
    gpu_n -= gpu_n % per  # whole messages
    servers = bootstrap()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tt-bench-") as tmp:
        store = connect(f"chdb://{tmp}/store", "bench")
        migrate(store)
        prefix = f"b{uuid.uuid4().hex[:8]}"
        config = load_config(None, kafka_topic_prefix=prefix)
        ensure_topics(servers, config.topics(), 1, 1)

        metrics = metrics_messages(total, f"bench-{prefix}")
        produce(servers, f"{prefix}.training", metrics, b"bench")
        raw_c = raw_consume(servers, f"{prefix}.training", len(metrics))
        raw_i = raw_insert(store, "metrics", metrics, 50)  # 500,000 rows: the default batch
        coll = collector(store, servers, f"{prefix}.training", len(metrics))
        slower = min(total / raw_c, total / raw_i)
        rows += [
            ("metrics: (a) raw consume, no decode", f"{total / raw_c:,.0f}", "points/s"),
            (
                "metrics: (b) raw chDB insert of pre-built Arrow",
                f"{total / raw_i:,.0f}",
                "points/s",
            ),
            ("metrics: (c) collector end to end", f"{total / coll:,.0f}", "points/s"),
            ("metrics: (c) / slower of (a), (b)", f"{total / coll / slower:.2f}", ">= 0.5"),
        ]
        peer, version = kafka_engine(servers, total)
        rows.append(
            (
                f"metrics: (d) ClickHouse {version} Kafka engine + MV, JSONEachRow",
                peer if isinstance(peer, str) else f"{total / peer:,.0f}",
                "points/s",
            )
        )
        if not isinstance(peer, str):
            rows.append(("metrics: (c) / (d)", f"{peer / coll:.2f}", ">= 1"))

        gpu = gpu_messages(gpu_n, per)
        produce(servers, f"{prefix}.hardware", gpu, b"node")
        g_raw_c = raw_consume(servers, f"{prefix}.hardware", len(gpu))
        g_raw_i = raw_insert(store, "gpu_samples", gpu, 5000)  # the batch's 5,000 messages
        g_coll = collector(store, servers, f"{prefix}.hardware", len(gpu))
        rows += [
            (f"gpu_samples: GpuSamples messages of {per} samples", f"{len(gpu):,}", "messages"),
            ("gpu_samples: (a) raw consume, no decode", f"{gpu_n / g_raw_c:,.0f}", "rows/s"),
            ("gpu_samples: (b) raw chDB insert of Arrow", f"{gpu_n / g_raw_i:,.0f}", "rows/s"),
            ("gpu_samples: (c) collector end to end", f"{gpu_n / g_coll:,.0f}", "rows/s"),
            (
                "gpu_samples: (c) / slower of (a), (b)",
                f"{gpu_n / g_coll / min(gpu_n / g_raw_c, gpu_n / g_raw_i):.2f}",
                ">= 0.5",
            ),
        ]

        backlog = int(backlog_s * rate)
        late = f"l{uuid.uuid4().hex[:8]}"
        ensure_topics(servers, load_config(None, kafka_topic_prefix=late).topics(), 1, 1)
        produce(servers, f"{late}.training", metrics_messages(backlog, f"late-{late}"), b"late")
        drain = collector(
            store,
            servers,
            f"{late}.training",
            backlog // POINTS,
            collector_batch_max_rows=1_000_000,
        )
        rows.append(
            (
                f"lag recovery: {backlog_s:.0f} s backlog at {rate:,} points/s",
                f"{drain:.1f}",
                f"s to drain ({backlog:,} points)",
            )
        )
        store.close()
    print()
    print(f"{'measure':<58} {'value':>14}  unit / target")
    for what, value, unit in rows:
        print(f"{what:<58} {value:>14}  {unit}")


if __name__ == "__main__":
    main()
