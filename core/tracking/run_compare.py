"""Runs side by side: their curves cut into buckets in SQL, best values, param diff (docs/runs.md)."""

from __future__ import annotations

import json
import re
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.base.words import plural

from mlfleet.core.store.db import jsonable
from mlfleet.core.tracking.metric_keys import check_count, check_pattern
from mlfleet.core.tracking.records import resolve_run_id
from mlfleet.core.tracking.run_queries import NAN, finite, marks, texts, union

# A metric whose key matches this is better when lower (unless the run declared a mode).
LOWER_IS_BETTER = r"loss|err|mse|mae|perplexity"
MAX_POINTS = 100_000
MAX_COMPARE_RUNS = 100
COMPARE_KEYS = 20  # metrics compared when none are named: a run may have a million
MAX_COMPARE_KEYS = 1_000
EXACT_DISTINCT = 2_000_000  # summary rows over the compared runs up to which "how many keys" is counted exactly
CLOSE_SCAN = 2_000_000  # summary rows searched for keys close to a --metric that no run logged
MAX_BUCKETS = 100_000  # buckets in one answer, all curves: each is a step and 3 values, <100 bytes; a frame is 16 MB


def _series(con: duckdb.DuckDBPyConnection, ids: list[str], keys: list[str]) -> list[dict[str, Any]]:
    """Each (run, key) with its bounds, from the runs' ``metric_keys`` rows (no point is read)."""
    out = []
    rows = con.execute(f"""select run_id, key, step_count = points, min_step, max_step, first_seq, last_seq, points
                           from metric_keys where run_id in ({marks(ids)}) and list_contains(?::varchar[], key)""",
                       [*ids, keys]).fetchall()
    order = {run_id: i for i, run_id in enumerate(ids)}
    for run_id, key, by_step, s0, s1, q0, q1, n in sorted(rows, key=lambda r: (order[r[0]], r[1])):
        x0, x1 = (s0, s1) if by_step else (q0, q1)
        out.append({"run_id": run_id, "key": key, "axis": "step" if by_step else "seq", "x0": x0,
                    "span": float(x1 - x0) + 1.0, "points": n})
    return out


def _keys(con: duckdb.DuckDBPyConnection, ids: list[str], pattern: str | None,
          limit: int) -> tuple[list[str], int, bool]:
    """The first ``limit`` keys (in key order) that any of the runs logged, matching ``pattern``; how many match.

    The first N distinct keys of the union are among the first N of some run,
    so each run gives a top-N of its own (memory bounded by N). The count is
    exact up to EXACT_DISTINCT rows over the runs, else DuckDB's HyperLogLog
    estimate (a hash set of tens of millions of keys would not be bounded);
    the third value says which.
    """
    cond = " and key glob ?" if pattern is not None else ""
    glob = [pattern] if pattern is not None else []
    parts = [f"select key from metric_keys where run_id = ?{cond} order by key limit ?" for _ in ids]
    params = [p for run_id in ids for p in [run_id, *glob, limit]]
    keys = [r[0] for r in con.execute(f"select distinct key from ({union(parts)}) order by key limit ?",
                                      params + [limit]).fetchall()]
    where = f"from metric_keys where run_id in ({marks(ids)}){cond}"
    rows = con.execute(f"select count(*) {where}", [*ids, *glob]).fetchall()[0][0]
    if len(ids) == 1:
        return keys, int(rows), False
    if rows <= EXACT_DISTINCT:
        return keys, int(con.execute(f"select count(distinct key) {where}", [*ids, *glob]).fetchall()[0][0]), False
    estimate = con.execute(f"select approx_count_distinct(key) {where}", [*ids, *glob]).fetchall()[0][0]
    return keys, max(int(estimate), len(keys)), True


def _modes(con: duckdb.DuckDBPyConnection, ids: list[str], keys: list[str]) -> dict[tuple[str, str], str]:
    """Modes the runs declared (``metric_summaries``) for the keys compared."""
    return {(r, k): m for r, k, m in con.execute(
        f"""select run_id, key, mode from metric_summaries where run_id in ({marks(ids)})
            and list_contains(?::varchar[], key)""", [*ids, keys]).fetchall()
        if m in ("min", "max", "last")}


def default_mode(key: str) -> str:
    """min for loss- and error-like keys, else max."""
    return "min" if re.search(LOWER_IS_BETTER, key.lower()) else "max"


# A big series gets a UNION ALL branch of its own (grouping on the bucket number
# alone, zone maps skipping other runs); the small ones (a run logging a hundred
# per-layer metrics) share one grouped join over a registered table of their
# bounds, since planning thousands of branches costs more than scanning them.
_BIG_SERIES = 50_000  # points
_MAX_BRANCHES_SERIES = 64
_GROUPED_POINTS = f"""(select run_id, key, step, seq, nullif(value, {NAN}) as v from metrics
    where run_id in (select run_id from _cmp_series)) m
    join _cmp_series s on s.run_id = m.run_id and s.key = m.key,
    lateral (select case when s.by_step then m.step else m.seq end as x)"""


def _split(series: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
    """Indexes of the series that get a branch each, and of those that share the grouped join."""
    big = [j for j, s in enumerate(series) if s["points"] >= _BIG_SERIES][:_MAX_BRANCHES_SERIES]
    chosen = set(big)
    return big, [j for j in range(len(series)) if j not in chosen]


def _grouped(con: duckdb.DuckDBPyConnection, series: list[dict[str, Any]], which: list[int], sql: str,
             params: list[Any]) -> list[tuple]:
    if not which:
        return []
    picked = [series[j] for j in which]
    best = [s.get("best") for s in picked]
    con.register("_cmp_series", {
        "s": np.array(which, dtype=np.int64), "run_id": texts([s["run_id"] for s in picked]),
        "key": texts([s["key"] for s in picked]), "by_step": np.array([s["axis"] == "step" for s in picked]),
        "x0": np.array([s["x0"] for s in picked], dtype=np.int64),
        "span": np.array([s["span"] for s in picked], dtype=np.float64),
        "best": np.ma.masked_array([b if b is not None else 0.0 for b in best], mask=[b is None for b in best],
                                   dtype=np.float64)})
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.unregister("_cmp_series")


def _buckets(con: duckdb.DuckDBPyConnection, series: list[dict[str, Any]], points: int) -> list[tuple]:
    """min, max, last (by line) and largest step of each bucket of every series, ordered by series and bucket.

    bucket = floor((x - x0) * points / span), span = x1 - x0 + 1, in float64.
    """
    big, small = _split(series)
    rows = _grouped(con, series, small, f"""
        select s.s, least(floor(((x - s.x0)::double * ?) / s.span), ?)::bigint as b, min(v), max(v),
               arg_max_null(v, seq), max(x)
        from {_GROUPED_POINTS} group by s.s, b""", [float(points), points - 1])
    parts, params = [], []
    for j in big:
        s = series[j]
        x = "step" if s["axis"] == "step" else "seq"  # a fixed column name, chosen above
        parts.append(f"select {j} as s, least(floor(((x - ?)::double * ?) / ?), ?)::bigint as b, min(v), max(v), "
                     f"arg_max_null(v, seq), max(x) from (select {x} as x, seq, nullif(value, {NAN}) as v "
                     "from metrics where run_id = ? and key = ?) group by b")
        params += [s["x0"], float(points), s["span"], points - 1, s["run_id"], s["key"]]
    if parts:
        rows += con.execute(union(parts), params).fetchall()
    return sorted(rows, key=lambda r: (r[0], r[1]))


def _best_steps(con: duckdb.DuckDBPyConnection, series: list[dict[str, Any]]) -> list[tuple]:
    """Where each series reached its best: the first step with the best value, or its last point."""
    big, small = _split(series)
    rows = _grouped(con, series, small, f"""
        select s.s, arg_max_null(v, seq), arg_max(x, seq), any_value(s.best), min(x) filter (where v = s.best)
        from {_GROUPED_POINTS} group by s.s""", [])
    out = [(j, last, last_x) if series[j]["mode"] == "last" else (j, best, best_x)
           for j, last, last_x, best, best_x in rows if series[j]["mode"] == "last" or best is not None]
    parts, params = [], []
    for j in big:
        s = series[j]
        x = "step" if s["axis"] == "step" else "seq"
        if s["mode"] == "last":
            parts.append(f"select {j} as s, arg_max_null(nullif(value, {NAN}), seq) as v, arg_max({x}, seq) as x "
                         "from metrics where run_id = ? and key = ?")
            params += [s["run_id"], s["key"]]
        elif s["best"] is not None:
            parts.append(f"select {j} as s, ? as v, min({x}) as x from metrics where run_id = ? and key = ? "
                         "and value = ?")
            params += [s["best"], s["run_id"], s["key"], s["best"]]
    if parts:
        out += con.execute(union(parts), params).fetchall()
    return out


def compare_runs(con: duckdb.DuckDBPyConnection, runs: list[str], metrics: list[str] | None = None,
                 points: int = 500, keys: str | None = None, max_keys: int = COMPARE_KEYS) -> dict[str, Any]:
    """Curves of each metric per run (``points`` buckets: min, max and last of each), best values, params.

    The metrics are those named in ``metrics``, else the first ``max_keys``
    (in key order) that the runs logged and the glob ``keys`` matches;
    ``metric_keys`` says how many more there were.
    """
    if not runs:
        raise UsageError("give at least one run to compare")
    if len(runs) > MAX_COMPARE_RUNS:
        raise UsageError(f"compare at most {MAX_COMPARE_RUNS} runs at once, got {len(runs)}")
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        raise UsageError(f"points must be between 1 and {MAX_POINTS}, got {points!r}")
    check_count("--max-keys", max_keys, MAX_COMPARE_KEYS)
    pattern = check_pattern(keys)
    if metrics and pattern is not None:
        raise UsageError("give the metrics by name (--metric) or by pattern (--keys), not both")
    ids = list(dict.fromkeys(resolve_run_id(con, r) for r in runs))
    if metrics:
        names = list(dict.fromkeys(metrics))
        if len(names) > MAX_COMPARE_KEYS:
            raise UsageError(f"compare at most {MAX_COMPARE_KEYS:,} metrics at once, got {len(names):,}")
        matching, estimated = len(names), False
    else:
        names, matching, estimated = _keys(con, ids, pattern, max_keys)
    info = {r[0]: dict(zip(("run_id", "name", "host", "gpus", "state", "started_at", "finished_at"),
                           map(jsonable, r)))
            for r in con.execute(f"select run_id, name, host, gpus, state, started_at, finished_at from runs "
                                 f"where run_id in ({marks(ids)})", ids).fetchall()}
    series = _series(con, ids, names)
    if metrics:
        _check_logged(con, ids, names, {s["key"] for s in series})
    buckets = sum(min(points, s["points"]) for s in series)
    if buckets > MAX_BUCKETS:
        raise UsageError(f"{len(series):,} curves of up to {points:,} buckets are {buckets:,} buckets; the most is "
                         f"{MAX_BUCKETS:,}: ask for fewer --points, runs or metrics")
    declared = _modes(con, ids, names)
    out_metrics: dict[str, Any] = {k: {"curves": {}, "best": {}} for k in names}
    for s in series:
        s["mode"] = declared.get((s["run_id"], s["key"])) or default_mode(s["key"])
        s["curve"] = {"step": [], "min": [], "max": [], "last": [], "axis": s["axis"], "points": s["points"]}
        out_metrics.setdefault(s["key"], {"curves": {}, "best": {}})["curves"][s["run_id"]] = s["curve"]
    for j, _bucket, lo, hi, last, x_max in _buckets(con, series, points):
        curve = series[j]["curve"]
        curve["step"].append(x_max)
        curve["min"].append(lo)
        curve["max"].append(hi)
        curve["last"].append(last)
    for s in series:
        values = [v for v in s["curve"]["min" if s["mode"] == "min" else "max"] if v is not None]
        s["best"] = (min(values) if s["mode"] == "min" else max(values)) if values else None
        s["reached"] = (None, None)
    for j, value, x in _best_steps(con, series):
        series[j]["reached"] = (value, x)
    for s in series:
        value, step = s["reached"]
        out_metrics[s["key"]]["best"][s["run_id"]] = {"value": finite(value), "step": step, "mode": s["mode"]}
        curve = s["curve"]
        for name in ("min", "max", "last"):
            curve[name] = [finite(v) for v in curve[name]]
    return {"runs": [info[i] for i in ids], "points": points, "metrics": out_metrics, "params": _param_diff(con, ids),
            "packages": _package_diff(con, ids),
            "metric_keys": {"compared": len(names), "matching": matching, "left_out": max(0, matching - len(names)),
                            "estimated": estimated, "pattern": pattern}}


def _check_logged(con: duckdb.DuckDBPyConnection, ids: list[str], names: list[str], found: set[str]) -> None:
    """Refuse metrics that none of the runs logged, naming the closest keys they did log (NotFoundError, exit 4).

    A misspelt --metric used to come back as an empty comparison with exit 0,
    which a script cannot tell from runs that logged nothing yet.
    """
    missing = [k for k in names if k not in found]
    if not missing:
        return
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    whose = f"run {shown}" if len(ids) == 1 else f"runs {shown}"
    what = f"metric {missing[0]!r}" if len(missing) == 1 else "metrics " + ", ".join(map(repr, missing[:5])) + (
        f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    # Over the runs' summary rows (no point is read), the first CLOSE_SCAN of them: a hundred runs of a
    # million keys each would otherwise make this error path the slowest call there is.
    close = [r[0] for r in con.execute(
        f"""select key from (select key, jaro_winkler_similarity(lower(key), lower(?)) as score
                             from (select distinct key from (select key from metric_keys
                                                             where run_id in ({marks(ids)}) limit ?)))
            where score >= 0.8 order by score desc, key limit 3""", [missing[0], *ids, CLOSE_SCAN]).fetchall()]
    if close:
        hint = "close matches: " + ", ".join(close)
    else:
        _, count, estimated = _keys(con, ids, None, 1)
        they = "it" if len(ids) == 1 else "they"
        hint = (f"{they} logged {'about ' if estimated else ''}{plural(count, 'metric key')}; see them with "
                f"'mlfleet runs show {ids[0]}'" if count else f"{they} logged no metrics")
    raise NotFoundError(f"{whose} logged no {what}; {hint}" if len(ids) == 1 else
                        f"none of {whose} logged {what}; {hint}")


def _package_diff(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, Any]:
    """The packages of the runs' environments that differ (a version per run, None: not there), and how many agree.

    Also each run's env_hash: two runs with the same hash ran in the very same environment.
    """
    versions: dict[str, dict[str, str]] = {}
    for run_id, name, version in con.execute(f"select run_id, name, version from run_packages "
                                             f"where run_id in ({marks(ids)}) order by name", ids).fetchall():
        versions.setdefault(name, {})[run_id] = version
    differ = {name: {i: per_run.get(i) for i in ids} for name, per_run in versions.items()
              if len({per_run.get(i) for i in ids}) > 1}
    hashes = dict(con.execute(f"select run_id, env_hash from runs where run_id in ({marks(ids)})", ids).fetchall())
    return {"differ": differ, "same": len(versions) - len(differ), "env_hash": {i: hashes.get(i) for i in ids}}


def _param_diff(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, Any]:
    values: dict[str, dict[str, Any]] = {}
    for run_id, key, value in con.execute(f"select run_id, key, value from params where run_id in ({marks(ids)}) "
                                          "order by key", ids).fetchall():
        values.setdefault(key, {})[run_id] = json.loads(value) if value is not None else None
    differ: dict[str, dict[str, Any]] = {}
    same: dict[str, Any] = {}
    for key, per_run in values.items():
        texts = {json.dumps(per_run[i], sort_keys=True) if i in per_run else None for i in ids}
        if len(texts) == 1 and None not in texts:
            same[key] = per_run[ids[0]]
        else:
            differ[key] = {i: per_run.get(i) for i in ids}
    return {"differ": differ, "same": same}
