"""Read-only HTTP query API, served by every collector.

chDB lets one process open a data directory, so in embedded mode every
query command goes through here (with a server DSN the CLI may also query
ClickHouse directly). Only named queries and `SELECT`s run with
ClickHouse's `readonly=1` are served; nothing here can write (`/metrics`
serves the collector's Prometheus metrics). It binds to
127.0.0.1 by default: put an authenticating proxy in front before exposing it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import structlog

from collector import queries
from collector.errors import StoreError
from collector.store import Store

__all__ = ["ApiServer", "route", "start_api"]

log = structlog.get_logger("traintrail.api")


class _NotFoundError(Exception):
    pass


def _int(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name, [str(default)])[0]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def route(store: Store, path: str, params: dict[str, list[str]]) -> Any:
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    match parts:
        case ["health"]:
            return {"ok": True}
        case ["runs"]:
            project = params.get("project", [""])[0]
            return queries.list_runs(store, _int(params, "limit", 50), project)
        case ["runs", run_id]:
            run = queries.show_run(store, run_id)
            if run is None:
                raise _NotFoundError(f"no run {run_id!r}")
            return run
        case ["runs", run_id, "metrics"]:
            name = params.get("name", [""])[0]
            if not name:
                return queries.metric_summary(store, run_id)
            return queries.metric_series(
                store, run_id, name, _int(params, "limit", 100_000), _int(params, "every", 1)
            )
        case ["runs", run_id, "points"]:  # for `traintrail alerts test RUN`
            return queries.run_points(store, run_id)
        case ["alerts"]:
            return queries.alerts(
                store,
                params.get("run_id", [""])[0],
                params.get("state", [""])[0],
                _int(params, "limit", 100),
            )
        case ["lineage", sha256]:
            return queries.lineage(store, sha256)
        case ["dead-letters"]:
            if params.get("raw", ["0"])[0] == "1":  # for `traintrail dlq replay`
                return queries.dead_letters_raw(
                    store,
                    _int(params, "limit", 100_000),
                    params.get("error_type", [""])[0],
                    params.get("topic", [""])[0],
                )
            return queries.dead_letters(store, _int(params, "limit", 100))
        case ["sql"]:
            sql = params.get("q", [""])[0]
            if not sql:
                raise ValueError("q: the SQL text is required")
            return queries.jsonable(store.query(sql, readonly=True))
    raise _NotFoundError(f"no route {path!r}")


def _handler(store: Store, metrics: Callable[[], bytes] | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "traintrail-api/1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/metrics" and metrics is not None:
                self._send(200, metrics(), "text/plain; version=0.0.4; charset=utf-8")
                return
            try:
                body, status = route(store, url.path, parse_qs(url.query)), 200
            except _NotFoundError as exc:
                body, status = {"error": str(exc)}, 404
            except ValueError as exc:
                body, status = {"error": str(exc)}, 400
            except StoreError as exc:
                body, status = {"error": str(exc)}, 502
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("api request", line=format % args)

    return Handler


class ApiServer:
    """The HTTP server and the thread serving it."""

    def __init__(
        self, store: Store, host: str, port: int, metrics: Callable[[], bytes] | None = None
    ) -> None:
        self.httpd = ThreadingHTTPServer((host, port), _handler(store, metrics))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="api", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_api(
    store: Store,
    host: str,
    port: int,
    on_url: Callable[[str], None] | None = None,
    metrics: Callable[[], bytes] | None = None,
) -> ApiServer:
    """Serve the read-only API (and, given `metrics`, Prometheus /metrics)."""
    server = ApiServer(store, host, port, metrics).start()
    log.info("query api listening", url=server.url)
    if on_url is not None:
        on_url(server.url)
    return server
