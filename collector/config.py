"""Collector settings: `[kafka]`, `[clickhouse]`, `[storage]`, `[collector]`, `[api]`, `[log]`.

A relative `chdb://` path is taken from the working directory, so the
default store is `.traintrail/store` beside wherever the collector runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from schemas.settings import SettingsError, load_settings, setting
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
    kafka_retention_hours: int = setting(
        168, "Retention of the data topics (replay window after a store loss), in hours."
    )
    kafka_dead_letter_retention_hours: int = setting(
        720, "Retention of the dead-letter topic, in hours (time to fix and replay)."
    )
    clickhouse_dsn: str = setting(
        "chdb://.traintrail/store",
        "chdb://PATH (embedded engine) or http(s)://user:pass@host:port/db (server).",
    )
    clickhouse_database: str = setting("traintrail", "Database, when the DSN names none.")
    storage_raw_hardware_ttl_days: int = setting(
        90, "Raw GPU/host samples expire after this many days (0: never); rollups stay."
    )
    collector_group_id: str = setting("traintrail-collector", "Kafka consumer group.")
    collector_session_timeout_ms: int = setting(
        10_000,
        "How long before a crashed collector's partitions move to the others (and to its "
        "restarted self); lower is faster failover, higher tolerates longer GC/IO stalls.",
    )
    collector_batch_max_messages: int = setting(
        5000, "Most messages per batch: decode, insert, then commit."
    )
    collector_batch_max_rows: int = setting(
        500_000,
        "Rows per batch to aim for (a Metrics message carries up to 10,000): bounds memory "
        "and sizes inserts, which chDB and ClickHouse take best by the hundred thousand.",
    )
    collector_batch_max_seconds: float = setting(
        0.5, "Longest wait to fill a batch; bounds ingest latency."
    )
    collector_poll_seconds: float = setting(
        0.05,
        "Longest wait for messages before those in hand are decoded and watched: bounds "
        "alert latency while a batch fills for up to batch_max_seconds.",
    )
    collector_retry_max_s: float = setting(
        30.0, "Longest wait between insert retries while the store is down (backoff cap)."
    )
    collector_max_string_bytes: int = setting(
        65_536, "Longer strings make an event a dead letter (protects every table and query)."
    )
    collector_max_future_s: float = setting(
        86_400.0, "Event times further in the future than this make an event a dead letter."
    )
    collector_dead_letter_topic: bool = setting(
        True, "Also publish dead letters (raw bytes, reason headers) to <prefix>.dead-letters."
    )
    alerts_enabled: bool = setting(True, "Run the detectors on the stream and raise alerts.")
    alerts_metrics: str = setting(
        "loss*,*grad_norm*,*grad-norm*",
        "Metric name globs (comma-separated) watched for spikes and divergence (gradient "
        "norms: spikes only); every metric is checked for NaN/Inf.",
    )
    alerts_spike_window: int = setting(256, "Points in the robust (quantile) baseline.")
    alerts_spike_warmup: int = setting(32, "Points of a series before spikes are judged.")
    alerts_spike_z: float = setting(
        8.0, "A spike is this many spreads (IQR/1.349) over the median..."
    )
    alerts_spike_min_rel: float = setting(0.5, "...and this fraction above it (0.5: +50 %)...")
    alerts_spike_min_abs: float = setting(0.0, "...and this much above it in absolute terms...")
    alerts_spike_tail_factor: float = setting(
        4.0,
        "...and over the median by this many times the 99th percentile's distance from it "
        "(heavy-tailed batch noise).",
    )
    alerts_grad_z: float = setting(10.0, "Spike z for gradient-norm metrics (heavier tails).")
    alerts_grad_min_rel: float = setting(2.0, "Spike relative jump for gradient-norm metrics.")
    alerts_grad_tail_factor: float = setting(6.0, "Spike tail factor for gradient-norm metrics.")
    alerts_lr_metrics: str = setting(
        "*learning_rate*,*learning-rate*,lr,lr-*,lr_*,*/lr,*/lr-*,*_lr",
        "Metric name globs (comma-separated) of learning rates (HF Trainer's learning_rate, "
        "Lightning's lr-<optimizer>), watched for a jump; empty: none.",
    )
    alerts_lr_jump_factor: float = setting(
        3.0,
        "A learning rate above this many times the highest of its last spike_window values "
        "is a jump (scheduler bug, resume with the wrong state).",
    )
    alerts_divergence: bool = setting(True, "Raise an alert on a sustained rise of a loss.")
    alerts_divergence_window: int = setting(
        200, "Points per divergence judgement (medians of quarter-window blocks)."
    )
    alerts_stall_factor: float = setting(
        10.0, "A run stalls when silent this many times its usual step interval..."
    )
    alerts_stall_min_s: float = setting(60.0, "...and at least this many seconds.")
    alerts_throttle_hold_s: float = setting(
        60.0, "Thermal/power throttling held this long is an alert."
    )
    alerts_idle_hold_s: float = setting(
        120.0, "A GPU a run holds, under 5 % utilization this long, is an alert."
    )
    alerts_node_silent_s: float = setting(
        120.0, "A node sending no samples for this long is an alert."
    )
    alerts_cooldown_s: float = setting(
        300.0, "After an episode resolves, the same run/metric/detector stays quiet this long."
    )
    alerts_webhook_url: str = setting("", "POST each alert here (empty: no webhook).")
    alerts_webhook_format: str = setting(
        "json", "json (the alert's fields) or slack (a Slack incoming-webhook message)."
    )
    alerts_webhook_timeout_s: float = setting(5.0, "Per webhook request.")
    alerts_webhook_retry_max_s: float = setting(
        60.0, "Backoff cap between webhook retries; an alert is retried until this much..."
    )
    alerts_webhook_give_up_s: float = setting(
        900.0, "...after this long it is dropped from the webhook (the table and topic keep it)."
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

    def dead_letter_topic(self) -> str:
        return f"{self.kafka_topic_prefix}.dead-letters"

    def query_api_url(self) -> str:
        return self.api_url or f"http://{self.api_host}:{self.api_port}"


def load_config(path: Path | None = None, **overrides: object) -> CollectorConfig:
    config = load_settings(CollectorConfig, path, overrides=overrides)
    for key in ("batch_max_seconds", "poll_seconds"):
        value = getattr(config, f"collector_{key}")
        if not value > 0:
            raise SettingsError(f"[collector] {key} must be above 0, got {value}")
    dsn = config.clickhouse_dsn
    if dsn.startswith("chdb://") and not dsn.startswith("chdb:///"):
        absolute = Path(dsn.removeprefix("chdb://")).resolve()
        config = replace(config, clickhouse_dsn=f"chdb://{absolute}")
    return config
