"""The agent's /metrics (Prometheus text) and /status (JSON) endpoint.

Values are read from the components' own counters at scrape time, so the
hot paths only bump plain integers; nothing here runs unless scraped.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent import kafkacore
from agent.ingest import Ingest
from agent.shipper import Shipper
from agent.sources.base import Source
from agent.spool import Spool
from schemas.nativewrite import describe

__all__ = ["StatusServer", "status"]

_PREFIX = "traintrail_agent"


def status(
    node: str,
    started: float,
    ingest: Ingest,
    spools: dict[str, Spool],
    shipper: Shipper,
    sources: list[Source],
) -> dict[str, Any]:
    s = shipper.stats
    return {
        "node": node,
        "uptime_s": round(time.time() - started, 1),
        "events": {"accepted": ingest.accepted, "refused": ingest.refused},
        "avro_writer": describe(),
        "kafka_producer": kafkacore.describe(),
        "spools": {name: asdict(spool.stats()) for name, spool in spools.items()},
        "kafka": {
            "up": s.broker_down_since is None,
            "down_since": s.broker_down_since,
            "produced": s.produced,
            "delivered": s.delivered,
            "failed": s.failed,
            "last_delivery": s.last_delivery,
        },
        "sources": {
            src.name: {
                "alive": src.stats.alive,
                "emitted": src.stats.emitted,
                "errors": src.stats.errors,
                "skipped": src.stats.skipped,
                "last_emit": src.stats.last_emit,
                "detail": src.stats.detail,
            }
            for src in sources
        },
    }


class _AgentCollector(Collector):
    def __init__(
        self, snapshot: Callable[[], dict[str, Any]], latency: Histogram, shipper: Shipper
    ) -> None:
        self._snapshot = snapshot
        self._latency = latency
        self._shipper = shipper

    def collect(self) -> Iterator[Metric]:
        latencies, self._shipper.stats.latencies = self._shipper.stats.latencies, []
        for seconds in latencies:
            self._latency.observe(seconds)
        st = self._snapshot()
        events_in = CounterMetricFamily(
            f"{_PREFIX}_events_in", "Events emitted per source", labels=["source"]
        )
        errors = CounterMetricFamily(f"{_PREFIX}_source_errors", "Source errors", labels=["source"])
        skipped = CounterMetricFamily(
            f"{_PREFIX}_source_skipped", "Malformed or unsupported input skipped", labels=["source"]
        )
        alive = GaugeMetricFamily(
            f"{_PREFIX}_source_alive", "1 while a source runs", labels=["source"]
        )
        for name, src in st["sources"].items():
            events_in.add_metric([name], src["emitted"])
            errors.add_metric([name], src["errors"])
            skipped.add_metric([name], src["skipped"])
            alive.add_metric([name], 1.0 if src["alive"] else 0.0)
        yield from (events_in, errors, skipped, alive)
        nvml = st["sources"].get("gpu", {}).get("alive", False)
        yield GaugeMetricFamily(
            f"{_PREFIX}_nvml_available", "1 when NVML answers", value=1.0 if nvml else 0.0
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_events_accepted", "Events spooled", value=st["events"]["accepted"]
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_events_refused",
            "Critical events refused because the spool was full",
            value=st["events"]["refused"],
        )
        if "ingest" in st:  # the daemon's group commit (agent/groupcommit.py)
            yield GaugeMetricFamily(
                f"{_PREFIX}_ingest_queued_events",
                "Events handed in and waiting for the ingest thread",
                value=st["ingest"]["queued_events"],
            )
            yield CounterMetricFamily(
                f"{_PREFIX}_ingest_commits",
                "Spool commits, each of one or more senders' batches",
                value=st["ingest"]["commits"],
            )
        k = st["kafka"]
        yield GaugeMetricFamily(
            f"{_PREFIX}_kafka_up", "0 while Kafka is unreachable", value=1.0 if k["up"] else 0.0
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_events_out", "Records Kafka acknowledged", value=k["delivered"]
        )
        yield CounterMetricFamily(
            f"{_PREFIX}_delivery_errors", "Failed delivery reports", value=k["failed"]
        )
        by_spool: dict[str, tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str]] = {
            "bytes": (GaugeMetricFamily, "spool_bytes", "Bytes in the spool"),
            "segments": (GaugeMetricFamily, "spool_segments", "Segment files in the spool"),
            "pending": (GaugeMetricFamily, "spool_pending_records", "Records waiting for Kafka"),
            "max_bytes": (GaugeMetricFamily, "spool_max_bytes", "Spool byte limit"),
            "dropped_records": (
                CounterMetricFamily,
                "spool_dropped_records",
                "Undelivered records dropped by a full spool",
            ),
            "fsync_errors": (
                CounterMetricFamily,
                "spool_fsync_errors",
                "Failed fsyncs under [spool] fsync_interval_ms (the thread's are retried)",
            ),
        }
        for key, (family, name, doc) in by_spool.items():
            fam = family(f"{_PREFIX}_{name}", doc, labels=["spool"])
            for spool, sst in st["spools"].items():
                fam.add_metric([spool], sst[key])
            yield fam


class StatusServer:
    """Serves /metrics and /status on its own thread."""

    def __init__(
        self, host: str, port: int, snapshot: Callable[[], dict[str, Any]], shipper: Shipper
    ) -> None:
        registry = CollectorRegistry()
        latency = Histogram(
            f"{_PREFIX}_delivery_latency_seconds",
            "Produce call to Kafka acknowledgement",
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
        )
        registry.register(_AgentCollector(snapshot, latency, shipper))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    body, ctype = generate_latest(registry), "text/plain; version=0.0.4"
                elif self.path == "/status":
                    body, ctype = json.dumps(snapshot()).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="status", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
