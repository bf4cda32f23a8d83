"""Avro binary writers compiled per schema: the agent's encode cost per event.

fastavro resolves every union branch by validating the value against each
candidate, so a 48-field GPU sample whose fields are nearly all `["null", X]`
cost about 60-80 µs to encode: ten times what librdkafka then spends taking
the finished bytes. This module turns one parsed schema into straight-line
Python source (one `if v is None` per nullable field, varints inlined for the
small numbers telemetry is mostly made of) and compiles it once, which
writes the same bytes in about a fifth of the time. A run of required
`bytes` fields (GpuSamples' 48 packed columns) is written with a few
C-level calls for the whole run rather than a dozen bytecodes per field:
one-tick GpuSamples 34 → 27 µs, sixty ticks 72 → 37 µs on the project's
2-core VM.

It covers the schema constructs this project's schemas use: records,
arrays, maps, the primitives, and unions of null with one other type.
Anything else (other unions, enums, fixed, named-type references) makes
`compile_writer` return None, and the codec keeps using fastavro for that
schema. tests/test_schemas/test_fastwrite.py checks the output byte for byte
against fastavro for every schema version and for generated records.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["Writer", "compile_writer"]

Writer = Callable[[dict[str, Any], bytes], bytes]

_INT32 = (-(2**31), 2**31)
_INT64 = (-(2**63), 2**63)
# Zigzag varints of -64..63: one byte each, the common case for counters,
# utilizations, indexes and short strings' lengths.
# Strings and bytes from this size on are joined at the end instead of
# appended: copying a packed column into a growing buffer costs more than
# the list entry.
_INLINE_MAX = 2048
_SMALL = bytes(((n << 1) ^ (n >> 63)) & 0xFF for n in range(-64, 64))
# A run of this many required bytes fields is written column-wise (`_columns`).
_RUN_MIN = 4


class _Unsupported(Exception):
    """A schema construct this compiler leaves to fastavro."""


def _varint(out: bytearray, n: int, low: int, high: int) -> None:
    if not low <= n < high:
        raise OverflowError(f"{n} is out of range for an Avro {'int' if high == 2**31 else 'long'}")
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _long(out: bytearray, n: int) -> None:
    # operator.index: Python and numpy integers (and bool, as in fastavro), never floats.
    _varint(out, operator.index(n), *_INT64)


def _int(out: bytearray, n: int) -> None:
    _varint(out, operator.index(n), *_INT32)


def _double(v: float) -> bytes:
    if v.__class__ is not float and not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return _PACK_D(v)


def _float(v: float) -> bytes:
    if v.__class__ is not float and not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return _PACK_F(v)


def _boolean(v: bool) -> int:
    if v is True:
        return 1
    if v is False:
        return 0
    raise TypeError(f"expected a boolean, got {type(v).__name__}")


def _blob(v: bytes) -> bytes:
    if not isinstance(v, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(v).__name__}")
    return bytes(v)


def _prefix(n: int) -> bytes:
    """The Avro length prefix of a bytes value of `n` bytes (n >= 0)."""
    out = bytearray()
    _varint(out, n, *_INT64)
    return bytes(out)


# Length prefixes of 0..8191 bytes (one or two varint bytes), looked up by
# length (a list's __getitem__: half the cost of a tuple's per call here).
_PREFIX = [_prefix(n) for n in range(8192)].__getitem__

_PACK_D = struct.Struct("<d").pack
_PACK_F = struct.Struct("<f").pack

_HELPERS: dict[str, Any] = {
    "_SMALL": _SMALL,
    "_long": _long,
    "_int": _int,
    "_double": _double,
    "_float": _float,
    "_boolean": _boolean,
    "_blob": _blob,
    "_BYTES": {bytes},
    "_PREFIX": _PREFIX,
    "_prefix": _prefix,
}


class _Source:
    """Lines of the function being generated, and the constants it closes over."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._names = 0

    def var(self, stem: str) -> str:
        self._names += 1
        return f"{stem}{self._names}"

    def const(self, value: Any) -> str:
        name = self.var("_c")
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)


def _type_name(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        kind = schema["type"]
        if isinstance(kind, str):
            return kind
    raise _Unsupported(f"schema node {schema!r}")


def _length(src: _Source, indent: int, n: str) -> None:
    """A length or count: always >= 0, usually < 64, often < 8192 (two bytes:
    the packed columns of a few samples)."""
    src.emit(indent, f"if {n} < 64: out.append({n} << 1)")
    two = f"out.append((({n} << 1) & 0x7F) | 0x80); out.append({n} >> 6)"
    src.emit(indent, f"elif {n} < 8192: {two}")
    src.emit(indent, f"else: _long(out, {n})")


def _value(src: _Source, indent: int, schema: Any, v: str) -> None:
    """Write the value held in variable `v` per `schema`."""
    if isinstance(schema, list):
        _union(src, indent, schema, v)
        return
    kind = _type_name(schema)
    if kind == "null":
        src.emit(indent, f"if {v} is not None: raise TypeError('expected null')")
    elif kind in ("long", "int"):
        fn = "_long" if kind == "long" else "_int"
        small = f"{v}.__class__ is int and -64 <= {v} < 64"
        src.emit(indent, f"if {small}: out.append(_SMALL[{v} + 64])")
        src.emit(indent, f"else: {fn}(out, {v})")
    elif kind == "double":
        src.emit(indent, f"out += _double({v})")
    elif kind == "float":
        src.emit(indent, f"out += _float({v})")
    elif kind == "boolean":
        src.emit(indent, f"out.append(_boolean({v}))")
    elif kind in ("string", "bytes"):
        data, n = src.var("d"), src.var("n")
        if kind == "string":
            src.emit(indent, f"{data} = {v}.encode()")
        else:  # bytes as they are (no call, no copy); anything else checked and copied
            src.emit(indent, f"{data} = {v} if {v}.__class__ is bytes else _blob({v})")
        src.emit(indent, f"{n} = len({data})")
        _length(src, indent, n)
        # A large value (a packed column) is not copied into `out`: the parts
        # are joined once at the end, into a bytes object of the exact size.
        src.emit(indent, f"if {n} < {_INLINE_MAX}: out += {data}")
        src.emit(indent, f"else: parts += (out, {data}); out = bytearray()")
    elif kind == "record":
        _record(src, indent, schema, v)
    elif kind == "array":
        n, item = src.var("n"), src.var("i")
        src.emit(indent, f"{n} = len({v})")
        src.emit(indent, f"if {n}:")
        _length(src, indent + 1, n)
        src.emit(indent + 1, f"for {item} in {v}:")
        _value(src, indent + 2, schema["items"], item)
        src.emit(indent, "out.append(0)")
    elif kind == "map":
        n, key, val = src.var("n"), src.var("k"), src.var("v")
        src.emit(indent, f"{n} = len({v})")
        src.emit(indent, f"if {n}:")
        _length(src, indent + 1, n)
        src.emit(indent + 1, f"for {key}, {val} in {v}.items():")
        _value(src, indent + 2, "string", key)
        _value(src, indent + 2, schema["values"], val)
        src.emit(indent, "out.append(0)")
    else:
        raise _Unsupported(f"type {kind!r}")


def _union(src: _Source, indent: int, schema: list[Any], v: str) -> None:
    if len(schema) != 2 or "null" not in schema:
        raise _Unsupported(f"union {schema!r}")
    null_at = schema.index("null")
    other = schema[1 - null_at]
    _type_name(other)  # raises for what the branch writer could not handle
    src.emit(indent, f"if {v} is None: out.append({null_at << 1})")
    src.emit(indent, "else:")
    src.emit(indent + 1, f"out.append({(1 - null_at) << 1})")
    _value(src, indent + 1, other, v)


def _record(src: _Source, indent: int, schema: dict[str, Any], r: str) -> None:
    src.emit(indent, f"if not isinstance({r}, dict): raise TypeError('expected a record (dict)')")
    fields = schema["fields"]
    i = 0
    while i < len(fields):
        run = _bytes_run(fields, i)
        if len(run) >= _RUN_MIN:
            _columns(src, indent, run, r)
            i += len(run)
            continue
        _field(src, indent, fields[i], r)
        i += 1


def _field(src: _Source, indent: int, f: dict[str, Any], r: str) -> None:
    v = src.var("f")
    name = f["name"]
    nullable = isinstance(f["type"], list) and "null" in f["type"]
    if "default" in f:
        # As fastavro: a missing field takes its default.
        src.emit(indent, f"{v} = {r}.get({name!r}, {src.const(f['default'])})")
    elif nullable:
        src.emit(indent, f"{v} = {r}.get({name!r})")
    else:
        src.emit(indent, f"{v} = {r}[{name!r}]")
    _value(src, indent, f["type"], v)


def _bytes_run(fields: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """The required plain `bytes` fields from `start` on, up to the first other one."""
    run = []
    for f in fields[start:]:
        if f["type"] != "bytes" or "default" in f:
            break
        run.append(f)
    return run


def _columns(src: _Source, indent: int, run: list[dict[str, Any]], r: str) -> None:
    """A run of required `bytes` fields (GpuSamples' packed columns) in a few
    C-level calls instead of a dozen bytecodes per field: take them with one
    itemgetter, look their length prefixes up, interleave, and leave them to
    the final join. Anything but `bytes` values (a bytearray, a wrong type)
    takes the field-by-field path, which copies or refuses them as fastavro."""
    names = [f["name"] for f in run]
    cols, pre, seq = src.var("c"), src.var("p"), src.var("s")
    src.emit(indent, f"{cols} = {src.const(operator.itemgetter(*names))}({r})")
    src.emit(indent, f"if set(map(type, {cols})) == _BYTES:")
    src.emit(indent + 1, f"try: {pre} = list(map(_PREFIX, map(len, {cols})))")
    src.emit(indent + 1, f"except IndexError: {pre} = [_prefix(len(x)) for x in {cols}]")
    src.emit(indent + 1, f"{seq} = [b''] * {2 * len(run)}")
    src.emit(indent + 1, f"{seq}[::2] = {pre}; {seq}[1::2] = {cols}")
    src.emit(indent + 1, f"parts.append(out); parts += {seq}; out = bytearray()")
    src.emit(indent, "else:")
    for f in run:
        _field(src, indent + 1, f, r)


def compile_writer(schema: Any) -> Writer | None:
    """A function `write(record, head=b"")` returning `head` followed by the
    record in Avro binary per `schema` (fastavro-parsed): the head is where
    the codec puts the single-object header, so a large record is not copied
    once more to prepend it. None when the schema uses a construct left to
    fastavro.

    It raises TypeError, KeyError, AttributeError or OverflowError for a
    record that does not fit, as fastavro raises for the same record."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    src = _Source()
    src.emit(0, "def write(r, head=b''):")
    src.emit(1, "out = bytearray(head)")
    src.emit(1, "parts = []")
    try:
        _record(src, 1, schema, "r")
    except _Unsupported:
        return None
    src.emit(1, "if not parts: return bytes(out)")
    src.emit(1, "parts.append(out)")
    src.emit(1, "return b''.join(parts)")
    namespace: dict[str, Any] = {**_HELPERS, **src.consts}
    exec(compile("\n".join(src.lines), f"<avro writer {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace["write"]
    return writer
