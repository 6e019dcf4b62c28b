-- Captured serving inputs (docs/drift.md, "Captured inputs and drift"): how far each replica run's
-- capture stream has been written to Parquet under home.capture_dir. The Parquet file of a chunk is
-- named by the offset the chunk starts at, so a replay after a crash rewrites the same file, and the
-- offset moves on here only after that file is in place: every line lands exactly once.
CREATE TABLE capture_offsets (
    run_id        VARCHAR PRIMARY KEY,
    deployment    VARCHAR NOT NULL,
    version       INTEGER NOT NULL,
    replica_id    VARCHAR,
    host          VARCHAR,                     -- where the run's capture.jsonl is (the final read after it ended)
    "offset"      BIGINT NOT NULL DEFAULT 0,   -- bytes of the stream taken (whole lines)
    "rows"        BIGINT NOT NULL DEFAULT 0,   -- rows written to Parquet
    files         BIGINT NOT NULL DEFAULT 0,   -- Parquet files written
    bad_lines     BIGINT NOT NULL DEFAULT 0,   -- lines skipped: not JSON, no inputs, bad ts, too long
    skipping      BOOLEAN NOT NULL DEFAULT false, -- inside a line too long to keep: skip to its end
    done          BOOLEAN NOT NULL DEFAULT false, -- the run ended and its stream was read to the end
    updated_at    TIMESTAMPTZ NOT NULL
);
