"""Segmented append-only on-disk spool: the agent's write-ahead log.

A batch is acknowledged to the SDK only once it is here (written and, by
default, fsynced), and a record leaves only after Kafka acknowledged it. Each
record is framed with its length and CRC-32, so a tail torn by SIGKILL or
power loss is detected and cut, never misread. Whole segments are deleted
once every record in them is delivered and a newer segment exists.

Frame: b"TT" | u32 payload length | u32 crc32(payload) | payload
Payload: u16 topic length | topic | u16 key length | key | value
"""

from __future__ import annotations

import bisect
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from agent.errors import SpoolError

__all__ = ["Record", "Spool", "SpoolStats"]

log = structlog.get_logger("traintrail.spool")

_MAGIC = b"TT"
_HEAD = struct.Struct("<2sII")
_U16 = struct.Struct("<H")
_MAX_PAYLOAD = 64 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    """One Kafka message waiting in the spool; `rid` orders all records."""

    rid: int
    topic: str
    key: bytes
    value: bytes


@dataclass
class _Segment:
    first_rid: int
    path: Path
    size: int = 0
    count: int = 0
    pending: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class SpoolStats:
    segments: int
    bytes: int
    pending: int
    torn_bytes_cut: int


def _frame(topic: str, key: bytes, value: bytes) -> bytes:
    t = topic.encode()
    payload = _U16.pack(len(t)) + t + _U16.pack(len(key)) + key + value
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _unframe(payload: bytes) -> tuple[str, bytes, bytes]:
    (tlen,) = _U16.unpack_from(payload, 0)
    topic = payload[2 : 2 + tlen].decode()
    (klen,) = _U16.unpack_from(payload, 2 + tlen)
    start = 4 + tlen
    return topic, payload[start : start + klen], payload[start + klen :]


class Spool:
    """Thread-safe: SDK connections append, the producer's delivery reports ack."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        before_trim: Callable[[], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        # Called before any segment is deleted, e.g. to save the hash chain
        # whose only other copy is in the records about to go.
        self.before_trim = before_trim
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._next_rid = 0
        self._fh: BinaryIO | None = None
        self._torn = 0

    # -- start ---------------------------------------------------------------

    def open(self) -> list[Record]:
        """Read every surviving record, cut torn tails, return them in order."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool dir {self.directory}: {exc}") from exc
        records: list[Record] = []
        for path in sorted(self.directory.glob("*.seg")):
            first = int(path.stem)
            seg = _Segment(first, path)
            good, found = self._scan(path, first)
            if good < path.stat().st_size:
                cut = path.stat().st_size - good
                self._torn += cut
                log.warning("spool: cut torn tail", segment=path.name, bytes=cut)
                with path.open("r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            if not found and good == 0:
                path.unlink()  # an empty segment holds nothing, not even chain state
                continue
            seg.size = good
            seg.count = len(found)
            seg.pending = {r.rid for r in found}
            records.extend(found)
            self._segments.append(seg)
            self._next_rid = max(self._next_rid, first + len(found))
        # Never append after a cut: start a fresh segment.
        self._roll()
        return records

    def _scan(self, path: Path, first_rid: int) -> tuple[int, list[Record]]:
        data = path.read_bytes()
        pos, rid, found = 0, first_rid, []
        while pos + _HEAD.size <= len(data):
            magic, length, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if magic != _MAGIC or length > _MAX_PAYLOAD or end > len(data):
                break
            payload = data[pos + _HEAD.size : end]
            if zlib.crc32(payload) != crc:
                break
            found.append(Record(rid, *_unframe(payload)))
            rid += 1
            pos = end
        return pos, found

    # -- append / ack ----------------------------------------------------------

    def append(self, entries: list[tuple[str, bytes, bytes]]) -> list[Record]:
        """Write a batch durably; return its records. Raises SpoolError."""
        if not entries:
            return []
        with self._lock:
            seg = self._segments[-1]
            if seg.size >= self.segment_bytes:
                self._roll()
                self._trim()
                seg = self._segments[-1]
            blob = b"".join(_frame(t, k, v) for t, k, v in entries)
            fh = self._fh
            assert fh is not None
            try:
                fh.write(blob)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            except OSError as exc:
                raise SpoolError(f"spool append to {seg.path.name}: {exc}") from exc
            records = []
            for topic, key, value in entries:
                records.append(Record(self._next_rid, topic, key, value))
                seg.pending.add(self._next_rid)
                self._next_rid += 1
            seg.size += len(blob)
            seg.count += len(entries)
            return records

    def ack(self, rid: int) -> None:
        """Kafka has the record; trim what is fully delivered."""
        with self._lock:
            firsts = [s.first_rid for s in self._segments]
            i = bisect.bisect_right(firsts, rid) - 1
            if i < 0:
                return
            self._segments[i].pending.discard(rid)
            self._trim()

    def _trim(self) -> None:
        done = [s for s in self._segments[:-1] if not s.pending]
        if not done:
            return
        if self.before_trim is not None:
            self.before_trim()
        for seg in done:
            seg.path.unlink(missing_ok=True)
            self._segments.remove(seg)

    def _roll(self) -> None:
        if self._fh is not None:
            self._fh.close()
        path = self.directory / f"{self._next_rid:020d}.seg"
        self._fh = path.open("ab")
        if self._segments and self._segments[-1].path == path:
            return
        self._segments.append(_Segment(self._next_rid, path))

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(
                segments=len(self._segments),
                bytes=sum(s.size for s in self._segments),
                pending=sum(len(s.pending) for s in self._segments),
                torn_bytes_cut=self._torn,
            )

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
