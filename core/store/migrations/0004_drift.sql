-- Data drift: saved reference profiles, reports and their per-column rows (docs/drift.md).
CREATE TABLE drift_profiles (
    profile_id    VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL,
    actor         VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,            -- what the user named (path or glob)
    files         JSON NOT NULL,               -- the files it matched
    format        VARCHAR NOT NULL,            -- parquet | csv | json
    rows          BIGINT NOT NULL,
    values_dir    VARCHAR NOT NULL,            -- folder of per-column value-count Parquet files
    columns       JSON NOT NULL                -- per column: type, values_file, summary (edges, counts, null rate, ...)
);

CREATE TABLE drift_reports (
    report_id     VARCHAR PRIMARY KEY,
    created_at    TIMESTAMPTZ NOT NULL,
    actor         VARCHAR NOT NULL,
    reference     VARCHAR NOT NULL,
    current       VARCHAR NOT NULL,
    profile       VARCHAR,                     -- the profile name when the reference was one
    rows_reference BIGINT,
    rows_current  BIGINT,
    drifted       BOOLEAN NOT NULL,
    drifted_columns INTEGER NOT NULL,
    column_count  INTEGER NOT NULL,
    compared_columns INTEGER NOT NULL,
    drift_share   DOUBLE NOT NULL,             -- drifted / compared columns
    drift_share_threshold DOUBLE NOT NULL,
    multiple_testing VARCHAR NOT NULL,
    run_id        VARCHAR,                     -- linked run, if any
    deployment    VARCHAR,                     -- linked deployment name, if any
    elapsed_s     DOUBLE,
    config        JSON,
    notes         JSON,
    trigger_job_id VARCHAR                     -- the retraining job submitted for this report
);

CREATE TABLE drift_columns (
    report_id     VARCHAR NOT NULL,
    position      INTEGER NOT NULL,
    column_name   VARCHAR NOT NULL,
    kind          VARCHAR,                     -- numeric | categorical (null when types clash)
    test          VARCHAR NOT NULL,            -- the deciding statistic
    statistic     DOUBLE,
    threshold     DOUBLE,
    drifted       BOOLEAN,                     -- null: could not be compared
    ref_type      VARCHAR,
    cur_type      VARCHAR,
    stats         JSON NOT NULL,
    notes         JSON NOT NULL,
    histogram     JSON,
    PRIMARY KEY (report_id, position)
);
