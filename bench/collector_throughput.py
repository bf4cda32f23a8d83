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

(a) and (c) are sustained rates: from the moment the first messages are in
hand to the last one read (a) or stored and committed (c). A fresh consumer
takes about 0.6 s here to connect, fetch metadata and look up offsets before
its first message, however much there is to read; counted in, it made (a)
look like 2.8M points/s when the messages themselves arrive in milliseconds.
That start is printed on its own line; (d) and (e) are timed from it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

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


@dataclass(frozen=True)
class Timing:
    """Seconds from assign to the end, and from the first messages in hand to
    the end: the consumer's start (connect, metadata, offsets: about 0.6 s
    here, whatever the volume) is in the first, not in the sustained rate."""

    total: float
    sustained: float
    messages: int  # read (a) or stored and committed (c): may pass the n asked for


# Points written after the timed ones. Without them the last batch is partial:
# the collector's consume waits `[collector] batch_max_seconds` (0.5 s) for
# more before inserting it, and commits it after one more such wait, a second
# of idling at the end of a 3-second measurement that a live stream never has.
_TAIL = 1_000_000


class _FirstMessages:
    """A consumer that notes when its first messages arrived; the pipeline
    uses it as the consumer itself."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumer = consumer
        self.at: float | None = None

    def consume(self, *args: Any, **kwargs: Any) -> list[Any]:
        messages = self.consumer.consume(*args, **kwargs)
        if messages and self.at is None:
            self.at = time.perf_counter()
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def raw_consume(servers: str, topic: str, n: int) -> Timing:
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
    watched = _FirstMessages(consumer)
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = 0
    while got < n:
        got += sum(1 for m in watched.consume(5000, 1.0) if m.error() is None)
    end = time.perf_counter()
    consumer.close()
    assert watched.at is not None
    return Timing(end - t0, end - watched.at, got)


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


def collector(store: Store, servers: str, topic: str, n: int, **settings: Any) -> Timing:
    """The real pipeline over `n` messages of `topic` (partition 0 assigned, as after
    a group join, so the timing is the pipeline's, not the rebalance protocol's),
    until every message is stored and committed."""
    config = load_config(
        None, kafka_bootstrap=servers, collector_group_id=f"bench-{uuid.uuid4().hex}", **settings
    )
    watched = _FirstMessages(make_consumer(config))
    pipeline = Pipeline(config, store, default_registry(), cast(Consumer, watched))
    # Detectors on, as `traintrail collector run` has them (alerts would go to
    # the bench's own topic; none are expected on these curves).
    sinks = AlertSinks(default_registry(), f"bench{uuid.uuid4().hex[:6]}", servers)
    pipeline.alerting = Alerting(Watcher(AlertRules()), sinks)
    t0 = time.perf_counter()
    pipeline.consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    while pipeline.totals.messages < n:
        pipeline.step()
    end = time.perf_counter()
    pipeline.consumer.close()
    sinks.close()
    if sinks.emitted:
        print(f"note: the detectors raised {sinks.emitted} alerts on the bench's curves")
    assert watched.at is not None
    return Timing(end - t0, end - watched.at, pipeline.totals.messages)


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
        # More behind them, so that the timed messages go through full batches to
        # the end, as in a stream that does not stop (see _TAIL).
        produce(servers, f"{prefix}.training", metrics_messages(_TAIL, f"tail-{prefix}"), b"bench")
        raw_c = raw_consume(servers, f"{prefix}.training", len(metrics))
        raw_i = raw_insert(store, "metrics", metrics, 50)  # 500,000 rows: the default batch
        coll = collector(store, servers, f"{prefix}.training", len(metrics))
        a_rate, c_rate = (
            raw_c.messages * POINTS / raw_c.sustained,
            coll.messages * POINTS / coll.sustained,
        )
        c_with_start = coll.messages * POINTS / coll.total
        slower = min(a_rate, total / raw_i)
        rows += [
            (
                "consumer start (assign to first messages), raw / collector",
                f"{raw_c.total - raw_c.sustained:.2f} / {coll.total - coll.sustained:.2f}",
                "s",
            ),
            (
                "metrics: (a) raw consume, no decode, sustained",
                f"{a_rate:,.0f}",
                "points/s",
            ),
            (
                "metrics: (b) raw chDB insert of pre-built Arrow",
                f"{total / raw_i:,.0f}",
                "points/s",
            ),
            (
                "metrics: (c) collector, sustained",
                f"{c_rate:,.0f}",
                "points/s >= 1,000,000",
            ),
            (
                "metrics: (c) collector, with the consumer's start",
                f"{c_with_start:,.0f}",
                "points/s",
            ),
            (
                "metrics: (c) sustained / slower of (a), (b)",
                f"{c_rate / slower:.2f}",
                ">= 0.5",
            ),
        ]
        peer, version = kafka_engine(servers, total)
        rows.append(
            (
                f"metrics: (d) ClickHouse {version} Kafka engine + MV, JSONEachRow",
                peer if isinstance(peer, str) else f"{total / peer:,.0f}",
                "points/s",
            )
        )
        if not isinstance(peer, str):  # both timed from their consumer's start
            rows.append(
                (
                    "metrics: (c) / (d), both with their start",
                    f"{c_with_start / (total / peer):.2f}",
                    ">= 1",
                )
            )

        gpu = gpu_messages(gpu_n, per)
        produce(servers, f"{prefix}.hardware", gpu, b"node")
        # A batch holds up to 5,000 messages ([collector] batch_max_messages).
        produce(servers, f"{prefix}.hardware", gpu_messages(5_000 * per, per), b"node")
        g_raw_c = raw_consume(servers, f"{prefix}.hardware", len(gpu))
        g_raw_i = raw_insert(store, "gpu_samples", gpu, 5000)  # the batch's 5,000 messages
        g_coll = collector(store, servers, f"{prefix}.hardware", len(gpu))
        g_a_rate = g_raw_c.messages * per / g_raw_c.sustained
        g_c_rate = g_coll.messages * per / g_coll.sustained
        rows += [
            (f"gpu_samples: GpuSamples messages of {per} samples", f"{len(gpu):,}", "messages"),
            (
                "gpu_samples: (a) raw consume, sustained",
                f"{g_a_rate:,.0f}",
                "rows/s",
            ),
            ("gpu_samples: (b) raw chDB insert of Arrow", f"{gpu_n / g_raw_i:,.0f}", "rows/s"),
            ("gpu_samples: (c) collector, sustained", f"{g_c_rate:,.0f}", "rows/s"),
            (
                "gpu_samples: (c) / slower of (a), (b)",
                f"{g_c_rate / min(g_a_rate, gpu_n / g_raw_i):.2f}",
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
                f"{drain.total:.1f}",
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
