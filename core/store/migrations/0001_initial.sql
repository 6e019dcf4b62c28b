-- mlfleet schema, version 1.
-- Times are TIMESTAMPTZ (UTC); JSON columns hold what varies per row.

CREATE TABLE hosts (
    name          VARCHAR PRIMARY KEY,
    kind          VARCHAR NOT NULL,            -- local | ssh
    address       VARCHAR,
    labels        JSON,
    state         VARCHAR NOT NULL,            -- connecting | up | unreachable | removed
    agent_version VARCHAR,
    info          JSON,                        -- cpu_count, memory_total, platform, ...
    first_seen    TIMESTAMPTZ,
    last_seen     TIMESTAMPTZ
);

-- Host telemetry, one row per host per downsampling window (see docs/store.md).
CREATE TABLE telemetry (
    host          VARCHAR NOT NULL,
    ts            TIMESTAMPTZ NOT NULL,
    window_s      INTEGER NOT NULL,
    cpu_percent   DOUBLE,
    load1         DOUBLE,
    memory_used   BIGINT,
    memory_total  BIGINT,
    swap_used     BIGINT,
    disk_used     BIGINT,
    disk_total    BIGINT,
    net_rx_bps    DOUBLE,
    net_tx_bps    DOUBLE,
    gpu_state     VARCHAR
);

CREATE TABLE gpu_telemetry (
    host          VARCHAR NOT NULL,
    ts            TIMESTAMPTZ NOT NULL,
    window_s      INTEGER NOT NULL,
    gpu_index     INTEGER NOT NULL,
    uuid          VARCHAR,
    name          VARCHAR,
    utilization   DOUBLE,
    memory_used   BIGINT,
    memory_total  BIGINT,
    temperature   DOUBLE,
    power_draw    DOUBLE,
    processes     INTEGER
);

CREATE TABLE jobs (
    job_id        VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL,
    project       VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,
    spec          JSON NOT NULL,
    spec_hash     VARCHAR NOT NULL,
    spec_path     VARCHAR,
    priority      INTEGER NOT NULL,
    state         VARCHAR NOT NULL,
    reason        VARCHAR,                     -- why pending / why it ended, in words
    attempt       INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    host          VARCHAR,
    gpus          INTEGER[],
    run_id        VARCHAR,                     -- the current (last) attempt's run
    cancel_requested_by VARCHAR,               -- set until the agent has stopped the run
    submitted_at  TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    exit_code     INTEGER
);

CREATE SEQUENCE job_events_seq;
CREATE TABLE job_events (
    id            BIGINT DEFAULT nextval('job_events_seq'),
    job_id        VARCHAR NOT NULL,
    ts            TIMESTAMPTZ NOT NULL,
    state         VARCHAR NOT NULL,
    reason        VARCHAR,
    host          VARCHAR,
    run_id        VARCHAR
);

CREATE TABLE runs (
    run_id        VARCHAR PRIMARY KEY,
    job_id        VARCHAR NOT NULL,
    attempt       INTEGER NOT NULL,
    project       VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,
    host          VARCHAR NOT NULL,
    gpus          INTEGER[],
    state         VARCHAR NOT NULL,
    spec_hash     VARCHAR,
    workdir       VARCHAR,
    command       JSON,
    created_at    TIMESTAMPTZ NOT NULL,
    started_at    TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    exit_code     INTEGER,
    signal        INTEGER,
    end_reason    VARCHAR
);

CREATE TABLE params (
    run_id        VARCHAR NOT NULL,
    key           VARCHAR NOT NULL,
    value         JSON,                        -- as logged
    value_text    VARCHAR,                     -- for display and string filters
    value_num     DOUBLE,                      -- for numeric filters; NULL when not a number
    PRIMARY KEY (run_id, key)
);

CREATE TABLE tags (
    run_id        VARCHAR NOT NULL,
    key           VARCHAR NOT NULL,
    value         VARCHAR,
    PRIMARY KEY (run_id, key)
);

-- Metric points. No index or key on purpose: points arrive in per-run batches,
-- so DuckDB's row-group zone maps on run_id/key already prune comparisons;
-- exactly-once is kept by ingest_offsets, committed with each batch.
CREATE TABLE metrics (
    run_id        VARCHAR NOT NULL,
    key           VARCHAR NOT NULL,
    step          BIGINT,
    value         DOUBLE,
    ts            TIMESTAMPTZ,
    seq           BIGINT NOT NULL              -- line number in the run's metrics stream
);

CREATE TABLE ingest_offsets (
    run_id        VARCHAR NOT NULL,
    stream        VARCHAR NOT NULL,
    byte_offset   BIGINT NOT NULL,
    lines         BIGINT NOT NULL,
    bad_lines     BIGINT NOT NULL DEFAULT 0,
    complete      BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, stream)
);

CREATE TABLE artifacts (
    run_id        VARCHAR NOT NULL,
    path          VARCHAR NOT NULL,
    sha256        VARCHAR,
    size          BIGINT,
    created_at    TIMESTAMPTZ,
    PRIMARY KEY (run_id, path)
);

CREATE SEQUENCE audit_seq;
CREATE TABLE audit (
    id            BIGINT DEFAULT nextval('audit_seq') PRIMARY KEY,
    ts            TIMESTAMPTZ NOT NULL,
    actor         VARCHAR NOT NULL,            -- OS user, from the socket's peer credentials
    action        VARCHAR NOT NULL,
    target        VARCHAR,
    detail        JSON
);
