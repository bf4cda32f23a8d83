"""Moving the SDK's batch lines: the agent's unix socket, and a spool file when it is away.

Everything that moves bytes lives here, apart from the buffer that decides
what to send. A line is sent over the agent's unix socket and the agent's
reply awaited: an ack says the line is in the agent's spool. A line, once
built, is resent verbatim, so event ids survive retries and the agent
deduplicates.

When the agent cannot be reached, lines go to `<spool_dir>/<run_id>.<pid>.jsonl`
(one warning says where); the sender retries every second and, once
connected, sends the spooled lines first, in order, then deletes the file. A
file left by a process that has exited is imported by the agent at its start.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from agent.sdk.warn import WarnOnce

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_SPOOL_DIR",
    "RETRY_S",
    "Transport",
    "default_socket_path",
    "default_spool_dir",
]

DEFAULT_SOCKET = "/tmp/traintrail/agent.sock"  # noqa: S108 - the agent's documented default
DEFAULT_SPOOL_DIR = "/tmp/traintrail/sdk-spool"  # noqa: S108 - the agent imports from here
RETRY_S = 1.0
REPLY_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
_PERMANENT = ("bad request", "line too long")  # agent refusals a resend cannot cure


def default_socket_path() -> str:
    """TRAINTRAIL_AGENT_SOCKET, else the agent's default."""
    return os.environ.get("TRAINTRAIL_AGENT_SOCKET") or DEFAULT_SOCKET


def default_spool_dir() -> str:
    """TRAINTRAIL_SDK_SPOOL_DIR, else the directory the agent imports at start."""
    return os.environ.get("TRAINTRAIL_SDK_SPOOL_DIR") or DEFAULT_SPOOL_DIR


class Transport:
    """One run's connection to the agent and its spool file; used by one thread at a time."""

    def __init__(self, socket_path: str, spool_path: Path, warn: WarnOnce) -> None:
        self.socket_path = socket_path
        self.spool_path = spool_path
        self.deadline = math.inf  # replies are awaited no later than this (monotonic)
        self.last_fail = -math.inf  # when connecting last failed (monotonic)
        self.spooling = False  # the spool file holds lines to send before any new one
        self._spool_sent = 0  # lines of it already acked
        self._sock: socket.socket | None = None
        self._rbuf = b""
        self._warn = warn

    def deliver(self, outbox: deque[str]) -> None:
        """Send `outbox`'s lines (spooled ones first), or spool them; it ends up empty
        unless neither worked."""
        if self._sock is None and time.monotonic() - self.last_fail >= RETRY_S:
            self._connect()
        if self._sock is not None and self.spooling:
            self._send_spool()
        while self._sock is not None and not self.spooling and outbox:
            if self._send_line(outbox[0]) is None:
                break
            outbox.popleft()
        if outbox:
            self._spool(outbox)

    def _connect(self) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            self.last_fail = time.monotonic()
            return False
        self._sock, self._rbuf = sock, b""
        return True

    def disconnect(self) -> None:
        """Close the connection, if any."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send_line(self, line: str) -> bool | None:
        """Send a line, await its ack; on a broken connection reconnect and resend once.
        True: delivered; False: refused for good (warned); None: not delivered, keep it."""
        for _attempt in range(2):
            if self._sock is None and not self._connect():
                return None
            reply = self._exchange(line)
            if reply is None:
                self.disconnect()
                continue
            if reply.get("ok") is True:
                for rej in reply.get("rejected") or ():
                    error = rej.get("error") if isinstance(rej, dict) else rej
                    self._warn(
                        f"rejected:{error}", "traintrail: agent rejected an event: %s", error
                    )
                return True
            error = str(reply.get("error", reply))
            permanent = error.startswith(_PERMANENT)
            what = "dropped" if permanent else "will retry"
            self._warn(
                f"refused:{error}", "traintrail: agent refused a batch (%s): %s", what, error
            )
            if permanent:
                return False
            self.disconnect()
            self.last_fail = time.monotonic()
            return None
        return None

    def _exchange(self, line: str) -> dict[str, Any] | None:
        """One request/reply; None when the connection broke or no reply came in time."""
        sock = self._sock
        assert sock is not None
        wait = min(REPLY_TIMEOUT_S, max(0.05, self.deadline - time.monotonic()))
        end = time.monotonic() + wait
        try:
            sock.settimeout(wait)
            sock.sendall(line.encode() + b"\n")
            while b"\n" not in self._rbuf:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return None
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                self._rbuf += chunk
            raw, _, self._rbuf = self._rbuf.partition(b"\n")
            reply = json.loads(raw)
        except (OSError, ValueError):  # socket errors and timeouts; a garbled reply
            return None
        return reply if isinstance(reply, dict) else None

    def ask_alerts(self, run_id: str, after: int) -> list[dict[str, Any]] | None:
        """The run's alerts numbered above `after` (agent/alert_relay.py); None
        when the agent cannot be asked now."""
        if self.spooling:
            return None
        if self._sock is None and (
            time.monotonic() - self.last_fail < RETRY_S or not self._connect()
        ):
            return None
        reply = self._exchange(json.dumps({"v": 1, "alerts": {"run_id": run_id, "after": after}}))
        if reply is None:
            self.disconnect()
            return None
        alerts = reply.get("alerts")
        return [a for a in alerts if isinstance(a, dict)] if isinstance(alerts, list) else []

    def _send_spool(self) -> None:
        """Send spooled lines not yet acked, in order; delete the file when all are."""
        sent = 0
        try:
            with self.spool_path.open("rb") as f:
                for number, raw in enumerate(f):
                    if number < self._spool_sent or not raw.strip():
                        continue
                    if self._send_line(raw.decode().rstrip("\n")) is None:
                        return
                    self._spool_sent = number + 1
                    sent += 1
            self.spool_path.unlink()
        except FileNotFoundError:
            pass  # the agent imported it (it thought us dead): nothing left to send
        except OSError as exc:
            self._warn("spool-read", "traintrail: cannot read spool %s: %s", self.spool_path, exc)
            return
        self.spooling, self._spool_sent = False, 0
        self._warn.log.info("traintrail: agent reachable again; sent %d spooled batches", sent)

    def _spool(self, outbox: deque[str]) -> None:
        data = "".join(line + "\n" for line in outbox).encode()
        try:
            _mkdir_shared(self.spool_path.parent)
            fd = os.open(self.spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, size)  # never leave half a line for a reader
                raise
            finally:
                os.close(fd)
        except OSError as exc:
            msg = "traintrail: agent unreachable and spool %s unwritable (%s); holding in memory"
            self._warn("spool-write", msg, self.spool_path, exc)
            return
        if not self.spooling:
            self.spooling = True
            msg = "traintrail: agent unreachable at %s; spooling to %s, retrying every %g s"
            self._warn("spooling", msg, self.socket_path, self.spool_path, RETRY_S)
        outbox.clear()


def _mkdir_shared(path: Path) -> None:
    """Create the spool directory so that every local user's training can spool there."""
    if path.is_dir():
        return
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.chmod(0o1777)  # shared like /tmp (sticky): each user owns their own files
