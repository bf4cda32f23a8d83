-- traintrail storage, version 5: metric points without per-point copies of
-- their message's identity.
--
-- Until now every point repeated its Metrics message's envelope (event_time,
-- node, stream, seq, prev_hash, schema_fp): 7 of 13 columns identical across
-- the up to 10,000 points of a message, and most of the insert cost. The
-- envelope now lives once per message in metric_batches (with the number of
-- points); a point keeps event_id and idx, which join it to its message, so a
-- verifier still reassembles and re-hashes every message. Rows stored before
-- this migration have their envelopes copied over first. Unlike the others,
-- this migration is not re-runnable once its DROP has run: back up (or stop
-- collectors) before upgrading a store that holds data.
--
-- Statements are separated by a line holding only ';' (see 0001).

CREATE TABLE IF NOT EXISTS metric_batches
(
    run_id      String,
    event_id    UUID,
    points      UInt32,
    event_time  DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node        LowCardinality(String),
    stream      String,
    seq         UInt64 CODEC(Delta, ZSTD(1)),
    prev_hash   String CODEC(ZSTD(1)),
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_id)
;
INSERT INTO metric_batches (run_id, event_id, points, event_time, node, stream, seq, prev_hash, schema_fp)
SELECT run_id, event_id, toUInt32(count()), any(event_time), any(node), any(stream), any(seq),
       any(prev_hash), any(schema_fp)
FROM metrics FINAL
GROUP BY run_id, event_id
;
ALTER TABLE metrics
    DROP COLUMN IF EXISTS event_time,
    DROP COLUMN IF EXISTS node,
    DROP COLUMN IF EXISTS stream,
    DROP COLUMN IF EXISTS seq,
    DROP COLUMN IF EXISTS prev_hash,
    DROP COLUMN IF EXISTS schema_fp,
    DROP COLUMN IF EXISTS ingested_at
