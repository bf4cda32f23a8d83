"""Every schema version in `schemas/avro/`, indexed by name and by fingerprint.

Layout: `schemas/avro/<Name>/v<N>.avsc`. The highest N of a name is the
current version: the agent writes with it and the collector reads every
version into it. Old versions stay forever, because messages written with
them may still sit in Kafka or a spool, and decoding needs the exact writer
schema, found by the 8-byte CRC-64-AVRO fingerprint in the message header.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

from schemas.errors import UnknownFingerprintError, UnknownSchemaError
from schemas.fastwrite import Writer, compile_writer
from schemas.nativewrite import native_writer

__all__ = ["AVRO_DIR", "Registry", "SchemaVersion", "default_registry"]

AVRO_DIR = Path(__file__).resolve().parent / "avro"
_VERSION_FILE = re.compile(r"^v(\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One `.avsc` file, parsed once."""

    name: str
    version: int
    fingerprint: bytes
    parsed: Any
    path: Path
    # The C writer (schemas/nativewrite.py) or else the generated Python one
    # (schemas/fastwrite.py); None: fastavro writes this one.
    write: Writer | None = field(default=None, compare=False, repr=False)

    @functools.cached_property
    def head(self) -> bytes:
        """The single-object header of messages written with this version
        (built once: every encoded event starts with it)."""
        return b"\xc3\x01" + self.fingerprint


@dataclass
class Registry:
    """Schemas by name (all versions, oldest first) and by fingerprint."""

    versions: dict[str, list[SchemaVersion]] = field(default_factory=dict)
    by_fingerprint: dict[bytes, SchemaVersion] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path = AVRO_DIR) -> Registry:
        registry = cls()
        for path in sorted(root.glob("*/v*.avsc")):
            match = _VERSION_FILE.match(path.name)
            if match is None:
                continue
            registry.add(path.parent.name, int(match.group(1)), path)
        return registry

    def add(self, name: str, version: int, path: Path) -> SchemaVersion:
        raw = json.loads(path.read_text())
        # Parse without a shared named-type table: every file is self-contained,
        # so the reference Avro library can read it alone.
        parsed = parse_schema(raw, named_schemas={})
        # The hex string of CRC-64-AVRO is already the little-endian byte order
        # single-object encoding puts after C3 01.
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        _bytes_defaults(parsed)  # after the fingerprint: defaults are not in the canonical form
        write = native_writer(parsed) or compile_writer(parsed)
        entry = SchemaVersion(name, version, fp, parsed, path, write)
        self.versions.setdefault(name, []).append(entry)
        self.versions[name].sort(key=lambda v: v.version)
        self.by_fingerprint[fp] = entry
        return entry

    def current(self, name: str) -> SchemaVersion:
        try:
            return self.versions[name][-1]
        except KeyError:
            raise UnknownSchemaError(f"no schema named {name!r} in the registry") from None

    def writer(self, fp: bytes) -> SchemaVersion:
        try:
            return self.by_fingerprint[fp]
        except KeyError:
            raise UnknownFingerprintError(f"unknown schema fingerprint {fp.hex()}") from None

    def names(self) -> list[str]:
        return sorted(self.versions)


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of the installed `schemas/avro/`, loaded once per process."""
    return Registry.load()


def _bytes_defaults(schema: Any) -> None:
    """Turn the JSON-text defaults of bytes fields into bytes, in place.

    The spec writes a bytes default as a string of code points 0-255;
    fastavro hands it over as that str, which it then cannot write (a record
    missing the field) and gives readers as str (a field a newer schema added).
    """
    if isinstance(schema, list):
        for branch in schema:
            _bytes_defaults(branch)
        return
    if not isinstance(schema, dict):
        return
    for spec in schema.get("fields", ()):
        if spec.get("type") == "bytes" and isinstance(spec.get("default"), str):
            spec["default"] = spec["default"].encode("latin-1")
        _bytes_defaults(spec.get("type"))
    for key in ("items", "values"):
        _bytes_defaults(schema.get(key))
