-- traintrail storage, version 2: the full GPU field set and GPU events.
--
-- GpuSample v2 adds what NVIDIA's DCGM exporter reports by default (memory
-- temperature, energy, encoder/decoder utilization, PCIe replays, NVLink
-- traffic, framebuffer free, remapped rows) and what auditors need on top
-- (aggregate ECC counts, retired pages, clock-limit violation times), plus the
-- parent of a MIG device. Every new column is Nullable: a v1 message, or a
-- GPU that does not support the field, stores NULL, never a made-up 0.
--
-- Codecs: a gauge changes a little between samples of one GPU (rows are
-- sorted by node, gpu_uuid, time), so small integers get T64 (drops the
-- unused high bits) and counters that only grow get Delta; ZSTD after both.
--
-- Statements are separated by a line holding only ';' (see 0001).

ALTER TABLE gpu_samples
    ADD COLUMN IF NOT EXISTS mig_parent_uuid              LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS mig_gpu_instance_id          Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS mig_compute_instance_id      Nullable(UInt32),
    ADD COLUMN IF NOT EXISTS memory_free_bytes            Nullable(UInt64) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS memory_temperature_c         Nullable(Int16) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS fan_speed_percent            Nullable(UInt8) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS energy_mj                    Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS utilization_encoder          Nullable(UInt8) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS utilization_decoder          Nullable(UInt8) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS pcie_replay_count            Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS nvlink_tx_kib                Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS nvlink_rx_kib                Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS ecc_corrected_aggregate      Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS ecc_uncorrected_aggregate    Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS retired_pages_sbe            Nullable(UInt64) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS retired_pages_dbe            Nullable(UInt64) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS retired_pages_pending        Nullable(Bool),
    ADD COLUMN IF NOT EXISTS remapped_rows_correctable    Nullable(UInt32) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS remapped_rows_uncorrectable  Nullable(UInt32) CODEC(T64, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS remapped_rows_pending        Nullable(Bool),
    ADD COLUMN IF NOT EXISTS remapped_rows_failure        Nullable(Bool),
    ADD COLUMN IF NOT EXISTS violation_power_us           Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS violation_thermal_us         Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS violation_sync_boost_us      Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS violation_board_limit_us     Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS violation_low_utilization_us Nullable(UInt64) CODEC(Delta, ZSTD(1)),
    ADD COLUMN IF NOT EXISTS violation_reliability_us     Nullable(UInt64) CODEC(Delta, ZSTD(1))
;
-- XID and ECC errors the moment NVML reports them, and devices lost and back.
-- Sorted like gpu_samples, so a GPU's events sit beside its samples; the
-- bloom filter answers "every XID of run R" without a full scan.
CREATE TABLE IF NOT EXISTS gpu_events
(
    gpu_uuid    LowCardinality(String),
    gpu_index   UInt8,
    kind        LowCardinality(String),
    code        Nullable(Int64),
    detail      Map(String, String),
    run_ids     Array(String),
    event_id    UUID,
    event_time  DateTime64(6, 'UTC'),
    node        LowCardinality(String),
    stream      LowCardinality(String),
    seq         UInt64,
    prev_hash   String,
    schema_fp   LowCardinality(String),
    ingested_at DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX run_ids_bf run_ids TYPE bloom_filter(0.01) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(event_time)
ORDER BY (node, gpu_uuid, event_time, event_id)
