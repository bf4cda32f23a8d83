-- traintrail storage, version 3: the full RunStarted context (RunStarted v2).
--
-- The code (dirty-diff hash, changed and untracked files, the entry script's
-- hash), the environment (kernel, distro, container, NVIDIA driver, CUDA,
-- cuDNN, GPU models, framework versions, the redacted environment variables),
-- reproducibility (declared seeds, determinism flags) and the scheduler
-- context. A distributed run has one row per rank: rank 0 owns the run
-- (attached = false); every other rank adds a row with attached = true and
-- its own host, pid and GPUs. Queries that list runs read the owner's row.
--
-- Rows written before this migration (and v1 messages) get the defaults:
-- NULL where a value is unknown, empty arrays/maps, rank 0 of 1, not attached.
--
-- Statements are separated by a line holding only ';' (see 0001).

ALTER TABLE runs
    ADD COLUMN IF NOT EXISTS git_diff_sha256     Nullable(String),
    ADD COLUMN IF NOT EXISTS git_changed_files   Array(String),
    ADD COLUMN IF NOT EXISTS git_untracked_files Array(String),
    ADD COLUMN IF NOT EXISTS script_path         Nullable(String),
    ADD COLUMN IF NOT EXISTS script_sha256       Nullable(String),
    ADD COLUMN IF NOT EXISTS kernel              LowCardinality(String),
    ADD COLUMN IF NOT EXISTS distro              LowCardinality(String),
    ADD COLUMN IF NOT EXISTS container_image     LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS container_id        Nullable(String),
    ADD COLUMN IF NOT EXISTS cuda_driver         LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS cuda_runtime        LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS cudnn               LowCardinality(Nullable(String)),
    ADD COLUMN IF NOT EXISTS gpus                Array(LowCardinality(String)),
    ADD COLUMN IF NOT EXISTS frameworks          Map(LowCardinality(String), String),
    ADD COLUMN IF NOT EXISTS seeds               Map(String, Int64),
    ADD COLUMN IF NOT EXISTS deterministic       Map(String, String),
    ADD COLUMN IF NOT EXISTS env                 Map(String, String) CODEC(ZSTD(3)),
    ADD COLUMN IF NOT EXISTS scheduler           Map(LowCardinality(String), String),
    ADD COLUMN IF NOT EXISTS rank                UInt32 DEFAULT 0,
    ADD COLUMN IF NOT EXISTS world_size          UInt32 DEFAULT 1,
    ADD COLUMN IF NOT EXISTS attached            Bool DEFAULT false
