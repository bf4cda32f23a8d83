"""Wiring of the node agent: spool → shipper → ingest → sources; stop in reverse.

Start order matters: the spool is replayed and the hash chain recovered
before anything new is accepted, so sequence numbers continue where the
last run (or crash) left them and spooled records go out first.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from agent.config import AgentConfig
from agent.envelope import Chain
from agent.ingest import Ingest
from agent.shipper import Shipper
from agent.sources.sdk_socket import SdkSocketServer
from agent.spool import Spool
from schemas import SchemaError, decode, default_registry, event_hash
from schemas.topics import SDK_TYPES

__all__ = ["Agent", "import_sdk_spools"]

log = structlog.get_logger("traintrail.agent")


@dataclass
class Agent:
    config: AgentConfig

    def __post_init__(self) -> None:
        root = Path(self.config.spool_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.registry = default_registry()
        self.chain_path = root / "chain.json"
        self.chain = Chain.load(self.chain_path)
        self.spool = Spool(
            root / "segments",
            self.config.spool_segment_bytes,
            self.config.spool_fsync,
            before_trim=lambda: self.chain.save(self.chain_path),
        )
        self.shipper = Shipper(
            self.spool,
            bootstrap=self.config.kafka_bootstrap,
            compression=self.config.kafka_compression,
            linger_ms=self.config.kafka_linger_ms,
        )
        self.ingest = Ingest(
            self.chain,
            self.spool,
            self.shipper,
            self.registry,
            self.config.node,
            self.config.kafka_topic_prefix,
            allowed_types=SDK_TYPES,
        )
        self.socket = SdkSocketServer(self.config.agent_socket, self.ingest)
        self._stopped = threading.Event()

    def start(self) -> None:
        replay = self.spool.open()
        for record in replay:
            try:
                env = decode(self.registry, record.value).record["envelope"]
            except SchemaError as exc:  # cannot happen for what we encoded; keep it spooled
                log.error("spooled record does not decode", rid=record.rid, error=str(exc))
                continue
            self.chain.link(env["stream"], env["seq"], event_hash(record.value))
        log.info("spool replayed", records=len(replay), streams=len(self.chain.links))
        self.shipper.submit(replay)
        self.shipper.start()
        imported = import_sdk_spools(self.ingest, Path(self.config.sdk_spool_dir))
        if imported:
            log.info("imported SDK spools", events=imported)
        self.socket.start()

    def stop(self) -> None:
        """Stop accepting, give deliveries a bounded time, keep the rest spooled."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.socket.stop()
        left = self.shipper.stop(self.config.agent_stop_timeout_s)
        self.chain.save(self.chain_path)
        self.spool.close()
        log.info("agent stopped", undelivered_left_in_spool=left)

    def run_forever(self) -> None:
        done = threading.Event()

        def _signal(signum: int, _frame: FrameType | None) -> None:
            log.info("stopping", signal=signal.Signals(signum).name)
            done.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        done.wait()
        self.stop()


def import_sdk_spools(ingest: Ingest, directory: Path) -> int:
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
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            try:
                batch = json.loads(line)
                events = batch["events"]
            except (ValueError, KeyError, TypeError):
                log.warning("sdk spool: unreadable line skipped", file=path.name, line=number)
                continue
            accepted, _rejected = ingest.accept(events)
            total += accepted
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
