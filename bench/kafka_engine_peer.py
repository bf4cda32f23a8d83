"""The peer of the collector bench: ClickHouse's Kafka table engine + a materialized view.

Run by `collector_throughput.py` (d) with whichever Python has a chDB whose
Kafka engine works: the project's chDB 4.4 (ClickHouse 26.9) refuses to
create a Kafka table ("Shutdown was called"), chDB 4.0.2 (ClickHouse 25.8)
and chDB 4.1.8 with chdb-core 26.1.0 run it. Only `chdb` is imported, so a
bare venv will do:

    python3 -m venv .traintrail/peer-venv && .traintrail/peer-venv/bin/pip install chdb==4.0.2

    kafka_engine_peer.py BOOTSTRAP TOPIC POINTS STORE_DIR

The topic must already hold POINTS JSONEachRow lines (many a message). Prints
one JSON line: {"seconds": ..., "rows": ..., "clickhouse": "..."} or {"error": "..."}.
"""

from __future__ import annotations

import json
import sys
import time
import uuid


def main() -> None:
    servers, topic, total, store_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    from chdb import session

    s = session.Session(store_dir)
    version = str(s.query("SELECT version()", "CSV")).strip().strip('"')
    suffix = uuid.uuid4().hex[:8]
    try:
        s.query("CREATE DATABASE IF NOT EXISTS peer ENGINE = Atomic", "CSV")
        s.query(
            f"""CREATE TABLE peer.points_{suffix} (run_id String,
            name LowCardinality(String), step Int64, time DateTime64(6, 'UTC'), value Float64,
            idx UInt32, event_id UUID) ENGINE = ReplacingMergeTree
            ORDER BY (run_id, name, step, event_id, idx)""",
            "CSV",
        )
        s.query(
            f"""CREATE TABLE peer.queue_{suffix} (run_id String, name String,
            step Int64, time Int64, value Float64, idx UInt32, event_id String)
            ENGINE = Kafka SETTINGS kafka_broker_list = '{servers}',
            kafka_topic_list = '{topic}', kafka_group_name = 'peer-{suffix}',
            kafka_format = 'JSONEachRow', kafka_max_block_size = 1048576,
            kafka_poll_max_batch_size = 1048576, kafka_flush_interval_ms = 500""",
            "CSV",
        )
    except Exception as exc:  # the engine may be missing or broken in a build: say so
        print(json.dumps({"error": str(exc).splitlines()[0][:200], "clickhouse": version}))
        return
    t0 = time.perf_counter()
    s.query(
        f"""CREATE MATERIALIZED VIEW peer.mv_{suffix} TO peer.points_{suffix} AS
        SELECT run_id, name, step, fromUnixTimestamp64Micro(time) AS time, value, idx,
               toUUID(event_id) AS event_id FROM peer.queue_{suffix}""",
        "CSV",
    )
    deadline = time.monotonic() + 600
    n = 0
    while n < total:
        if time.monotonic() > deadline:
            print(json.dumps({"error": f"stalled at {n} of {total} rows after 600 s"}))
            return
        time.sleep(0.05)
        n = int(str(s.query(f"SELECT count() FROM peer.points_{suffix}", "CSV")).strip())
    elapsed = time.perf_counter() - t0
    s.query(f"DROP TABLE peer.mv_{suffix}", "CSV")
    s.query(f"DROP TABLE peer.queue_{suffix}", "CSV")
    print(json.dumps({"seconds": elapsed, "rows": n, "clickhouse": version}))


if __name__ == "__main__":
    main()
