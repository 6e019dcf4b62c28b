-- Deployments (issue 16; docs/deployments.md). A replica is a job (its JobSpec has `service:`), so these
-- tables hold only what a deployment adds: the declared state, its revisions, its replicas' mapping to
-- jobs, the history of every rollout step, and the servers' scrapes. Tables of their own, no column on jobs.
CREATE TABLE deployments (
    name              VARCHAR PRIMARY KEY,
    spec              JSON NOT NULL,           -- the deployment spec as last applied
    spec_path         VARCHAR,
    spec_hash         VARCHAR NOT NULL,
    model_ref         VARCHAR NOT NULL,        -- NAME@ALIAS (follows the alias) or NAME:VERSION (pinned)
    follows_alias     VARCHAR,                 -- the alias followed, NULL when pinned
    alias_version     INTEGER,                 -- the version the alias named when last looked at: a move is a change of this
    target_version    INTEGER,                 -- model version of the target revision
    stable_version    INTEGER,                 -- model version of what served before this rollout (NULL: first)
    target_revision   INTEGER,                 -- what the rollout planner converges to (a model version + spec)
    stable_revision   INTEGER,
    phase             VARCHAR NOT NULL,        -- rolling | stable | rolling_back | rolled_back | failed | stopped
    reason            VARCHAR,                 -- the planner's last words ("v2 replica iris-v2-3 not healthy in 2m")
    rollout_started_at TIMESTAMPTZ,
    created_by        VARCHAR NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);

-- One per apply that changed the model version or the spec: rollback goes back to one, spec and all.
CREATE TABLE deploy_revisions (
    deployment        VARCHAR NOT NULL,
    revision          INTEGER NOT NULL,
    model_version     INTEGER NOT NULL,
    model_sha256      VARCHAR NOT NULL,
    model_file        VARCHAR NOT NULL,
    spec              JSON NOT NULL,
    spec_hash         VARCHAR NOT NULL,
    cause             VARCHAR,
    created_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (deployment, revision)
);

CREATE TABLE deploy_replicas (
    replica_id        VARCHAR PRIMARY KEY,     -- <deployment>-v<version>-<n>, also its job's name
    deployment        VARCHAR NOT NULL,
    version           INTEGER NOT NULL,        -- the model version it serves
    revision          INTEGER NOT NULL,
    job_id            VARCHAR NOT NULL,        -- written in the job's own submit transaction: never started twice
    created_at        TIMESTAMPTZ NOT NULL,
    healthy_since     TIMESTAMPTZ,
    draining_since    TIMESTAMPTZ,
    stopping          BOOLEAN NOT NULL DEFAULT false,
    ended_at          TIMESTAMPTZ,
    host              VARCHAR,
    port              INTEGER
);
CREATE INDEX deploy_replicas_deployment ON deploy_replicas (deployment);

CREATE SEQUENCE deploy_events_seq;
CREATE TABLE deploy_events (
    seq               BIGINT DEFAULT nextval('deploy_events_seq') PRIMARY KEY,
    deployment        VARCHAR NOT NULL,
    ts                TIMESTAMPTZ NOT NULL,
    actor             VARCHAR NOT NULL,
    kind              VARCHAR NOT NULL,        -- apply | rollout | scale | start | healthy | drain | stop | rollback | done | failed | stopped
    version           INTEGER,
    detail            JSON
);
CREATE INDEX deploy_events_deployment ON deploy_events (deployment);

-- Each replica's scrapes as the agent reduced them (core/base/models.py ScrapeSample), one row per new ts.
CREATE TABLE serving_scrapes (
    deployment        VARCHAR NOT NULL,
    version           INTEGER NOT NULL,
    replica_id        VARCHAR NOT NULL,
    run_id            VARCHAR NOT NULL,
    ts                TIMESTAMPTZ NOT NULL,    -- the node's clock at the scrape
    requests          DOUBLE,
    errors            DOUBLE,
    latency_buckets   JSON,                    -- [[le, cumulative count], ...], +Inf last
    latency_sum       DOUBLE,
    latency_count     DOUBLE,
    gauges            JSON,
    error             VARCHAR                  -- the scrape failed: why
);
CREATE INDEX serving_scrapes_deployment_ts ON serving_scrapes (deployment, ts);
