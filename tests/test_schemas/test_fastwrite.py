"""The compiled writers write exactly fastavro's bytes, and refuse what it refuses.

Every test runs against both writers: the generated Python one (fastwrite)
and the C one (nativewrite), when the extension is built."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
from fastavro import parse_schema, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import EncodeError, default_registry, encode
from schemas.fastwrite import Writer, compile_writer
from schemas.nativewrite import AVAILABLE, native_writer
from schemas.registry import SchemaVersion
from schemas.topics import TOPIC_OF
from tests.samples import record

ALL_VERSIONS = [v for vs in default_registry().versions.values() for v in vs]

IMPLS = [
    "python",
    pytest.param("c", marks=pytest.mark.skipif(not AVAILABLE, reason="C writer not built")),
]


def _writer(impl: str, schema: Any) -> Writer:
    write = compile_writer(schema) if impl == "python" else native_writer(schema)
    assert write is not None
    return write


def _fastavro(schema: Any, rec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema, rec)
    return buf.getvalue()


def _values(schema: Any) -> st.SearchStrategy[Any]:
    """Records of `schema` covering the edges: varint widths, int64 limits,
    NaN/Inf, empty and long strings, unicode, empty arrays and maps."""
    if isinstance(schema, list):
        return st.one_of(*[_values(s) for s in schema])
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        return st.one_of(st.integers(-200, 200), st.integers(-(2**63), 2**63 - 1))
    if kind in ("double", "float"):
        return st.floats(allow_nan=True, allow_infinity=True, width=64 if kind == "double" else 32)
    if kind == "string":
        return st.text(max_size=80)
    if kind == "bytes":
        return st.binary(max_size=80)
    if kind == "array":
        return st.lists(_values(schema["items"]), max_size=70)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _values(schema["values"]), max_size=5)
    if kind == "record":
        return st.fixed_dictionaries({f["name"]: _values(f["type"]) for f in schema["fields"]})
    raise AssertionError(f"no strategy for {kind}")


def test_every_schema_version_compiles() -> None:
    missing = [f"{v.name} v{v.version}" for v in ALL_VERSIONS if v.write is None]
    assert not missing, f"left to fastavro: {missing}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", sorted(TOPIC_OF))
def test_sample_records_match_fastavro(kind: str, impl: str) -> None:
    schema = default_registry().current(kind)
    rec = record(kind)
    assert _writer(impl, schema.parsed)(rec) == _fastavro(schema.parsed, rec)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("version", ALL_VERSIONS, ids=lambda v: f"{v.name}-v{v.version}")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_generated_records_match_fastavro(
    version: SchemaVersion, impl: str, data: st.DataObject
) -> None:
    rec = data.draw(_values(version.parsed))
    assert _writer(impl, version.parsed)(rec) == _fastavro(version.parsed, rec)


@pytest.mark.parametrize("impl", IMPLS)
def test_missing_fields_take_defaults_and_nulls_as_fastavro(impl: str) -> None:
    schema = default_registry().current("Metrics")
    rec = record("Metrics")
    for name in ("step", "time_us", "name_idx", "value", "step_le", "value_le"):
        rec.pop(name, None)
    assert _writer(impl, schema.parsed)(rec) == _fastavro(schema.parsed, rec)
    gpu = default_registry().current("GpuSample")
    sparse = {k: v for k, v in record("GpuSample").items() if not k.startswith("violation")}
    assert _writer(impl, gpu.parsed)(sparse) == _fastavro(gpu.parsed, sparse)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("index", "0"),  # string for an int
        ("index", 2.5),  # float for an int
        ("index", 2**40),  # out of int32
        ("memory_used_bytes", 2**64),  # out of int64
        ("power_w", "300"),  # string for a double
        ("name", 5),  # int for a string
        ("remapped_rows_pending", 1),  # int for a boolean
        ("processes", [{"pid": "x"}]),  # bad nested record
    ],
)
def test_bad_values_are_encode_errors(field: str, bad: Any) -> None:
    rec = record("GpuSample")
    rec[field] = bad
    with pytest.raises(EncodeError, match="GpuSample"):
        encode(default_registry(), "GpuSample", rec)
    # and both writers raise one of the errors the codec turns into EncodeError
    for impl in ("python", "c") if AVAILABLE else ("python",):
        write = _writer(impl, default_registry().current("GpuSample").parsed)
        with pytest.raises((TypeError, KeyError, AttributeError, ValueError, OverflowError)):
            write(rec)


def test_missing_required_field_is_an_encode_error() -> None:
    rec = record("GpuSample")
    del rec["gpu_uuid"]
    with pytest.raises(EncodeError):
        encode(default_registry(), "GpuSample", rec)


@pytest.mark.parametrize("impl", IMPLS)
def test_numpy_scalars_write_as_python_numbers(impl: str) -> None:
    np = pytest.importorskip("numpy")
    write = _writer(impl, default_registry().current("GpuSample").parsed)
    rec = record("GpuSample")
    as_numpy = {**rec, "memory_used_bytes": np.int64(10), "power_w": np.float64(300.5)}
    assert write(as_numpy) == write({**rec, "memory_used_bytes": 10, "power_w": 300.5})


def test_unsupported_constructs_are_left_to_fastavro() -> None:
    enum = parse_schema(
        {
            "type": "record",
            "name": "E",
            "fields": [{"name": "e", "type": {"type": "enum", "name": "S", "symbols": ["A"]}}],
        },
        named_schemas={},
    )
    two_branches = parse_schema(
        {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["int", "string"]}]},
        named_schemas={},
    )
    assert compile_writer(enum) is None
    assert compile_writer(two_branches) is None
    assert native_writer(enum) is None
    assert native_writer(two_branches) is None


@pytest.mark.parametrize("impl", IMPLS)
def test_nan_and_infinity_keep_their_bits(impl: str) -> None:
    gpu = default_registry().current("GpuSample")
    write = _writer(impl, gpu.parsed)
    for v in (math.nan, math.inf, -math.inf, -0.0):
        rec = {**record("GpuSample"), "power_w": v}
        assert write(rec) == _fastavro(gpu.parsed, rec)


@pytest.mark.parametrize("size", [0, 63, 64, 127, 128, 8191, 8192, 16384, 200_000])
@pytest.mark.parametrize("kind", ["bytes", "string"])
@pytest.mark.parametrize("impl", IMPLS)
def test_lengths_of_every_varint_width_match_fastavro(size: int, kind: str, impl: str) -> None:
    """One, two (the packed columns of a few samples) and more length bytes;
    bytearray and memoryview values are copied, bytes taken as they are."""
    schema = parse_schema({"type": "record", "name": "L", "fields": [{"name": "v", "type": kind}]})
    write = _writer(impl, schema)
    value: Any = "é" * (size // 2) + "x" * (size % 2) if kind == "string" else b"\x07" * size
    assert write({"v": value}) == _fastavro(schema, {"v": value})
    if kind == "bytes":
        for view in (bytearray(value), memoryview(value)):
            assert write({"v": view}) == _fastavro(schema, {"v": bytes(view)})


_COLUMNS = parse_schema(
    {
        "type": "record",
        "name": "C",
        "fields": [
            {"name": "head", "type": "int"},
            *({"name": f"c{i}", "type": "bytes"} for i in range(6)),
            {"name": "tail", "type": "string"},
        ],
    },
    named_schemas={},
)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sizes", [[0] * 6, [1, 63, 64, 8191, 0, 5], [8192, 3, 200_000, 0, 64, 1]])
def test_a_run_of_bytes_fields_matches_fastavro(sizes: list[int], impl: str) -> None:
    """Six required bytes fields in a row are written column-wise (GpuSamples'
    packed columns); lengths past the two-byte prefixes take the slow lookup."""
    write = _writer(impl, _COLUMNS)
    rec = {"head": 7, "tail": "t", **{f"c{i}": bytes([i]) * n for i, n in enumerate(sizes)}}
    assert write(rec) == _fastavro(_COLUMNS, rec)
    assert write(rec, b"\xc3\x01") == b"\xc3\x01" + _fastavro(_COLUMNS, rec)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_run_with_one_other_buffer_falls_back_field_by_field(impl: str) -> None:
    write = _writer(impl, _COLUMNS)
    rec: dict[str, Any] = {"head": 1, "tail": "", **{f"c{i}": b"ab" for i in range(6)}}
    for view in (bytearray(b"xyz"), memoryview(b"xyz")):
        assert write({**rec, "c3": view}) == _fastavro(_COLUMNS, {**rec, "c3": b"xyz"})
    with pytest.raises(TypeError):
        write({**rec, "c2": "not bytes"})
    with pytest.raises(KeyError):
        write({k: v for k, v in rec.items() if k != "c5"})
