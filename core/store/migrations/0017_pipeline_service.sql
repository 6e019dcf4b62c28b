-- The pipelines service (issue 17; docs/pipelines.md): what a run was asked (--force, --no-cache), so a
-- controller restarted mid-run plans on with the same options, and what a step that runs inside the
-- controller found (a gate's numbers, a register's version, a drift verdict), for pipeline show.
ALTER TABLE pipeline_runs ADD COLUMN options JSON;
ALTER TABLE pipeline_steps ADD COLUMN detail JSON;
