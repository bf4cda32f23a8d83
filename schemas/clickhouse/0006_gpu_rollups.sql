-- traintrail storage, version 6: per-minute GPU and host rollups that outlive
-- the raw samples.
--
-- Raw 1 Hz samples are what an incident needs; a year later an auditor asks
-- "what did run R's GPUs do": per-minute min/avg/max answer that at 1/60 the
-- size. Materialized views fill the rollups on every insert into the raw
-- tables, and raw rows expire after `[storage] raw_hardware_ttl_days` (set by
-- the collector at start, not here: it is configuration). Rollups keep no TTL.
--
-- Redelivered batches (a crash before commit) insert raw rows twice; the raw
-- tables hide that with FINAL, but a view sees both inserts. max/min and the
-- counters' max are unaffected; `samples` and the averages can count such a
-- batch twice. Answers needing exact counts read the raw table while it lives.
--
-- Statements are separated by a line holding only ';' (see 0001).

CREATE TABLE IF NOT EXISTS gpu_minutely
(
    minute              DateTime('UTC'),
    node                LowCardinality(String),
    gpu_uuid            LowCardinality(String),
    gpu_name            SimpleAggregateFunction(any, LowCardinality(String)),
    samples             SimpleAggregateFunction(sum, UInt64),
    utilization_gpu_avg AggregateFunction(avg, Nullable(UInt8)),
    utilization_gpu_max SimpleAggregateFunction(max, Nullable(UInt8)),
    memory_used_max     SimpleAggregateFunction(max, Nullable(UInt64)),
    temperature_max     SimpleAggregateFunction(max, Nullable(Int16)),
    power_avg           AggregateFunction(avg, Nullable(Float64)),
    power_max           SimpleAggregateFunction(max, Nullable(Float64)),
    throttle_reasons    SimpleAggregateFunction(groupBitOr, Nullable(UInt64)),
    ecc_uncorrected_max SimpleAggregateFunction(max, Nullable(UInt64)),
    energy_mj_max       SimpleAggregateFunction(max, Nullable(UInt64)),
    run_ids             SimpleAggregateFunction(groupUniqArrayArray, Array(String))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (node, gpu_uuid, minute)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS gpu_minutely_mv TO gpu_minutely AS
SELECT
    toStartOfMinute(event_time)       AS minute,
    node,
    gpu_uuid,
    any(gpu_name)                     AS gpu_name,
    count()                           AS samples,
    avgState(utilization_gpu)         AS utilization_gpu_avg,
    max(utilization_gpu)              AS utilization_gpu_max,
    max(memory_used_bytes)            AS memory_used_max,
    max(temperature_c)                AS temperature_max,
    avgState(power_w)                 AS power_avg,
    max(power_w)                      AS power_max,
    groupBitOr(throttle_reasons)      AS throttle_reasons,
    max(ecc_uncorrected)              AS ecc_uncorrected_max,
    max(energy_mj)                    AS energy_mj_max,
    groupUniqArrayArray(arrayFilter(r -> r != '', process_run_id)) AS run_ids
FROM gpu_samples
GROUP BY minute, node, gpu_uuid
;
CREATE TABLE IF NOT EXISTS host_minutely
(
    minute          DateTime('UTC'),
    node            LowCardinality(String),
    samples         SimpleAggregateFunction(sum, UInt64),
    cpu_percent_avg AggregateFunction(avg, Float64),
    cpu_percent_max SimpleAggregateFunction(max, Float64),
    load1_max       SimpleAggregateFunction(max, Float64),
    memory_used_max SimpleAggregateFunction(max, UInt64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (node, minute)
;
CREATE MATERIALIZED VIEW IF NOT EXISTS host_minutely_mv TO host_minutely AS
SELECT
    toStartOfMinute(event_time) AS minute,
    node,
    count()                     AS samples,
    avgState(cpu_percent)       AS cpu_percent_avg,
    max(cpu_percent)            AS cpu_percent_max,
    max(load1)                  AS load1_max,
    max(memory_used_bytes)      AS memory_used_max
FROM host_samples
GROUP BY minute, node
