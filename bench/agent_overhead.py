"""Agent overhead at 1 Hz with 8 GPUs and the host, and its encode+deliver rate.

Part 1 runs `traintrail-agent run` as its own process for DURATION seconds
with the GPU source reading 8 fake GPUs (tests/fake_nvml.py standing in for
pynvml: every field answered, as on a full H100 node) and the host source at
1 Hz, delivering to a real broker, and reports its CPU (% of one core) and
peak RSS from /proc. Part 2 measures events/s through the agent's whole path
(envelope, Avro encode, spool append with fsync per batch, produce, delivery
report, trim) next to a plain confluent-kafka producer sending the same
pre-encoded bytes with the same settings, in the same run.

    python bench/agent_overhead.py [DURATION_S=30] [EVENTS=50000]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._kafka import REPO, bootstrap

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


def throughput(bootstrap_servers: str, n: int) -> tuple[float, float]:
    from confluent_kafka import Producer

    from agent.envelope import Chain
    from agent.ingest import Ingest
    from agent.producer import producer_settings
    from agent.shipper import Shipper
    from agent.sources.base import event
    from agent.spool import Spool
    from schemas import default_registry, encode
    from tests.samples import body, envelope

    prefix = f"bench{uuid.uuid4().hex[:6]}"
    sample = body("GpuSample")
    batch = 100
    with tempfile.TemporaryDirectory() as tmp:
        critical = Spool(Path(tmp) / "c", max_bytes=10 * 2**30)
        samples = Spool(Path(tmp) / "s", max_bytes=10 * 2**30, overflow="drop_oldest")
        critical.open()
        samples.open()
        shipper = Shipper([critical, samples], bootstrap=bootstrap_servers)
        ingest = Ingest(Chain(), critical, samples, default_registry(), "bench", prefix)
        events = [event("GpuSample", "gpu/bench", "bench", dict(sample)) for _ in range(n)]
        shipper.start()
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            ingest.accept(events[i : i + batch])
        while shipper.stats.delivered < n:
            time.sleep(0.01)
        agent_rate = n / (time.perf_counter() - t0)
        shipper.stop(10)
    # Everything was delivered, so the spool holds nothing: encode the same
    # events afresh (outside the timing) for the raw produce.
    encoded = [
        encode(default_registry(), "GpuSample", {**sample, "envelope": envelope()})
        for _ in range(n)
    ]
    producer = Producer(producer_settings(bootstrap_servers, "lz4", 5))
    t0 = time.perf_counter()
    for value in encoded:
        while True:
            try:
                producer.produce(f"{prefix}.raw", value=value, key=b"bench")
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)
    raw_rate = len(encoded) / (time.perf_counter() - t0)
    return agent_rate, raw_rate


def encode_only(n: int = 5000) -> dict[str, float]:
    """fastavro encode alone per event type: where the agent's time per event goes."""
    from schemas import default_registry, encode
    from tests.samples import record

    reg = default_registry()
    out = {}
    for kind in ("GpuSample", "AccessEvent", "Metrics"):
        rec = record(kind)
        t0 = time.perf_counter()
        for _ in range(n):
            encode(reg, kind, rec)
        out[kind] = (time.perf_counter() - t0) / n * 1e6
    return out


def main() -> None:
    duration = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
    servers = bootstrap()
    over = overhead(servers, duration)
    agent_rate, raw_rate = throughput(servers, n)
    print()
    print(f"{'measure':<58} {'value':>12}  target")
    print(
        f"{'agent CPU, 8 GPUs + host at 1 Hz (% of one core)':<58} {over['cpu_pct']:>11.2f}%  < 1 %"
    )
    print(f"{'agent peak RSS (MB)':<58} {over['rss_mb']:>12.1f}  < 80 MB")
    print(f"{'agent encode+spool(fsync)+deliver (GpuSample events/s)':<58} {agent_rate:>12,.0f}")
    print(f"{'raw confluent-kafka produce, pre-encoded (events/s)':<58} {raw_rate:>12,.0f}")
    print(f"{'agent / raw':<58} {agent_rate / raw_rate:>12.2f}  >= 0.5")
    for kind, micros in encode_only().items():
        print(f"{'  of which fastavro encode alone, ' + kind + ' (µs/event)':<58} {micros:>12.1f}")


if __name__ == "__main__":
    main()
