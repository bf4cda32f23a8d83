"""One named, parameterized SQL query per question the CLI and API answer.

Every read uses FINAL so a redelivered event is counted once. Results are
plain JSON-ready dicts: the HTTP API returns them as they are, and the CLI
prints them the same whether it asked the API or ClickHouse directly.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

from collector.store import Store

__all__ = [
    "alerts",
    "dead_letters",
    "jsonable",
    "lineage",
    "list_runs",
    "metric_series",
    "metric_summary",
    "run_points",
    "show_run",
    "watch_history",
]

_LIST_RUNS = """
SELECT r.run_id AS run_id, r.project AS project, r.name AS name, r.user AS user,
       r.host AS host, r.event_time AS started,
       if(f.run_id = '', 'running', f.status) AS status,
       if(f.run_id = '', NULL, f.finished) AS finished
FROM (
    SELECT * FROM runs FINAL
    WHERE NOT attached AND ({project:String} = '' OR project = {project:String})
) AS r
LEFT JOIN (
    SELECT run_id, argMax(status, event_time) AS status, max(event_time) AS finished
    FROM run_finished FINAL GROUP BY run_id
) AS f ON f.run_id = r.run_id
ORDER BY started DESC
LIMIT {limit:UInt32}
"""


def list_runs(store: Store, limit: int = 50, project: str = "") -> list[dict[str, Any]]:
    return _rows(store.query(_LIST_RUNS, {"limit": limit, "project": project}))


_RANKS = """
SELECT rank, host, pid, node, stream, event_time AS started, gpus, container_id
FROM runs FINAL
WHERE run_id = {run_id:String} AND attached
ORDER BY rank, event_time
"""


def show_run(store: Store, run_id: str) -> dict[str, Any] | None:
    """A run's context (its rank-0 owner's), lifecycle, datasets, checkpoints,
    evaluations, declared events, metric summary, and `ranks`: the other ranks of a
    distributed run, each its host and pid."""
    params = {"run_id": run_id}
    runs = store.query(
        "SELECT * FROM runs FINAL WHERE run_id = {run_id:String} AND NOT attached "
        "ORDER BY event_time LIMIT 1",
        params,
    )
    if not runs:
        return None
    finished = store.query(
        "SELECT status, summary, error, event_time AS finished FROM run_finished FINAL "
        "WHERE run_id = {run_id:String} ORDER BY event_time DESC LIMIT 1",
        params,
    )
    datasets = store.query(
        "SELECT name, version, uri, content_hash, license, preprocessing, path, "
        "event_time AS logged FROM datasets FINAL WHERE run_id = {run_id:String} "
        "ORDER BY event_time",
        params,
    )
    checkpoints = store.query(
        "SELECT path, size_bytes, sha256, step, metrics, event_time AS logged "
        "FROM checkpoints FINAL WHERE run_id = {run_id:String} ORDER BY event_time",
        params,
    )
    evaluations = store.query(
        "SELECT name, dataset, step, metrics, event_time AS logged "
        "FROM evaluations FINAL WHERE run_id = {run_id:String} ORDER BY event_time",
        params,
    )
    events = store.query(
        "SELECT kind, step, attrs, event_time AS logged "
        "FROM run_events FINAL WHERE run_id = {run_id:String} ORDER BY event_time",
        params,
    )
    run = runs[0]
    run["status"] = finished[0]["status"] if finished else "running"
    run["finished"] = finished[0] if finished else None
    run["datasets"] = datasets
    run["checkpoints"] = checkpoints
    run["evaluations"] = evaluations
    run["events"] = events
    run["ranks"] = store.query(_RANKS, params)
    run["metrics"] = metric_summary(store, run_id)
    result = jsonable(run)
    assert isinstance(result, dict)
    return result


_SUMMARY = """
SELECT name, count() AS points, min(step) AS first_step, max(step) AS last_step,
       argMin(value, (step, time)) AS first, argMax(value, (step, time)) AS last,
       minIf(value, isFinite(value)) AS min, maxIf(value, isFinite(value)) AS max,
       countIf(NOT isFinite(value)) AS non_finite
FROM metrics FINAL
WHERE run_id = {run_id:String}
GROUP BY name
ORDER BY name
"""


def metric_summary(store: Store, run_id: str) -> list[dict[str, Any]]:
    return _rows(store.query(_SUMMARY, {"run_id": run_id}))


def metric_series(
    store: Store, run_id: str, name: str, limit: int = 100_000, every: int = 1
) -> list[dict[str, Any]]:
    """Points in step order; `every` > 1 keeps only steps divisible by it."""
    return _rows(
        store.query(
            "SELECT step, time, value FROM metrics FINAL "
            "WHERE run_id = {run_id:String} AND name = {name:String} "
            "AND step % {every:UInt32} = 0 "
            "ORDER BY step, time LIMIT {limit:UInt32}",
            {"run_id": run_id, "name": name, "limit": limit, "every": max(1, every)},
        )
    )


def lineage(store: Store, sha256: str) -> list[dict[str, Any]]:
    """Every run that wrote a checkpoint with this content hash, in full."""
    rows = store.query(
        "SELECT DISTINCT run_id FROM checkpoints FINAL WHERE sha256 = {sha:String}",
        {"sha": sha256.lower()},
    )
    found = []
    for row in rows:
        run = show_run(store, str(row["run_id"]))
        if run is not None:
            found.append(run)
    return found


def dead_letters(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    return _rows(
        store.query(
            "SELECT topic, partition, offset, key, reason, error_type, received_at, "
            "length(raw) AS size_bytes, hex(substring(raw, 1, 32)) AS head_hex "
            "FROM dead_letters FINAL ORDER BY received_at DESC, topic, partition, offset "
            "LIMIT {limit:UInt32}",
            {"limit": limit},
        )
    )


def dead_letters_raw(
    store: Store, limit: int = 100_000, error_type: str = "", topic: str = ""
) -> list[dict[str, Any]]:
    """Dead letters with their raw bytes (base64), oldest first, for replay."""
    return _rows(
        store.query(
            "SELECT topic, partition, offset, key, error_type, base64Encode(raw) AS raw_b64 "
            "FROM dead_letters FINAL "
            "WHERE ({et:String} = '' OR error_type = {et:String}) "
            "AND ({t:String} = '' OR topic = {t:String}) "
            "ORDER BY received_at, topic, partition, offset LIMIT {limit:UInt32}",
            {"et": error_type, "t": topic, "limit": limit},
        )
    )


_ALERTS = """
SELECT event_time AS time, run_id, node, detector, metric, step, value, baseline,
       severity, state, message, event_id
FROM alerts FINAL
WHERE ({run_id:String} = '' OR run_id = {run_id:String})
  AND ({state:String} = '' OR state = {state:String})
ORDER BY event_time DESC
LIMIT {limit:UInt32}
"""


def alerts(
    store: Store, run_id: str = "", state: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    rows = store.query(_ALERTS, {"run_id": run_id, "state": state, "limit": limit}, readonly=True)
    return _rows(rows)


def run_points(store: Store, run_id: str, limit: int = 10_000_000) -> dict[str, list[Any]]:
    """Every point of a run as columns, in step order: what `alerts test` replays."""
    rows = store.query(
        "SELECT name, step, toUnixTimestamp64Micro(time) AS time_us, value FROM metrics FINAL "
        "WHERE run_id = {run_id:String} ORDER BY step, time, idx LIMIT {limit:UInt32}",
        {"run_id": run_id, "limit": limit},
    )
    columns: dict[str, list[Any]] = jsonable(
        {k: [row[k] for row in rows] for k in ("name", "step", "time_us", "value")}
    )
    return columns


_RECENT_POINTS = """
SELECT name, groupArray(step) AS steps, groupArray(value) AS values
FROM (
    SELECT name, step, value FROM metrics FINAL
    WHERE run_id = {run_id:String} AND step < {before:Int64}
    ORDER BY step DESC
    LIMIT {points:UInt32} BY name
)
GROUP BY name
"""

_POINT_COUNTS = """
SELECT name, count() AS n FROM metrics FINAL
WHERE run_id = {run_id:String} AND step < {before:Int64}
GROUP BY name
"""

_OPEN_EPISODES = """
SELECT metric, detector, argMax(state, event_time) AS last_state,
       max(if(state = 'resolved', event_time, NULL)) AS last_resolved
FROM alerts FINAL
WHERE run_id = {run_id:String}
GROUP BY metric, detector
"""


def watch_history(
    store: Store, run_id: str, before_step: int, points: int
) -> tuple[dict[str, tuple[list[int], list[float], int]], list[dict[str, Any]]]:
    """What the detectors of a run need after a restart: each metric's last
    `points` points before `before_step`, oldest first, with how many it has
    in all before that step; and per (metric, detector) its last alert's state."""
    series: dict[str, tuple[list[int], list[float], int]] = {}
    params = {"run_id": run_id, "before": before_step, "points": points}
    totals = {r["name"]: int(r["n"]) for r in store.query(_POINT_COUNTS, params)}
    for row in store.query(_RECENT_POINTS, params):
        pairs = sorted(zip(row["steps"], row["values"], strict=True))
        steps, values = [int(s) for s, _ in pairs], [float(v) for _, v in pairs]
        series[row["name"]] = (steps, values, totals.get(row["name"], len(steps)))
    episodes = store.query(_OPEN_EPISODES, {"run_id": run_id})
    return series, episodes


def _rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [jsonable(row) for row in rows]


def jsonable(value: Any) -> Any:
    """Dates as ISO 8601 UTC, UUIDs as text, NaN/Inf as the strings JSON lacks."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, bytes):
        return value.hex()
    return value
