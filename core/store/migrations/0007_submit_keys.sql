-- Idempotent submit (docs/cli.md, "Submitting twice is safe"): the key a client sends with a
-- submit, recorded in the job's own transaction. A retry with the same key gets this job back
-- (same id, nothing new recorded or run), across controller restarts; the same key with another
-- spec is refused. Keys are per OS user: another user's key never names your job.
-- A table of its own (no column on jobs), so this migration stands whatever other migrations do.
CREATE TABLE submit_keys (
    owner         VARCHAR NOT NULL,            -- the OS user behind the socket, as jobs.owner
    key           VARCHAR NOT NULL,            -- the client's idempotency key (mlfleet submit --key)
    job_id        VARCHAR NOT NULL,
    spec_hash     VARCHAR NOT NULL,            -- the first submit's spec; another spec with this key is refused
    answer        JSON NOT NULL,               -- what the first submit answered, given again to a retry
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (owner, key)
);
