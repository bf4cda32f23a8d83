"""The contract between agent and collector: Avro schemas, their codec, ClickHouse DDL.

Nothing outside this package defines an event's shape; both sides load it.
"""

from __future__ import annotations

from schemas.codec import Decoded, decode, encode, event_hash
from schemas.errors import (
    CorruptPayloadError,
    EncodeError,
    NotSingleObjectError,
    SchemaError,
    UnknownFingerprintError,
    UnknownSchemaError,
)
from schemas.registry import Registry, SchemaVersion, default_registry

__all__ = [
    "CorruptPayloadError",
    "Decoded",
    "EncodeError",
    "NotSingleObjectError",
    "Registry",
    "SchemaError",
    "SchemaVersion",
    "UnknownFingerprintError",
    "UnknownSchemaError",
    "decode",
    "default_registry",
    "encode",
    "event_hash",
]
