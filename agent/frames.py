"""The spool's record format on disk, and reading it back safely.

Frame: b"TT" | u32 payload length | u32 crc32(payload) | payload
Payload: u16 topic length | topic | u16 key length | key | value

A reader stops at the first frame whose magic, length or checksum is wrong:
that is where a write was torn (SIGKILL, power loss), and nothing after it
can be trusted to be a frame boundary.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

try:  # ISA-L: the same CRC-32 as zlib's, about 3x faster (every byte is checksummed twice)
    from isal.isal_zlib import crc32
except ImportError:  # a platform without its wheel: the same values, slower
    from zlib import crc32

__all__ = ["HEAD", "READ_CHUNK", "frame", "frames", "read_frames", "unframe"]

_MAGIC = b"TT"
HEAD = struct.Struct("<2sII")
_U16 = struct.Struct("<H")
_MAX_PAYLOAD = 64 * 1024 * 1024
# A lagging shipper reads the disk this much at a time, not a whole segment
# per batch of records.
READ_CHUNK = 4 * 1024 * 1024


def frame(topic: str, key: bytes, value: bytes) -> tuple[bytes, bytes]:
    """The frame as (header and prefix, value): a value of megabytes is
    checksummed and written where it is, never copied into a new buffer."""
    t = topic.encode()
    prefix = _U16.pack(len(t)) + t + _U16.pack(len(key)) + key
    crc = crc32(value, crc32(prefix))
    return HEAD.pack(_MAGIC, len(prefix) + len(value), crc) + prefix, value


def unframe(payload: memoryview) -> tuple[str, bytes, bytes]:
    """Topic, key and value of a frame's payload; the value is copied once,
    out of the chunk it was read with."""
    (tlen,) = _U16.unpack_from(payload, 0)
    topic = bytes(payload[2 : 2 + tlen]).decode()
    (klen,) = _U16.unpack_from(payload, 2 + tlen)
    start = 4 + tlen
    return topic, bytes(payload[start : start + klen]), bytes(payload[start + klen :])


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


def read_frames(fh: BinaryIO, offset: int, size: int) -> Iterator[tuple[int, memoryview]]:
    """(end offset in the file, payload) of each intact frame between `offset`
    and `size`, reading READ_CHUNK bytes at a time (or one frame, when a
    frame is larger), so that taking a few records costs a few reads however
    large the segment. Stops at the first damaged frame."""
    while offset < size:
        fh.seek(offset)
        data = memoryview(fh.read(min(size - offset, READ_CHUNK)))
        pos = 0
        for end, payload in frames(data):
            pos = end
            yield offset + end, payload
        if pos == 0:  # no whole frame in the chunk: one larger than it, or damage
            if len(data) < HEAD.size:
                return
            magic, length, _crc = HEAD.unpack_from(data, 0)
            need = HEAD.size + length
            if magic != _MAGIC or length > _MAX_PAYLOAD or need <= len(data):
                return
            if offset + need > size:
                return
            fh.seek(offset)
            whole = list(frames(memoryview(fh.read(need))))
            if not whole:
                return
            pos = need
            yield offset + need, whole[0][1]
        offset += pos
