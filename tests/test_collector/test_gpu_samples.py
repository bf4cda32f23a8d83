"""GpuSamples (many GPU samples a message, packed columns) in the collector:
stored as the rows the same samples give as GpuSample messages, and refused,
whole, when a value does not fit its column or breaks a semantic rule."""

from __future__ import annotations

import math
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from collector.router import Batch, InvalidEventError, route
from collector.store import Store
from collector.validate import Limits, validate
from schemas import Decoded, decode, default_registry, encode
from schemas.gpu_packed import INT_NULL, NUMERIC, pack
from tests.samples import body, envelope

_NOT_COMPARED = "event_id, seq, prev_hash, schema_fp, ingested_at"  # a message's, not a sample's


def _samples(tag: str) -> list[dict[str, Any]]:
    """A full sample with processes (one without memory or run), and a sparse
    MIG sample with every measurement null."""
    full = {
        **body("GpuSample", "r1"),
        "gpu_uuid": f"GPU-{tag}",
        "processes": [
            {"pid": 42, "used_memory_bytes": 5, "run_id": "r1"},
            {"pid": 43, "used_memory_bytes": None, "run_id": None},
        ],
    }
    sparse: dict[str, Any] = {name: None for name, _code in NUMERIC}
    sparse.update(
        gpu_uuid=f"MIG-{tag}",
        index=1,
        name="H100 MIG 1g.10gb",
        mig_parent_uuid=f"GPU-{tag}",
        processes=[],
    )
    return [full, sparse]


def _packed(
    samples: list[dict[str, Any]], times: list[int], node: str, **changes: Any
) -> dict[str, Any]:
    rec = {**pack(samples, times), "envelope": {**envelope(f"gpu/{node}"), "node": node}}
    rec.update(changes)
    return rec


def _decoded(kind: str, rec: dict[str, Any]) -> Decoded:
    reg = default_registry()
    return decode(reg, encode(reg, kind, rec))


def _one_each(samples: list[dict[str, Any]], times: list[int], node: str) -> list[Decoded]:
    """The same samples as an old agent sends them: one GpuSample message each."""
    out = []
    for seq, (sample, t) in enumerate(zip(samples, times, strict=True)):
        env = {**envelope(f"gpu/{node}", seq=seq), "node": node, "time_us": t}
        out.append(_decoded("GpuSample", {**sample, "envelope": env}))
    return out


def _rows(store: Store, event_ids: list[str]) -> list[dict[str, Any]]:
    return store.query(
        f"SELECT * EXCEPT ({_NOT_COMPARED}) FROM gpu_samples FINAL "
        "WHERE event_id IN {ids:Array(UUID)} ORDER BY gpu_uuid, event_time",
        {"ids": event_ids},
    )


def test_a_message_of_samples_stores_the_rows_of_one_message_per_sample(
    ch_store: Store,
) -> None:
    node = f"packed-{uuid.uuid4().hex[:8]}"
    samples = _samples(node)
    now = int(time.time() * 1e6)
    times = [now - 1_000_000, now]
    packed = _decoded("GpuSamples", _packed(samples, times, node))
    singles = _one_each(samples, times, node)
    batch = Batch()  # both forms in one batch: list-built and deferred rows in one insert
    for d in (packed, *singles):
        route(batch, d)
    assert batch.rows("gpu_samples") == 4
    for table, data in batch.arrow().items():
        ch_store.insert_arrow(table, data)

    mine = _rows(ch_store, [packed.record["envelope"]["event_id"]])
    theirs = _rows(ch_store, [d.record["envelope"]["event_id"] for d in singles])
    assert len(mine) == 2 and mine == theirs
    full, sparse = mine
    assert full["gpu_uuid"] == f"GPU-{node}" and full["utilization_gpu"] == 97
    assert full["power_w"] == 300.5 and full["remapped_rows_pending"] is False
    assert full["utilization_memory"] is None and full["retired_pages_pending"] is None
    assert full["process_pid"] == [42, 43]
    assert full["process_memory_bytes"] == [5, None]
    assert full["process_run_id"] == ["r1", ""]
    assert int(full["event_time"].timestamp() * 1e6) == times[0]
    assert (full["node"], full["stream"]) == (node, f"gpu/{node}")
    assert sparse["gpu_index"] == 1 and sparse["mig_parent_uuid"] == f"GPU-{node}"
    assert all(sparse[name] is None for name, _code in NUMERIC), "sentinels must be NULL"
    assert sparse["process_pid"] == [] and sparse["process_run_id"] == []


def test_an_empty_message_adds_no_rows() -> None:
    batch = Batch()
    route(batch, _decoded("GpuSamples", _packed([], [], "empty")))
    assert len(batch) == 0 and batch.arrow() == {}


def _column(name: str, code: str, *values: Any) -> dict[str, bytes]:
    return {name: struct.pack(f"<{len(values)}{code}", *values)}


_BAD: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a column one sample short": (
        lambda r: r.update(time_us=r["time_us"][:8]),
        "time_us holds 8 bytes, 2 samples need 16",
    ),
    "Inf power": (
        lambda r: r.update(_column("power_w", "d", 300.0, math.inf)),
        "power_w is inf",
    ),
    "uint8 overflow": (
        lambda r: r.update(_column("utilization_gpu", "q", 300, INT_NULL)),
        "utilization_gpu = 300 (sample 0) outside 0..255",
    ),
    "int16 underflow": (
        lambda r: r.update(_column("temperature_c", "q", -40_000, INT_NULL)),
        "temperature_c = -40000",
    ),
    "negative counter": (
        lambda r: r.update(_column("energy_mj", "q", 5, -1)),
        "energy_mj = -1 (sample 1)",
    ),
    "device index beyond uint8": (
        lambda r: r["devices"][1].update(index=300),
        "device index = 300 outside 0..255",
    ),
    "a sample of no listed device": (
        lambda r: r.update(_column("device", "i", 0, 2)),
        "device index outside devices",
    ),
    "bool 7": (
        lambda r: r.update(_column("remapped_rows_failure", "b", 7, -1)),
        "remapped_rows_failure = 7",
    ),
    "negative process_count": (
        lambda r: r.update(_column("process_count", "i", -1, 3)),
        "negative process_count",
    ),
    "negative pid": (lambda r: r.update(_column("process_pid", "q", -4, 43)), "process_pid"),
    "pid beyond uint32": (
        lambda r: r.update(_column("process_pid", "q", 2**32, 43)),
        "process_pid",
    ),
    "negative process memory": (
        lambda r: r.update(_column("process_used_memory_bytes", "q", -5, INT_NULL)),
        "process_used_memory_bytes",
    ),
    "a process of no listed run": (
        lambda r: r.update(_column("process_run", "i", 0, 1)),
        "process_run outside runs",
    ),
    "negative seq": (lambda r: r["envelope"].update(seq=-1), "seq = -1"),
}


@pytest.mark.parametrize("case", sorted(_BAD))
def test_a_bad_message_is_refused_whole(case: str, ch_store: Store) -> None:
    node = f"bad-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1e6)
    good = _decoded("GpuSamples", _packed(_samples(node), [now, now], node))
    rec = _packed(_samples(node), [now, now], node)
    mutate, reason = _BAD[case]
    mutate(rec)
    bad = _decoded("GpuSamples", rec)
    batch = Batch()
    route(batch, good)
    with pytest.raises(InvalidEventError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        route(batch, bad)
    assert batch.rows("gpu_samples") == 2  # the good message's rows, none of the bad one's
    for table, data in batch.arrow().items():
        ch_store.insert_arrow(table, data)
    stored = ch_store.query(
        "SELECT event_id FROM gpu_samples FINAL WHERE node = {n:String}", {"n": node}
    )
    assert {str(r["event_id"]) for r in stored} == {good.record["envelope"]["event_id"]}


def _invalid(rec: dict[str, Any]) -> str:
    """Why the pipeline refuses `rec`: validation, then the router's column checks."""
    decoded = _decoded("GpuSamples", rec)
    with pytest.raises(InvalidEventError) as caught:
        validate(decoded, Limits())
        route(Batch(), decoded)
    return str(caught.value)


def test_validation_applies_the_gpu_sample_rules_to_every_sample() -> None:
    samples = _samples("v")
    now = int(time.time() * 1e6)
    validate(_decoded("GpuSamples", _packed(samples, [now, now], "v")), Limits())
    nan_is_null = _packed(samples, [now, now], "v", **_column("power_w", "d", math.nan, 1.0))
    validate(_decoded("GpuSamples", nan_is_null), Limits())

    minus_inf = _column("power_limit_w", "d", 700.0, -math.inf)
    assert "power_limit_w is -inf" in _invalid(_packed(samples, [now, now], "v", **minus_inf))
    assert "time_us 5 below" in _invalid(_packed(samples, [now, 5], "v"))  # 1970
    years = now + 3 * 365 * 86_400_000_000
    assert "beyond the allowed clock skew" in _invalid(_packed(samples, [now, years], "v"))
    long = "x" * 70_000
    for key, at in (("gpu_uuid", 0), ("name", 1), ("mig_parent_uuid", 1)):
        oversized = _packed(samples, [now, now], "v")
        oversized["devices"][at][key] = long
        assert f"devices.{at}.{key} longer than 65536 bytes" in _invalid(oversized)
    with_run = [{**samples[0], "processes": [{"pid": 1, "run_id": long}]}, samples[1]]
    assert "runs.0 longer" in _invalid(_packed(with_run, [now, now], "v"))
    short = _packed(samples, [now, now], "v", power_w=b"\x00" * 8)
    assert "power_w holds 8 bytes" in _invalid(short)  # malformed: refused, never a crash
