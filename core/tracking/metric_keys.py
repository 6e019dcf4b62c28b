"""One row per run and metric key (table ``metric_keys``): what runs list, show, compare and filters read.

Why a table: a run may log a million distinct keys (per-layer, per-parameter
statistics). Grouping all of its points on every ``runs list`` made each
call scan and hash the whole run and carry every key to Python. The table
is kept at ingest instead, one ``INSERT ... ON CONFLICT`` per chunk that
merges the chunk's own aggregate into the rows already there, in the
transaction that writes the points and moves the offset: a chunk is counted
once or not at all. Readers take pages of it (``order by key limit N``,
DuckDB's top-N: memory bounded by N, not by the run) and counts.

Key patterns (``--keys``) are globs, matched by DuckDB's ``GLOB``: ``*`` any
run of characters (``/`` and ``.`` too), ``?`` one character, ``[abc]`` a
class, and a backslash makes the next character plain.
"""

from __future__ import annotations

from typing import Any

import duckdb

from mlfleet.core.base.errors import UsageError

NAN = "'nan'::double"
MAX_PAGE = 10_000  # keys per answer: a page of this is a few MB of JSON at most
MAX_PATTERN = 1_000

# The chunk's aggregate per key, from the batch ingest registered (columns key, step, has_step, value, seq).
_BATCH_AGGREGATE = f"""
    select ? as run_id, key, count(*) as points, count(nullif(value, {NAN})) as value_count,
           coalesce(sum(nullif(value, {NAN})), 0) as value_sum,
           min(nullif(value, {NAN})) as min_value, max(nullif(value, {NAN})) as max_value,
           arg_max_null(value, seq) as last_value, arg_max_null(case when has_step then step end, seq) as last_step,
           min(seq) as first_seq, max(seq) as last_seq, count(*) filter (where has_step) as step_count,
           min(step) filter (where has_step) as min_step, max(step) filter (where has_step) as max_step
    from {{batch}} group by key"""

# Merging is order-free (sums, least/greatest, and "last" by line number), so the
# result is the aggregate of all the run's points whatever the chunks were.
_MERGE = """
    on conflict (run_id, key) do update set
        points = metric_keys.points + excluded.points,
        value_count = metric_keys.value_count + excluded.value_count,
        value_sum = metric_keys.value_sum + excluded.value_sum,
        min_value = least(metric_keys.min_value, excluded.min_value),
        max_value = greatest(metric_keys.max_value, excluded.max_value),
        last_value = case when excluded.last_seq > metric_keys.last_seq then excluded.last_value
                          else metric_keys.last_value end,
        last_step = case when excluded.last_seq > metric_keys.last_seq then excluded.last_step
                         else metric_keys.last_step end,
        first_seq = least(metric_keys.first_seq, excluded.first_seq),
        last_seq = greatest(metric_keys.last_seq, excluded.last_seq),
        step_count = metric_keys.step_count + excluded.step_count,
        min_step = least(metric_keys.min_step, excluded.min_step),
        max_step = greatest(metric_keys.max_step, excluded.max_step)"""


def merge_batch(con: duckdb.DuckDBPyConnection, run_id: str, batch: str) -> None:
    """Fold the registered batch ``batch`` (one chunk's points) into the run's rows; call inside its transaction."""
    assert batch.isidentifier()  # a name registered by ingest, never user text
    con.execute(f"insert into metric_keys {_BATCH_AGGREGATE.format(batch=batch)} {_MERGE}", [run_id])


# ------------------------------------------------------------- read side

def summary_sql(alias: str, summary: str) -> str:
    """The SQL of ``metrics.K.<summary>`` over a ``metric_keys`` row named ``alias`` (NULL: the run has no K)."""
    return {
        "min": f"{alias}.min_value",
        "max": f"{alias}.max_value",
        "mean": f"({alias}.value_sum / nullif({alias}.value_count, 0))",
        "last": f"nullif({alias}.last_value, {NAN})",  # a NaN last point counts as missing
        "count": f"coalesce({alias}.points, 0)",
    }[summary]


# What a listed or shown key carries, in this order.
ROW_SQL = "key, points, min_value, max_value, value_sum / nullif(value_count, 0), last_value, last_step"
ROW_NAMES = ("key", "points", "min", "max", "mean", "last", "last_step")


def check_pattern(pattern: str | None) -> str | None:
    """A ``--keys`` glob as given, or None for every key; a mistake is one sentence."""
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern:
        raise UsageError("--keys needs a pattern, e.g. --keys 'val_*' (* any characters, ? one)")
    if len(pattern) > MAX_PATTERN:
        raise UsageError(f"--keys pattern is {len(pattern):,} characters; the most is {MAX_PATTERN:,}")
    return pattern


def check_count(name: str, value: Any, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise UsageError(f"{name} must be between 1 and {most:,}, got {value!r}")
    return value


def _where(pattern: str | None, after: str | None) -> tuple[str, list[Any]]:
    sql, params = "", []
    if pattern is not None:
        sql, params = sql + " and key glob ?", params + [pattern]
    if after is not None:
        sql, params = sql + " and key > ?", params + [after]
    return sql, params


def page(con: duckdb.DuckDBPyConnection, run_id: str, pattern: str | None = None, after: str | None = None,
         limit: int = 100) -> dict[str, Any]:
    """Up to ``limit`` of the run's keys (matching ``pattern``, after the key ``after``) in key order, and counts.

    ``total`` is every key the run logged, ``matching`` those the pattern
    takes, ``left_out`` the matching keys after this page; ``next`` is the
    ``after`` of the next page (None on the last one).
    """
    check_count("--max-keys", limit, MAX_PAGE)
    cond, params = _where(check_pattern(pattern), after)
    rows = con.execute(f"select {ROW_SQL} from metric_keys where run_id = ?{cond} order by key limit ?",
                       [run_id, *params, limit]).fetchall()
    last = rows[-1][0] if rows else after  # None only when no key matches at all
    cond_all, params_all = _where(pattern, None)
    total, matching, later = con.execute(
        f"""select count(*), count(*) filter (where true{cond_all}),
                   count(*) filter (where true{cond_all} and key > ?)
            from metric_keys where run_id = ?""",
        [*params_all, *params_all, last if last is not None else "", run_id]).fetchall()[0]
    return {"metrics": [dict(zip(ROW_NAMES, r)) for r in rows], "total": int(total), "matching": int(matching),
            "left_out": int(later), "next": last if later else None, "pattern": pattern}


def declared(con: duckdb.DuckDBPyConnection, run_id: str, shown: list[str], limit: int) -> dict[str, dict[str, Any]]:
    """The modes the run declared (``metric_summaries``) with their values: for the shown keys and ``limit`` more.

    Bounded like the keys: a run that declared a mode for every one of a
    million keys gets the modes of the keys on view, not all of them.
    """
    value = "case s.mode when 'min' then k.min_value when 'max' then k.max_value else k.last_value end"
    found = con.execute(
        f"""select s.key, s.mode, {value} from metric_summaries s
                left join metric_keys k on k.run_id = s.run_id and k.key = s.key
            where s.run_id = ? and list_contains(?::varchar[], s.key)
            union all
            (select s.key, s.mode, {value} from metric_summaries s
                 left join metric_keys k on k.run_id = s.run_id and k.key = s.key
             where s.run_id = ? order by s.key limit ?)""", [run_id, shown, run_id, limit]).fetchall()
    return {key: {"mode": mode, "value": v} for key, mode, v in sorted(found, key=lambda r: r[0])}
