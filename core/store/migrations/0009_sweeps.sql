-- Sweeps (docs/sweeps.md): one row per sweep, one per child job. Tables of their own (no column on
-- jobs or runs), so this migration stands whatever other migrations do; the runs filter's `sweep`
-- field and `sweeps show` reach a run's sweep through its job.
CREATE TABLE sweeps (
    sweep_id      VARCHAR PRIMARY KEY,
    name          VARCHAR NOT NULL UNIQUE,     -- the spec's name (or --name); children are NAME-0, NAME-1, ...
    project       VARCHAR NOT NULL,
    owner         VARCHAR NOT NULL,            -- the OS user behind the socket, as jobs.owner
    spec          JSON NOT NULL,               -- the spec as submitted, sweep: block included
    spec_hash     VARCHAR NOT NULL,
    spec_path     VARCHAR,
    points        INTEGER NOT NULL,
    max_parallel  INTEGER,                     -- children dispatched or running at once; NULL: no limit
    objective_metric VARCHAR,                  -- what "best" means: this metric's min or max per run
    objective_mode   VARCHAR,
    submit_key    VARCHAR,                     -- the client's idempotency key; (owner, submit_key) names one sweep
    answer        JSON,                        -- what the submit answered, given again to a retry with the key
    created_at    TIMESTAMPTZ NOT NULL,
    cancelled_by  VARCHAR
);

CREATE TABLE sweep_jobs (
    job_id        VARCHAR PRIMARY KEY,
    sweep_id      VARCHAR NOT NULL,
    idx           INTEGER NOT NULL,            -- the child's number: its name is NAME-idx
    point         JSON NOT NULL                -- {spec path: value} this child sets
);
CREATE INDEX sweep_jobs_sweep ON sweep_jobs (sweep_id);
