"""GpuSamples, the packed form of many GpuSample bodies: it carries every field
GpuSample v2 has, and pack → encode → decode → unpack_rows gives the samples back."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from schemas import decode, default_registry, encode
from schemas.gpu_packed import NUMERIC, PackError, check, pack, pack_readable, unpack_rows
from schemas.registry import AVRO_DIR
from tests.samples import body, envelope

_DEVICE = ("gpu_uuid", "index", "name", "mig_parent_uuid")  # listed once, in `devices`
_CODE = {"int": "q", "long": "q", "double": "d", "boolean": "b"}


def _fields(path: str) -> dict[str, Any]:
    schema = json.loads((AVRO_DIR / path).read_text())
    return {f["name"]: f for f in schema["fields"]}


def test_every_measurement_of_gpu_sample_v2_has_a_packed_column() -> None:
    single, packed = _fields("GpuSample/v2.avsc"), _fields("GpuSamples/v1.avsc")
    measured = set(single) - {"envelope", "processes", *_DEVICE}
    assert measured == {name for name, _code in NUMERIC}
    for name, code in NUMERIC:
        assert packed[name]["type"] == "bytes", name
        wire = [t for t in single[name]["type"] if t != "null"]
        assert [_CODE[t] for t in wire] == [code], name  # the sentinel suits the type
    device = {f["name"] for f in packed["devices"]["type"]["items"]["fields"]}
    assert device == set(_DEVICE)
    process = {f["name"] for f in single["processes"]["type"]["items"]["fields"]}
    assert process == {"pid", "used_memory_bytes", "run_id"}
    for column in ("process_count", "process_pid", "process_used_memory_bytes", "process_run"):
        assert packed[column]["type"] == "bytes", column
    assert packed["runs"]["type"] == {"type": "array", "items": "string"}


def _round_trip(samples: list[dict[str, Any]], times: list[int]) -> list[dict[str, Any]]:
    reg = default_registry()
    rec = {**pack(samples, times), "envelope": envelope("gpu/node-1")}
    decoded = decode(reg, encode(reg, "GpuSamples", rec))
    assert decoded.name == "GpuSamples" and decoded.record["count"] == len(samples)
    return unpack_rows(decoded.record)


def test_pack_encode_decode_unpack_gives_every_field_back() -> None:
    full = {
        **body("GpuSample", "r1"),
        "memory_used_bytes": 2**62,
        "temperature_c": -5,
        "processes": [
            {"pid": 42, "used_memory_bytes": 5, "run_id": "r1"},
            {"pid": 43, "used_memory_bytes": None, "run_id": None},
            {"pid": 44, "used_memory_bytes": 0, "run_id": "r2"},
        ],
    }
    sparse: dict[str, Any] = {name: None for name, _code in NUMERIC}
    sparse.update(gpu_uuid="MIG-1", index=0, name="H100 MIG 1g.10gb", mig_parent_uuid="GPU-1")
    sparse["processes"] = [{"pid": 7, "used_memory_bytes": None, "run_id": "r1"}]
    later = {**full, "power_w": 0.0, "remapped_rows_pending": True, "processes": []}
    now = int(time.time() * 1e6)
    samples, times = [full, sparse, later], [now, now, now + 1_000_000]
    rows = _round_trip(samples, times)
    assert rows == [{**s, "time_us": t} for s, t in zip(samples, times, strict=True)]
    assert rows[1]["power_w"] is None and rows[1]["retired_pages_pending"] is None
    assert rows[2]["remapped_rows_pending"] is True and rows[0]["remapped_rows_pending"] is False


def test_devices_and_runs_are_listed_once() -> None:
    gpu = body("GpuSample", "r1")
    packed = pack([gpu, gpu, gpu], [1, 2, 3])
    assert [d["gpu_uuid"] for d in packed["devices"]] == ["GPU-1"]
    assert packed["runs"] == ["r1"]
    assert check(packed) == 3


def test_an_empty_message_round_trips() -> None:
    assert _round_trip([], []) == []


def test_columns_that_do_not_fit_together_are_refused() -> None:
    packed = pack([body("GpuSample", "r1")], [1])
    with pytest.raises(PackError, match="power_w holds 0 bytes"):
        check({**packed, "power_w": b""})
    with pytest.raises(PackError, match="process_pid does not hold 1 processes"):
        check({**packed, "process_pid": b""})
    with pytest.raises(PackError):
        pack([body("GpuSample", "r1")], [1, 2])


def test_pack_readable_leaves_out_only_the_samples_no_column_holds() -> None:
    good = {**body("GpuSample"), "gpu_uuid": "GPU-good"}
    bad = {**body("GpuSample"), "gpu_uuid": "GPU-bad", "energy_mj": 2**64 - 1}
    packed, first, errors = pack_readable([bad, good], [1, 2])
    assert packed is not None and [r["gpu_uuid"] for r in unpack_rows(packed)] == ["GPU-good"]
    assert first == 2
    assert len(errors) == 1 and errors[0].startswith("GPU-bad: OverflowError")
    assert pack_readable([bad], [1]) == (None, 0, [errors[0]])
    assert pack_readable([], []) == (None, 0, [])
