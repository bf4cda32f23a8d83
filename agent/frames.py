"""The spool's record format on disk, and reading it back safely.

Frame: b"TT" | u32 payload length | u32 crc32(payload) | payload
Payload: u16 topic length | topic | u16 key length | key | value

A reader stops at the first frame whose magic, length or checksum is wrong:
that is where a write was torn (SIGKILL, power loss), and nothing after it
can be trusted to be a frame boundary.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator
from typing import BinaryIO

try:  # ISA-L: the same CRC-32 as zlib's, about 3x faster (every byte is checksummed twice)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheel: the same values, slower
    from zlib import crc32

__all__ = ["HEAD", "READ_CHUNK", "framed", "frames", "read_unframed", "unframed"]

_MAGIC = b"TT"
HEAD = struct.Struct("<2sII")
_U16 = struct.Struct("<H")
_MAX_PAYLOAD = 64 * 1024 * 1024
# A lagging shipper reads the disk this much at a time, not a whole segment
# per batch of records.
READ_CHUNK = 4 * 1024 * 1024


@functools.lru_cache(maxsize=4096)
def _prefix(topic: str, key: bytes) -> tuple[bytes, int]:
    """The payload's topic and key part and its CRC: a node writes the same
    few streams' pairs over and over, so each is built and checksummed once."""
    t = topic.encode()
    prefix = _U16.pack(len(t)) + t + _U16.pack(len(key)) + key
    return prefix, crc32(prefix)


def framed(entries: list[tuple[str, bytes, bytes]]) -> tuple[list[bytes], int]:
    """The frames of `entries` as the buffers one writev takes, each as (header
    and prefix, value), and their size in all: a value of megabytes is
    checksummed and written where it is, never copied into a new buffer. One
    loop with its lookups hoisted: it runs for every event the agent takes."""
    pieces: list[bytes] = []
    add = pieces.append
    pack, prefix_of, magic = HEAD.pack, _prefix, _MAGIC
    size = 0
    for topic, key, value in entries:
        prefix, crc = prefix_of(topic, key)
        head = pack(magic, len(prefix) + len(value), crc32(value, crc)) + prefix
        add(head)
        add(value)
        size += len(head) + len(value)
    return pieces, size


def frames(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """(end offset, payload) of each intact frame from the start of `data`."""
    pos = 0
    while pos + HEAD.size <= len(data):
        magic, length, crc = HEAD.unpack_from(data, pos)
        end = pos + HEAD.size + length
        if magic != _MAGIC or length > _MAX_PAYLOAD or end > len(data):
            return
        payload = data[pos + HEAD.size : end]
        if crc32(payload) != crc:
            return
        yield end, payload
        pos = end


def unframed(data: memoryview, limit: int) -> tuple[list[tuple[str, bytes, bytes]], int]:
    """(topic, key, value) of up to `limit` intact frames from the start of
    `data`, and the offset after the last one. One loop with no generator or
    call per frame: a shipper draining a backlog spends its time here."""
    out: list[tuple[str, bytes, bytes]] = []
    pos, size, head = 0, len(data), HEAD.size
    unpack_head, unpack_u16 = HEAD.unpack_from, _U16.unpack_from
    while len(out) < limit and pos + head <= size:
        magic, length, crc = unpack_head(data, pos)
        start = pos + head
        end = start + length
        if magic != _MAGIC or length > _MAX_PAYLOAD or end > size or crc32(data[start:end]) != crc:
            break
        (tlen,) = unpack_u16(data, start)
        at = start + 2 + tlen
        (klen,) = unpack_u16(data, at)
        value_at = at + 2 + klen
        topic = str(data[start + 2 : at], "utf-8")
        out.append((topic, data[at + 2 : value_at].tobytes(), data[value_at:end].tobytes()))
        pos = end
    return out, pos


def read_unframed(
    fh: BinaryIO, offset: int, size: int, limit: int, want: int = READ_CHUNK
) -> tuple[list[tuple[str, bytes, bytes]], int]:
    """Up to `limit` intact frames of the file between `offset` and `size`,
    unframed, and the file offset after the last one, from one read of at
    most `want` (and READ_CHUNK) bytes, or of exactly one frame when the next
    is larger than that: taking a few records costs a few reads however
    large the segment. ([], offset) at the end and at a damaged frame."""
    fh.seek(offset)
    data = memoryview(fh.read(min(size - offset, want, READ_CHUNK)))
    out, pos = unframed(data, limit)
    if out or len(data) < HEAD.size:
        return out, offset + pos
    # No whole frame in the chunk: one larger than it, or damage.
    magic, length, _crc = HEAD.unpack_from(data, 0)
    need = HEAD.size + length
    if magic != _MAGIC or length > _MAX_PAYLOAD or need <= len(data) or offset + need > size:
        return [], offset
    fh.seek(offset)
    out, pos = unframed(memoryview(fh.read(need)), 1)
    return out, offset + pos
