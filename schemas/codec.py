"""Avro single-object encoding: `C3 01` + 8-byte CRC-64-AVRO fingerprint + body.

The only module that knows Avro. Transport code moves the bytes this returns.
Any conforming Avro library can decode a message given the schema files: the
header names the writer schema, the body is plain Avro binary.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from schemas.errors import CorruptPayloadError, EncodeError, NotSingleObjectError
from schemas.nativewrite import sha256_loaded
from schemas.registry import Registry, SchemaVersion

__all__ = [
    "MARKER",
    "Decoded",
    "Sealer",
    "decode",
    "encode",
    "encode_version",
    "event_hash",
    "sealer",
]

MARKER = b"\xc3\x01"
_HEADER = len(MARKER) + 8


@dataclass(frozen=True)
class Decoded:
    """A decoded message: its type name, writer version and the record read
    into the current (reader) schema of that type."""

    name: str
    writer: SchemaVersion
    record: dict[str, Any]


def encode(registry: Registry, name: str, record: dict[str, Any]) -> bytes:
    """Encode `record` with the current schema of `name`."""
    return encode_version(registry.current(name), record)


def encode_version(schema: SchemaVersion, record: dict[str, Any]) -> bytes:
    """Encode `record` with `schema` (the agent looks its types' schemas up
    once, not per event)."""
    name = schema.name
    if schema.write is not None:
        try:
            return schema.write(record, schema.head)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{name}: {exc}") from exc
    buf = io.BytesIO()
    buf.write(MARKER)
    buf.write(schema.fingerprint)
    try:
        schemaless_writer(buf, schema.parsed, record)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        raise EncodeError(f"{name}: {exc}") from exc
    return buf.getvalue()


Sealer = Callable[[dict[str, Any], dict[str, Any]], tuple[bytes, bytes]]


def sealer(schema: SchemaVersion) -> Sealer:
    """`seal(body, envelope) -> (value, event_hash(value))`: the agent's step
    per event, `body` written with `envelope` as its envelope field. The C
    writer does both in one call without copying `body` into a new dict;
    otherwise the same by `encode_version` and `event_hash`."""
    write = schema.write
    name, head = schema.name, schema.head
    seal = getattr(write, "seal", None)
    if seal is not None and sha256_loaded():

        def native(body: dict[str, Any], envelope: dict[str, Any]) -> tuple[bytes, bytes]:
            try:
                return seal(body, head, envelope)  # type: ignore[no-any-return]
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                raise EncodeError(f"{name}: {exc}") from exc

        return native

    def python(body: dict[str, Any], envelope: dict[str, Any]) -> tuple[bytes, bytes]:
        value = encode_version(schema, {**body, "envelope": envelope})
        return value, event_hash(value)

    return python


def decode(registry: Registry, data: bytes) -> Decoded:
    """Decode one message into the current schema of its type.

    Raises a `SchemaError` subclass naming what is wrong, for the dead-letter path.
    """
    if len(data) < _HEADER or data[:2] != MARKER:
        raise NotSingleObjectError(
            f"not Avro single-object encoding: {len(data)} bytes starting {data[:4].hex()!r}"
        )
    writer = registry.writer(data[2:_HEADER])
    reader = registry.current(writer.name)
    body = io.BytesIO(data)
    body.seek(_HEADER)
    try:
        record = schemaless_reader(
            body,
            writer.parsed,
            None if reader is writer else reader.parsed,
        )
    except Exception as exc:  # fastavro raises bare EOFError/ValueError/UnicodeError...
        raise CorruptPayloadError(
            f"{writer.name} v{writer.version}: body does not decode: {type(exc).__name__}: {exc}"
        ) from exc
    if body.tell() != len(data):
        raise CorruptPayloadError(
            f"{writer.name} v{writer.version}: {len(data) - body.tell()} trailing bytes"
        )
    if not isinstance(record, dict):
        raise CorruptPayloadError(f"{writer.name}: body is not a record")
    return Decoded(writer.name, writer, record)


def event_hash(message: bytes) -> bytes:
    """The chain hash of one event: SHA-256 of its whole single-object bytes."""
    return hashlib.sha256(message).digest()
