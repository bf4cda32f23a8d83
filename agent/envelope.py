"""Per-stream sequence numbers and the hash chain.

Each stream (a run, a node's GPU samples, ...) numbers its events from 0 and
carries the SHA-256 of the previous event's bytes, so storage can show that a
stream is complete and unaltered. The chain must continue across agent
restarts: its state is saved before spool segments holding it are trimmed,
and recovered from that file plus the records still in the spool.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Chain", "Link"]


@dataclass
class Link:
    """The last event written on one stream."""

    seq: int
    hash: bytes


@dataclass
class Chain:
    links: dict[str, Link] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def envelope(
        self,
        stream: str,
        event_id: str,
        time_us: int,
        node: str,
        after: tuple[int, bytes] | None = None,
    ) -> dict[str, Any]:
        """The envelope of the next event on `stream` (not yet linked: see
        `link`). It follows the stream's last linked event, or `after` (seq,
        hash): an event of the same batch not yet linked."""
        if after is None:
            last = self.links.get(stream)
            after = None if last is None else (last.seq, last.hash)
        return {
            "event_id": event_id,
            "time_us": time_us,
            "node": node,
            "stream": stream,
            "seq": 0 if after is None else after[0] + 1,
            "prev_hash": b"" if after is None else after[1],
        }

    def link(self, stream: str, seq: int, digest: bytes) -> None:
        """Record that the event `seq` with hash `digest` is now the stream's last."""
        last = self.links.get(stream)
        if last is None or seq > last.seq:
            self.links[stream] = Link(seq, digest)

    @property
    def lock(self) -> threading.Lock:
        """Held across envelope → encode → spool append → link, so two
        writers on one stream can never take the same seq."""
        return self._lock

    def save(self, path: Path) -> None:
        # Called from the delivery thread without `lock` (taking it there
        # could deadlock against an append); dict.copy() is atomic.
        links = self.links.copy()
        data = {s: {"seq": link.seq, "hash": link.hash.hex()} for s, link in links.items()}
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Chain:
        chain = cls()
        if path.exists():
            for stream, raw in json.loads(path.read_text()).items():
                chain.links[stream] = Link(int(raw["seq"]), bytes.fromhex(raw["hash"]))
        return chain
