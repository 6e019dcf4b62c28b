-- Tracking (issue 5): run summaries, lineage, artifacts in use.

-- What sums a run up per metric ("best" in comparisons): min, max or last value.
CREATE TABLE metric_summaries (
    run_id        VARCHAR NOT NULL,
    key           VARCHAR NOT NULL,
    mode          VARCHAR NOT NULL,            -- min | max | last
    PRIMARY KEY (run_id, key)
);

-- Lineage (docs/tracking.md). On jobs: what is known at submit (git commit, dirty
-- flag, diff hash of the workdir's repository). On runs: that, plus what the
-- agent found at start (input hashes, Python, packages) and the GPU use at the end.
ALTER TABLE jobs ADD COLUMN lineage JSON;
ALTER TABLE runs ADD COLUMN lineage JSON;
