"""SDK → agent → Kafka → collector → ClickHouse, every part real.

Training runs are real processes using `agent.sdk`; the agent and the
collector are the installed commands; assertions read the collector's
query API (the way users read an embedded store).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from schemas import decode, default_registry, encode, event_hash
from schemas.gpu_packed import unpack_rows
from tests.procs import AgentProc, CollectorProc, stack_env, wait_for
from tests.samples import packed_points, record
from tests.test_schemas.test_codec import decode_with_reference_avro

pytestmark = pytest.mark.kafka

_RUN = """
import sys
from pathlib import Path
from agent.sdk import start_run

socket_path, name, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
with start_run("e2e", name, config={"steps": steps}, socket_path=socket_path) as run:
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        if step % (steps // 5) == 0:
            ckpt = out / f"{name}-{step}.bin"
            ckpt.write_bytes(name.encode() * (step + 1))
            run.log_checkpoint(ckpt, step=step)
print(run.run_id)
"""


@pytest.fixture
def stack(tmp_path: Path, kafka_bootstrap: str) -> Any:
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    env = stack_env(tmp_path, kafka_bootstrap, prefix)
    collector = CollectorProc(tmp_path / "collector", env).start()
    agent = AgentProc(tmp_path / "agent", env).start()
    yield collector, agent, env, prefix
    for proc in (agent, collector):
        if proc.alive():
            assert proc.stop() == 0, proc.log()


def _train(socket: Path, name: str, steps: int, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _RUN, str(socket), name, str(steps), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_runs_arrive_complete_ordered_once(stack: Any, tmp_path: Path) -> None:
    collector, agent, env, prefix = stack
    runs = [_train(agent.socket, f"run{i}", 2500, tmp_path / "ckpt") for i in range(2)]
    run_ids = []
    for proc in runs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        run_ids.append(out.strip().splitlines()[-1])

    def finished() -> bool:
        n = collector.scalar("SELECT count() FROM run_finished FINAL")
        return bool(n == 2)

    wait_for("both runs finished in ClickHouse", finished, timeout=120)
    for run_id in run_ids:
        where = f"run_id = '{run_id}'"
        assert collector.scalar(f"SELECT count() FROM metrics FINAL WHERE {where}") == 5000
        assert (
            collector.scalar(f"SELECT uniqExact(name, step) FROM metrics FINAL WHERE {where}")
            == 5000
        )
        assert (
            collector.scalar(f"SELECT uniqExact(event_id, idx) FROM metrics FINAL WHERE {where}")
            == 5000
        )
        assert collector.scalar(f"SELECT count() FROM checkpoints FINAL WHERE {where}") == 5
        # Ordered per run: one stream, sequence numbers 0..n-1 without gap or
        # repeat, and every batch's steps come after the previous batch's.
        seqs = collector.sql(
            "SELECT seq, min(step) AS lo, max(step) AS hi FROM ("
            f" SELECT b.seq AS seq, m.step AS step FROM metrics AS m FINAL"
            f" INNER JOIN (SELECT event_id, seq FROM metric_batches FINAL WHERE {where}) AS b"
            f" ON m.event_id = b.event_id WHERE m.{where}"
            f" UNION ALL SELECT seq, step FROM checkpoints FINAL WHERE {where}"
            f" UNION ALL SELECT seq, -1 AS step FROM runs FINAL WHERE {where}"
            f" UNION ALL SELECT seq, 1000000 AS step FROM run_finished FINAL WHERE {where}"
            ") GROUP BY seq ORDER BY seq"
        )
        assert [r["seq"] for r in seqs] == list(range(len(seqs)))
        assert all(a["hi"] <= b["lo"] for a, b in itertools.pairwise(seqs))
        run = collector.get(f"/runs/{run_id}")
        assert run["status"] == "finished"
        assert {m["name"]: m["points"] for m in run["metrics"]} == {"acc": 2500, "loss": 2500}

    # A plain Kafka consumer and the reference Apache Avro library, given
    # only schemas/avro/, read what the agent wrote.
    consumer = Consumer(
        {
            "bootstrap.servers": env["TRAINTRAIL_KAFKA_BOOTSTRAP"],
            "group.id": f"plain-{prefix}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([f"{prefix}.training"])
    messages = wait_for(
        "messages from a plain consumer",
        lambda: consumer.consume(num_messages=20, timeout=1.0),
        timeout=30,
    )
    consumer.close()
    for message in messages:
        decoded = decode_with_reference_avro(message.value())
        assert decoded["run_id"] in run_ids
        assert message.key() == decoded["run_id"].encode()


def _feed(bootstrap: str, topic: str, run_id: str, batches: int, points: int) -> None:
    """Write one run's Metrics batches and its RunFinished straight to the topic."""
    reg = default_registry()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    prev = b""
    for seq in range(batches + 1):
        kind = "Metrics" if seq < batches else "RunFinished"
        rec = record(kind, run_id, seq=seq, prev=prev)
        if kind == "Metrics":
            rec.update(
                names=["loss"],
                **packed_points(
                    step=list(range(seq * points, (seq + 1) * points)),
                    time_us=[rec["envelope"]["time_us"]] * points,
                    name_idx=[0] * points,
                    value=[1.0] * points,
                ),
            )
        data = encode(reg, kind, rec)
        prev = event_hash(data)
        producer.produce(topic, key=run_id.encode(), value=data)
        producer.poll(0)
    assert producer.flush(60) == 0


def test_collector_sigkilled_mid_stream_loses_and_doubles_nothing(stack: Any) -> None:
    collector, _agent, env, prefix = stack
    collector.stop()
    collector.env = {**collector.env, "TRAINTRAIL_COLLECTOR_BATCH_MAX_MESSAGES": "20"}
    run_id = f"killme-{uuid.uuid4().hex[:8]}"
    batches, points = 3000, 10
    expected = batches * points
    _feed(env["TRAINTRAIL_KAFKA_BOOTSTRAP"], f"{prefix}.training", run_id, batches, points)
    where = f"run_id = '{run_id}'"

    collector.start()
    count = wait_for(
        "some points stored",
        lambda: collector.scalar(f"SELECT count() FROM metrics FINAL WHERE {where}"),
        timeout=60,
        interval=0.02,
    )
    collector.kill()
    assert 0 < count < expected, "the kill must land mid-stream"

    collector.start()
    wait_for(
        "the whole stream stored after restart",
        lambda: collector.scalar(f"SELECT count() FROM run_finished FINAL WHERE {where}") == 1,
        timeout=120,
    )
    assert collector.scalar(f"SELECT count() FROM metrics FINAL WHERE {where}") == expected
    assert (
        collector.scalar(f"SELECT uniqExact(event_id, idx) FROM metrics FINAL WHERE {where}")
        == expected
    )
    assert collector.scalar(f"SELECT uniqExact(seq) FROM metric_batches FINAL WHERE {where}") == (
        batches
    )


_NAN_RUN = """
import sys, time
from pathlib import Path
import numpy as np
from sklearn.datasets import load_digits
from agent.sdk import start_run

socket_path, out, nan_at = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
out.mkdir(parents=True, exist_ok=True)
digits = load_digits()
x, y = digits.data / 16.0, digits.target
rng = np.random.default_rng(0)
w = rng.normal(0, 0.1, (64, 10))
seen = []
with start_run("e2e", "nan-stop", socket_path=socket_path, stop_on=("nan", "divergence")) as run:
    run.on_alert(seen.append)
    for step in range(200_000):  # far more than it needs: only stop_on ends it early
        idx = rng.integers(0, len(x), 64)
        xb, yb = x[idx], y[idx]
        if step == nan_at:
            xb = xb.copy()
            xb[0, 0] = np.nan  # a corrupt sample poisons the weights for good
        z = xb @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(64), yb] + 1e-12).mean())
        p[np.arange(64), yb] -= 1
        w -= 0.5 * xb.T @ p / 64
        run.log({"loss": loss}, step=step)
        if run.should_stop:
            path = out / f"last-{step}.npy"
            np.save(path, w)
            run.log_checkpoint(path, step=step, metrics={"loss": loss})
            break
        time.sleep(0.002)
print(step, run.stop_reason, len(seen), run.run_id)
"""


def test_nan_stops_the_run_through_stop_on(stack: Any, tmp_path: Path) -> None:
    """A real (numpy) training run with an injected NaN: the collector's detector
    raises an alert, the agent relays it to the process, `stop_on` ends the loop,
    the last checkpoint is logged: all within seconds, not at the end of 200,000 steps."""
    collector, agent, _env, _prefix = stack
    nan_at = 1500
    proc = subprocess.run(
        [sys.executable, "-c", _NAN_RUN, str(agent.socket), str(tmp_path / "ckpt"), str(nan_at)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()
    stopped, run_id = int(last[0]), last[-1]
    assert "nonfinite" in proc.stdout and int(last[-2]) >= 1
    # about 2.5 ms a step: stopped within a few seconds of the NaN
    assert nan_at < stopped < nan_at + 3000, stopped

    def checkpoint() -> list[dict[str, Any]]:
        return collector.sql(f"SELECT step FROM checkpoints FINAL WHERE run_id = '{run_id}'")

    rows = wait_for("the last checkpoint in ClickHouse", checkpoint, timeout=60)
    assert [r["step"] for r in rows] == [stopped]
    alerts = collector.get("/alerts", run_id=run_id)
    assert ("nonfinite", "firing", "loss", nan_at) in [
        (a["detector"], a["state"], a["metric"], a["step"]) for a in alerts
    ]
    relay = agent.status()["alert_relay"]
    assert relay["assigned"] and relay["alive"] and relay["relayed"] >= 1


_FAKE_PYNVML = """
# Stands in for pynvml in the agent process: two scripted GPUs (tests/fake_nvml.py).
import sys
from tests.fake_nvml import FakeGpu, FakeNvml

sys.modules[__name__] = FakeNvml(
    [FakeGpu(uuid="GPU-e2e-0"), FakeGpu(uuid="GPU-e2e-1", temperature=70, power_mw=300_000)]
)
"""


def _hardware_messages(bootstrap: str, topic: str) -> list[Any]:
    """Every message of `topic`, decoded, read to the end of each partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    partitions = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    at_end: set[int] = set()
    out = []
    deadline = time.monotonic() + 60
    while len(at_end) < partitions:
        assert time.monotonic() < deadline, "could not read the hardware topic to its end"
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
            at_end.add(msg.partition())
            continue
        out.append(decode(default_registry(), msg.value()))
    consumer.close()
    return out


def test_gpu_samples_from_the_agent_arrive_as_rows_once(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    """The agent samples two (fake) GPUs every 0.1 s and sends three ticks a
    message; after a clean stop, ClickHouse holds exactly the samples of every
    GpuSamples message on the topic, one row each, and the messages form one
    gap-free chain, the partial message sent at stop included."""
    prefix = f"gpu{uuid.uuid4().hex[:8]}"
    fake = tmp_path / "fake-pynvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(_FAKE_PYNVML)
    env = stack_env(tmp_path, kafka_bootstrap, prefix)
    collector = CollectorProc(tmp_path / "collector", env).start()
    agent_env = {
        **env,
        "PYTHONPATH": f"{fake}{os.pathsep}{env['PYTHONPATH']}",
        "TRAINTRAIL_GPU_INTERVAL_S": "0.1",
        "TRAINTRAIL_GPU_TICKS_PER_MESSAGE": "3",
        "TRAINTRAIL_HOST_ENABLED": "false",
        "TRAINTRAIL_AGENT_NODE": "gpu-node",
    }
    agent = AgentProc(tmp_path / "agent", agent_env).start()
    try:
        wait_for(
            "GPU rows stored",
            lambda: collector.scalar("SELECT count() FROM gpu_samples FINAL") >= 30,
            timeout=60,
        )
        assert agent.stop() == 0, agent.log()
        messages = [
            m for m in _hardware_messages(kafka_bootstrap, f"{prefix}.hardware")
            if m.name == "GpuSamples"
        ]  # fmt: skip
        rows = [(m, r) for m in messages for r in unpack_rows(m.record)]
        wait_for(
            "every sample on the topic stored",
            lambda: collector.scalar("SELECT count() FROM gpu_samples FINAL") >= len(rows),
            timeout=60,
        )
        stored = collector.sql(
            "SELECT gpu_uuid, toUnixTimestamp64Micro(event_time) AS t, toString(event_id) AS id,"
            " seq, temperature_c, power_w, memory_used_bytes, utilization_gpu"
            " FROM gpu_samples FINAL WHERE node = 'gpu-node'"
        )
    finally:
        agent.stop()
        assert collector.stop() == 0, collector.log()
    expected = [
        {
            "gpu_uuid": r["gpu_uuid"],
            "t": r["time_us"],
            "id": m.record["envelope"]["event_id"],
            "seq": m.record["envelope"]["seq"],
            "temperature_c": r["temperature_c"],
            "power_w": r["power_w"],
            "memory_used_bytes": r["memory_used_bytes"],
            "utilization_gpu": r["utilization_gpu"],
        }
        for m, r in rows
    ]
    key = itemgetter("gpu_uuid", "t")
    assert sorted(stored, key=key) == sorted(expected, key=key)  # each sample once, as sent
    seqs = sorted(m.record["envelope"]["seq"] for m in messages)
    assert seqs == list(range(len(messages)))  # one stream, no gap, nothing twice
    sizes = [m.record["count"] for m in sorted(messages, key=lambda m: m.record["envelope"]["seq"])]
    assert all(n == 6 for n in sizes[:-1]) and sizes[-1] in (2, 4, 6), sizes
    assert {r["gpu_uuid"] for r in stored} == {"GPU-e2e-0", "GPU-e2e-1"}
