-- traintrail storage, version 4: evaluations and free-form run events
-- (EvalLogged v1, RunEvent v1), from the SDK's log_eval and log_event.
--
-- Same identity columns and Replacing engine as every event table (see
-- 0001): a redelivered message replaces its own row.
--
-- Statements are separated by a line holding only ';' (see 0001).

CREATE TABLE IF NOT EXISTS evaluations
(
    run_id      String,
    name        String,
    dataset     Nullable(String),
    step        Nullable(Int64),
    metrics     Map(String, Float64),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node        LowCardinality(String),
    stream      String,
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_id)
;
CREATE TABLE IF NOT EXISTS run_events
(
    run_id      String,
    kind        LowCardinality(String),
    step        Nullable(Int64),
    attrs       Map(String, String),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node        LowCardinality(String),
    stream      String,
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_id)
