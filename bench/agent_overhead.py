"""Agent overhead at 1 Hz with 8 GPUs and the host, and its encode+deliver rate.

Part 1 runs `traintrail-agent run` as its own process for DURATION seconds
with the GPU source reading 8 fake GPUs (tests/fake_nvml.py standing in for
pynvml: every field answered, as on a full H100 node) and the host source at
1 Hz, delivering to a real broker, and reports its CPU (% of one core) and
peak RSS from /proc. Part 2 measures events/s through the agent's whole path
(envelope, Avro encode, spool append with fsync per batch, produce, delivery
report, trim) next to a plain confluent-kafka producer sending the same
pre-encoded bytes with the same settings, in the same run, and the shipper
alone draining those bytes from a spool (a backlog after an outage). For
each shape it also prints the CPU per message of every thread, the agent's
(ingest, shipper, librdkafka's) and the raw producer's (its produce loop,
librdkafka's): where the agent's extra time goes.

Every message goes in through the group commit (agent/groupcommit.py) the
way the daemon hands it in. GPU shapes: one tick of 8 GPUs per GpuSamples
message (the default), posted one a call without waiting as the GPU source
does; the same one a call, each waiting for the spool (as an access source
hands its events, and as every source did before the group commit); the
same handed in 100 a call, waiting for the spool as an SDK line's small
events are; 60 ticks per message (`[gpu] ticks_per_message = 60`),
posted. The SDK's Metrics batches of 10,000 points, one a call, waiting: from
one SDK connection with the default fsync per batch, from 8 connections at
once (8 ranks: their lines share commits), and from one with
`[spool] fsync_interval_ms = 100`. The process runs with the agent's malloc
setting (`[agent] malloc_keep_mb`; BENCH_MALLOC_KEEP_MB=0 for glibc's
defaults), the raw producer too. Each round's topics are deleted after it,
and dirty pages are flushed before each measure. Each measure starts with its
producer warm (it has delivered one record to each of its topics, untimed):
a new idempotent producer waits 0.1-0.5 s for its producer id, as long as
raw produce takes for 50,000 small messages. The broker's JVM warms up too:
right after the broker starts, raw produce reads half what it reads a few
minutes of load later (the agent's rate does not move), so a first run
flatters agent / raw; the figures in bench/README.md are from a warm broker.
BENCH_ROUNDS (default 5) sets the alternated rounds whose medians are printed.

    python bench/agent_overhead.py [DURATION_S=30] [GPU_MESSAGES=20000] [METRICS_MESSAGES=500]
                                   [ROWS]

ROWS, comma-separated, picks rows to probe (gpu1, gpu1wait, gpu100, gpu60,
metrics, metrics8, metrics_interval; default all); DURATION_S 0 skips the 1 Hz part.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._kafka import REPO, bootstrap

POINTS = 10_000  # per Metrics message: the SDK's batch

_AGENT = """
import sys
sys.path.insert(0, {repo!r})
from tests.fake_nvml import FakeGpu, FakeNvml
sys.modules["pynvml"] = FakeNvml([FakeGpu(uuid=f"GPU-{{i:08d}}-bench") for i in range(8)])
from agent.cli import main
sys.argv = ["traintrail-agent", "run"]
main()
"""


def overhead(bootstrap_servers: str, duration: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "TRAINTRAIL_KAFKA_BOOTSTRAP": bootstrap_servers,
            "TRAINTRAIL_KAFKA_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}",
            "TRAINTRAIL_SPOOL_DIR": f"{tmp}/spool",
            "TRAINTRAIL_AGENT_SOCKET": f"{tmp}/agent.sock",
            "TRAINTRAIL_SDK_SPOOL_DIR": f"{tmp}/sdk-spool",
            "TRAINTRAIL_AGENT_METRICS_PORT": "0",
            "TRAINTRAIL_GPU_INTERVAL_S": "1",
            "TRAINTRAIL_HOST_INTERVAL_S": "1",
            "TRAINTRAIL_ACCESS_AUDIT_LOG": "",
            "TRAINTRAIL_ACCESS_AUTH_LOG": "",
            "TRAINTRAIL_LOG_FORMAT": "json",
        }
        log = Path(tmp) / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _AGENT.format(repo=str(REPO))],
                env=env,
                stdout=out,
                stderr=out,
            )
        ps = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while not Path(f"{tmp}/agent.sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"agent did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(3)  # let start-up work (imports, spool check, first connect) pass
        cpu0, t0 = sum(ps.cpu_times()[:2]), time.monotonic()
        rss_peak = 0
        while time.monotonic() - t0 < duration:
            rss_peak = max(rss_peak, ps.memory_info().rss)
            time.sleep(0.5)
        cpu1, t1 = sum(ps.cpu_times()[:2]), time.monotonic()
        proc.terminate()
        proc.wait(30)
        return {"cpu_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "rss_mb": rss_peak / 2**20}


GPUS = 8


def gpu_events(n: int, ticks: int) -> tuple[list[dict[str, Any]], int]:
    """n GpuSamples events of `ticks` ticks of 8 GPUs each, packed as the GPU
    source packs them (the packing is the source's work, done here beforehand)."""
    from agent.sources.base import event
    from schemas.gpu_packed import pack
    from tests.samples import body

    samples = [{**body("GpuSample"), "gpu_uuid": f"GPU-{i:08d}", "index": i} for i in range(GPUS)]
    t0 = int(time.time() * 1e6)
    out = []
    for k in range(n):
        times = [t0 + (k * ticks + j) * 1_000_000 for j in range(ticks) for _ in range(GPUS)]
        packed = pack(samples * ticks, times)
        out.append(event("GpuSamples", "gpu/bench", "bench", packed, time_us=times[0]))
    return out, ticks * GPUS


def metrics_events(n: int) -> tuple[list[dict[str, Any]], int]:
    """n Metrics events of 10,000 packed points each (the SDK's batch), as the
    SDK socket hands them to ingest: one run stream, 20 metric names."""
    from agent.sources.base import event
    from tests.samples import body, packed_points

    out = []
    for k in range(n):
        steps = [k * (POINTS // 20) + i // 20 for i in range(POINTS)]
        now = int(time.time() * 1e6)
        rec = {
            **body("Metrics", "bench-run"),
            "names": [f"m{j:02d}" for j in range(20)],
            **packed_points(
                steps,
                [now + s for s in steps],
                [i % 20 for i in range(POINTS)],
                [1.0 / (i + 1) for i in range(POINTS)],
            ),
        }
        out.append(event("Metrics", "run/bench-run", "bench-run", rec))
    return out, POINTS


Sent = list[tuple[str, bytes, bytes]]
# µs of CPU per message by thread role, one entry per round
CpuSplit = dict[str, list[float]]


def _thread_cpu() -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def _note_cpu(
    cpu: CpuSplit, before: dict[int, float], n: int, roles: dict[str, str], other: str
) -> None:
    """Add this round's CPU per message by thread to `cpu`: threads named in
    `roles` (thread name -> role) under their role, every other thread of the
    process (librdkafka's own) under `other`."""
    after = _thread_cpu()
    by_id = {t.native_id: roles[t.name] for t in threading.enumerate() if t.name in roles}
    split: dict[str, float] = {}
    for tid, seconds in after.items():
        role = by_id.get(tid, other)
        split[role] = split.get(role, 0.0) + (seconds - before.get(tid, 0.0)) / n * 1e6
    for role, micros in split.items():
        cpu.setdefault(role, []).append(micros)


def encoded(events: list[dict[str, Any]], batch: int) -> Sent:
    """The (topic, key, value) the agent sends for `events`: a pass through
    ingest into a scratch spool, untimed. A fresh chain gives the same
    envelopes, so these are the bytes every timed round sends; the timed
    rounds keep none of them (the agent frees each once delivered)."""
    from agent.envelope import Chain
    from agent.ingest import Ingest
    from agent.spool import Spool
    from schemas import default_registry

    with tempfile.TemporaryDirectory() as tmp:
        critical = Spool(Path(tmp) / "c", max_bytes=10 * 2**30, fsync=False)
        samples = Spool(Path(tmp) / "s", max_bytes=10 * 2**30, fsync=False)
        critical.open()
        samples.open()
        sent: Sent = []
        for spool in (critical, samples):
            spool.append = sent.extend  # type: ignore[assignment,method-assign]
        ingest = Ingest(Chain(), critical, samples, default_registry(), "bench", "bench")
        for i in range(0, len(events), batch):
            ingest.accept(events[i : i + batch])
        critical.close()
        samples.close()
    return sent


def through_agent(
    bootstrap_servers: str,
    events: list[dict[str, Any]],
    batch: int,
    fsync_interval: float = 0.0,
    cpu: CpuSplit | None = None,
    post: bool = False,
    callers: int = 1,
) -> float:
    """Messages/s through the group commit (`batch` events per call, posted
    without waiting as the hardware sources do, or waiting for the spool as
    the SDK socket does, from `callers` threads at once as from that many
    SDK connections) → ingest → spool (fsync per batch, or every
    `fsync_interval` s) → shipper → acked and trimmed; with `cpu`, each
    thread's CPU per message."""
    from agent.envelope import Chain
    from agent.groupcommit import GroupCommit
    from agent.ingest import Ingest
    from agent.shipper import Shipper
    from agent.spool import Spool
    from schemas import default_registry

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    n = len(events)
    with tempfile.TemporaryDirectory() as tmp:
        # The daemon's defaults: training events fsynced per batch, hardware
        # samples not ([spool] samples_fsync = false).
        critical = Spool(Path(tmp) / "c", max_bytes=10 * 2**30, fsync_interval=fsync_interval)
        samples = Spool(Path(tmp) / "s", max_bytes=10 * 2**30, overflow="drop_oldest", fsync=False)
        critical.open()
        samples.open()
        shipper = Shipper([critical, samples], bootstrap=bootstrap_servers)
        ingest = Ingest(Chain(), critical, samples, default_registry(), "bench", prefix)
        commit = GroupCommit(ingest)
        shipper.start()
        commit.start()
        hand_in = commit.post if post else commit.accept
        # Out of the timed window, one event of each type on a stream of its
        # own (the measured streams' chains start where `encoded`'s do): a
        # new idempotent producer waits 0.1-0.5 s for its producer id and each
        # new topic for its metadata, which would otherwise land in the window.
        warm = _warm_events(events)
        commit.accept(warm)
        _wait_delivered(shipper, len(warm))
        calls = [events[i : i + batch] for i in range(0, n, batch)]

        def send(mine: list[list[dict[str, Any]]]) -> None:
            for call in mine:
                hand_in(call)

        threads = [
            threading.Thread(target=send, args=(calls[k::callers],), name=f"caller-{k}")
            for k in range(1, callers)
        ]
        before = _thread_cpu()
        t0 = time.perf_counter()
        for thread in threads:
            thread.start()
        send(calls[0::callers])
        for thread in threads:
            thread.join()
        _wait_delivered(shipper, len(warm) + n)
        agent_rate = n / (time.perf_counter() - t0)
        if cpu is not None:
            roles = {
                "MainThread": "agent caller",
                **{t.name: "agent caller" for t in threads},
                "ingest": "agent ingest thread",
                "shipper": "agent shipper",
                "fsync-c": "agent fsync thread",
            }
            _note_cpu(cpu, before, n, roles, "agent librdkafka")
        commit.stop()
        shipper.stop(10)
        critical.close()  # and its fsync thread, if any
        samples.close()
    _drop_topics(bootstrap_servers, prefix)
    return agent_rate


def _warm_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One event of each type in `events`, each on a stream of its own."""
    one_of_each = {ev["type"]: ev for ev in events}
    return [
        {**ev, "event_id": str(uuid.uuid4()), "stream": f"warm/{name}"}
        for name, ev in one_of_each.items()
    ]


def _wait_delivered(shipper: Any, count: int) -> None:
    """Until the shipper has delivered `count` records (polled every ms: the
    agent's timed window ends here)."""
    from tests.procs import wait_for

    wait_for(f"{count} records delivered", lambda: shipper.stats.delivered >= count, 600, 0.001)


def _drop_topics(bootstrap_servers: str, tag: str) -> None:
    """Delete a round's topics (their names hold `tag`): a broker that keeps
    every round's data grows slower through a run, the later rows paying
    for the earlier ones."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    names = [t for t in admin.list_topics(timeout=30).topics if tag in t]
    if names:
        for done in admin.delete_topics(names, operation_timeout=60).values():
            done.result()


def drain(bootstrap_servers: str, sent: Sent) -> float:
    """Messages/s of the shipper catching up on a backlog: `sent` is spooled
    while the shipper is not woken (as during an outage: beyond the spool's
    memory copy, so read back from disk and CRC-checked), then it is woken and
    delivers it all. Its producer has delivered before (one record per topic,
    untimed), as a shipper's has before an outage."""
    from agent.shipper import Shipper
    from agent.spool import Spool

    with tempfile.TemporaryDirectory() as tmp:
        samples = Spool(Path(tmp) / "s", max_bytes=10 * 2**30, overflow="drop_oldest", fsync=False)
        samples.open()
        tag = uuid.uuid4().hex[:6]  # fresh topics each round, as the agent's and raw's
        backlog = [(f"{t}.{tag}.drain", k, v) for t, k, v in sent]
        shipper = Shipper([samples], bootstrap=bootstrap_servers)
        shipper.start()
        warm = [(topic, b"warm", b"warm") for topic in sorted({t for t, _, _ in backlog})]
        samples.append(warm)
        _wait_delivered(shipper, len(warm))
        wake, samples.on_append = samples.on_append, None  # the shipper sleeps on
        for i in range(0, len(backlog) - 1, 100):
            samples.append(backlog[i : min(i + 100, len(backlog) - 1)])
        samples.on_append = wake
        if shipper.stats.delivered != len(warm):
            raise SystemExit("bench: the shipper delivered backlog before it was woken")
        t0 = time.perf_counter()
        samples.append(backlog[-1:])  # wakes it
        _wait_delivered(shipper, len(warm) + len(backlog))
        rate = len(sent) / (time.perf_counter() - t0)
        shipper.stop(10)
        samples.close()
    _drop_topics(bootstrap_servers, f".{tag}.drain")
    return rate


def raw_produce(bootstrap_servers: str, sent: Sent, cpu: CpuSplit | None = None) -> float:
    """Messages/s of a plain producer sending the same bytes, same settings;
    with `cpu`, its threads' CPU per message."""
    from confluent_kafka import Producer

    from agent.producer import producer_settings

    producer = Producer(producer_settings(bootstrap_servers, "lz4", 5))
    # Fresh topics each round, as the agent's: a topic that grew over many
    # rounds took this broker several times longer per message.
    tag = uuid.uuid4().hex[:6]
    topics = {t: f"{t}.{tag}.raw" for t in {t for t, _, _ in sent}}
    for topic in topics.values():  # untimed, as the agent's: producer id, topic metadata
        producer.produce(topic, value=b"warm", key=b"warm")
    producer.flush(60)
    before = _thread_cpu()
    t0 = time.perf_counter()
    for topic, key, value in sent:
        while True:
            try:
                producer.produce(topics[topic], value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    rate = len(sent) / (time.perf_counter() - t0)
    if cpu is not None:
        _note_cpu(cpu, before, len(sent), {"MainThread": "raw produce loop"}, "raw librdkafka")
    _drop_topics(bootstrap_servers, f".{tag}.raw")
    return rate


def compare(
    bootstrap_servers: str,
    events: list[dict[str, Any]],
    batch: int,
    rounds: int,
    fsync_interval: float = 0.0,
    post: bool = False,
    callers: int = 1,
) -> tuple[float, float, float, dict[str, float]]:
    """Median messages/s of the agent, of the raw producer and of the
    agent's backlog drain over `rounds` alternating rounds (agent, raw,
    drain, agent...): this VM's speed drifts by tens of percent between
    minutes, so one pair alone can mislead. And the median CPU per message
    of each thread of the agent and of the raw producer: where the
    difference goes."""
    sent = encoded(events, batch)
    agent, raw, drained = [], [], []
    cpu: CpuSplit = {}
    for _ in range(rounds):
        # Each measure starts with no dirty pages left by the one before
        # (the broker's log, the spools): their writeback would land on it.
        os.sync()
        agent.append(
            through_agent(bootstrap_servers, events, batch, fsync_interval, cpu, post, callers)
        )
        os.sync()
        raw.append(raw_produce(bootstrap_servers, sent, cpu))
        os.sync()
        drained.append(drain(bootstrap_servers, sent))
    split = {role: statistics.median(v) for role, v in cpu.items()}
    return statistics.median(agent), statistics.median(raw), statistics.median(drained), split


def encode_only(n: int = 2000) -> dict[str, tuple[float | None, float | None]]:
    """µs to encode one message alone (warm), by the C writer the agent uses
    (None: not built) and by the generated Python one it falls back to, per
    message shape: where the agent's time per event goes."""
    from schemas import default_registry
    from schemas.fastwrite import compile_writer
    from schemas.nativewrite import native_writer
    from tests.samples import record

    reg = default_registry()
    (one,), _ = gpu_events(1, 1)
    (sixty,), _ = gpu_events(1, 60)
    (metrics,), _ = metrics_events(1)
    shapes = {
        "GpuSample": ("GpuSample", record("GpuSample")),
        "AccessEvent": ("AccessEvent", record("AccessEvent")),
        "GpuSamples, 1 tick": ("GpuSamples", one["body"]),
        "GpuSamples, 60 ticks": ("GpuSamples", sixty["body"]),
        "Metrics, 10,000 points": ("Metrics", metrics["body"]),
    }
    out: dict[str, tuple[float | None, float | None]] = {}
    for label, (kind, body) in shapes.items():
        version = reg.current(kind)
        rec = {**body, "envelope": record(kind)["envelope"]}
        timings: list[float | None] = []
        for write in (native_writer(version.parsed), compile_writer(version.parsed)):
            if write is None:
                timings.append(None)
                continue
            t0 = time.perf_counter()
            for _ in range(n):
                write(rec, version.head)
            timings.append((time.perf_counter() - t0) / n * 1e6)
        out[label] = (timings[0], timings[1])
    return out


def pack_only(n: int = 5000) -> float:
    """µs the GPU source spends packing one tick of 8 GPUs into columns."""
    from schemas.gpu_packed import pack
    from tests.samples import body

    samples = [{**body("GpuSample"), "gpu_uuid": f"GPU-{i:08d}", "index": i} for i in range(GPUS)]
    times = [1] * GPUS
    t0 = time.perf_counter()
    for _ in range(n):
        pack(samples, times)
    return (time.perf_counter() - t0) / n * 1e6


ROWS = ("gpu1", "gpu1wait", "gpu100", "gpu60", "metrics", "metrics8", "metrics_interval")


def main() -> None:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    n_metrics = int(sys.argv[3]) if len(sys.argv) > 3 else 500
    wanted = sys.argv[4].split(",") if len(sys.argv) > 4 else list(ROWS)  # a subset, to probe
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))  # alternated; medians reported
    if unknown := set(wanted) - set(ROWS):
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {', '.join(ROWS)}")
    # The agent's start-up malloc setting ([agent] malloc_keep_mb), here for the
    # agent path and the raw producer alike (one process); BENCH_MALLOC_KEEP_MB
    # overrides it (0: glibc's defaults) to measure what it changes.
    from agent.config import AgentConfig
    from agent.memory import keep_freed_memory

    keep_mb = int(os.environ.get("BENCH_MALLOC_KEEP_MB", AgentConfig().agent_malloc_keep_mb))
    keep_freed_memory(keep_mb * 2**20)
    servers = bootstrap()
    over = overhead(servers, duration) if duration > 0 else {"cpu_pct": 0.0, "rss_mb": 0.0}
    rows = []
    for ticks, messages, batch, post, key in (
        (1, n, 1, True, "gpu1"),
        (1, n, 1, False, "gpu1wait"),
        (1, n, 100, False, "gpu100"),
        (60, max(1, n // 20), 1, True, "gpu60"),
    ):
        if key not in wanted:
            continue
        events, per = gpu_events(messages, ticks)
        label = f"GpuSamples, {ticks} tick(s) x {GPUS} GPUs = {per} samples/message"
        if post:
            label += ", posted one a call (the GPU source's way)"
        elif batch == 1:  # each alone: the way every source handed in before group commit
            label += ", one a call, each waiting for the spool (an access source's way)"
        else:
            label += f", {batch} a call, waiting for the spool (an SDK line's way)"
        rows.append((label, *compare(servers, events, batch, rounds, post=post), per))
        del events
    if {"metrics", "metrics8", "metrics_interval"} & set(wanted):
        met_events, points = metrics_events(n_metrics)
        label = f"Metrics, {points:,} points/message, one a call, waiting (the SDK socket's way)"
        if "metrics" in wanted:
            rows.append((label, *compare(servers, met_events, 1, rounds), points))
        if "metrics8" in wanted:  # eight ranks' SDK connections at once: group commit
            eight = compare(servers, met_events, 1, rounds, callers=8)
            rows.append(("Metrics, the same from 8 SDK connections at once", *eight, points))
        if "metrics_interval" in wanted:  # `[spool] fsync_interval_ms = 100`, for SDK floods
            lazy = compare(servers, met_events, 1, rounds, fsync_interval=0.1)
            rows.append(("Metrics, fsync_interval_ms = 100", *lazy, points))
        del met_events
    w = 58
    from agent.kafkacore import describe as producer
    from schemas.nativewrite import describe as writer

    print()
    print(f"Avro writer: {writer()}; Kafka producer: {producer()}")
    print(f"{'measure':<{w}} {'value':>12}  target")
    cpu = "agent CPU, 8 GPUs + host at 1 Hz (% of one core)"
    print(f"{cpu:<{w}} {over['cpu_pct']:>11.2f}%  < 1 %")
    print(f"{'agent peak RSS (MB)':<{w}} {over['rss_mb']:>12.1f}  < 80 MB")
    for label, agent, raw, drained, split, per in rows:
        print(f"{label}:")
        print(f"{'  agent ingest+spool+deliver, messages/s':<{w}} {agent:>12,.0f}")
        print(f"{'  raw confluent-kafka produce of the same bytes, messages/s':<{w}} {raw:>12,.0f}")
        if per > 1:
            print(f"{'  agent, samples or points/s':<{w}} {agent * per:>12,.0f}")
        print(f"{'  agent / raw':<{w}} {agent / raw:>12.2f}  >= 0.5")
        print(f"{'  agent draining a spooled backlog, messages/s':<{w}} {drained:>12,.0f}")
        print(f"{'  drain / raw':<{w}} {drained / raw:>12.2f}")
        threads = ", ".join(f"{role} {micros:,.1f}" for role, micros in split.items())
        print(f"  CPU per message by thread (µs): {threads}")
    for label, (c, py) in encode_only().items():
        native = "not built" if c is None else f"{c:.1f}"
        print(f"{'encode alone, ' + label + ' (µs): C writer':<{w}} {native:>12}")
        print(f"{'  the Python writer (its fallback)':<{w}} {py or 0:>12.1f}")
    print(f"{'GPU source packing one tick of 8 GPUs (µs)':<{w}} {pack_only():>12.1f}")


if __name__ == "__main__":
    main()
