"""Schema and codec errors.

Decode errors are permanent for the message that raised them: the collector
routes such a message to the dead-letter table with the error's text as the
reason instead of retrying it. They share one root so that boundary can catch
exactly these and nothing else.
"""

from __future__ import annotations

__all__ = [
    "CorruptPayloadError",
    "EncodeError",
    "NotSingleObjectError",
    "SchemaError",
    "UnknownFingerprintError",
    "UnknownSchemaError",
]


class SchemaError(Exception):
    """Root of every error raised by the schema registry and codec."""


class UnknownSchemaError(SchemaError):
    """A schema name that no `.avsc` file defines."""


class EncodeError(SchemaError):
    """A record that does not fit the current schema of its type."""


class NotSingleObjectError(SchemaError):
    """Bytes that do not start with the Avro single-object marker C3 01."""


class UnknownFingerprintError(SchemaError):
    """A single-object message whose writer-schema fingerprint is in no `.avsc` file."""


class CorruptPayloadError(SchemaError):
    """A known fingerprint whose body does not decode with that writer schema."""
