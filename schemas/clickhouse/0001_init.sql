-- traintrail storage, version 1.
--
-- Every table keeps the identity of the event a row came from (event_id,
-- stream, seq, prev_hash, schema_fp, and idx for a metric point) so a verifier
-- can reassemble and re-hash each event. Redelivery is expected (Kafka is
-- at-least-once into ClickHouse): every table is a ReplacingMergeTree whose
-- sorting key ends in the event identity, and every query reads it with FINAL,
-- so a row delivered twice is seen once. Partitions are by month of the
-- event's own time, so the two copies of a redelivered row always share a
-- partition and FINAL can collapse them.
--
-- Statements are separated by a line holding only ';' so the runner can split
-- them without parsing SQL.

CREATE TABLE IF NOT EXISTS runs
(
    run_id                String,
    project               LowCardinality(String),
    name                  String,
    user                  LowCardinality(String),
    host                  LowCardinality(String),
    pid                   UInt32,
    command               Array(String),
    cwd                   String,
    config                Map(String, String),
    git_commit            Nullable(String),
    git_branch            Nullable(String),
    git_dirty             Nullable(Bool),
    git_remote            Nullable(String),
    python_version        LowCardinality(String),
    python_implementation LowCardinality(String),
    python_executable     String,
    os                    LowCardinality(String),
    packages              Map(String, String) CODEC(ZSTD(3)),
    event_id              UUID,
    event_time            DateTime64(6, 'UTC'),
    node                  LowCardinality(String),
    stream                String,
    seq                   UInt64,
    prev_hash             String,
    schema_fp             LowCardinality(String),
    ingested_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_id)
;
CREATE TABLE IF NOT EXISTS run_finished
(
    run_id      String,
    status      LowCardinality(String),
    summary     Map(String, Float64),
    error       Nullable(String),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC'),
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
-- One row per point. Sorted for "metric M of run R over steps"; the codecs
-- suit each column: steps and times grow steadily (Delta/DoubleDelta),
-- values of one series are close to each other (Gorilla).
CREATE TABLE IF NOT EXISTS metrics
(
    run_id      String,
    name        LowCardinality(String),
    step        Int64 CODEC(Delta, ZSTD(1)),
    time        DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    value       Float64 CODEC(Gorilla, ZSTD(1)),
    idx         UInt32 CODEC(Delta, ZSTD(1)),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node        LowCardinality(String),
    stream      String,
    seq         UInt64 CODEC(Delta, ZSTD(1)),
    prev_hash   String CODEC(ZSTD(1)),
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(DoubleDelta, ZSTD(1))
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(time)
ORDER BY (run_id, name, step, event_id, idx)
;
-- Sorted by content hash: lineage starts from a model file's sha256.
CREATE TABLE IF NOT EXISTS checkpoints
(
    run_id      String,
    path        String,
    size_bytes  UInt64,
    sha256      String,
    step        Nullable(Int64),
    metrics     Map(String, Float64),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC'),
    node        LowCardinality(String),
    stream      String,
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (sha256, event_id)
;
CREATE TABLE IF NOT EXISTS datasets
(
    run_id        String,
    name          String,
    version       Nullable(String),
    uri           Nullable(String),
    content_hash  Nullable(String),
    license       Nullable(String),
    preprocessing Array(String),
    path          Nullable(String),
    event_id      UUID,
    event_time    DateTime64(6, 'UTC'),
    node          LowCardinality(String),
    stream        String,
    seq           UInt64,
    prev_hash     String,
    schema_fp     LowCardinality(String),
    ingested_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_id)
;
CREATE TABLE IF NOT EXISTS gpu_samples
(
    gpu_uuid             LowCardinality(String),
    gpu_index            UInt8,
    gpu_name             LowCardinality(String),
    utilization_gpu      Nullable(UInt8),
    utilization_memory   Nullable(UInt8),
    memory_used_bytes    Nullable(UInt64) CODEC(T64, ZSTD(1)),
    memory_total_bytes   Nullable(UInt64),
    temperature_c        Nullable(Int16),
    power_w              Nullable(Float64) CODEC(Gorilla, ZSTD(1)),
    power_limit_w        Nullable(Float64),
    sm_clock_mhz         Nullable(UInt32),
    mem_clock_mhz        Nullable(UInt32),
    pstate               Nullable(UInt8),
    throttle_reasons     Nullable(UInt64),
    ecc_corrected        Nullable(UInt64),
    ecc_uncorrected      Nullable(UInt64),
    retired_pages        Nullable(UInt64),
    pcie_tx_kbps         Nullable(UInt64),
    pcie_rx_kbps         Nullable(UInt64),
    process_pid          Array(UInt32),
    process_memory_bytes Array(Nullable(UInt64)),
    process_run_id       Array(String),
    event_id             UUID,
    event_time           DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node                 LowCardinality(String),
    stream               LowCardinality(String),
    seq                  UInt64 CODEC(Delta, ZSTD(1)),
    prev_hash            String,
    schema_fp            LowCardinality(String),
    ingested_at          DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (node, gpu_uuid, event_time, event_id)
;
CREATE TABLE IF NOT EXISTS host_samples
(
    cpu_percent        Float64 CODEC(Gorilla, ZSTD(1)),
    load1              Float64 CODEC(Gorilla, ZSTD(1)),
    load5              Float64 CODEC(Gorilla, ZSTD(1)),
    load15             Float64 CODEC(Gorilla, ZSTD(1)),
    memory_used_bytes  UInt64 CODEC(T64, ZSTD(1)),
    memory_total_bytes UInt64,
    disk_read_bytes    UInt64 CODEC(Delta, ZSTD(1)),
    disk_write_bytes   UInt64 CODEC(Delta, ZSTD(1)),
    net_rx_bytes       UInt64 CODEC(Delta, ZSTD(1)),
    net_tx_bytes       UInt64 CODEC(Delta, ZSTD(1)),
    process_pid        Array(UInt32),
    process_run_id     Array(String),
    process_cpu        Array(Float64),
    process_rss_bytes  Array(UInt64),
    event_id           UUID,
    event_time         DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    node               LowCardinality(String),
    stream             LowCardinality(String),
    seq                UInt64 CODEC(Delta, ZSTD(1)),
    prev_hash          String,
    schema_fp          LowCardinality(String),
    ingested_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (node, event_time, event_id)
;
-- Sorted by path: "who touched this dataset/checkpoint/code in a window".
CREATE TABLE IF NOT EXISTS access_log
(
    source      LowCardinality(String),
    action      LowCardinality(String),
    path        String,
    user        LowCardinality(String),
    uid         Nullable(Int64),
    pid         Nullable(Int64),
    exe         String,
    success     Nullable(Bool),
    run_id      String,
    detail      Map(String, String),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC'),
    node        LowCardinality(String),
    stream      LowCardinality(String),
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (path, event_time, event_id)
;
CREATE TABLE IF NOT EXISTS alerts
(
    run_id      String,
    detector    LowCardinality(String),
    metric      LowCardinality(String),
    step        Nullable(Int64),
    value       Nullable(Float64),
    baseline    Nullable(Float64),
    severity    LowCardinality(String),
    state       LowCardinality(String),
    message     String,
    params      Map(String, String),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC'),
    node        LowCardinality(String),
    stream      LowCardinality(String),
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (run_id, event_time, event_id)
;
-- Messages that could not be stored, with the raw bytes and why. Keyed by
-- source position, so a redelivered bad message is one dead letter (no
-- partitioning by arrival time: both copies must meet in one partition).
CREATE TABLE IF NOT EXISTS dead_letters
(
    topic       LowCardinality(String),
    partition   Int32,
    offset      Int64,
    key         String,
    raw         String CODEC(ZSTD(3)),
    reason      String,
    error_type  LowCardinality(String),
    received_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset)
