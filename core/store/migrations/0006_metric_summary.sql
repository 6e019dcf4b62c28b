-- Per run and metric key, what its points add up to (docs/runs.md, "Runs with many metric keys").
-- Kept at ingest, in the transaction that writes the points and moves the offset, so a
-- chunk counts once or not at all; runs list/show/compare and the --where filter read
-- this table instead of grouping every point of a run.
CREATE TABLE metric_keys (
    run_id        VARCHAR NOT NULL,
    key           VARCHAR NOT NULL,
    points        BIGINT NOT NULL,             -- points logged, NaN included (metrics.K.count)
    value_count   BIGINT NOT NULL,             -- points whose value is not NaN
    value_sum     DOUBLE NOT NULL,             -- their sum: mean = value_sum / value_count
    min_value     DOUBLE,                      -- smallest and largest value, NaN left out (infinities kept)
    max_value     DOUBLE,
    last_value    DOUBLE,                      -- the value of the last point by line (NULL or NaN: it was NaN)
    last_step     BIGINT,                      -- the step of that point (null when it had none)
    first_seq     BIGINT NOT NULL,             -- line numbers of the first and the last point
    last_seq      BIGINT NOT NULL,
    step_count    BIGINT NOT NULL,             -- points that have a step
    min_step      BIGINT,
    max_step      BIGINT,
    PRIMARY KEY (run_id, key)
);

-- Runs ingested before this table existed.
INSERT INTO metric_keys
SELECT run_id, key, count(*), count(nullif(value, 'nan'::double)), coalesce(sum(nullif(value, 'nan'::double)), 0),
       min(nullif(value, 'nan'::double)), max(nullif(value, 'nan'::double)), arg_max_null(value, seq),
       arg_max_null(step, seq), min(seq), max(seq), count(step), min(step), max(step)
FROM metrics GROUP BY run_id, key;
