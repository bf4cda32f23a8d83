"""The agent's socket → spool path and the hash chain across restarts.

Kafka is deliberately unreachable here: everything must wait in the spool,
and the chain must continue where it stopped when the agent comes back.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.daemon import Agent
from agent.sources.base import SourceStats
from agent.sources.base import event as source_event
from agent.spool import Spool
from schemas import decode, default_registry, event_hash
from schemas.settings import SettingsError
from tests.procs import send_batch
from tests.samples import body, unpacked_points


def _agent(tmp_path: Path, **overrides: Any) -> Agent:
    with socket.socket() as s:  # a port nobody listens on: Kafka is "down"
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    config = load_config(
        None,
        agent_socket=str(tmp_path / "agent.sock"),
        spool_dir=str(tmp_path / "spool"),
        sdk_spool_dir=str(tmp_path / "sdk-spool"),
        kafka_bootstrap=dead,
        agent_node="test-node",
        agent_stop_timeout_s=0.5,
        agent_metrics_port=0,
        gpu_enabled=False,
        host_enabled=False,
        access_audit_log="",
        access_auth_log="",
        **overrides,
    )
    return Agent(config)


def _event(kind: str, run_id: str = "r1", **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "event_id": str(uuid.uuid4()),
        "time_us": 1_700_000_000_000_000,
        "stream": f"run/{run_id}",
        "key": run_id,
        "body": {**body(kind, run_id), **extra},
    }


def _spooled(tmp_path: Path, spool: str = "segments") -> list[dict[str, Any]]:
    reader = Spool(tmp_path / "spool" / spool)
    reader.open()
    out = []
    for r in reader.pending():
        message = decode(default_registry(), r.value)
        decoded = message.record
        decoded["_type"] = message.name
        decoded["_hash"] = event_hash(r.value)
        decoded["_topic"] = r.topic
        out.append(decoded)
    return out


def test_chain_continues_across_restart(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.start()
    assert send_batch(tmp_path / "agent.sock", [_event("RunStarted"), _event("Metrics")])["ok"]
    agent.stop()

    agent = _agent(tmp_path)
    agent.start()
    reply = send_batch(tmp_path / "agent.sock", [_event("Metrics"), _event("RunFinished")])
    assert reply == {"ok": True, "accepted": 2, "rejected": []}
    agent.stop()

    events = _spooled(tmp_path)
    envs = [e["envelope"] for e in events]
    assert [e["seq"] for e in envs] == [0, 1, 2, 3]
    assert envs[0]["prev_hash"] == b""
    for prev, cur in zip(events, envs[1:], strict=False):
        assert cur["prev_hash"] == prev["_hash"]
    assert {e["_topic"] for e in events} == {"traintrail.training"}
    assert all(e["node"] == "test-node" for e in envs)


def test_resent_event_is_spooled_once(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.start()
    event = _event("RunStarted")
    assert send_batch(tmp_path / "agent.sock", [event])["accepted"] == 1
    assert send_batch(tmp_path / "agent.sock", [event])["accepted"] == 1
    agent.stop()
    assert len(_spooled(tmp_path)) == 1


def test_bad_events_are_rejected_with_a_reason(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.start()
    good = _event("RunStarted")
    bad_shape = _event("Metrics")
    del bad_shape["body"]["names"]
    not_allowed = _event("GpuSample")
    reply = send_batch(tmp_path / "agent.sock", [good, bad_shape, not_allowed])
    garbage = _raw(tmp_path / "agent.sock", b"{not json\n")
    agent.stop()
    assert reply["ok"] and reply["accepted"] == 1
    errors = {r["event_id"]: r["error"] for r in reply["rejected"]}
    assert "names" in errors[bad_shape["event_id"]]
    assert "not accepted" in errors[not_allowed["event_id"]]
    assert garbage["ok"] is False and "bad request" in garbage["error"]
    assert len(_spooled(tmp_path)) == 1


def test_sdk_spool_of_an_ended_process_is_imported(tmp_path: Path) -> None:
    sdk_spool = tmp_path / "sdk-spool"
    sdk_spool.mkdir()
    dead_pid = 2**22 + 17  # above pid_max on default kernels: never alive
    line = json.dumps({"v": 1, "events": [_event("RunStarted", "r9")]})
    (sdk_spool / f"r9.{dead_pid}.jsonl").write_text(line + "\n")
    agent = _agent(tmp_path)
    agent.start()
    agent.stop()
    assert not list(sdk_spool.glob("*.jsonl"))
    assert [e["run_id"] for e in _spooled(tmp_path)] == ["r9"]


def test_sdk_spooled_metrics_are_imported_with_their_points(tmp_path: Path) -> None:
    """Lines the SDK spooled carry base64 columns, in both of its forms (per
    call when every call logs the same names, per point otherwise): the
    import decodes them as the socket does, so no point is lost."""
    import logging

    from agent.sdk.encode import Encoder
    from agent.sdk.warn import WarnOnce

    encoder = Encoder("r9", "run/r9", WarnOnce(logging.getLogger("test")))
    t0 = 1_700_000_000_000_000_000
    uniform = [(i, t0 + i * 1000, {"loss": 1.0 / (i + 1), "acc": i / 10}) for i in range(5)]
    mixed = [(5, t0 + 5000, {"loss": 0.1}), (6, t0 + 6000, {"acc": 0.9, "loss": float("nan")})]
    lines = encoder.lines(list(uniform)) + encoder.lines(list(mixed))
    assert '"points_per_call"' in lines[0] and '"points_per_call"' not in lines[1]
    sdk_spool = tmp_path / "sdk-spool"
    sdk_spool.mkdir()
    dead_pid = 2**22 + 17
    (sdk_spool / f"r9.{dead_pid}.jsonl").write_text("\n".join(lines) + "\n")
    agent = _agent(tmp_path)
    agent.start()
    agent.stop()
    assert not list(sdk_spool.glob("*.jsonl"))
    points = [p for rec in _spooled(tmp_path) for p in unpacked_points(rec)]
    expected = [
        (step, t_ns // 1000, name, value)
        for step, t_ns, metrics in uniform + mixed
        for name, value in metrics.items()
    ]
    assert [p[:3] for p in points] == [e[:3] for e in expected]
    assert all(
        p[3] == e[3] or (math.isnan(p[3]) and math.isnan(e[3]))
        for p, e in zip(points, expected, strict=True)
    )


KILLED_WHILE_SPOOLING = """
import os, signal, sys, agent.sdk as tt
run = tt.start_run("p", socket_path=sys.argv[1])  # nobody listens there: it spools
for i in range(100):
    run.log({"loss": 1.0 / (i + 1)}, step=i)
run.finish()
os.kill(os.getpid(), signal.SIGKILL)  # no clean exit: the spool is all that is left
"""


def test_running_agent_imports_the_spool_of_a_process_that_died(tmp_path: Path) -> None:
    """A run killed before its sender could deliver leaves its tail in the SDK
    spool; the running agent imports it within its scan interval, not at its
    next restart."""
    sdk_spool = tmp_path / "sdk-spool"
    agent = _agent(tmp_path, sdk_spool_scan_s=0.2)
    agent.start()
    try:
        child = subprocess.run(
            [sys.executable, "-c", KILLED_WHILE_SPOOLING, str(tmp_path / "nobody.sock")],
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "TRAINTRAIL_SDK_SPOOL_DIR": str(sdk_spool)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == -9, child.stderr
        deadline = time.monotonic() + 30
        while list(sdk_spool.glob("*.jsonl")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not list(sdk_spool.glob("*.jsonl"))
    finally:
        agent.stop()
    events = _spooled(tmp_path)
    assert events[0]["_type"] == "RunStarted"
    assert sum(len(e["value_le"]) // 8 for e in events if e["_type"] == "Metrics") == 100
    assert events[-1]["_type"] == "RunFinished"
    assert events[-1]["status"] == "finished"


def _raw(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(data)
        reply = json.loads(s.makefile().readline())
    assert isinstance(reply, dict)
    return reply


def test_interval_fsync_setting_reaches_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`[spool] fsync_interval_ms`: batches are acknowledged without an
    fsync on the socket's threads; the interval thread makes them durable."""
    callers: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        callers.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    agent = _agent(tmp_path, spool_fsync_interval_ms=50.0)
    agent.start()
    try:
        for _ in range(5):
            assert send_batch(tmp_path / "agent.sock", [_event("Metrics")])["ok"]
        deadline = time.monotonic() + 10
        while "fsync-segments" not in callers:
            assert time.monotonic() < deadline, callers
            time.sleep(0.01)
        assert not [c for c in callers if "process_request" in c], callers
    finally:
        agent.stop()
    assert len([e for e in _spooled(tmp_path) if e["_type"] == "Metrics"]) == 5


def test_negative_fsync_interval_is_one_clear_error() -> None:
    with pytest.raises(SettingsError, match=r"\[spool\] fsync_interval_ms: must be >= 0, got -5"):
        load_config(None, spool_fsync_interval_ms=-5.0)


class _GatedSource:
    """Emits one host sample, then one access event, once told to."""

    name = "gated"

    def __init__(self) -> None:
        self.stats = SourceStats()
        self.go, self.posted, self.accepted = (
            threading.Event(),
            threading.Event(),
            threading.Event(),
        )

    def run(self, emit: Any, stop: threading.Event) -> None:
        self.go.wait(30)
        emit([source_event("HostSample", "host/test-node", "test-node", body("HostSample"))])
        self.stats.count(emitted=1)  # a source counts what it emitted, as every real one does
        self.posted.set()
        emit([source_event("AccessEvent", "access/test-node", "test-node", body("AccessEvent"))])
        self.stats.count(emitted=1)
        self.accepted.set()
        stop.wait()


def test_sources_post_samples_and_wait_for_everything_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hardware sample is handed to the group commit and the source goes on
    at once; an access event returns only once spooled (a log source saves
    its file position after it). Both are in the spool after stop."""
    source = _GatedSource()
    monkeypatch.setattr("agent.daemon.build_sources", lambda *_args: [source])
    agent = _agent(tmp_path)
    agent.start()
    try:
        with agent.chain.lock:  # no commit can finish meanwhile
            source.go.set()
            assert source.posted.wait(10)
            assert not source.accepted.wait(0.3)
        assert source.accepted.wait(10)
        assert agent.status()["ingest"]["requests"] >= 1
    finally:
        agent.stop()
    assert [e["_type"] for e in _spooled(tmp_path, "samples")] == ["HostSample"]
    assert [e["_type"] for e in _spooled(tmp_path)] == ["AccessEvent"]
    assert (source.stats.emitted, source.stats.errors) == (2, 0)  # counted once, by the source


def test_eight_sdk_connections_at_once_are_each_answered_and_chained(tmp_path: Path) -> None:
    """Eight ranks' SDK lines arriving together (the group commit's case):
    each line gets its own "ok" only once spooled, and every run's stream
    is whole in the spool, seq 0, 1, 2... each prev_hash its predecessor's."""
    agent = _agent(tmp_path)
    agent.start()
    replies: list[dict[str, Any]] = []

    def rank(run_id: str) -> None:
        for _ in range(15):
            replies.append(send_batch(tmp_path / "agent.sock", [_event("Metrics", run_id)]))

    threads = [threading.Thread(target=rank, args=(f"rank{i}",)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(replies) == 120
        assert all(r == {"ok": True, "accepted": 1, "rejected": []} for r in replies)
    finally:
        agent.stop()
    last: dict[str, tuple[int, bytes]] = {}
    for e in _spooled(tmp_path):
        env = e["envelope"]
        seq, prev = last.get(env["stream"], (-1, b""))
        assert (env["seq"], env["prev_hash"]) == (seq + 1, prev)
        last[env["stream"]] = (env["seq"], e["_hash"])
    assert {s: n for s, (n, _h) in last.items()} == {f"run/rank{i}": 14 for i in range(8)}
