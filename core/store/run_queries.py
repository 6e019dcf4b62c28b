"""SQL for tracked runs: the filter compiler and the filtered list (docs/runs.md).

Plain functions over a DuckDB connection, run on the store's reader threads.
A filter (:mod:`mlfleet.core.runfilter`) is compiled here into SQL whose
text comes only from the fixed pieces below: every key and value the user
wrote is a bound parameter. The comparison (:mod:`.run_compare`) and the
export (:mod:`.run_export`) select their runs through the same compiler and
share the small SQL pieces at the end of this module.
"""

from __future__ import annotations

import json
import math
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.errors import UsageError
from mlfleet.core.runfilter import (COMPARISONS, RUN_COLUMNS, And, Compare, Field, Node, Not, Or, SortKey, fields_of,
                                    parse_filter, parse_sort)

from .db import jsonable

_MAX_BRANCHES = 256  # runs per UNION ALL statement; longer lists take a grouped join

NAN = "'nan'::double"
SUMMARY_SQL = {  # metric summary -> aggregate over one key's points (NaN left out but for count)
    "min": f"min(nullif(value, {NAN}))",
    "max": f"max(nullif(value, {NAN}))",
    "mean": f"avg(nullif(value, {NAN}))",
    "last": f"arg_max_null(nullif(value, {NAN}), seq)",
    "count": "count(*)",
}
LIST_COLUMNS = ("run_id", "job_id", "attempt", "name", "project", "owner", "host", "gpus", "state", "created_at",
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
                cols = ", ".join(f"{SUMMARY_SQL[s]} as s_{s}" for s in sorted(summaries[f.key]))
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
        assert field.summary in SUMMARY_SQL
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


def marks(values: list[Any]) -> str:
    return ", ".join("?" for _ in values)


def finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def check_limit(limit: int, most: int = 100_000) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise UsageError(f"limit must be between 1 and {most}, got {limit!r}")


# ------------------------------------------------------------------- list

def select_run_ids(con: duckdb.DuckDBPyConnection, where: str | None = None, sort: str | None = None,
                   limit: int = 200) -> list[str]:
    """The ids of the runs that pass the filter, in the sort's order (newest first by default)."""
    check_limit(limit, 10_000_000)
    query = _Query(parse_filter(where or ""), parse_sort(sort))
    order = f"{query.order}, " if query.order else ""
    sql = f"select r.run_id {query.from_sql()} order by {order}r.created_at desc, r.run_id limit ?"
    return [r[0] for r in con.execute(sql, query.params + [limit]).fetchall()]


def list_runs(con: duckdb.DuckDBPyConnection, where: str | None = None, sort: str | None = None,
              limit: int = 200) -> list[dict[str, Any]]:
    """Runs that pass the filter, with their params, tags and metric summaries."""
    check_limit(limit)
    ids = select_run_ids(con, where, sort, limit)
    if not ids:
        return []
    rel = con.execute(f"select {', '.join(LIST_COLUMNS)} from runs where run_id in ({marks(ids)})", ids)
    by_id = {r[0]: {n: jsonable(v) for n, v in zip(LIST_COLUMNS, r)} for r in rel.fetchall()}
    for run in by_id.values():
        run.update(points=0, params={}, tags={}, metrics={})
    for run_id, key, value in con.execute(f"select run_id, key, value from params where run_id in ({marks(ids)}) "
                                          "order by key", ids).fetchall():
        by_id[run_id]["params"][key] = json.loads(value) if value is not None else None
    for run_id, key, value in con.execute(f"select run_id, key, value from tags where run_id in ({marks(ids)}) "
                                          "order by key", ids).fetchall():
        by_id[run_id]["tags"][key] = value
    for i, key, lo, hi, last, last_step, points in _summaries(con, ids):
        run = by_id[ids[i]]
        run["metrics"][key] = {"min": finite(lo), "max": finite(hi), "last": finite(last), "last_step": last_step,
                               "points": points}
        run["points"] += points
    return [by_id[i] for i in ids]


def _summaries(con: duckdb.DuckDBPyConnection, ids: list[str]) -> list[tuple]:
    """(run index, key, min, max, last, last step, points) of every metric of the runs.

    One branch per run, so each groups on ``key`` alone and DuckDB's zone maps
    skip the row groups of other runs (see docs/runs.md, "How it stays fast").
    """
    aggregates = (f"{SUMMARY_SQL['min']}, {SUMMARY_SQL['max']}, {SUMMARY_SQL['last']}, "
                  "arg_max_null(step, seq), count(*)")
    if len(ids) > _MAX_BRANCHES:  # a long list: one grouped join instead of a huge statement
        con.register("_summary_ids", {"run_id": texts(ids), "r": np.arange(len(ids), dtype=np.int64)})
        try:
            return con.execute(f"select i.r, m.key, {aggregates} from metrics m join _summary_ids i "
                               "on i.run_id = m.run_id group by i.r, m.key order by i.r, m.key").fetchall()
        finally:
            con.unregister("_summary_ids")
    parts = [f"select {i} as r, key, {aggregates} from metrics where run_id = ? group by key" for i in range(len(ids))]
    return con.execute(union(parts) + " order by r, key", ids).fetchall() if ids else []


# ------------------------------------------------------------- shared pieces

def union(parts: list[str]) -> str:
    return " union all ".join(f"({p})" for p in parts)


def texts(values: list[str]) -> np.ndarray:
    """A text column DuckDB types as VARCHAR even when it is empty."""
    return np.array(values, dtype=object) if values else np.array([], dtype=str)
