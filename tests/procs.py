"""Real agent and collector processes for end-to-end tests.

Each process gets its own state under a temp dir and env pointing it at the
session's broker; readiness is polled with a deadline, never slept on.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AgentProc", "CollectorProc", "send_batch", "stack_env", "wait_for"]

REPO = Path(__file__).resolve().parents[1]


def wait_for(what: str, check: Any, timeout: float = 60.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class _Proc:
    home: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path = self.home / f"{type(self).__name__}.log"

    def _spawn(self, args: list[str]) -> None:
        env = {**os.environ, "TRAINTRAIL_LOG_FORMAT": "json", **self.env}
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(args, env=env, cwd=self.home, stdout=log, stderr=log)

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else 0
        self.popen.send_signal(signal.SIGTERM)
        return self.popen.wait(timeout)


@dataclass
class CollectorProc(_Proc):
    """`traintrail collector run` with its own embedded store, queried via its API."""

    api_url: str = ""

    def start(self) -> CollectorProc:
        ready = self.home / "ready"
        ready.unlink(missing_ok=True)
        self._spawn(
            [sys.executable, "-m", "collector", "collector", "run", "--ready-file", str(ready)]
        )

        def is_ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"collector exited:\n{self.log()}")
            return ready.exists() and ready.read_text().strip() != ""

        wait_for("collector ready", is_ready, timeout=90)
        self.api_url = ready.read_text().strip()
        return self

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.api_url}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)

    def sql(self, query: str) -> list[dict[str, Any]]:
        rows = self.get("/sql", q=query)
        assert isinstance(rows, list)
        return rows

    def scalar(self, query: str) -> Any:
        return next(iter(self.sql(query)[0].values()))


@dataclass
class AgentProc(_Proc):
    @property
    def socket(self) -> Path:
        return Path(self.env["TRAINTRAIL_AGENT_SOCKET"])

    def start(self) -> AgentProc:
        self._spawn([sys.executable, "-m", "agent", "run"])

        def is_ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"agent exited:\n{self.log()}")
            return self.socket.exists()

        wait_for("agent socket", is_ready, timeout=60)
        return self

    def url(self) -> str:
        """The agent's /status and /metrics endpoint (its port may be 0 in tests)."""
        marker = Path(self.env["TRAINTRAIL_SPOOL_DIR"]) / "agent.url"
        found: str = wait_for(
            "status url", lambda: marker.read_text().strip() if marker.exists() else None, 30
        )
        return found

    def status(self) -> dict[str, Any]:
        """What `traintrail-agent status` shows, from the agent's /status endpoint."""
        with urllib.request.urlopen(f"{self.url()}/status", timeout=10) as resp:
            data = json.load(resp)
        assert isinstance(data, dict)
        return data


def _dsn(home: Path, prefix: str) -> str:
    """A server named by TRAINTRAIL_CLICKHOUSE_DSN (its own database per test),
    else an embedded store of this test's own."""
    server = os.environ.get("TRAINTRAIL_CLICKHOUSE_DSN", "")
    if server.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(server)
        return parts._replace(path=f"/{prefix.replace('-', '_')}").geturl()
    return f"chdb://{home / 'store'}"


def stack_env(home: Path, bootstrap: str, prefix: str) -> dict[str, str]:
    """Settings shared by one test's agent and collector."""
    return {
        "TRAINTRAIL_KAFKA_BOOTSTRAP": bootstrap,
        "TRAINTRAIL_KAFKA_TOPIC_PREFIX": prefix,
        "TRAINTRAIL_COLLECTOR_GROUP_ID": f"{prefix}-collectors",
        "TRAINTRAIL_COLLECTOR_SESSION_TIMEOUT_MS": "6000",
        "TRAINTRAIL_CLICKHOUSE_DSN": _dsn(home, prefix),
        "TRAINTRAIL_API_PORT": "0",
        "TRAINTRAIL_AGENT_SOCKET": str(home / "agent.sock"),
        "TRAINTRAIL_SDK_SPOOL_DIR": str(home / "sdk-spool"),
        "TRAINTRAIL_SPOOL_DIR": str(home / "spool"),
        "PYTHONPATH": str(REPO),
    }


def _base64(value: object) -> str:
    """Bytes (packed Metrics columns) travel as base64 text, as the SDK sends them."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def send_batch(path: Path, events: list[dict[str, Any]]) -> dict[str, Any]:
    """One request on the agent's SDK socket, as the SDK sends it; the reply."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        line = json.dumps({"v": 1, "events": events}, default=_base64)
        s.sendall(line.encode() + b"\n")
        reply = json.loads(s.makefile().readline())
    assert isinstance(reply, dict)
    return reply
