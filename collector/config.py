"""Collector settings: `[kafka]`, `[clickhouse]`, `[collector]`, `[api]`, `[log]`.

A relative `chdb://` path is taken from the working directory, so the
default store is `.traintrail/store` beside wherever the collector runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from schemas.settings import load_settings, setting
from schemas.topics import TOPIC_SUFFIXES

__all__ = ["TOPIC_SUFFIXES", "CollectorConfig", "load_config"]


@dataclass(frozen=True)
class CollectorConfig:
    kafka_bootstrap: str = setting("127.0.0.1:19092", "Kafka bootstrap servers, host:port[,...].")
    kafka_topic_prefix: str = setting(
        "traintrail", "Topics are <prefix>.training, .hardware, .access, .alerts."
    )
    kafka_partitions: int = setting(3, "Partitions for topics the collector has to create.")
    kafka_replication: int = setting(1, "Replication factor for topics the collector creates.")
    clickhouse_dsn: str = setting(
        "chdb://.traintrail/store",
        "chdb://PATH (embedded engine) or http(s)://user:pass@host:port/db (server).",
    )
    clickhouse_database: str = setting("traintrail", "Database, when the DSN names none.")
    collector_group_id: str = setting("traintrail-collector", "Kafka consumer group.")
    collector_session_timeout_ms: int = setting(
        10_000,
        "How long before a crashed collector's partitions move to the others (and to its "
        "restarted self); lower is faster failover, higher tolerates longer GC/IO stalls.",
    )
    collector_batch_max_messages: int = setting(
        5000, "Most messages per batch: decode, insert, then commit."
    )
    collector_batch_max_seconds: float = setting(
        0.5, "Longest wait to fill a batch; bounds ingest latency."
    )
    api_host: str = setting("127.0.0.1", "Read-only query API address (every collector serves it).")
    api_port: int = setting(8787, "Read-only query API port; 0 picks a free one.")
    api_url: str = setting(
        "", "Where query commands find the API; empty means http://<api_host>:<api_port>."
    )
    log_level: str = setting("info", "debug, info, warning or error.")
    log_format: str = setting("auto", "json, console, or auto (console on a TTY).")

    def topics(self) -> list[str]:
        return [f"{self.kafka_topic_prefix}.{s}" for s in TOPIC_SUFFIXES]

    def query_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"


def load_config(path: Path | None = None, **overrides: object) -> CollectorConfig:
    config = load_settings(CollectorConfig, path, overrides=overrides)
    dsn = config.clickhouse_dsn
    if dsn.startswith("chdb://") and not dsn.startswith("chdb:///"):
        absolute = Path(dsn.removeprefix("chdb://")).resolve()
        config = replace(config, clickhouse_dsn=f"chdb://{absolute}")
    return config
