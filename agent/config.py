"""Agent settings: `[agent]`, `[spool]`, `[kafka]`, `[log]`; TOML then `TRAINTRAIL_*` env.

Relative paths are taken from the working directory at start, so the dev
default keeps the spool under `.traintrail/` beside the checkout; a packaged
install points them at /var/lib/traintrail and /run/traintrail.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, replace
from pathlib import Path

from schemas.settings import SettingsError, load_settings, setting

__all__ = ["AgentConfig", "load_config"]


@dataclass(frozen=True)
class AgentConfig:
    agent_socket: str = setting(
        "/tmp/traintrail/agent.sock",  # noqa: S108 - documented default, same as the SDK's
        "Unix socket the SDK connects to (SDK side: TRAINTRAIL_AGENT_SOCKET).",
    )
    agent_node: str = setting("", "Node name in every envelope; empty means the host name.")
    sdk_spool_dir: str = setting(
        "/tmp/traintrail/sdk-spool",  # noqa: S108 - documented default, same as the SDK's
        "Where SDKs spool while the agent is down; imported at agent start.",
    )
    sdk_spool_scan_s: float = setting(
        10.0,
        "How often the running agent imports spools left by SDK processes that have ended "
        "(a run killed before it could deliver); 0: only at agent start.",
    )
    agent_alert_relay: bool = setting(
        True,
        "Relay the alerts of local runs from the alerts topic to their training processes "
        "(the SDK's on_alert and stop_on).",
    )
    agent_stop_timeout_s: float = setting(
        10.0, "On SIGTERM, how long to wait for Kafka to acknowledge; the rest stays spooled."
    )
    agent_metrics_host: str = setting(
        "127.0.0.1", "Address of the /metrics (Prometheus) and /status (JSON) endpoint."
    )
    agent_metrics_port: int = setting(9781, "Port of /metrics and /status; 0 picks a free one.")
    agent_malloc_keep_mb: int = setting(
        64,
        "Freed memory glibc keeps per heap for reuse instead of returning it at once: large "
        "messages (Metrics lines) then reuse warm pages instead of faulting fresh ones in (a "
        "fifth of a Metrics line's ingest CPU, bench/agent_ingest.py); 0 keeps glibc's defaults.",
    )
    spool_dir: str = setting(".traintrail/spool", "The agent's on-disk spool (WAL) directory.")
    spool_segment_bytes: int = setting(64 * 1024 * 1024, "Spool segment size before rolling.")
    spool_fsync: bool = setting(
        True,
        "fsync each appended batch before acknowledging it (measured cost: bench/agent_spool.py).",
    )
    spool_fsync_interval_ms: float = setting(
        0.0,
        "0: fsync every batch before acknowledging it. N > 0: acknowledge a batch once written "
        "(it survives the agent being killed) and fsync at most every N ms, so a power cut "
        "loses at most the last N ms of acknowledged batches; for SDK floods where the fsync "
        "per batch (about 1 ms) is the bottleneck. Applies where fsync is on.",
    )
    spool_samples_fsync: bool = setting(
        False,
        "fsync hardware-sample batches too; off by default: samples may be dropped by policy "
        "anyway, and a power cut loses at most the page cache's last seconds of them.",
    )
    spool_max_bytes: int = setting(
        2 * 1024**3,
        "Limit of the critical spool (training, access, GPU error events); when full, new "
        "batches are refused (the SDK keeps and retries them) and an alert is raised.",
    )
    spool_samples_max_bytes: int = setting(
        256 * 1024**2,
        "Limit of the hardware-sample spool; when full its oldest samples are dropped, counted.",
    )
    gpu_enabled: bool = setting(True, "Sample GPUs through NVML (off by itself on CPU nodes).")
    gpu_interval_s: float = setting(1.0, "GPU sampling interval; XID/ECC events are immediate.")
    gpu_slow_every: int = setting(
        10,
        "Read the costly, slow-moving GPU counters (energy, aggregate ECC, retired pages, "
        "remapped rows, PCIe replays) every N samples and repeat them in between.",
    )
    gpu_ticks_per_message: int = setting(
        1,
        "Send the GPU samples of N ticks as one message (fewer, larger messages; hardware "
        "detectors see a sample up to N intervals later; XID/ECC events are never held; "
        "a message goes out at 1,024 samples whatever N is).",
    )
    host_enabled: bool = setting(True, "Sample CPU, memory, disk, network and run processes.")
    host_interval_s: float = setting(5.0, "Host sampling interval.")
    access_watch_paths: str = setting(
        "", "Comma-separated directories watched with inotify (datasets, checkpoints, code)."
    )
    access_audit_log: str = setting(
        "/var/log/audit/audit.log", "auditd log to follow; empty turns the source off."
    )
    access_audit_keys: str = setting(
        "", "Comma-separated audit rule keys (-k) to keep; empty keeps every key."
    )
    access_auth_log: str = setting(
        "/var/log/auth.log",
        "sshd/sudo log to follow (/var/log/secure on RHEL); empty turns the source off.",
    )
    kafka_bootstrap: str = setting("127.0.0.1:19092", "Kafka bootstrap servers, host:port[,...].")
    kafka_topic_prefix: str = setting("traintrail", "Topics are <prefix>.training, .hardware, ...")
    kafka_compression: str = setting("lz4", "Producer compression: none, gzip, snappy, lz4, zstd.")
    kafka_linger_ms: int = setting(5, "Producer batching delay in milliseconds.")
    log_level: str = setting("info", "debug, info, warning or error.")
    log_format: str = setting("auto", "json, console, or auto (console on a TTY).")

    @property
    def node(self) -> str:
        return self.agent_node or socket.gethostname()


def load_config(path: Path | None = None, **overrides: object) -> AgentConfig:
    config = load_settings(AgentConfig, path, overrides=overrides)
    if not config.spool_fsync_interval_ms >= 0:
        raise SettingsError(
            f"[spool] fsync_interval_ms: must be >= 0, got {config.spool_fsync_interval_ms!r}"
        )
    if config.agent_malloc_keep_mb < 0:
        raise SettingsError(
            f"[agent] malloc_keep_mb: must be >= 0, got {config.agent_malloc_keep_mb!r}"
        )
    return replace(
        config,
        agent_socket=str(Path(config.agent_socket).absolute()),
        sdk_spool_dir=str(Path(config.sdk_spool_dir).absolute()),
        spool_dir=str(Path(config.spool_dir).absolute()),
    )
