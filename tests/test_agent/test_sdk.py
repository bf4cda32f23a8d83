"""agent.sdk against a real unix-socket agent stand-in speaking the SDK line protocol.

The server below is the protocol, not a mock of the SDK: it accepts
connections, reads `{"v": 1, "events": [...]}` lines, records them and acks
each after "spooling" it, exactly as the agent does.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

import agent.sdk as traintrail
from agent.sdk import client as sdk_client
from agent.sdk.context import flatten_config, git_state, sha256_tree, strip_credentials
from agent.sources.sdk_socket import decode_columns, unpack_columns

REPO = Path(__file__).resolve().parents[2]


class AgentStandIn:
    """Listens on `path`; records each batch line; replies like the agent."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self.hang_up_first = 0  # close this many connections on their first line, unanswered
        self.refuse_first = 0  # answer this many lines "ok": false (as when its spool fails)
        self.reject_types: dict[str, str] = {}  # event type -> rejection error
        self._lock = threading.Lock()
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen()
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                batch = json.loads(raw)  # NaN / Infinity literals parse
                with self._lock:
                    self.lines.append(batch)
                    if self.hang_up_first > 0:
                        self.hang_up_first -= 1
                        return
                    if self.refuse_first > 0:
                        self.refuse_first -= 1
                        conn.sendall(b'{"ok": false, "error": "spool append failed: disk full"}\n')
                        continue
                rejected = [
                    {"event_id": e["event_id"], "error": self.reject_types[e["type"]]}
                    for e in batch["events"]
                    if e["type"] in self.reject_types
                ]
                reply = {
                    "ok": True,
                    "accepted": len(batch["events"]) - len(rejected),
                    "rejected": rejected,
                }
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def events(self, etype: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [e for line in self.lines for e in line["events"]]
        return [e for e in found if etype is None or e["type"] == etype]

    def close(self) -> None:
        # shutdown wakes the blocked accept; join before close so the acceptor can never
        # call accept() on a reused fd number (a later test's listening socket)
        self._srv.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        self._srv.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wire_columns(body: dict[str, Any]) -> dict[str, Any]:
    """A Metrics body from the SDK's line, its packed base64 columns as lists
    (decoded and, in the per-call form, expanded as the agent does)."""
    out = decode_columns(body)
    for key, fmt, width in (("step", "q", 8), ("time_us", "q", 8), ("name_idx", "i", 4),
                            ("value", "d", 8)):  # fmt: skip
        raw = out[f"{key}_le"]
        out[key] = list(struct.unpack(f"<{len(raw) // width}{fmt}", raw))
    return out


def points(events: list[dict[str, Any]]) -> list[tuple[int, str, float]]:
    """All Metrics points of `events`, in wire order."""
    out = []
    for e in events:
        if e["type"] == "Metrics":
            b = wire_columns(e["body"])
            assert len(b["step"]) == len(b["time_us"]) == len(b["name_idx"]) == len(b["value"])
            out += [
                (s, b["names"][i], v)
                for s, i, v in zip(b["step"], b["name_idx"], b["value"], strict=True)
            ]
    return out


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: AF_UNIX paths are limited to ~107 bytes."""
    d = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def spool_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "spool"
    monkeypatch.setenv("TRAINTRAIL_SDK_SPOOL_DIR", str(d))
    return d


@pytest.fixture
def agent(sock_dir: Path, spool_dir: Path) -> Iterator[AgentStandIn]:
    server = AgentStandIn(str(sock_dir / "agent.sock"))
    yield server
    server.close()


def test_columnar_batches_carry_all_points_in_order(agent: AgentStandIn) -> None:
    run = traintrail.start_run(
        "p", "n", config={"lr": 0.1, "model": {"depth": 4}}, socket_path=agent.path
    )
    expected = []
    for i in range(2500):
        run.log({"loss": 1.0 / (i + 1), "acc": i / 2500, "lr": 0.1})
        expected += [(i, "loss", 1.0 / (i + 1)), (i, "acc", i / 2500), (i, "lr", 0.1)]
    run.finish()

    events = agent.events()
    assert events[0]["type"] == "RunStarted"
    assert events[-1]["type"] == "RunFinished"
    assert points(events) == expected
    metrics = agent.events("Metrics")
    assert len(metrics) < 100  # batched, not one event per call
    for e in metrics:
        assert e["body"]["names"] == list(dict.fromkeys(e["body"]["names"]))  # each once
        assert e["stream"] == f"run/{run.run_id}" and e["key"] == run.run_id
    assert len({e["event_id"] for e in events}) == len(events)
    started = events[0]["body"]
    assert started["config"] == {"lr": "0.1", "model.depth": "4"}
    assert started["project"] == "p" and started["name"] == "n" and started["pid"] == os.getpid()
    assert started["python"]["version"] and "pytest" in started["packages"]
    assert events[-1]["body"] == {
        "run_id": run.run_id,
        "status": "finished",
        "summary": {"loss": 1.0 / 2500, "acc": 2499 / 2500, "lr": 0.1},
        "error": None,
    }


def test_every_event_encodes_with_the_avro_schemas(agent: AgentStandIn, tmp_path: Path) -> None:
    from schemas import decode, default_registry, encode

    ckpt = tmp_path / "m.bin"
    ckpt.write_bytes(b"weights")
    cfg = argparse.Namespace(lr=0.1, layers=[64, 64], opt={"name": "sgd"})
    with traintrail.start_run("p", config=cfg, socket_path=agent.path) as run:
        run.log({"loss": math.nan, "acc": 0.5})
        run.log_dataset("d", version="1", path=ckpt, preprocessing=["a"])
        run.log_checkpoint(ckpt, metrics={"acc": 0.5})
        run.log_eval("test", {"acc": 0.9}, dataset="d")
        run.log_event("note", {"by": "me"})
    registry = default_registry()
    events = agent.events()
    assert {e["type"] for e in events} == {
        "RunStarted", "Metrics", "DatasetUsed", "CheckpointSaved", "EvalLogged", "RunEvent",
        "RunFinished",
    }  # fmt: skip
    events, bad = unpack_columns(events)
    assert not bad
    for e in events:
        envelope = {"event_id": e["event_id"], "time_us": e["time_us"], "node": "n",
                    "stream": e["stream"], "seq": 0, "prev_hash": b""}  # fmt: skip
        record = decode(registry, encode(registry, e["type"], {**e["body"], "envelope": envelope}))
        assert record.record["run_id"] == run.run_id


def test_nan_and_inf_pass_through(agent: AgentStandIn) -> None:
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"a": math.nan, "b": math.inf, "c": -math.inf}, step=7)
    (a, b, c) = points(agent.events())
    assert a[0] == 7 and math.isnan(a[2])
    assert b[2] == math.inf and c[2] == -math.inf


def test_agent_absent_spools_once_then_delivers(
    sock_dir: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    path = str(sock_dir / "agent.sock")
    run = traintrail.start_run("p", socket_path=path)  # nobody listens: must not raise
    for i in range(10):
        run.log({"loss": float(i)})
    assert run.flush(5)
    spool = spool_dir / f"{run.run_id}.{os.getpid()}.jsonl"
    assert spool.exists()
    run.log({"loss": 10.0})
    assert run.flush(5)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(spool) in warnings[0].getMessage()

    server = AgentStandIn(path)
    try:
        assert wait_for(lambda: not spool.exists(), 5), "spool not sent after reconnect"
        assert [p[2] for p in points(server.events())] == [float(i) for i in range(11)]
        assert server.events()[0]["type"] == "RunStarted"
        run.log({"loss": 11.0})
        run.finish()
        events = server.events()
        assert [p[2] for p in points(events)] == [float(i) for i in range(12)]
        assert events[-1]["type"] == "RunFinished"
        assert len({e["event_id"] for e in events}) == len(events)
    finally:
        server.close()


def test_finish_spools_when_agent_absent(
    sock_dir: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    run = traintrail.start_run("p", socket_path=str(sock_dir / "none.sock"))
    run.log({"x": 1})
    t0 = time.monotonic()
    run.finish(timeout=5)
    assert time.monotonic() - t0 < 5
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"traintrail: agent unreachable at {sock_dir / 'none.sock'}"
    ]  # spooled is done: no "not fully delivered"
    lines = (spool_dir / f"{run.run_id}.{os.getpid()}.jsonl").read_text().splitlines()
    types = [e["type"] for line in lines for e in json.loads(line)["events"]]
    assert types == ["RunStarted", "Metrics", "RunFinished"]


def test_context_manager_reports_failure_and_kill(agent: AgentStandIn) -> None:
    with (
        pytest.raises(ValueError, match="boom"),
        traintrail.start_run("p", socket_path=agent.path) as run,
    ):
        run.log({"loss": 1.0})
        raise ValueError("boom")
    with (
        pytest.raises(KeyboardInterrupt),
        traintrail.start_run("p", socket_path=agent.path) as killed,
    ):
        raise KeyboardInterrupt
    finished = {e["body"]["run_id"]: e["body"] for e in agent.events("RunFinished")}
    assert finished[run.run_id]["status"] == "failed"
    assert finished[run.run_id]["error"] == "ValueError: boom"
    assert finished[run.run_id]["summary"] == {"loss": 1.0}
    assert finished[killed.run_id]["status"] == "killed"


def test_checkpoint_hash_size_and_order(agent: AgentStandIn, tmp_path: Path) -> None:
    ckpt = tmp_path / "model.bin"
    ckpt.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several 1 MiB chunks
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"loss": 1.0}, step=1)
        run.log_checkpoint(ckpt, step=1, metrics={"loss": 1.0})
        run.log({"loss": 0.5}, step=2)
        with pytest.raises(FileNotFoundError):
            run.log_checkpoint(tmp_path / "missing.bin")
    types = [e["type"] for e in agent.events()]
    assert types == ["RunStarted", "Metrics", "CheckpointSaved", "Metrics", "RunFinished"]
    (saved,) = agent.events("CheckpointSaved")
    assert saved["body"] == {
        "run_id": run.run_id,
        "path": str(ckpt.resolve()),
        "size_bytes": ckpt.stat().st_size,
        "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        "step": 1,
        "metrics": {"loss": 1.0},
    }


def _manifest_hash(root: Path) -> str:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    lines = "".join(f"{r}\t{hashlib.sha256((root / r).read_bytes()).hexdigest()}\n" for r in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_eval_and_free_form_events_in_order_with_secrets_redacted(
    agent: AgentStandIn,
) -> None:
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"loss": 1.0}, step=5)
        run.log_eval("test", {"accuracy": 0.93, "loss": math.nan}, dataset="digits-test", step=5)
        run.log_event(
            "data_filter_applied",
            {
                "rows_dropped": 12,
                "by": "alice",
                "api_token": "plain-looking",
                "source": "https://bob:hunter2@data.example.com/x.csv",
                "note": "ghp_" + "a1B2c3D4" * 5,
            },
            step=5,
        )
        with pytest.raises(TypeError, match="non-empty str"):
            run.log_eval("", {"a": 1.0})
        with pytest.raises(TypeError, match="mapping"):
            run.log_event("k", ["not", "a", "mapping"])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="must be a number"):
            run.log_eval("t", {"a": "high"})
    types = [e["type"] for e in agent.events()]
    assert types.index("Metrics") < types.index("EvalLogged") < types.index("RunEvent")
    (ev,) = agent.events("EvalLogged")
    assert ev["body"]["name"] == "test" and ev["body"]["dataset"] == "digits-test"
    assert ev["body"]["step"] == 5 and ev["body"]["metrics"]["accuracy"] == 0.93
    assert math.isnan(ev["body"]["metrics"]["loss"])
    (note,) = agent.events("RunEvent")
    attrs = note["body"]["attrs"]
    assert note["body"]["kind"] == "data_filter_applied" and note["body"]["step"] == 5
    assert attrs["rows_dropped"] == "12" and attrs["by"] == "alice"
    assert attrs["api_token"] == "<redacted>"  # a secret name, whatever the value
    assert "hunter2" not in attrs["source"]
    assert attrs["note"] == "<redacted>"  # a token shape, whatever the name
    assert "hunter2" not in json.dumps(agent.events())


def test_directory_dataset_hash_is_deterministic(agent: AgentStandIn, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "b.csv").write_text("1,2\n")
    (data / "a.csv").write_text("3,4\n")
    (data / "sub" / "c.bin").write_bytes(b"\x00" * 5000)
    first = sha256_tree(data)
    assert first == sha256_tree(data) == _manifest_hash(data)
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log_dataset("d", version="1", license="CC BY 4.0", preprocessing=["x"], path=data)
        run.log_dataset("f", path=data / "a.csv")
        run.log_dataset("given", uri="s3://b/k", content_hash="ab" * 32)
    by_name = {e["body"]["name"]: e["body"] for e in agent.events("DatasetUsed")}
    assert by_name["d"]["content_hash"] == first and by_name["d"]["path"] == str(data)
    assert by_name["d"]["preprocessing"] == ["x"] and by_name["d"]["license"] == "CC BY 4.0"
    assert by_name["f"]["content_hash"] == hashlib.sha256(b"3,4\n").hexdigest()
    assert by_name["given"] == {
        "run_id": run.run_id, "name": "given", "version": None, "uri": "s3://b/k",
        "content_hash": "ab" * 32, "license": None, "preprocessing": [], "path": None,
    }  # fmt: skip
    (data / "sub" / "c.bin").write_bytes(b"\x00" * 4999 + b"\x01")
    assert sha256_tree(data) != first
    (data / "sub" / "c.bin").write_bytes(b"\x00" * 5000)
    assert sha256_tree(data) == first
    (data / "a.csv").rename(data / "a2.csv")
    assert sha256_tree(data) != first


def test_import_pulls_in_nothing_heavy() -> None:
    code = "import json, sys, agent.sdk; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    modules = set(json.loads(out.stdout))
    for heavy in ("fastavro", "confluent_kafka", "numpy", "schemas", "structlog", "torch"):
        assert not {m for m in modules if m == heavy or m.startswith(heavy + ".")}, heavy
    ours = {m for m in modules if m == "agent" or m.startswith("agent.")}
    # the SDK's own stdlib-only modules; none of the daemon's, no integration
    assert {m for m in ours if m != "agent.sdk" and not m.startswith("agent.sdk.")} == {"agent"}
    assert not {m for m in ours if m.startswith("agent.sdk.integrations")}
    assert {
        "agent.sdk.client",
        "agent.sdk.context",
        "agent.sdk.encode",
        "agent.sdk.exit_hooks",
        "agent.sdk.run",
        "agent.sdk.scheduler",
        "agent.sdk.transport",
        "agent.sdk.values",
        "agent.sdk.warn",
    } <= ours


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_git_snapshot_clean_dirty_and_outside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, agent: AgentStandIn
) -> None:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_state(str(plain)) == {
        "commit": None, "branch": None, "dirty": None, "remote": None,
        "diff_sha256": None, "changed_files": [], "untracked_files": [],
    }  # fmt: skip

    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.email", "t@example.com")
    _git(repo, "config", "user.name", "t")
    (repo / "train.py").write_text("print(1)\n")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "init")
    _git(repo, "remote", "add", "origin", "https://alice:s3cret@example.com/org/repo.git")
    head = _git(repo, "rev-parse", "HEAD")

    clean = git_state(str(repo))
    assert clean == {
        "commit": head,
        "branch": "main",
        "dirty": False,
        "remote": "https://example.com/org/repo.git",
        "diff_sha256": hashlib.sha256(b"").hexdigest(),
        "changed_files": [],
        "untracked_files": [],
    }
    (repo / "untracked.txt").write_text("x")  # untracked files do not make it dirty
    assert git_state(str(repo))["dirty"] is False
    (repo / "train.py").write_text("print(2)\n")
    assert git_state(str(repo))["dirty"] is True

    monkeypatch.chdir(repo)
    with traintrail.start_run("p", socket_path=agent.path):
        pass
    (started,) = agent.events("RunStarted")
    dirty = {"dirty": True, "changed_files": ["train.py"], "untracked_files": ["untracked.txt"]}
    assert started["body"]["git"] == {**clean, **dirty, "diff_sha256": ANY}
    assert started["body"]["cwd"] == str(repo)


def test_strip_credentials() -> None:
    assert strip_credentials("https://tok@github.com/o/r.git") == "https://github.com/o/r.git"
    assert strip_credentials("ssh://git:pw@host/o/r") == "ssh://git@host/o/r"
    assert strip_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


@dataclasses.dataclass
class _Opt:
    name: str = "adam"
    betas: tuple[float, float] = (0.9, 0.99)


@dataclasses.dataclass
class _Cfg:
    lr: float = 0.1
    opt: _Opt = dataclasses.field(default_factory=_Opt)


def test_config_flattening() -> None:
    flat = flatten_config(_Cfg())
    assert flat == {"lr": "0.1", "opt.betas": "[0.9, 0.99]", "opt.name": '"adam"'}
    assert list(flat) == sorted(flat)
    ns = argparse.Namespace(epochs=3, out=Path("/x"), sub={"b": None, "a": [1, 2]})
    assert flatten_config(ns) == {
        "epochs": "3", "out": '"/x"', "sub.a": "[1, 2]", "sub.b": "null"
    }  # fmt: skip
    with pytest.raises(TypeError):
        flatten_config([1, 2])
    with pytest.raises(TypeError):
        traintrail.start_run("p", config="lr=0.1")


class _Scalar:
    def __init__(self, v: float) -> None:
        self.v = v

    def item(self) -> float:
        return self.v


class _Floaty:
    def __float__(self) -> float:
        return 2.5


def test_log_accepts_scalar_likes_and_rejects_bad_arguments(agent: AgentStandIn) -> None:
    np = pytest.importorskip("numpy")
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"i": 1, "b": True, "np32": np.float32(1.5), "np64": np.int64(3)})
        run.log(
            {
                "item": _Scalar(4.0),
                "floaty": _Floaty(),
                "frac": Fraction(1, 4),
                "dec": Decimal("0.5"),
                "arr": np.array([7.0]),
            }
        )
        run.log({"x": 1.0}, step=np.int64(10))
        run.log({"x": 2.0})
        for bad in ("1.0", None, object(), [1.0], 1j):
            with pytest.raises(TypeError):
                run.log({"x": bad})  # type: ignore[dict-item]
        with pytest.raises(ValueError):
            run.log({"x": np.array([1.0, 2.0])})
        run.log({1: 1.0})  # type: ignore[dict-item]  # checked by the sender: dropped, warned
        with pytest.raises(TypeError):
            run.log({"x": 1.0}, step=1.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            run.log([("x", 1.0)])  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            run.finish("crashed")
    assert points(agent.events()) == [
        (0, "i", 1.0), (0, "b", 1.0), (0, "np32", 1.5), (0, "np64", 3.0),
        (1, "item", 4.0), (1, "floaty", 2.5), (1, "frac", 0.25), (1, "dec", 0.5), (1, "arr", 7.0),
        (10, "x", 1.0), (11, "x", 2.0),
    ]  # fmt: skip
    run.log({"late": 1.0})  # after finish: ignored with a warning, never raised


def test_lost_reply_resends_the_same_event_ids(agent: AgentStandIn) -> None:
    agent.hang_up_first = 1
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"loss": 1.0})
    first, second = agent.lines[0], agent.lines[1]
    assert first == second  # verbatim resend: the agent deduplicates by event_id
    ids = [e["event_id"] for line in agent.lines[1:] for e in line["events"]]
    assert len(ids) == len(set(ids))
    assert agent.events()[-1]["body"]["run_id"] == run.run_id


def test_refused_batch_is_kept_and_sent_again(
    agent: AgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    agent.refuse_first = 1
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log({"loss": 1.0})
        assert run.flush(5)  # refused, so spooled locally
        assert wait_for(lambda: len(agent.lines) >= 2, 5)  # resent after the retry delay
    assert agent.lines[1]["events"] == agent.lines[0]["events"]
    assert [e["type"] for e in agent.events()[len(agent.lines[0]["events"]) :]] == [
        "RunStarted", "Metrics", "RunFinished"
    ]  # fmt: skip
    assert sum("disk full" in r.getMessage() for r in caplog.records) == 1
    assert not list(Path(os.environ["TRAINTRAIL_SDK_SPOOL_DIR"]).glob("*.jsonl"))


def test_rejected_event_warns_once_and_is_not_resent(
    agent: AgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    agent.reject_types["DatasetUsed"] = "ValueError: bad dataset"
    with traintrail.start_run("p", socket_path=agent.path) as run:
        run.log_dataset("a", content_hash="x")
        assert run.flush(5)
        run.log_dataset("b", content_hash="y")
    assert [e["body"]["name"] for e in agent.events("DatasetUsed")] == ["a", "b"]
    assert sum("bad dataset" in r.getMessage() for r in caplog.records) == 1


def test_buffer_bound_drops_oldest_points_keeps_events(
    agent: AgentStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent.sdk")
    client = sdk_client.Client("bounded", agent.path, max_points=100, start=False)
    client.add_event("RunStarted", {"run_id": "bounded"})
    n = 20_000  # the training thread enforces the bound every 1024 calls past 8192 buffered
    for i in range(n):
        client.add(i, i * 1000, {"x": float(i)})
    client.add_event("RunFinished", {"run_id": "bounded"})
    assert client.dropped_points > 0
    assert client.close(5)
    got = [p[2] for p in points(agent.events())]
    assert got == [float(i) for i in range(n - len(got), n)]  # the newest survive
    assert len(got) == n - client.dropped_points <= 100
    assert [e["type"] for e in agent.events() if e["type"] != "Metrics"] == [
        "RunStarted", "RunFinished"
    ]  # fmt: skip
    assert sum("dropping the oldest" in r.getMessage() for r in caplog.records) == 1


SCRIPT = """
import sys, agent.sdk as tt
run = tt.start_run("p", socket_path=sys.argv[1])
run.log({"loss": 1.0})
if sys.argv[2] == "raise":
    raise RuntimeError("diverged")
"""


@pytest.mark.parametrize(("mode", "status", "error"), [
    ("exit", "finished", None), ("raise", "failed", "RuntimeError: diverged"),
])  # fmt: skip
def test_interpreter_exit_finishes_open_runs(
    agent: AgentStandIn, mode: str, status: str, error: str | None
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, agent.path, mode],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode == 0) == (mode == "exit"), done.stderr
    types = [e["type"] for e in agent.events()]
    assert types == ["RunStarted", "Metrics", "RunFinished"]
    body = agent.events("RunFinished")[0]["body"]
    assert (body["status"], body["error"], body["summary"]) == (status, error, {"loss": 1.0})
