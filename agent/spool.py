"""Segmented append-only on-disk spool: the agent's write-ahead log.

A batch is acknowledged to its sender only once it is here (written and, by
default, fsynced), and a record leaves only after Kafka acknowledged it. Each
record is framed with its length and CRC-32, so a tail torn by SIGKILL or
power loss is detected and cut, never misread. A segment is deleted once
every record in it is delivered and a newer segment exists.

Records are read back lazily by position (`read`), so a spool of gigabytes
during a long Kafka outage costs disk, not memory. The newest records not
yet read are also held in memory up to `memory_bytes`, so when Kafka keeps
up the shipper takes them from there instead of reading and checking back
what was just written (the disk copy stays the durable one).

The spool is bounded (`max_bytes`). When a batch does not fit, the policy
decides: `refuse` raises `SpoolFullError` (nothing is dropped; the sender
keeps the batch), `drop_oldest` deletes the oldest segments, delivered or
not, and counts what was lost.

The record format on disk is `agent/frames.py`; the optional interval
fsync is `agent/syncer.py`.
"""

from __future__ import annotations

import bisect
import errno
import functools
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import structlog

from agent.errors import SpoolError, SpoolFullError
from agent.frames import framed, frames, read_unframed
from agent.syncer import IntervalSync

__all__ = ["Overflow", "Record", "Spool", "SpoolStats"]

log = structlog.get_logger("traintrail.spool")

Overflow = Literal["refuse", "drop_oldest"]

_MIN_READ = 64 * 1024  # the least a disk read of records asks for
_IOV_MAX = 1024  # buffers per writev (Linux's limit)


class Record(NamedTuple):
    """One Kafka message waiting in the spool; `rid` orders all records.
    A tuple: built once per record read or appended, at C speed."""

    rid: int
    topic: str
    key: bytes
    value: bytes


_record = functools.partial(tuple.__new__, Record)  # (rid, topic, key, value) -> Record


@dataclass
class _Segment:
    first_rid: int
    path: Path
    size: int = 0
    count: int = 0
    acked: set[int] = field(default_factory=set)

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.count


@dataclass(frozen=True)
class SpoolStats:
    segments: int
    bytes: int
    pending: int
    max_bytes: int
    dropped_records: int
    refused_batches: int
    torn_bytes_cut: int
    # failed fsyncs under the interval policy: the thread's (retried next round)
    # and a segment roll's (logged; that segment is closed)
    fsync_errors: int


def _write_all(fd: int, pieces: list[bytes], size: int) -> None:
    """Write `pieces` (`size` bytes in all) at the end of `fd`: one writev
    for a batch of up to 512 records, no copy into a buffer first, and
    nothing held back in a buffer after an error (a buffered file writes
    it with its next flush: a refused batch would reach the disk after all).
    A short write (the disk filling up) goes on where it stopped."""
    done, i, skip = 0, 0, 0  # bytes written; first piece not wholly written; its bytes written
    while True:
        chunk: Sequence[bytes | memoryview] = pieces  # the common case: one call, as given
        if done or len(pieces) > _IOV_MAX:
            rest: list[bytes | memoryview] = list(pieces[i : i + _IOV_MAX])
            if skip:
                rest[0] = memoryview(rest[0])[skip:]
            chunk = rest
        n = os.writev(fd, chunk)
        if n <= 0:
            raise OSError(errno.EIO, "spool write made no progress")
        done += n
        if done >= size:
            return
        n += skip
        while i < len(pieces) and n >= len(pieces[i]):
            n -= len(pieces[i])
            i += 1
        skip = n


class Spool:
    """Thread-safe: senders append, the producer's delivery reports ack, the
    shipper reads."""

    def __init__(
        self,
        directory: Path,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        max_bytes: int = 2 * 1024**3,
        overflow: Overflow = "refuse",
        before_trim: Callable[[], None] | None = None,
        memory_bytes: int = 16 * 1024 * 1024,
        fsync_interval: float = 0.0,
    ) -> None:
        """`fsync` with `fsync_interval` 0: each batch is fsynced before
        `append` returns; > 0 (seconds): `append` returns once the batch is
        written and a thread fsyncs at most that often (agent/syncer.py)."""
        if not fsync_interval >= 0:  # NaN too
            raise ValueError(f"fsync_interval must be >= 0, got {fsync_interval!r}")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._syncer = (
            IntervalSync(fsync_interval, self._sync_current, self.directory.name)
            if fsync and fsync_interval > 0
            else None
        )
        self.max_bytes = max_bytes
        self.overflow = overflow
        # Called before any segment is deleted, e.g. to save the hash chain
        # whose only other copy is in the records about to go.
        self.before_trim = before_trim
        # Called after each append, e.g. to wake the shipper.
        self.on_append: Callable[[], None] | None = None
        self._lock = threading.Lock()  # segment and rid bookkeeping: held briefly
        self._write_lock = threading.Lock()  # the file: held across write and fsync
        self._segments: list[_Segment] = []
        self._next_rid = 0
        self._fd: int | None = None  # the segment being written, O_APPEND
        self._tail_unknown = False  # a failed append could not be cut back
        self._torn = 0
        self._roll_fsync_errors = 0
        self._dropped = 0
        self._refused = 0
        self._read_hint: tuple[int, Path, int] | None = None  # (rid, segment, byte offset)
        # Appended, not yet read: contiguous rids, oldest first.
        self.memory_bytes = memory_bytes
        self._unread: deque[Record] = deque()
        self._unread_bytes = 0

    # -- start ---------------------------------------------------------------

    def open(self) -> int:
        """Check every segment, cut torn tails; return how many records wait."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"spool dir {self.directory}: {exc}") from exc
        for path in sorted(self.directory.glob("*.seg")):
            first = int(path.stem)
            data = path.read_bytes()
            good, count = 0, 0
            for end, _payload in frames(memoryview(data)):
                good, count = end, count + 1
            if good < len(data):
                self._torn += len(data) - good
                log.warning("spool: cut torn tail", segment=path.name, bytes=len(data) - good)
                with path.open("r+b") as fh:
                    fh.truncate(good)
                    os.fsync(fh.fileno())
            if count == 0:
                path.unlink()  # an empty segment holds nothing, not even chain state
                continue
            self._segments.append(_Segment(first, path, good, count))
            self._next_rid = max(self._next_rid, first + count)
        self._roll()  # never append after a cut: start a fresh segment
        if self._syncer is not None:
            self._syncer.start()
        return sum(s.count for s in self._segments)

    # -- append / ack ----------------------------------------------------------

    def append(self, entries: list[tuple[str, bytes, bytes]]) -> list[int]:
        """Write a batch durably; return its record ids.

        Raises SpoolFullError (policy `refuse`) or SpoolError (disk). A batch
        that raises is not in the spool, not even in part: its sender is told
        and sends it again, so a copy left behind would be delivered twice."""
        if not entries:
            return []
        pieces, size = framed(entries)
        with self._write_lock:  # one writer at a time; acks and reads go on meanwhile
            with self._lock:
                self._make_room(size)
                seg = self._segments[-1]
                if seg.size >= self.segment_bytes or self._tail_unknown:
                    self._roll()
                    self._trim()
                    seg = self._segments[-1]
                fd = self._fd
                assert fd is not None
            try:
                _write_all(fd, pieces, size)
                if self._syncer is not None:
                    self._syncer.written()
                elif self.fsync:
                    os.fsync(fd)
            except OSError as exc:
                self._cut_back(fd, seg)
                raise SpoolError(f"spool append to {seg.path.name}: {exc}") from exc
            with self._lock:  # only now do readers see the records
                first = self._next_rid
                self._next_rid += len(entries)
                seg.size += size
                seg.count += len(entries)
                self._keep_unread(first, entries)
        if self.on_append is not None:
            self.on_append()
        return list(range(first, first + len(entries)))

    def _cut_back(self, fd: int, seg: _Segment) -> None:
        """Remove what a failed append left at the end of the segment (part
        of its frames, or all of them when the fsync failed). Where even that
        fails, the next append starts a new segment: nothing is written after
        the leftover, which the check at start cuts as a torn tail."""
        try:
            os.ftruncate(fd, seg.size)
        except OSError as exc:
            self._tail_unknown = True
            log.error("spool: could not cut a failed append", segment=seg.path.name, error=str(exc))

    def _keep_unread(self, first: int, entries: list[tuple[str, bytes, bytes]]) -> None:
        if self._unread and self._unread[-1].rid != first - 1:
            self._unread.clear()  # not contiguous (cannot happen; stay safe)
            self._unread_bytes = 0
        # Records built in C (a NamedTuple's own constructor is Python code).
        topics, keys, values = zip(*entries, strict=True)
        rids = range(first, first + len(entries))
        self._unread.extend(map(_record, zip(rids, topics, keys, values, strict=True)))
        self._unread_bytes += sum(map(len, values))
        while self._unread_bytes > self.memory_bytes and self._unread:
            self._unread_bytes -= len(self._unread.popleft().value)  # read from disk later

    def _take_unread(self, cursor: int, max_records: int) -> list[Record] | None:
        """The records from `cursor` on if memory holds them, else None."""
        while self._unread and self._unread[0].rid < cursor:
            self._unread_bytes -= len(self._unread.popleft().value)
        if not self._unread or self._unread[0].rid != cursor:
            return None
        out: list[Record] = []
        seg = None
        while self._unread and len(out) < max_records:
            record = self._unread.popleft()
            self._unread_bytes -= len(record.value)
            if seg is None or record.rid >= seg.first_rid + seg.count:
                seg = self._segment_of(record.rid)
            if seg is not None and record.rid not in seg.acked:
                out.append(record)  # (acked unread only when acks skip the shipper)
        return out

    def _make_room(self, need: int) -> None:
        if need > self.max_bytes:
            self._refused += 1
            raise SpoolFullError(f"batch of {need} bytes exceeds spool limit {self.max_bytes}")
        used = sum(s.size for s in self._segments)
        if used + need <= self.max_bytes:
            return
        if self.overflow == "refuse":
            self._refused += 1
            raise SpoolFullError(
                f"spool {self.directory} full: {used} of {self.max_bytes} bytes waiting for Kafka"
            )
        if len(self._segments) == 1:
            self._roll()
        if self.before_trim is not None:
            self.before_trim()
        while used + need > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments.pop(0)
            lost = oldest.count - len(oldest.acked)
            self._dropped += lost
            used -= oldest.size
            oldest.path.unlink(missing_ok=True)
            log.warning(
                "spool full: dropped oldest segment",
                segment=oldest.path.name,
                undelivered_records=lost,
            )

    def ack(self, rid: int) -> None:
        """Kafka has the record; trim what is fully delivered."""
        self.ack_many([rid])

    def ack_many(self, rids: list[int]) -> None:
        """Kafka has these records: one lock and one trim for a poll's worth
        of delivery reports, not one per record."""
        with self._lock:
            seg: _Segment | None = None
            for rid in rids:
                if seg is None or not seg.first_rid <= rid < seg.first_rid + seg.count:
                    seg = self._segment_of(rid)
                    if seg is None:
                        continue  # dropped meanwhile
                seg.acked.add(rid)
            self._trim()

    def _segment_of(self, rid: int) -> _Segment | None:
        firsts = [s.first_rid for s in self._segments]
        i = bisect.bisect_right(firsts, rid) - 1
        if i < 0:
            return None
        seg = self._segments[i]
        return seg if rid < seg.first_rid + seg.count else None

    def _trim(self) -> None:
        done = [s for s in self._segments[:-1] if s.done]
        if not done:
            return
        if self.before_trim is not None:
            self.before_trim()
        for seg in done:
            seg.path.unlink(missing_ok=True)
            self._segments.remove(seg)

    def _roll(self) -> None:
        if self._fd is not None:
            if self._syncer is not None:  # the interval thread only knows the current file
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    self._roll_fsync_errors += 1
                    log.error("spool fsync at segment roll failed", error=str(exc))
            os.close(self._fd)
            self._fd = None
        path = self.directory / f"{self._next_rid:020d}.seg"
        # A file of this name holds no records (else the next rid would be
        # past it): at most a failed append's leftover, which goes.
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        self._tail_unknown = False
        if not self._segments or self._segments[-1].path != path:
            self._segments.append(_Segment(self._next_rid, path))

    # -- read --------------------------------------------------------------------

    def first_rid(self) -> int:
        """The oldest record still in the spool (delivered or not)."""
        with self._lock:
            return self._segments[0].first_rid if self._segments else self._next_rid

    def read(self, cursor: int, max_records: int = 1000) -> tuple[list[Record], int]:
        """Undelivered records from `cursor` on, in order, and the next cursor.

        Skips records already acknowledged (after a producer rebuild the
        shipper reads again from the oldest pending record) and jumps over
        dropped segments."""
        with self._lock:
            if cursor >= self._next_rid:
                return [], cursor  # nothing new: the idle shipper's common case, no I/O
            cursor = max(cursor, self._segments[0].first_rid if self._segments else cursor)
            unread = self._take_unread(cursor, max_records)
            if unread is not None:
                return unread, (self._unread[0].rid if self._unread else self._next_rid)
            seg = self._segment_of(cursor)
            if seg is None:
                return [], cursor
            path, size, first, acked = seg.path, seg.size, seg.first_rid, set(seg.acked)
            # Read about what `max_records` take (not a whole chunk of small records)
            want = max(_MIN_READ, size // max(seg.count, 1) * max_records * 5 // 4)
        hint = self._read_hint
        rid, pos = first, 0
        if hint is not None and hint[1] == path and hint[0] <= cursor:
            rid, pos = hint[0], hint[2]
        records: list[Record] = []
        try:
            with path.open("rb") as fh:
                while len(records) < max_records and pos < size:
                    items, end = read_unframed(fh, pos, size, max_records - len(records), want)
                    if not items:
                        break  # a damaged frame: nothing after it can be trusted
                    for topic, key, value in items:
                        if rid >= cursor and rid not in acked:
                            records.append(Record(rid, topic, key, value))
                        rid += 1
                    pos = end
        except FileNotFoundError:
            return [], cursor  # dropped or trimmed meanwhile; the next read moves on
        self._read_hint = (rid, path, pos)
        return records, rid

    def pending(self, batch: int = 1000) -> Iterator[Record]:
        """Every undelivered record, oldest first, read `batch` at a time
        (chain recovery at start, tools and tests; the shipper keeps its own
        cursor)."""
        cursor = self.first_rid()
        while True:
            records, cursor = self.read(cursor, batch)
            if not records:
                return
            yield from records

    # -- inspection ----------------------------------------------------------------

    def stats(self) -> SpoolStats:
        with self._lock:
            return SpoolStats(
                segments=len(self._segments),
                bytes=sum(s.size for s in self._segments),
                pending=sum(s.count - len(s.acked) for s in self._segments),
                max_bytes=self.max_bytes,
                dropped_records=self._dropped,
                refused_batches=self._refused,
                torn_bytes_cut=self._torn,
                fsync_errors=self._roll_fsync_errors
                + (self._syncer.errors if self._syncer is not None else 0),
            )

    def _sync_current(self) -> None:
        """fsync the segment being written (for the interval thread): a copy
        of its descriptor, so that appends need not wait for the disk."""
        with self._write_lock:
            if self._fd is None:
                return
            fd = os.dup(self._fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._syncer is not None:
            self._syncer.stop()  # a last fsync of what is written
        with self._write_lock, self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
