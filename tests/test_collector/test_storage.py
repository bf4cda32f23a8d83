"""Storage for the data's life: rollups that outlive raw samples, raw-sample TTL."""

from __future__ import annotations

import uuid

from collector.migrate import RAW_HARDWARE_TABLES, apply_retention
from collector.router import Batch, route
from collector.store import Store
from schemas import decode, default_registry, encode
from tests.samples import record

MINUTE_US = 60_000_000


def test_gpu_samples_roll_up_per_minute(ch_store: Store) -> None:
    reg = default_registry()
    node = f"roll-{uuid.uuid4().hex[:8]}"
    start = (1_790_000_000_000_000 // MINUTE_US) * MINUTE_US  # a minute boundary in 2026
    batch = Batch()
    for i in range(90):  # 60 samples in the first minute, 30 in the second
        rec = record("GpuSample", "r1")
        rec["envelope"].update(node=node, time_us=start + i * 1_000_000, seq=i)
        rec.update(utilization_gpu=i % 100, power_w=100.0 + i, temperature_c=40 + i % 7)
        route(batch, decode(reg, encode(reg, "GpuSample", rec)))
    for table, data in batch.arrow().items():
        ch_store.insert_arrow(table, data)
    rows = ch_store.query(
        "SELECT minute, sum(samples) AS samples, avgMerge(utilization_gpu_avg) AS util_avg, "
        "max(utilization_gpu_max) AS util_max, avgMerge(power_avg) AS power_avg, "
        "max(power_max) AS power_max, max(temperature_max) AS temp_max "
        "FROM gpu_minutely WHERE node = {n:String} GROUP BY minute ORDER BY minute",
        {"n": node},
    )
    assert [int(r["samples"]) for r in rows] == [60, 30]
    assert rows[0]["util_avg"] == sum(range(60)) / 60 and rows[0]["util_max"] == 59
    assert rows[1]["power_avg"] == sum(100.0 + i for i in range(60, 90)) / 30
    assert rows[1]["power_max"] == 189.0 and rows[0]["temp_max"] == 46


def test_raw_hardware_ttl_follows_the_setting(ch_store: Store) -> None:
    def create(table: str) -> str:
        return str(ch_store.query(f"SHOW CREATE TABLE {table}")[0]["statement"])

    apply_retention(ch_store, 400)
    for table in RAW_HARDWARE_TABLES:
        assert "TTL toDateTime(event_time) + toIntervalDay(400)" in create(table), table
    assert "TTL" not in create("gpu_minutely")  # rollups are kept
    apply_retention(ch_store, 0)
    apply_retention(ch_store, 0)  # no TTL to remove: still fine
    for table in RAW_HARDWARE_TABLES:
        assert "TTL" not in create(table), table
