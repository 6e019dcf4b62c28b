-- Per-job environments (issue 15; docs/environments.md).
-- A job with an environment: block is 'preparing' between 'dispatched' and 'running' (resolving, shipping
-- wheels, the node building); since when, for the elapsed time jobs list/show and the TUI show.
ALTER TABLE jobs ADD COLUMN preparing_since TIMESTAMPTZ;
-- The environment a run ran in: its identity (core/environments/identity.py) ...
ALTER TABLE runs ADD COLUMN env_hash VARCHAR;
-- ... and its pinned packages, one row each: runs compare shows which differ, --where filters on env.<name>.
CREATE TABLE run_packages (
    run_id        VARCHAR NOT NULL,
    name          VARCHAR NOT NULL,            -- normalised (PEP 503)
    version       VARCHAR NOT NULL,
    sha256        VARCHAR,                     -- of the wheel installed
    PRIMARY KEY (run_id, name)
);
