"""The agent under the bad things that happen to it, against a real broker.

Each test ends with the exact set of events in ClickHouse. The broker here is
the test's own local Apache Kafka (deploy/local/kafka.sh), because the tests
stop and restart it; the collector runs with its own embedded store.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import kafkacore
from agent.spool import Spool
from schemas import decode, default_registry
from schemas.nativewrite import describe
from tests.fixtures.kafka import KAFKA_SH, _free_port_pair
from tests.procs import AgentProc, CollectorProc, send_batch, stack_env, wait_for
from tests.samples import body, packed_points

pytestmark = pytest.mark.kafka


class PrivateKafka:
    """A broker this module may stop and start: same storage, same port."""

    def __init__(self, home: Path) -> None:
        port = _free_port_pair()
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "TRAINTRAIL_KAFKA_HOME": str(home),
            "TRAINTRAIL_KAFKA_PORT": str(port),
            "TRAINTRAIL_KAFKA_CONTROLLER_PORT": str(port + 1),
        }

    def _sh(self, command: str) -> None:
        done = subprocess.run(
            [str(KAFKA_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def start(self) -> None:
        self._sh("start")

    def stop(self) -> None:
        self._sh("stop")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path_factory.mktemp("private-kafka"))
    kafka.start()
    yield kafka
    kafka.stop()


def _dead_bootstrap() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _env(tmp_path: Path, bootstrap: str, **extra: str) -> dict[str, str]:
    env = stack_env(tmp_path, bootstrap, f"rel{uuid.uuid4().hex[:8]}")
    env.update(
        {
            "TRAINTRAIL_AGENT_METRICS_PORT": "0",
            "TRAINTRAIL_GPU_ENABLED": "false",
            "TRAINTRAIL_HOST_ENABLED": "false",
            "TRAINTRAIL_ACCESS_AUDIT_LOG": "",
            "TRAINTRAIL_ACCESS_AUTH_LOG": "",
            "TRAINTRAIL_AGENT_STOP_TIMEOUT_S": "2",
        }
    )
    env.update(extra)
    return env


def _status(agent: AgentProc) -> dict[str, Any]:
    return agent.status()


_TRAIN = """
import sys, time
from agent.sdk import start_run
socket_path, steps, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with start_run("reliability", "stream", socket_path=socket_path) as run:
    for step in range(steps):
        run.log({"loss": 1.0 / (step + 1), "acc": step / steps}, step=step)
        time.sleep(pause)
print(run.run_id)
"""


def _train(agent: AgentProc, steps: int, pause: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _TRAIN, str(agent.socket), str(steps), str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0
    return out.strip().splitlines()[-1]


def _exactly(collector: CollectorProc, run_id: str, points: int) -> None:
    where = f"run_id = '{run_id}'"
    wait_for(
        "the run finished in ClickHouse",
        lambda: collector.scalar(f"SELECT count() FROM run_finished FINAL WHERE {where}"),
        timeout=180,
        interval=0.5,
    )
    assert collector.scalar(f"SELECT count() FROM metrics FINAL WHERE {where}") == points
    assert (
        collector.scalar(f"SELECT uniqExact(name, step) FROM metrics FINAL WHERE {where}") == points
    )
    assert collector.scalar(f"SELECT count() FROM runs FINAL WHERE {where}") == 1


def test_broker_down_for_60_s_while_streaming(tmp_path: Path, broker: PrivateKafka) -> None:
    env = _env(tmp_path, broker.bootstrap)
    collector = CollectorProc(tmp_path / "collector", env).start()
    agent = AgentProc(tmp_path / "agent", env).start()
    steps = 3000
    training = _train(agent, steps, 0.025)  # ~75 s of training
    wait_for(
        "first points stored", lambda: collector.scalar("SELECT count() FROM metrics"), timeout=60
    )
    broker.stop()
    outage_started = time.monotonic()
    wait_for(
        "the agent reports Kafka down",
        lambda: not _status(agent)["kafka"]["up"],
        timeout=30,
        interval=0.5,
    )
    spooled = _status(agent)["spools"]["critical"]["pending"]
    time.sleep(max(0.0, 60 - (time.monotonic() - outage_started)))  # the outage itself
    assert _status(agent)["spools"]["critical"]["pending"] > spooled  # kept spooling
    broker.start()
    run_id = _finish(training, 120)
    _exactly(collector, run_id, 2 * steps)
    assert _status(agent)["kafka"]["up"]
    assert "kafka unreachable" in agent.log_path.read_text()
    agent.stop()
    collector.stop()


@pytest.mark.parametrize("fsync_interval_ms", ["0", "50"])
def test_agent_sigkilled_mid_stream(
    tmp_path: Path, broker: PrivateKafka, fsync_interval_ms: str
) -> None:
    """Also with the interval fsync: a batch acknowledged before its fsync
    is in the page cache, which a killed process does not take with it."""
    env = _env(tmp_path, broker.bootstrap, TRAINTRAIL_SPOOL_FSYNC_INTERVAL_MS=fsync_interval_ms)
    collector = CollectorProc(tmp_path / "collector", env).start()
    agent = AgentProc(tmp_path / "agent", env).start()
    steps = 2000
    training = _train(agent, steps, 0.004)
    wait_for("points flowing", lambda: collector.scalar("SELECT count() FROM metrics"), timeout=60)
    agent.kill()
    assert training.poll() is None, "the kill must land mid-stream"
    time.sleep(1.0)  # the SDK finds no agent and spools locally meanwhile
    agent.start()
    run_id = _finish(training, 120)
    _exactly(collector, run_id, 2 * steps)
    agent.stop()
    collector.stop()


def _metrics_event(run_id: str, i: int) -> dict[str, Any]:
    b = body("Metrics", run_id)
    now = time.time_ns() // 1000
    b.update(packed_points([i] * 4, [now] * 4, [0, 1, 0, 1], [1.0, 2.0, 3.0, 4.0]))
    return {
        "type": "Metrics",
        "event_id": str(uuid.uuid4()),
        "time_us": now,
        "stream": f"run/{run_id}",
        "key": run_id,
        "body": b,
    }


def _spooled_ids(spool_dir: Path) -> set[str]:
    spool = Spool(spool_dir)
    spool.open()
    ids = {
        decode(default_registry(), r.value).record["envelope"]["event_id"] for r in spool.pending()
    }
    spool.close()
    return ids


def test_spool_truncated_at_a_random_byte(tmp_path: Path, broker: PrivateKafka) -> None:
    run_id = f"torn-{uuid.uuid4().hex[:8]}"
    offline = _env(tmp_path, _dead_bootstrap())
    agent = AgentProc(tmp_path / "agent", offline).start()
    for i in range(60):
        assert send_batch(agent.socket, [_metrics_event(run_id, i)])["ok"]
    assert agent.stop() == 0
    segments = tmp_path / "spool" / "segments"
    (segment,) = [p for p in sorted(segments.glob("*.seg")) if p.stat().st_size]
    cut = random.Random(7).randrange(1, segment.stat().st_size)
    with segment.open("r+b") as fh:
        fh.truncate(cut)
    expected = _spooled_ids(segments)
    assert 0 < len(expected) < 60

    online = {**offline, "TRAINTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap}
    collector = CollectorProc(tmp_path / "collector", online).start()
    agent = AgentProc(tmp_path / "agent", online).start()
    where = f"run_id = '{run_id}'"
    wait_for(
        "the surviving events stored",
        lambda: (
            collector.scalar(f"SELECT uniqExact(event_id) FROM metrics FINAL WHERE {where}")
            == len(expected)
        ),
        timeout=90,
    )
    stored = {
        r["event_id"]
        for r in collector.sql(
            f"SELECT DISTINCT toString(event_id) AS event_id FROM metrics FINAL WHERE {where}"
        )
    }
    assert stored == expected
    assert collector.scalar(f"SELECT count() FROM metrics FINAL WHERE {where}") == 4 * len(expected)
    assert collector.scalar("SELECT count() FROM dead_letters") == 0
    agent.stop()
    collector.stop()


def test_spool_at_its_limit(tmp_path: Path, broker: PrivateKafka) -> None:
    run_id = f"full-{uuid.uuid4().hex[:8]}"
    offline = _env(
        tmp_path,
        _dead_bootstrap(),
        TRAINTRAIL_SPOOL_MAX_BYTES="20000",
        TRAINTRAIL_SPOOL_SAMPLES_MAX_BYTES="20000",
        TRAINTRAIL_SPOOL_SEGMENT_BYTES="4000",
        TRAINTRAIL_HOST_ENABLED="true",
        TRAINTRAIL_HOST_INTERVAL_S="0.02",
    )
    agent = AgentProc(tmp_path / "agent", offline).start()
    accepted, refused = 0, None
    for i in range(1000):
        reply = send_batch(agent.socket, [_metrics_event(run_id, i)])
        if not reply["ok"]:
            refused = reply
            break
        accepted += 1
    assert refused is not None and "full" in refused["error"]
    wait_for(
        "old host samples dropped",
        lambda: _status(agent)["spools"]["samples"]["dropped_records"] > 0,
        timeout=60,
    )
    st = _status(agent)
    assert st["events"]["refused"] >= 1
    assert st["avro_writer"] == describe()  # which encoder runs is visible
    assert st["kafka_producer"] == kafkacore.describe()  # and which producer
    assert st["spools"]["critical"]["bytes"] <= 20000
    assert st["spools"]["samples"]["bytes"] <= 20000
    metrics_url = agent.url()
    with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'traintrail_agent_spool_dropped_records_total{spool="samples"}' in text
    assert "traintrail_agent_events_refused_total" in text
    assert 'traintrail_agent_spool_fsync_errors_total{spool="critical"} 0.0' in text
    assert "traintrail_agent_ingest_queued_events" in text  # the group commit's queue
    assert "traintrail_agent_ingest_commits_total" in text
    assert "ALERT critical spool full" in agent.log_path.read_text()
    assert agent.stop() == 0

    critical = _spooled_ids(tmp_path / "spool" / "segments")
    samples = _spooled_ids(tmp_path / "spool" / "samples")
    assert len(critical) == accepted
    online = {
        **offline,
        "TRAINTRAIL_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TRAINTRAIL_HOST_ENABLED": "false",
    }
    collector = CollectorProc(tmp_path / "collector", online).start()
    agent = AgentProc(tmp_path / "agent", online).start()
    where = f"run_id = '{run_id}'"
    wait_for(
        "everything spooled stored",
        lambda: (
            collector.scalar(f"SELECT uniqExact(event_id) FROM metrics FINAL WHERE {where}")
            == len(critical)
            and collector.scalar("SELECT count() FROM host_samples FINAL")
            + collector.scalar("SELECT count() FROM alerts FINAL")
            == len(samples)
        ),
        timeout=90,
    )
    stored = {
        r["e"]
        for r in collector.sql(
            f"SELECT DISTINCT toString(event_id) AS e FROM metrics FINAL WHERE {where}"
        )
    }
    assert stored == critical
    stored_samples = {
        r["e"]
        for r in collector.sql(
            "SELECT toString(event_id) AS e FROM host_samples FINAL "
            "UNION ALL SELECT toString(event_id) AS e FROM alerts FINAL"
        )
    }
    assert stored_samples == samples
    agent.stop()
    collector.stop()


def test_sighup_reloads_sources_and_sigterm_is_bounded(tmp_path: Path) -> None:
    """SIGHUP re-reads the config file: a watch path added there starts the
    inotify source; a setting that needs a restart is reported, not applied."""
    config = tmp_path / "agent.toml"
    config.write_text("[host]\nenabled = false\n")
    watched = tmp_path / "data"
    watched.mkdir()
    env = _env(tmp_path, _dead_bootstrap(), TRAINTRAIL_AGENT_CONFIG=str(config))
    del env["TRAINTRAIL_HOST_ENABLED"]  # the file decides
    agent = AgentProc(tmp_path / "agent", env).start()
    assert "inotify" not in _status(agent)["sources"]
    config.write_text(
        f'[host]\nenabled = false\n[access]\nwatch_paths = "{watched}"\n'
        '[kafka]\ncompression = "zstd"\n'
    )
    assert agent.popen is not None
    agent.popen.send_signal(signal.SIGHUP)
    wait_for(
        "inotify source started by the reload",
        lambda: _status(agent)["sources"].get("inotify", {}).get("alive"),
        timeout=30,
    )
    (watched / "new.csv").write_text("x")
    wait_for(
        "the watched file's event emitted",
        lambda: _status(agent)["sources"]["inotify"]["emitted"] >= 1,
        timeout=30,
    )
    log = agent.log_path.read_text()
    assert "need a restart" in log and "kafka_compression" in log
    started = time.monotonic()
    assert agent.stop(timeout=30) == 0
    # stop_timeout_s is 2 s here and Kafka is unreachable: bounded, not hanging
    assert time.monotonic() - started < 15
