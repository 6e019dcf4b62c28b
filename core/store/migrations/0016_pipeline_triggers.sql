-- Pipeline triggers (issue 17; docs/pipelines.md, "Triggers"): the armed definitions and every firing.
-- A run of a pipeline file with `on:` arms (or re-arms) its definition: one per (project, name), holding
-- the resolved pipeline as armed (what a firing runs) and the trigger state (core/pipelines/triggers.py
-- TriggerState: the last due time of each schedule, the data baseline, how far drift reports and
-- upstream runs were read, the one firing waiting). The state lives here, not in memory, so a controller
-- restart neither re-fires a schedule nor forgets a data baseline.
CREATE TABLE pipeline_definitions (
    project     VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    spec        JSON NOT NULL,              -- the resolved Pipeline (params filled in), as armed
    source      VARCHAR,                    -- the file it was read from
    armed_by    VARCHAR NOT NULL,           -- the OS user whose run armed it
    armed_at    TIMESTAMPTZ NOT NULL,       -- the last arming (a re-arm moves it; the state keeps the first)
    state       JSON NOT NULL,              -- TriggerState
    PRIMARY KEY (project, name)
);

-- One row per firing, whatever came of it: started (run_id), queued, replaced (run_id: the new run;
-- the cancelled ones are in the cause) or skipped (the cause says why). Each also has its audit row.
CREATE TABLE pipeline_trigger_events (
    fired_at    TIMESTAMPTZ NOT NULL,       -- ("at" is a keyword of DuckDB's SQL)
    project     VARCHAR NOT NULL,
    name        VARCHAR NOT NULL,
    trigger     VARCHAR NOT NULL,           -- schedule | data | drift | after
    cause       JSON NOT NULL,              -- what fired it, and the admission's reason
    outcome     VARCHAR NOT NULL,           -- started | queued | replaced | skipped
    run_id      VARCHAR                     -- the pipeline run it started, if any
);
