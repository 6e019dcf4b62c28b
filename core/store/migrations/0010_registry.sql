-- Model registry (issue 16; docs/models.md): versions of a named model, each a verified copy of a run's
-- artifact in the content-addressed model store, and the append-only history of where each alias pointed.
-- Tables of their own (no column on runs or jobs), so this migration stands whatever other migrations do.
CREATE TABLE model_versions (
    name          VARCHAR NOT NULL,            -- the model's name (NAME_PATTERN, as job names)
    version       INTEGER NOT NULL,            -- 1, 2, 3 ... per name, numbered inside the insert's transaction
    run_id        VARCHAR NOT NULL,            -- the run that logged the artifact
    job_id        VARCHAR,
    artifact_path VARCHAR NOT NULL,            -- the path the run logged, on its node
    file_name     VARCHAR NOT NULL,            -- its base name: the store keeps <data>/models/sha256/<sha256>/<file_name>
    sha256        VARCHAR NOT NULL,
    size          BIGINT NOT NULL,
    code_hash     VARCHAR,                     -- the run's lineage, copied: it stays with the version
    spec_hash     VARCHAR,
    env_hash      VARCHAR,
    inputs        JSON,                        -- [{path, sha256, size, files}] as the node hashed them at start
    packages      JSON,                        -- {name: version} of the run's environment, or what the node counted
    metrics       JSON,                        -- {key: {last, min, max, summary}} at registration
    lineage       JSON,                        -- the run's whole lineage (git, python, GPUs ...)
    created_by    VARCHAR NOT NULL,            -- the OS user behind the socket
    created_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (name, version)
);

-- One row per alias move, never updated or deleted: where NAME@ALIAS points now is its newest row,
-- and where it pointed at time T is its newest row with moved_at <= T (docs/models.md has the query).
CREATE SEQUENCE model_alias_seq;
CREATE TABLE model_alias_history (
    id            BIGINT DEFAULT nextval('model_alias_seq') PRIMARY KEY,
    name          VARCHAR NOT NULL,
    alias         VARCHAR NOT NULL,
    from_version  INTEGER,                     -- NULL: the alias was new
    to_version    INTEGER NOT NULL,
    actor         VARCHAR NOT NULL,
    moved_at      TIMESTAMPTZ NOT NULL,
    reason        VARCHAR
);
CREATE INDEX model_alias_history_name ON model_alias_history (name, alias);
