-- Pipelines (issue 17; docs/pipelines.md): runs of a pipeline, the run of each of its steps with the
-- step's content key and the key's parts, the outputs each step wrote (content-hashed when it ended),
-- and every gate's decision with the runs it compared. Tables of their own (no column on jobs or runs),
-- so this migration stands whatever other migrations do. Step keys live here and survive restarts: a
-- new run reuses the newest succeeded step run of the same project with the same key
-- (core/pipelines/records.py, cached_step), after its outputs are checked to still be there.
CREATE TABLE pipeline_runs (
    run_id      VARCHAR PRIMARY KEY,        -- p + 12 hex
    name        VARCHAR NOT NULL,           -- the pipeline's name
    project     VARCHAR NOT NULL,
    source      VARCHAR,                    -- the file it was read from, for messages
    spec        JSON NOT NULL,              -- the resolved pipeline (params filled in), as planned
    params      JSON NOT NULL,              -- the params after --set
    state       VARCHAR NOT NULL,           -- running | succeeded | failed | cancelled
    trigger     VARCHAR NOT NULL,           -- manual | schedule | data | drift | after
    cause       JSON,                       -- what fired it: the cron time, the data hashes, the drift report ...
    actor       VARCHAR NOT NULL,           -- the OS user (or the controller, for a trigger)
    reason      VARCHAR,                    -- why it ended as it did
    created_at  TIMESTAMPTZ NOT NULL,
    ended_at    TIMESTAMPTZ
);
CREATE INDEX pipeline_runs_name ON pipeline_runs (project, name);

-- One row per step of a run, made queued when the run is recorded; key and key_parts are NULL while
-- the step waits for an upstream step whose outputs its key is made of. No index on key: an ART index
-- costs every update, and the table is scanned for a key in well under a millisecond per thousand runs.
CREATE TABLE pipeline_steps (
    run_id      VARCHAR NOT NULL,
    step        VARCHAR NOT NULL,
    position    INTEGER NOT NULL,           -- its place in the file, so a run's steps list in the file's order
    kind        VARCHAR NOT NULL,           -- job | drift | gate | register | promote
    state       VARCHAR NOT NULL,           -- queued | running | cached | succeeded | failed | skipped | gate-failed | cancelled
    key         VARCHAR,                    -- sha256 of key_parts (core/pipelines/keys.py)
    key_parts   JSON,                       -- KeyParts: spec, params, env, code, inputs, upstream
    forced      BOOLEAN NOT NULL DEFAULT false,
    job_id      VARCHAR,                    -- the job that ran it (job steps)
    source_run  VARCHAR,                    -- cached: the pipeline run whose outputs it reused
    reason      VARCHAR,                    -- why it ran, was cached, skipped or failed (one sentence)
    created_at  TIMESTAMPTZ NOT NULL,
    started_at  TIMESTAMPTZ,
    ended_at    TIMESTAMPTZ,
    PRIMARY KEY (run_id, step)
);

-- What a step wrote, hashed when it ended (core/pipelines/outputs.py). A cached step gets a copy of the
-- rows it reused, so every run lists the outputs its steps stand on.
CREATE TABLE pipeline_step_outputs (
    run_id      VARCHAR NOT NULL,
    step        VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,           -- the output's name (outputs: {data: out/data.csv} -> data)
    path        VARCHAR NOT NULL,           -- as declared, relative to the step's workdir
    sha256      VARCHAR NOT NULL,           -- a file's bytes, or a folder's canonical hash
    size        BIGINT NOT NULL,
    files       INTEGER,                    -- NULL: a file; a folder's file count
    host        VARCHAR,                    -- the host whose workdir it was written in
    stored      VARCHAR,                    -- where the controller keeps the bytes (NULL: only on the host)
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, step, name)
);

-- A gate's decision (core/pipelines/gates.py, GateDecision) and what it compared, one per gate step run.
CREATE TABLE pipeline_gate_decisions (
    run_id           VARCHAR NOT NULL,
    step             VARCHAR NOT NULL,
    passed           BOOLEAN NOT NULL,
    challenger_run   VARCHAR,                -- the tracking run judged
    champion         VARCHAR NOT NULL,       -- NAME@ALIAS as written
    champion_version INTEGER,                -- NULL: the alias pointed at no version yet
    champion_run     VARCHAR,
    decision         JSON NOT NULL,          -- the whole GateDecision: each requirement's numbers and verdict
    decided_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, step)
);
