"""The Unix socket training processes talk to.

Line protocol, one JSON object per line each way:
  SDK → agent  {"v": 1, "events": [{"type", "event_id", "time_us", "stream", "key", "body"}, ...]}
               (a Metrics body's packed point columns, `*_le`, as base64 text)
  agent → SDK  {"ok": true, "accepted": n, "rejected": [{"event_id", "error"}]}
  SDK → agent  {"v": 1, "alerts": {"run_id": R, "after": N}}  (agent/alert_relay.py)
  agent → SDK  {"ok": true, "alerts": [{..., "seq": n}, ...]}
The reply is written only after the batch is in the spool, so an SDK that got
"ok" may forget the batch. `"ok": false` (bad line, spool unwritable) means
nothing of the batch was kept: the SDK keeps it and sends it again.
"""

from __future__ import annotations

import base64
import binascii
import json
import socketserver
import threading
from pathlib import Path
from typing import Any

import structlog

from agent.alert_relay import AlertRelay
from agent.errors import SpoolError
from agent.ingest import Accepts
from agent.sdk.encode import PACKED_FIELDS, expand_calls
from schemas.topics import SDK_TYPES

__all__ = ["SdkSocketServer", "decode_columns", "handle_line", "unpack_columns"]

log = structlog.get_logger("traintrail.sdk_socket")

_MAX_LINE = 64 * 1024 * 1024


def handle_line(ingest: Accepts, line: bytes, relay: AlertRelay | None = None) -> dict[str, Any]:
    """One request line → its reply object; the SDK may send training events
    and the accesses it declares, and ask for its run's alerts; nothing else."""
    try:
        request = json.loads(line)
        if not isinstance(request, dict) or request.get("v") != 1:
            raise ValueError('expected an object with "v": 1')
        if "alerts" in request:
            return _alerts(relay, request["alerts"])
        events = request.get("events")
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise ValueError('"events" must be a list of objects')
    except ValueError as exc:
        return {"ok": False, "error": f"bad request: {exc}"}
    events, bad = unpack_columns(events)
    try:
        accepted, rejected = ingest.accept(events, SDK_TYPES)
    except SpoolError as exc:
        log.error("spool append failed; batch refused", error=str(exc))
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "accepted": accepted,
        "rejected": bad + [{"event_id": r.event_id, "error": r.error} for r in rejected],
    }


def _alerts(relay: AlertRelay | None, ask: Any) -> dict[str, Any]:
    if not isinstance(ask, dict) or not isinstance(ask.get("run_id"), str):
        raise ValueError('"alerts" must be {"run_id": str, "after": int}')
    after = ask.get("after", 0)
    if not isinstance(after, int):
        raise ValueError('"alerts.after" must be an integer')
    if relay is None:
        return {"ok": True, "alerts": [], "relay": False}
    return {"ok": True, "alerts": relay.since(ask["run_id"], after)}


def decode_columns(body: dict[str, Any]) -> dict[str, Any]:
    """A Metrics body as the SDK's line carries it (point columns in base64,
    perhaps in the per-call form) with its per-point columns as bytes.
    Raises binascii.Error, ValueError, TypeError or KeyError on bad columns."""
    decoded = {
        key: base64.b64decode(body[key], validate=True) for key in PACKED_FIELDS if key in body
    }
    return expand_calls({**body, **decoded})


def unpack_columns(
    events: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Metrics point columns arrive base64-encoded in the JSON line; Avro wants
    the bytes. Returns the events to ingest and the rejections of bad ones."""
    good: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []
    for ev in events:
        body = ev.get("body")
        if ev.get("type") == "Metrics" and isinstance(body, dict):
            try:
                body = decode_columns(body)
            except (binascii.Error, TypeError, ValueError, KeyError) as exc:
                error = f"Metrics: bad point columns: {type(exc).__name__}: {exc}"
                log.warning("event rejected", event_id=ev.get("event_id"), error=error)
                bad.append({"event_id": ev.get("event_id"), "error": error})
                continue
            ev = {**ev, "body": body}
        good.append(ev)
    return good, bad


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(_MAX_LINE)
            if not line:
                return
            if not line.endswith(b"\n"):
                reply: dict[str, Any] = {"ok": False, "error": "line too long or unterminated"}
            else:
                reply = handle_line(self.server.ingest, line, self.server.relay)
            self.wfile.write(json.dumps(reply).encode() + b"\n")
            self.wfile.flush()


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    ingest: Accepts
    relay: AlertRelay | None


class SdkSocketServer:
    def __init__(self, path: str, ingest: Accepts, relay: AlertRelay | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_socket():
            self.path.unlink()  # left by a killed agent; nobody answers on it
        self._server = _Server(str(self.path), _Handler)
        self._server.ingest = ingest
        self._server.relay = relay
        # Training processes of any local user may report; what they send is
        # attributed to their run, and the socket accepts nothing else.
        self.path.chmod(0o666)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sdk-socket", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("sdk socket listening", path=str(self.path))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
