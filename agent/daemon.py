"""Wiring of the node agent: spools → shipper → ingest → sources; stop in reverse.

Start order matters: the spools are checked and the hash chain recovered
before anything new is accepted, so sequence numbers continue where the last
run (or crash) left them and spooled records go out first. SIGTERM stops the
sources and the socket, gives Kafka a bounded time, and leaves the rest in
the spool. SIGHUP re-reads the config file and restarts the sources with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from agent import kafkacore
from agent.alert_relay import AlertRelay
from agent.config import AgentConfig, load_config
from agent.envelope import Chain
from agent.errors import SpoolFullError
from agent.groupcommit import GroupCommit
from agent.ingest import SAMPLE_TYPES, Accepted, Accepts, Ingest
from agent.memory import keep_freed_memory
from agent.metrics import StatusServer, status
from agent.runs import RunRegistry
from agent.shipper import Shipper
from agent.sources.base import Source
from agent.sources.sdk_socket import SdkSocketServer, unpack_columns
from agent.spool import Spool
from schemas import SchemaError, decode, default_registry, event_hash
from schemas.logs import configure_logging
from schemas.nativewrite import describe
from schemas.topics import SDK_TYPES

__all__ = ["Agent", "build_sources", "import_sdk_spools"]

log = structlog.get_logger("traintrail.agent")

# Settings a SIGHUP can change; the rest need a restart.
_RELOADABLE = {"gpu", "host", "access", "log"}


def build_sources(config: AgentConfig, node: str, runs: RunRegistry, state: Path) -> list[Source]:
    """The sources this config asks for (each switches itself off where the
    node cannot support it)."""
    sources: list[Source] = []
    if config.gpu_enabled:
        from agent.sources.nvml import GpuConfig, NvmlSource

        sources.append(
            NvmlSource(
                GpuConfig(
                    interval_s=config.gpu_interval_s,
                    slow_every=config.gpu_slow_every,
                    ticks_per_message=config.gpu_ticks_per_message,
                ),
                node,
                runs,
            )
        )
    if config.host_enabled:
        from agent.sources.host import HostConfig, HostSource

        sources.append(HostSource(HostConfig(interval_s=config.host_interval_s), node, runs))
    paths = tuple(p.strip() for p in config.access_watch_paths.split(",") if p.strip())
    if paths:
        from agent.sources.inotify import InotifyConfig, InotifySource

        sources.append(InotifySource(InotifyConfig(paths=paths), node))
    if config.access_audit_log:
        from agent.sources.auditd import AuditdConfig, AuditdSource

        keys = tuple(k.strip() for k in config.access_audit_keys.split(",") if k.strip())
        sources.append(
            AuditdSource(AuditdConfig(path=config.access_audit_log, keys=keys), node, state)
        )
    if config.access_auth_log:
        from agent.sources.authlog import AuthLogConfig, AuthLogSource

        sources.append(AuthLogSource(AuthLogConfig(path=config.access_auth_log), node, state))
    return sources


@dataclass
class _Running:
    source: Source
    thread: threading.Thread


@dataclass
class Agent:
    config: AgentConfig
    config_path: Path | None = None
    _running: list[_Running] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = Path(self.config.spool_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.node = self.config.node
        self.started = time.time()
        self.registry = default_registry()
        self.runs = RunRegistry()
        self.chain_path = root / "chain.json"
        self.chain = Chain.load(self.chain_path)
        save = lambda: self.chain.save(self.chain_path)  # noqa: E731
        self.critical = Spool(
            root / "segments",
            self.config.spool_segment_bytes,
            self.config.spool_fsync,
            self.config.spool_max_bytes,
            "refuse",
            save,
            fsync_interval=self.config.spool_fsync_interval_ms / 1000,
        )
        self.samples = Spool(
            root / "samples",
            self.config.spool_segment_bytes,
            self.config.spool_samples_fsync,
            self.config.spool_samples_max_bytes,
            "drop_oldest",
            save,
            fsync_interval=self.config.spool_fsync_interval_ms / 1000,
        )
        self.shipper = Shipper(
            [self.critical, self.samples],
            bootstrap=self.config.kafka_bootstrap,
            compression=self.config.kafka_compression,
            linger_ms=self.config.kafka_linger_ms,
        )
        self.ingest = Ingest(
            self.chain,
            self.critical,
            self.samples,
            self.registry,
            self.node,
            self.config.kafka_topic_prefix,
            runs=self.runs,
        )
        self.commit = GroupCommit(self.ingest)
        self.relay = (
            AlertRelay(
                self.config.kafka_bootstrap,
                self.config.kafka_topic_prefix,
                self.registry,
                self.node,
            )
            if self.config.agent_alert_relay
            else None
        )
        self.socket = SdkSocketServer(self.config.agent_socket, self.commit, self.relay)
        self.status_server = StatusServer(
            self.config.agent_metrics_host,
            self.config.agent_metrics_port,
            self.status,
            self.shipper,
        )
        self._stopped = threading.Event()
        self._scan: threading.Thread | None = None
        self._sources_stop = threading.Event()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        keep_freed_memory(self.config.agent_malloc_keep_mb * 2**20)
        waiting = self.critical.open() + self.samples.open()
        self._recover_chain()
        log.info("spool checked", records_waiting=waiting, streams=len(self.chain.links))
        log.info("avro writer", writer=describe())
        log.info("kafka producer", producer=kafkacore.describe())
        self.shipper.start()
        self.commit.start()
        self._import_sdk_spools()
        if self.config.sdk_spool_scan_s > 0:
            self._scan = threading.Thread(target=self._scan_sdk_spools, name="sdk-spool-scan")
            self._scan.daemon = True
            self._scan.start()
        self.socket.start()
        if self.relay is not None:
            self.relay.start()
        self.status_server.start()
        # `traintrail-agent status` finds the endpoint here (the port may be 0).
        (Path(self.config.spool_dir) / "agent.url").write_text(self.status_server.url + "\n")
        log.info("status endpoint", url=self.status_server.url)
        self._start_sources()

    def _import_sdk_spools(self) -> None:
        try:
            imported = import_sdk_spools(self.commit, Path(self.config.sdk_spool_dir))
        except (OSError, SpoolFullError) as exc:  # the files stay; the next scan retries
            log.error("importing SDK spools failed", error=str(exc))
            return
        if imported:
            log.info("imported SDK spools", events=imported)

    def _scan_sdk_spools(self) -> None:
        """A run whose process was killed before its sender could deliver leaves its
        tail (RunFinished included) in the SDK spool; without this it would wait for
        the agent's next restart."""
        while not self._stopped.wait(self.config.sdk_spool_scan_s):
            self._import_sdk_spools()

    def _recover_chain(self) -> None:
        for spool in (self.critical, self.samples):
            for record in spool.pending(5000):
                try:
                    env = decode(self.registry, record.value).record["envelope"]
                except SchemaError as exc:  # cannot happen for what we encoded
                    log.error("spooled record does not decode", rid=record.rid, error=str(exc))
                    continue
                self.chain.link(env["stream"], env["seq"], event_hash(record.value))

    def stop(self) -> None:
        """Stop sources and socket, give deliveries a bounded time, keep the rest spooled."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._scan is not None:  # an import in progress ends before the spools close
            self._scan.join(30.0)
        self._stop_sources()
        self.socket.stop()
        if self.relay is not None:
            self.relay.stop()
        self.commit.stop()  # what the sources posted reaches the spool first
        left = self.shipper.stop(self.config.agent_stop_timeout_s)
        self.chain.save(self.chain_path)
        self.critical.close()
        self.samples.close()
        self.status_server.stop()
        log.info("agent stopped", undelivered_left_in_spool=left)

    def run_forever(self) -> None:
        done = threading.Event()
        reload = threading.Event()

        def _signal(signum: int, _frame: FrameType | None) -> None:
            if signum == signal.SIGHUP:
                reload.set()
            else:
                log.info("stopping", signal=signal.Signals(signum).name)
                done.set()
            done_or_reload.set()

        done_or_reload = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _signal)
        self.start()
        while not done.is_set():
            # A timed wait, not a bare one: the kernel may deliver the signal
            # to another thread, and CPython runs Python handlers only when
            # the main thread executes bytecode; a main thread blocked in an
            # untimed lock wait would never see SIGHUP or SIGTERM.
            if not done_or_reload.wait(0.5):
                continue
            done_or_reload.clear()
            if reload.is_set() and not done.is_set():
                reload.clear()
                self.reload()
        self.stop()

    def reload(self) -> None:
        """Re-read the config file; restart the sources with what changed."""
        try:
            new = load_config(self.config_path)
        except Exception as exc:  # keep running on the old config
            log.error("reload failed; keeping the running config", error=str(exc))
            return
        changed = {
            f.name
            for f in dataclasses.fields(new)
            if getattr(new, f.name) != getattr(self.config, f.name)
        }
        needs_restart = sorted(n for n in changed if n.split("_", 1)[0] not in _RELOADABLE)
        if needs_restart:
            log.warning("reload: these settings need a restart", settings=needs_restart)
        applied = sorted(changed - set(needs_restart))
        fields = {n: getattr(new, n) for n in applied}
        self.config = dataclasses.replace(self.config, **fields)
        configure_logging(self.config.log_level, self.config.log_format)
        self._stop_sources()
        self._start_sources()
        log.info("config reloaded", applied=applied)

    # -- sources ---------------------------------------------------------------

    def _start_sources(self) -> None:
        self._sources_stop = threading.Event()
        state = Path(self.config.spool_dir) / "sources"
        state.mkdir(parents=True, exist_ok=True)
        for source in build_sources(self.config, self.node, self.runs, state):
            thread = threading.Thread(
                target=self._run_source,
                args=(source, self._sources_stop),
                name=f"source-{source.name}",
                daemon=True,
            )
            self._running.append(_Running(source, thread))
            thread.start()

    def _stop_sources(self) -> None:
        self._sources_stop.set()
        for running in self._running:
            running.thread.join(5.0)
        self._running = []

    def _run_source(self, source: Source, stop: threading.Event) -> None:
        """Run `source` on this thread. Its hardware samples are posted to the
        group commit without waiting (nobody acknowledges them; a full
        samples spool drops them by policy anyway); anything else (access
        events, XID errors) waits for the spool, so a source that saves a
        file position or retries does so only for what is spooled. A source
        counts what it emitted; this counts what was rejected or refused."""

        def count(result: Accepted | Exception, n: int) -> None:
            if isinstance(result, Exception):
                source.stats.count(errors=n)
            elif result[1]:
                source.stats.count(errors=len(result[1]))

        def emit(events: list[dict[str, Any]]) -> None:
            n = len(events)
            if all(ev.get("type") in SAMPLE_TYPES for ev in events):
                self.commit.post(events, lambda result: count(result, n))
                return
            try:
                count(self.commit.accept(events), n)
            except SpoolFullError as exc:
                count(exc, n)  # alerted by ingest

        # Each source says it is alive itself, once it is ready (an inotify source
        # after its watches are in place), so "alive" never promises too early.
        try:
            source.run(emit, stop)
        except Exception:
            log.exception("source crashed", source=source.name)
            source.stats.count(errors=1)
        finally:
            source.stats.alive = False

    def status(self) -> dict[str, Any]:
        out = status(
            self.node,
            self.started,
            self.ingest,
            {"critical": self.critical, "samples": self.samples},
            self.shipper,
            [r.source for r in self._running],
        )
        out["ingest"] = {
            "queued_events": self.commit.queued_events,
            "commits": self.commit.batches,
            "requests": self.commit.requests,
        }
        out["alert_relay"] = self.relay.stats() if self.relay is not None else {"enabled": False}
        return out


def import_sdk_spools(ingest: Accepts, directory: Path) -> int:
    """Send what SDKs spooled while no agent was listening.

    Files are `<run_id>.<pid>.jsonl`; a file whose process still lives is left
    to that process, which sends it itself when it reconnects.
    """
    if not directory.is_dir():
        return 0
    total = 0
    for path in sorted(directory.glob("*.jsonl")):
        pid_text = path.stem.rsplit(".", 1)[-1]
        if pid_text.isdigit() and _alive(int(pid_text)):
            continue
        lines = path.read_bytes().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                events = json.loads(line)["events"]
            except (ValueError, KeyError, TypeError):
                log.warning("sdk spool: unreadable line skipped", file=path.name, line=number)
                continue
            # The lines are the SDK socket's: Metrics columns still in base64.
            events, bad = unpack_columns(events if isinstance(events, list) else [])
            try:
                accepted, rejected = ingest.accept(events, SDK_TYPES)
            except SpoolFullError:  # keep what is not yet in the spool, and only that
                rest = path.with_suffix(".rest")
                rest.write_bytes(b"".join(x + b"\n" for x in lines[number - 1 :]))
                rest.replace(path)
                raise
            total += accepted
            if bad or rejected:
                log.error(
                    "sdk spool: events rejected",
                    file=path.name,
                    line=number,
                    rejected=len(bad) + len(rejected),
                )
        path.unlink()
    return total


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
