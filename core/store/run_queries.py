"""SQL for tracked runs: the filtered list, the comparison, the export (docs/runs.md).

Plain functions over a DuckDB connection, run on the store's reader threads.
A filter (:mod:`mlfleet.core.runfilter`) is compiled here into SQL whose
text comes only from the fixed pieces below: every key and value the user
wrote is a bound parameter.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.errors import UsageError
from mlfleet.core.runfilter import (COMPARISONS, RUN_COLUMNS, And, Compare, Field, Node, Not, Or, SortKey, fields_of,
                                    parse_filter, parse_sort)

from .db import jsonable
from .records import resolve_run_id

# A metric whose key matches this is better when lower (unless the run declared a mode).
LOWER_IS_BETTER = r"loss|err|mse|mae|perplexity"
MAX_POINTS = 100_000
MAX_COMPARE_RUNS = 100
_MAX_BRANCHES = 256  # runs per UNION ALL statement; longer lists take a grouped join
EXPORT_FORMATS = {"parquet": "(format parquet)", "csv": "(format csv, header true)"}

_NAN = "'nan'::double"
_SUMMARY_SQL = {  # metric summary -> aggregate over one key's points (NaN left out but for count)
    "min": f"min(nullif(value, {_NAN}))",
    "max": f"max(nullif(value, {_NAN}))",
    "mean": f"avg(nullif(value, {_NAN}))",
    "last": f"arg_max_null(nullif(value, {_NAN}), seq)",
    "count": "count(*)",
}
_LIST_COLUMNS = ("run_id", "job_id", "attempt", "name", "project", "owner", "host", "gpus", "state", "created_at",
                 "started_at", "finished_at", "exit_code")


# --------------------------------------------------------------- compiler

class _Query:
    """Joins, a WHERE and an ORDER BY for a filter and a sort, with their parameters in text order."""

    def __init__(self, node: Node | None, sort: list[SortKey]) -> None:
        self.joins: list[str] = []
        self.join_params: list[Any] = []
        self.where_params: list[Any] = []
        self.alias: dict[tuple[str, str], str] = {}
        fields = fields_of(node) + [k.field for k in sort]
        summaries: dict[str, set[str]] = {}
        for f in fields:
            if f.source == "metrics":
                summaries.setdefault(f.key, set()).add(f.summary or "last")
        for f in fields:
            if f.source == "run" or (f.source, f.key) in self.alias:
                continue
            alias = f"{f.source[0]}{len(self.alias)}"
            self.alias[(f.source, f.key)] = alias
            if f.source == "metrics":
                cols = ", ".join(f"{_SUMMARY_SQL[s]} as s_{s}" for s in sorted(summaries[f.key]))
                self.joins.append(f"left join (select run_id, {cols} from metrics where key = ? group by run_id) "
                                  f"{alias} on {alias}.run_id = r.run_id")
            else:
                self.joins.append(f"left join {f.source} {alias} on {alias}.run_id = r.run_id and {alias}.key = ?")
            self.join_params.append(f.key)
        self.where = self._node(node) if node is not None else "true"
        self.order = ", ".join(self._order(k) for k in sort)

    @property
    def params(self) -> list[Any]:
        return self.join_params + self.where_params

    def from_sql(self) -> str:
        return "from runs r " + " ".join(self.joins) + f" where {self.where}"

    def _expr(self, field: Field, as_text: bool = False) -> str:
        """The SQL for a field's value (params: the number, or the text when ``as_text``)."""
        if field.source == "run":
            column = f"r.{field.key}"  # field.key is one of RUN_COLUMNS (checked by the parser)
            assert field.key in RUN_COLUMNS
            return f"epoch({column})" if RUN_COLUMNS[field.key] == "time" else column
        alias = self.alias[(field.source, field.key)]
        if field.source == "params":
            return f"{alias}.value_text" if as_text else f"{alias}.value_num"
        if field.source == "tags":
            return f"{alias}.value"
        assert field.summary in _SUMMARY_SQL
        return f"coalesce({alias}.s_count, 0)" if field.summary == "count" else f"{alias}.s_{field.summary}"

    def _bind(self, value: Any) -> str:
        self.where_params.append(("true" if value else "false") if isinstance(value, bool) else value)
        return "?"

    def _node(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " and ".join(self._node(n) for n in node.items) + ")"
        if isinstance(node, Or):
            return "(" + " or ".join(self._node(n) for n in node.items) + ")"
        if isinstance(node, Not):
            return f"(not {self._node(node.item)})"
        return self._compare(node)

    def _compare(self, c: Compare) -> str:
        field = c.field
        if c.op == "is null":
            if field.source in ("params", "tags"):
                return f"({self.alias[(field.source, field.key)]}.run_id is null)"
            return f"({self._expr(field)} is null)"
        if c.op in ("like", "ilike"):
            return f"coalesce({self._expr(field, as_text=True)} {c.op} {self._bind(c.value)}, false)"
        values = c.value if c.op == "in" else (c.value,)
        op = "in" if c.op == "in" else c.op
        assert op == "in" or op in COMPARISONS
        parts = []
        for is_text in (False, True):
            group = [v for v in values if (isinstance(v, (str, bool)) == is_text)]  # type: ignore[union-attr]
            if not group:
                continue
            expr = self._expr(field, as_text=is_text)
            if op == "in":
                parts.append(f"{expr} in ({', '.join(self._bind(v) for v in group)})")
            else:
                parts.append(f"{expr} {op} {self._bind(group[0])}")
        return f"coalesce({' or '.join(parts)}, false)"

    def _order(self, key: SortKey) -> str:
        way = "desc" if key.descending else "asc"
        if key.field.source == "params":
            return f"{self._expr(key.field)} {way} nulls last, {self._expr(key.field, as_text=True)} {way} nulls last"
        expr = self._expr(key.field)
        if key.field.source == "run" and RUN_COLUMNS[key.field.key] == "time":
            expr = f"r.{key.field.key}"
        return f"{expr} {way} nulls last"


def _marks(values: list[Any]) -> str:
    return ", ".join("?" for _ in values)


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _check_limit(limit: int, most: int = 100_000) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise UsageError(f"limit must be between 1 and {most}, got {limit!r}")


# ------------------------------------------------------------------- list

def select_run_ids(con: duckdb.DuckDBPyConnection, where: str | None = None, sort: str | None = None,
                   limit: int = 200) -> list[str]:
    """The ids of the runs that pass the filter, in the sort's order (newest first by default)."""
    _check_limit(limit, 10_000_000)
    query = _Query(parse_filter(where or ""), parse_sort(sort))
    order = f"{query.order}, " if query.order else ""
    sql = f"select r.run_id {query.from_sql()} order by {order}r.created_at desc, r.run_id limit ?"
    return [r[0] for r in con.execute(sql, query.params + [limit]).fetchall()]


def list_runs(con: duckdb.DuckDBPyConnection, where: str | None = None, sort: str | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
    """Runs that pass the filter, with their params, tags and metric summaries."""
    _check_limit(limit)
    ids = select_run_ids(con, where, sort, limit)
    if not ids:
        return []
    rel = con.execute(f"select {', '.join(_LIST_COLUMNS)} from runs where run_id in ({_marks(ids)})", ids)
    by_id = {r[0]: {n: jsonable(v) for n, v in zip(_LIST_COLUMNS, r)} for r in rel.fetchall()}
    for run in by_id.values():
        run.update(points=0, params={}, tags={}, metrics={})
    for run_id, key, value in con.execute(f"select run_id, key, value from params where run_id in ({_marks(ids)}) "
                                          "order by key", ids).fetchall():
        by_id[run_id]["params"][key] = json.loads(value) if value is not None else None
    for run_id, key, value in con.execute(f"select run_id, key, value from tags where run_id in ({_marks(ids)}) "
                                          "order by key", ids).fetchall():
        by_id[run_id]["tags"][key] = value
    for i, key, lo, hi, last, last_step, points in _summaries(con, ids):
        run = by_id[ids[i]]
        run["metrics"][key] = {"min": _finite(lo), "max": _finite(hi), "last": _finite(last), "last_step": last_step,
                               "points": points}
        run["points"] += points
    return [by_id[i] for i in ids]


def _summaries(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple]:
    """(run index, key, min, max, last, last step, points) of every metric of the runs.

    One branch per run, so each groups on ``key`` alone and DuckDB's zone maps
    skip the row groups of other runs (see docs/runs.md, "How it stays fast").
    """
    aggregates = (f"{_SUMMARY_SQL['min']}, {_SUMMARY_SQL['max']}, {_SUMMARY_SQL['last']}, "
                  "arg_max_null(step, seq), count(*)")
    if len(ids) > _MAX_BRANCHES:  # a long list: one grouped join instead of a huge statement
        con.register("_summary_ids", {"run_id": _texts(ids), "r": np.arange(len(ids), dtype=np.int64)})
        try:
            return con.execute(f"select i.r, m.key, {aggregates} from metrics m join _summary_ids i "
                               "on i.run_id = m.run_id group by i.r, m.key order by i.r, m.key").fetchall()
        finally:
            con.unregister("_summary_ids")
    parts = [f"select {i} as r, key, {aggregates} from metrics where run_id = ? group by key" for i in range(len(ids))]
    return con.execute(_union(parts) + " order by r, key", ids).fetchall() if ids else []


# ---------------------------------------------------------------- compare

def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(con.execute("select count(*) from information_schema.tables where table_name = ?",
                            [name]).fetchall()[0][0])


def _union(parts: list[str]) -> str:
    return " union all ".join(f"({p})" for p in parts)


def _series(con: duckdb.DuckDBPyConnection, ids: list[str], keys: list[str]) -> list[dict[str, Any]]:
    """Each (run, key) with its bounds: one grouped scan per run, all in one statement.

    Restricting each branch to one run keeps the grouping on ``key`` alone,
    and lets DuckDB's zone maps skip the row groups of other runs.
    """
    bounds = "count(step) = count(*) as by_step, min(step), max(step), min(seq), max(seq), count(*) as n"
    parts, params = [], []
    per_series = bool(keys) and len(ids) * len(keys) <= _MAX_BRANCHES_SERIES
    key_filter = f" and key in ({_marks(keys)})" if keys else ""
    for i, run_id in enumerate(ids):
        if per_series:  # one ungrouped scan per series: no hashing at all
            parts += [f"select {i} as r, ? as key, {bounds} from metrics where run_id = ? and key = ?" for _ in keys]
            for key in keys:
                params += [key, run_id, key]
        else:
            parts.append(f"select {i} as r, key, {bounds} from metrics where run_id = ?{key_filter} group by key")
            params += [run_id] + keys
    out = []
    sql = f"select * from ({_union(parts)}) where n > 0 order by r, key"
    for r, key, by_step, s0, s1, q0, q1, n in con.execute(sql, params).fetchall():
        x0, x1 = (s0, s1) if by_step else (q0, q1)
        out.append({"run_id": ids[r], "key": key, "axis": "step" if by_step else "seq", "x0": x0,
                    "span": float(x1 - x0) + 1.0, "points": n})
    return out


def _modes(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[tuple[str, str], str]:
    """Modes the runs declared (``metric_summaries``, where this store has it)."""
    if not _has_table(con, "metric_summaries"):
        return {}
    return {(r, k): m for r, k, m in con.execute(
        f"select run_id, key, mode from metric_summaries where run_id in ({_marks(ids)})", ids).fetchall()
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
_GROUPED_POINTS = f"""(select run_id, key, step, seq, nullif(value, {_NAN}) as v from metrics
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
        "s": np.array(which, dtype=np.int64), "run_id": _texts([s["run_id"] for s in picked]),
        "key": _texts([s["key"] for s in picked]), "by_step": np.array([s["axis"] == "step" for s in picked]),
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
                     f"arg_max_null(v, seq), max(x) from (select {x} as x, seq, nullif(value, {_NAN}) as v "
                     "from metrics where run_id = ? and key = ?) group by b")
        params += [s["x0"], float(points), s["span"], points - 1, s["run_id"], s["key"]]
    if parts:
        rows += con.execute(_union(parts), params).fetchall()
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
            parts.append(f"select {j} as s, arg_max_null(nullif(value, {_NAN}), seq) as v, arg_max({x}, seq) as x "
                         "from metrics where run_id = ? and key = ?")
            params += [s["run_id"], s["key"]]
        elif s["best"] is not None:
            parts.append(f"select {j} as s, ? as v, min({x}) as x from metrics where run_id = ? and key = ? "
                         "and value = ?")
            params += [s["best"], s["run_id"], s["key"], s["best"]]
    if parts:
        out += con.execute(_union(parts), params).fetchall()
    return out


def compare_runs(con: duckdb.DuckDBPyConnection, runs: list[str], metrics: list[str] | None = None,
                 points: int = 500) -> dict[str, Any]:
    """Curves of each metric per run (``points`` buckets: min, max and last of each), best values, params."""
    if not runs:
        raise UsageError("give at least one run to compare")
    if len(runs) > MAX_COMPARE_RUNS:
        raise UsageError(f"compare at most {MAX_COMPARE_RUNS} runs at once, got {len(runs)}")
    if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= MAX_POINTS:
        raise UsageError(f"points must be between 1 and {MAX_POINTS}, got {points!r}")
    ids = list(dict.fromkeys(resolve_run_id(con, r) for r in runs))
    keys = list(dict.fromkeys(metrics or []))
    info = {r[0]: dict(zip(("run_id", "name", "host", "gpus", "state", "started_at", "finished_at"),
                           map(jsonable, r)))
            for r in con.execute(f"select run_id, name, host, gpus, state, started_at, finished_at from runs "
                                 f"where run_id in ({_marks(ids)})", ids).fetchall()}
    series = _series(con, ids, keys)
    declared = _modes(con, ids)
    out_metrics: dict[str, Any] = {k: {"curves": {}, "best": {}} for k in keys}
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
        out_metrics[s["key"]]["best"][s["run_id"]] = {"value": _finite(value), "step": step, "mode": s["mode"]}
        curve = s["curve"]
        for name in ("min", "max", "last"):
            curve[name] = [_finite(v) for v in curve[name]]
    return {"runs": [info[i] for i in ids], "points": points, "metrics": out_metrics, "params": _param_diff(con, ids)}


def _param_diff(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, Any]:
    values: dict[str, dict[str, Any]] = {}
    for run_id, key, value in con.execute(f"select run_id, key, value from params where run_id in ({_marks(ids)}) "
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


# ----------------------------------------------------------------- export

def export_runs(con: duckdb.DuckDBPyConnection, output: str, fmt: str = "parquet", where: str | None = None,
                sort: str | None = None, points: bool = False, metrics: list[str] | None = None) -> dict[str, Any]:
    """Write the runs that pass the filter (one row each) or, with ``points``, their metric points (long).

    The file appears whole or not at all: DuckDB's COPY writes a temporary
    file next to ``output``, which is then renamed over it.
    """
    if fmt not in EXPORT_FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use {' or '.join(EXPORT_FORMATS)}")
    target = Path(output)
    if not target.is_absolute():
        raise UsageError(f"the output path must be absolute, got {output!r}")
    if not target.parent.is_dir():
        raise UsageError(f"{target.parent} is not a folder; create it first")
    if target.is_dir():
        raise UsageError(f"{target} is a folder; give a file name")
    ids = select_run_ids(con, where, sort, limit=10_000_000)
    order = np.arange(len(ids), dtype=np.int64)
    con.register("_export_ids", {"run_id": _texts(ids), "_order": order})
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        if points:
            keys = list(dict.fromkeys(metrics or []))
            key_filter = f"and m.key in ({_marks(keys)})" if keys else ""
            query = ("select m.run_id, m.key, m.step, m.value, m.ts, m.seq from metrics m "
                     f"join _export_ids i on i.run_id = m.run_id where true {key_filter} "
                     "order by i._order, m.key, m.seq")
            params = keys
        else:
            con.register("_export_extra", _wide_columns(con, ids))
            query = (f"select {', '.join('r.' + c for c in _LIST_COLUMNS)}, x.* exclude (run_id, _order) "
                     "from runs r join _export_extra x on x.run_id = r.run_id order by x._order")
            params = []
        try:
            count = con.execute(f"copy ({query}) to ? {EXPORT_FORMATS[fmt]}", params + [str(tmp)]).fetchall()[0][0]
        except duckdb.Error as exc:
            raise UsageError(f"cannot write {target}: {str(exc).strip().splitlines()[0]}") from None
        os.replace(tmp, target)
    finally:
        for name in ("_export_ids", "_export_extra"):
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
        tmp.unlink(missing_ok=True)
    return {"output": str(target), "format": fmt, "rows": count, "runs": len(ids),
            "kind": "points" if points else "runs"}


def _wide_columns(con: duckdb.DuckDBPyConnection, ids: list[str]) -> dict[str, np.ndarray]:
    """``params.K``, ``tags.K`` and ``metrics.K.min|max|last|last_step|points`` columns, one row per run.

    Column names come from the data and reach DuckDB as the names of a
    registered table's columns, never as SQL text.
    """
    index = {run_id: i for i, run_id in enumerate(ids)}
    n = len(ids)
    cols: dict[str, list[Any]] = {}

    def put(name: str, run_id: str, value: Any) -> None:
        cols.setdefault(name, [None] * n)[index[run_id]] = value

    if ids:  # _export_ids is registered by export_runs
        for run_id, key, value, text in con.execute(
                "select p.run_id, p.key, p.value, p.value_text from params p join _export_ids s on s.run_id = p.run_id "
                "order by p.key").fetchall():
            put(f"params.{key}", run_id, (json.loads(value) if value is not None else None, text))
        for run_id, key, value in con.execute("select t.run_id, t.key, t.value from tags t "
                                              "join _export_ids s on s.run_id = t.run_id order by t.key").fetchall():
            put(f"tags.{key}", run_id, value)
        for run_id, key, lo, hi, last, last_step, count in con.execute(
                f"""select m.run_id, m.key, {_SUMMARY_SQL['min']}, {_SUMMARY_SQL['max']}, {_SUMMARY_SQL['last']},
                           arg_max_null(step, seq), count(*)
                    from metrics m join _export_ids s on s.run_id = m.run_id
                    group by m.run_id, m.key order by m.key""").fetchall():
            for part, value in (("min", lo), ("max", hi), ("last", last), ("last_step", last_step),
                                ("points", count)):
                put(f"metrics.{key}.{part}", run_id, value)
    out: dict[str, np.ndarray] = {"run_id": _texts(ids), "_order": np.arange(n, dtype=np.int64)}
    seen = {"run_id", "_order"} | set(_LIST_COLUMNS)
    for name, values in cols.items():
        if name.startswith("params."):
            logged = [v[0] for v in values if v is not None]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in logged)
            values = [None if v is None else (float(v[0]) if numeric else v[1]) for v in values]
        unique, i = name, 2
        while unique.lower() in seen:  # DuckDB column names ignore case
            unique, i = f"{name} ({i})", i + 1
        seen.add(unique.lower())
        out[unique] = _column(values)
    return out


def _texts(values: list[str]) -> np.ndarray:
    """A text column DuckDB types as VARCHAR even when it is empty."""
    return np.array(values, dtype=object) if values else np.array([], dtype=str)


def _column(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present):
            return np.ma.masked_array([v if v is not None else 0 for v in values], mask=[v is None for v in values],
                                      dtype=np.int64)
        return np.ma.masked_array([v if v is not None else 0.0 for v in values], mask=[v is None for v in values],
                                  dtype=np.float64)
    return np.array([None if v is None else str(v) for v in values], dtype=object)


__all__ = ["list_runs", "select_run_ids", "compare_runs", "export_runs", "default_mode", "LOWER_IS_BETTER"]
