"""The C Avro writer (`schemas/_avrowrite.c`) for the schemas fastwrite compiles.

The agent encodes every event it accepts; for a one-tick GPU message the
generated Python writer took most of the agent's time per message. The C
writer walks a tree built once from the schema and writes into the bytes
object it returns. It covers exactly fastwrite's subset (records, arrays,
maps, primitives, unions of null with one type) and is used when the
extension was built (`pip install` compiles it; without a C compiler the
package installs without it) and `TRAINTRAIL_PURE_PYTHON` is not set: the
generated Python writer is the fallback and the reference the tests hold
both to.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

__all__ = [
    "AVAILABLE",
    "DISABLE_ENV",
    "describe",
    "loaded_library",
    "native_writer",
    "program",
    "sha256_loaded",
]

DISABLE_ENV = "TRAINTRAIL_PURE_PYTHON"

try:
    from schemas._avrowrite import Writer as _Writer
    from schemas._avrowrite import use_sha256 as _use_sha256
except ImportError:  # built without a compiler: the Python writers serve
    _Writer = _use_sha256 = None

AVAILABLE = _Writer is not None

# Node kinds, as the enum in _avrowrite.c.
_PRIMITIVES = {
    "null": 0,
    "boolean": 1,
    "int": 2,
    "long": 3,
    "float": 4,
    "double": 5,
    "string": 6,
    "bytes": 7,
}
_RECORD, _ARRAY, _MAP, _UNION = 8, 9, 10, 11
# How a field is looked up (mode): r[name], r.get(name), r.get(name, default).
_REQUIRED, _NULLABLE, _DEFAULT = 0, 1, 2


class Unsupported(Exception):
    """A schema construct the C writer does not cover (fastwrite's too)."""


def program(schema: Any) -> tuple[Any, ...]:
    """The nested tuples `_avrowrite.Writer` is built from, for a
    fastavro-parsed schema node."""
    if isinstance(schema, list):
        if len(schema) != 2 or "null" not in schema:
            raise Unsupported(f"union {schema!r}")
        null_at = schema.index("null")
        return (_UNION, null_at, program(schema[1 - null_at]))
    kind = schema if isinstance(schema, str) else schema.get("type")
    if not isinstance(kind, str):
        raise Unsupported(f"schema node {schema!r}")
    if kind in _PRIMITIVES:
        return (_PRIMITIVES[kind],)
    if kind == "record":
        return (_RECORD, tuple(_field(f) for f in schema["fields"]))
    if kind == "array":
        return (_ARRAY, program(schema["items"]))
    if kind == "map":
        return (_MAP, program(schema["values"]))
    raise Unsupported(f"type {kind!r}")


def _field(f: dict[str, Any]) -> tuple[str, int, Any, tuple[Any, ...]]:
    nullable = isinstance(f["type"], list) and "null" in f["type"]
    # The same lookup as fastwrite's generated code (and fastavro): a missing
    # field takes its default, a nullable one without a default is null.
    mode = _DEFAULT if "default" in f else _NULLABLE if nullable else _REQUIRED
    return (f["name"], mode, f.get("default"), program(f["type"]))


def native_writer(schema: Any) -> Any | None:
    """A C writer for a fastavro-parsed record schema, called as
    `write(record, head=b"")`; None when the extension is absent or turned
    off, or the schema uses a construct outside the subset."""
    if _Writer is None or os.environ.get(DISABLE_ENV):
        return None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    try:
        return _Writer(program(schema))
    except Unsupported:
        return None


def describe() -> str:
    """Which writer encodes, for the agent's status and start-up log: a node
    whose install had no compiler runs, but about five times slower per event."""
    if not AVAILABLE:
        return "python (the C writer was not built: no C compiler at install)"
    if os.environ.get(DISABLE_ENV):
        return f"python ({DISABLE_ENV} is set)"
    return "c"


def loaded_library(fragment: str, maps: Path = Path("/proc/self/maps")) -> str | None:
    """The path of a shared library this process has loaded whose file name
    contains `fragment` (e.g. "libcrypto"), from its memory map; None where
    there is none or no map (not Linux)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # address perms offset device inode [path]
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and fragment in Path(parts[5]).name and ".so" in parts[5]:
            return parts[5].strip()
    return None


@functools.cache
def sha256_loaded() -> bool:
    """Whether the C writer can seal (encode and hash in one call): it takes
    OpenSSL's SHA256() from the libcrypto hashlib loaded, checked on a known
    digest first."""
    if _use_sha256 is None:
        return False
    import _hashlib  # noqa: F401  (loads libcrypto)

    path = loaded_library("libcrypto")
    if path is None:
        return False
    try:
        _use_sha256(path)
    except ImportError:
        return False
    return True
