"""The spool survives torn writes and SIGKILL, replays in order, trims on ack."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from agent.spool import Record, Spool


def _all(spool: Spool) -> list[Record]:
    """Every undelivered record, read 7 at a time so reads span segments."""
    return list(spool.pending(7))


def _reopen(path: Path, **kw: object) -> tuple[Spool, list[Record]]:
    spool = Spool(path, **kw)  # type: ignore[arg-type]
    spool.open()
    return spool, _all(spool)


def _entries(n: int, start: int = 0) -> list[tuple[str, bytes, bytes]]:
    return [("t.training", b"k%d" % i, b"value-%06d" % i) for i in range(start, start + n)]


class TestReplay:
    def test_replays_in_order_after_reopen(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, segment_bytes=200)
        spool.open()
        for i in range(0, 30, 3):
            spool.append(_entries(3, i))
        spool.close()
        _, again = _reopen(tmp_path, segment_bytes=200)
        assert [r.value for r in again] == [e[2] for e in _entries(30)]
        assert [r.rid for r in again] == list(range(30))

    def test_rids_continue_after_reopen(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path)
        spool.open()
        spool.append(_entries(5))
        spool.close()
        spool = Spool(tmp_path)
        spool.open()
        assert spool.append(_entries(2, 5)) == [5, 6]


class TestTornTail:
    def test_every_cut_point_of_the_last_frame(self, tmp_path: Path) -> None:
        """Truncate the file at every byte inside the last frame: the frames
        before it always come back intact, the torn one never does."""
        src = tmp_path / "src"
        spool = Spool(src)
        spool.open()
        spool.append(_entries(3))
        spool.close()
        (segment,) = sorted(src.glob("*.seg"))
        data = segment.read_bytes()
        frame = len(data) // 3
        for cut in range(len(data) - frame, len(data)):
            d = tmp_path / f"cut{cut}"
            d.mkdir()
            (d / segment.name).write_bytes(data[:cut])
            _, records = _reopen(d)
            assert [r.value for r in records] == [e[2] for e in _entries(2)], cut
            assert (d / segment.name).stat().st_size == len(data) - frame

    def test_flipped_byte_is_never_misread(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path)
        spool.open()
        spool.append(_entries(3))
        spool.close()
        (segment,) = sorted(tmp_path.glob("*.seg"))
        data = bytearray(segment.read_bytes())
        data[-3] ^= 0xFF
        segment.write_bytes(bytes(data))
        spool, records = _reopen(tmp_path)
        assert [r.value for r in records] == [e[2] for e in _entries(2)]
        assert spool.stats().torn_bytes_cut > 0


class TestFrameChecksum:
    def test_frame_crc_is_zlibs_crc32(self, tmp_path: Path) -> None:
        """The spool checksums with ISA-L where installed: its CRC-32 must be
        zlib's, so a spool written by one build opens in any other."""
        spool = Spool(tmp_path)
        spool.open()
        values = [os.urandom(n) for n in (0, 1, 5000, 300_000)]
        spool.append([("t.training", b"key", v) for v in values])
        spool.close()
        (segment,) = tmp_path.glob("*.seg")
        data, pos = segment.read_bytes(), 0
        for value in values:
            magic, length, crc = struct.unpack_from("<2sII", data, pos)
            payload = data[pos + 10 : pos + 10 + length]
            assert magic == b"TT" and payload.endswith(value)
            assert crc == zlib.crc32(payload)
            pos += 10 + length
        assert pos == len(data)


class TestTrim:
    def test_fully_acked_sealed_segments_are_deleted(self, tmp_path: Path) -> None:
        trims = []
        spool = Spool(tmp_path, segment_bytes=100, before_trim=lambda: trims.append(1))
        spool.open()
        records = []
        for i in range(10):
            records += spool.append(_entries(1, i))
        values = {rid: e[2] for rid, e in zip(records, _entries(10), strict=True)}
        segments_before = spool.stats().segments
        assert segments_before > 3
        for rid in records[:-1]:
            spool.ack(rid)
        assert trims, "the chain must be saved before a trim"
        assert [r.rid for r in _all(spool)] == [records[-1]]
        assert spool.stats().segments < segments_before
        _, left = _reopen(tmp_path, segment_bytes=100)
        # the unacked record, plus what shared its (active) segment
        assert values[records[-1]] in [r.value for r in left]
        assert len(left) < 10

    def test_unacked_records_survive(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, segment_bytes=50)
        spool.open()
        rids = [r for i in range(6) for r in spool.append(_entries(1, i))]
        for rid in rids[::2]:
            spool.ack(rid)
        assert [r.rid for r in _all(spool)] == rids[1::2]
        spool.close()
        _, survivors = _reopen(tmp_path)
        values = {e[2] for e in _entries(6)[1::2]}
        assert values <= {r.value for r in survivors}


class TestUnreadInMemory:
    """Records not yet read are served from memory; whatever the memory cap,
    a reader sees exactly what a reader of the disk copy sees."""

    @pytest.mark.parametrize("memory_bytes", [0, 40, 1 << 20])
    def test_reads_match_what_was_appended(self, tmp_path: Path, memory_bytes: int) -> None:
        """A shipper's life in random order: appends, reads, acks of what it
        read, producer rebuilds (read again from the oldest record)."""
        import random

        rng = random.Random(memory_bytes)
        spool = Spool(tmp_path, segment_bytes=300, memory_bytes=memory_bytes)
        spool.open()
        appended: list[bytes] = []
        read: list[Record] = []
        acked: set[int] = set()
        cursor, since, rereads = 0, 0, 0  # read == what a reset re-read + all since
        for _ in range(400):
            action = rng.random()
            if action < 0.45:
                entries = _entries(rng.randint(1, 4), len(appended))
                spool.append(entries)
                appended += [e[2] for e in entries]
            elif action < 0.85:
                records, cursor = spool.read(cursor, rng.randint(1, 5))
                read += records
            elif action < 0.97 and read:
                rid = rng.choice(read).rid
                spool.ack(rid)
                acked.add(rid)
            else:  # rebuild: everything not acked comes again, in order
                cursor = spool.first_rid()
                again: list[Record] = []
                while cursor < len(appended):  # a read past acked records may be empty
                    records, cursor = spool.read(cursor, rng.randint(1, 5))
                    again += records
                assert [r.rid for r in again] == [
                    rid for rid in range(len(appended)) if rid not in acked
                ]
                read, since, rereads = again, len(appended), len(again)
        while cursor < len(appended):
            records, cursor = spool.read(cursor, 10_000)
            read += records
        assert [r.rid for r in read[rereads:]] == list(range(since, len(appended)))
        assert [r.value for r in read[rereads:]] == appended[since:]

    def test_memory_copy_is_bounded(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, memory_bytes=1000)
        spool.open()
        for i in range(100):
            spool.append(_entries(10, i * 10))
        assert spool._unread_bytes <= 1000
        records, _ = spool.read(0, 10_000)
        assert [r.value for r in records] == [e[2] for e in _entries(1000)]


class TestDiskRead:
    """A lagging reader takes records from disk a chunk at a time, not the
    rest of a segment per batch."""

    def test_frames_smaller_and_larger_than_the_chunk(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        import agent.frames

        monkeypatch.setattr(agent.frames, "READ_CHUNK", 100)
        sizes = [5, 300, 40, 40, 1000, 3, 99, 100, 101, 250]
        values = [bytes([65 + i]) * n for i, n in enumerate(sizes)]
        spool = Spool(tmp_path, memory_bytes=0)
        spool.open()
        spool.append([("t", b"k%d" % i, v) for i, v in enumerate(values)])
        for batch in (1, 2, 3, 100):
            cursor, got = 0, []
            while cursor < len(values):
                records, cursor = spool.read(cursor, batch)
                got += records
            assert [r.value for r in got] == values, batch
            assert [r.key for r in got] == [b"k%d" % i for i in range(len(values))]

    def test_reads_are_bounded(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Ten records from a segment of thousands read a chunk, not the file."""
        import agent.frames

        monkeypatch.setattr(agent.frames, "READ_CHUNK", 4096)
        spool = Spool(tmp_path, memory_bytes=0)
        spool.open()
        spool.append(_entries(5000))
        sizes: list[int] = []
        real_open = Path.open

        def spy(self: Path, *a: object, **kw: object):  # type: ignore[no-untyped-def]
            fh = real_open(self, *a, **kw)  # type: ignore[arg-type]
            read = fh.read
            fh.read = lambda n=-1: (sizes.append(n), read(n))[1]  # type: ignore[method-assign]
            return fh

        monkeypatch.setattr(Path, "open", spy)
        records, _ = spool.read(100, 10)
        assert [r.value for r in records] == [e[2] for e in _entries(10, 100)]
        assert sizes and all(0 < n <= 4096 for n in sizes), sizes

    def test_damaged_frame_after_open_stops_the_read(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A byte flipped on disk after open: the records before it are read,
        it and what follows are never returned misread."""
        import agent.frames

        monkeypatch.setattr(agent.frames, "READ_CHUNK", 64)
        spool = Spool(tmp_path, memory_bytes=0)
        spool.open()
        spool.append(_entries(20))
        (segment,) = sorted(tmp_path.glob("*.seg"))
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
        records, cursor = spool.read(0, 100)
        assert 0 < len(records) < 20
        assert [r.value for r in records] == [e[2] for e in _entries(len(records))]
        assert spool.read(cursor, 100) == ([], cursor)


_WRITER = """
import sys
from pathlib import Path
from agent.spool import Spool
# "interval": acknowledged once written, fsynced by a thread every 20 ms
interval = 0.02 if sys.argv[2] == "interval" else 0.0
spool = Spool(Path(sys.argv[1]), segment_bytes=1 << 20, fsync=interval > 0, fsync_interval=interval)
spool.open()
i = 0
while True:
    spool.append([("t", b"k", b"%08d" % j + b"x" * 500) for j in range(i, i + 50)])
    print(i + 49, flush=True)
    i += 50
"""


@pytest.mark.parametrize(
    ("mode", "attempt"), [("written", 0), ("written", 1), ("written", 2), ("interval", 0)]
)
def test_sigkill_mid_append_loses_nothing_acknowledged(
    tmp_path: Path, mode: str, attempt: int
) -> None:
    """A real writer process killed with SIGKILL at an arbitrary moment:
    every batch it reported written is replayed, in order, uncorrupted
    (also with the interval fsync: what is written is in the kernel's page
    cache, which outlives the process)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path), mode],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    acknowledged = -1
    while acknowledged < 2000 + attempt * 1000 and time.monotonic() < deadline:
        acknowledged = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _, records = _reopen(tmp_path)
    numbers = [int(r.value[:8]) for r in records]
    assert numbers == list(range(len(numbers)))
    assert len(numbers) > acknowledged
    assert all(r.value.endswith(b"x" * 500) for r in records)


class TestLimits:
    def test_refuse_policy_keeps_everything_and_says_so(self, tmp_path: Path) -> None:
        from agent.errors import SpoolFullError

        spool = Spool(tmp_path, segment_bytes=100, max_bytes=300, overflow="refuse")
        spool.open()
        accepted = 0
        with pytest.raises(SpoolFullError, match="full"):
            for i in range(100):
                spool.append(_entries(1, i))
                accepted += 1
        assert [r.value for r in _all(spool)] == [e[2] for e in _entries(accepted)]
        assert spool.stats().refused_batches == 1
        assert spool.stats().bytes <= 300

    def test_drop_oldest_keeps_the_newest_within_the_limit(self, tmp_path: Path) -> None:
        spool = Spool(tmp_path, segment_bytes=100, max_bytes=300, overflow="drop_oldest")
        spool.open()
        for i in range(100):
            spool.append(_entries(1, i))
            assert spool.stats().bytes <= 300
        left = [int(r.value[-6:]) for r in _all(spool)]
        assert left == list(range(100 - len(left), 100))  # the newest, contiguous
        assert spool.stats().dropped_records == 100 - len(left)


_DISK_ERROR = """
import json, resource, signal, sys
from pathlib import Path
from agent.errors import SpoolError
from agent.spool import Spool
# A real write error: the file size limit (EFBIG), as a full disk (ENOSPC)
# would fail a write, here part-way through the batch's frames.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
directory, cut = Path(sys.argv[1]), int(sys.argv[2])
spool = Spool(directory, fsync=False)
spool.open()
ok, failed = [], []
def append(name):
    try:
        spool.append([("t", b"k", name.encode() * 50), ("t", b"k", name.encode() * 60)])
        ok.append(name)
    except SpoolError:
        failed.append(name)
for i in range(5):
    append(f"before{i}:")
(segment,) = sorted(directory.glob("*.seg"))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + cut, hard))
append("failing:")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
for i in range(5):
    append(f"after{i}:")
live = [r.value[: r.value.index(b":") + 1].decode() for r in spool.pending(3)]
spool.close()
print(json.dumps({"ok": ok, "failed": failed, "live": live}))
"""


@pytest.mark.parametrize("cut", [0, 5, 30, 400, 700])
def test_a_write_error_part_way_leaves_no_trace(tmp_path: Path, cut: int) -> None:
    """A batch whose write fails (the disk full part-way through its frames)
    is refused whole: the sender is told and retries it, so none of it may
    reach Kafka later (it would be doubled), and the batches written after
    the disk has room again are read back in place, before and after a
    restart (a partial frame left in the file would hide them)."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", _DISK_ERROR, str(tmp_path), str(cut)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    result = json.loads(out.stdout)
    assert result["failed"] == ["failing:"]
    expected = [name for name in result["ok"] for _ in range(2)]
    assert result["live"] == expected
    _, records = _reopen(tmp_path)
    assert [r.value[: r.value.index(b":") + 1].decode() for r in records] == expected


@pytest.mark.parametrize("limit", [5, 4096, None])
def test_short_writes_and_long_batches_are_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int | None
) -> None:
    """writev may write less than asked (a disk filling up) and takes at
    most 1,024 buffers a call: the spool's writer goes on where it stopped.
    Here each call writes at most `limit` bytes, into a real file."""
    from agent import spool as spool_module

    real = os.writev
    calls = []

    def short(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        data = b"".join(bytes(b) for b in buffers)
        return real(fd, [data[:limit]])

    monkeypatch.setattr(spool_module.os, "writev", short)
    pieces = [b"%04d|" % i * (i % 3) for i in range(1500)]  # empty ones too
    path = tmp_path / "f"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        spool_module._write_all(fd, pieces, sum(map(len, pieces)))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(pieces)
    assert max(calls) <= 1024
