"""SQL for tracked runs: the filter compiler and the filtered list (docs/runs.md).

Plain functions over a DuckDB connection, run on the store's reader threads.
A filter (:mod:`mlfleet.core.tracking.runfilter`) is compiled here into SQL whose
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

from mlfleet.core.base.errors import UsageError
from mlfleet.core.tracking.runfilter.tree import DERIVED_COLUMNS
from mlfleet.core.tracking.runfilter import COMPARISONS, RUN_COLUMNS, And, Compare, Field, Node, Not, Or, SortKey, fields_of, parse_filter, parse_sort

from mlfleet.core.tracking import metric_keys
from mlfleet.core.store.db import jsonable

_MAX_NESTING = 32  # levels a params.A.B... filter looks into a nested param; a deeper key is only the key as logged
_MAX_BRANCHES = 256  # runs per UNION ALL statement; longer lists take several statements

NAN = metric_keys.NAN
LIST_KEYS = 20  # metric keys per listed run unless asked (a run may have a million)
LIST_ENTRIES = 50_000  # metric keys in one list answer, all runs together (~150 bytes each; a frame is 16 MB)
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
        self.declared: dict[str, str] = {}  # metric key -> alias of its metric_summaries row (metrics.K.summary)
        fields = fields_of(node) + [k.field for k in sort]
        for f in fields:
            if f.source == "metrics" and f.summary == "summary" and f.key not in self.declared:
                alias = self.declared[f.key] = f"s{len(self.declared)}"
                self.joins.append(f"left join metric_summaries {alias} on {alias}.run_id = r.run_id and {alias}.key = ?")
                self.join_params.append(f.key)
            if f.source == "run" or (f.source, f.key) in self.alias:
                continue
            alias = f"{f.source[0]}{len(self.alias)}"
            self.alias[(f.source, f.key)] = alias
            if f.source == "params" and "." in f.key:
                self._nested_param(alias, f.key)
                continue
            if f.source == "env":  # the version of a package in the run's environment (run_packages)
                self.joins.append(f"left join run_packages {alias} on {alias}.run_id = r.run_id and {alias}.name = ?")
                self.join_params.append(f.key)
                continue
            table = "metric_keys" if f.source == "metrics" else f.source  # one summary row per run and key
            self.joins.append(f"left join {table} {alias} on {alias}.run_id = r.run_id and {alias}.key = ?")
            self.join_params.append(f.key)
        self.where = self._node(node) if node is not None else "true"
        self.order = ", ".join(self._order(k) for k in sort)

    def _nested_param(self, alias: str, key: str) -> None:
        """``params.optimizer.lr``: the param ``optimizer.lr`` as logged, else ``lr`` inside the param ``optimizer``.

        Each dot may split the param's key from a path into its JSON value
        (``{"optimizer": {"lr": 0.1}}``, a list index too: ``params.layers.0``);
        the longest key a run logged wins, and a path its value lacks is
        missing (``is null``), as a param never logged is. The keys and paths
        are bound parameters, like every key a filter names. A key of more
        than _MAX_NESTING dots is only the key as logged (a filter of 10,000
        characters could otherwise ask for 5,000 lookups per field).
        """
        parts = key.split(".")
        candidates = [(".".join(parts[:n]), "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts[n:]))
                      for n in range(len(parts), 0, -1) if len(parts) <= _MAX_NESTING + 1 or n == len(parts)]
        rows = ", ".join("(?, ?, ?)" for _ in candidates)
        value = "json_valid(p.value) and json_exists(p.value, c.path)"
        self.joins.append(
            f"""left join (select p.run_id,
                    case when c.path = '' then p.value_num
                         when json_type(p.value, c.path) in ('BIGINT', 'UBIGINT', 'DOUBLE')
                         then try_cast(json_extract_string(p.value, c.path) as double) end as value_num,
                    case when c.path = '' then p.value_text
                         when json_type(p.value, c.path) = 'VARCHAR' then json_extract_string(p.value, c.path)
                         else json_extract(p.value, c.path)::varchar end as value_text
                from params p join (values {rows}) c(key, path, rank) on p.key = c.key
                where c.path = '' or (case when {value} then true else false end)
                qualify row_number() over (partition by p.run_id order by c.rank) = 1) {alias}
             on {alias}.run_id = r.run_id""")
        self.join_params += [v for rank, (k, path) in enumerate(candidates) for v in (k, path, rank)]

    @property
    def params(self) -> list[Any]:
        return self.join_params + self.where_params

    def from_sql(self) -> str:
        return "from runs r " + " ".join(self.joins) + f" where {self.where}"

    def _expr(self, field: Field, as_text: bool = False) -> str:
        """The SQL for a field's value (params: the number, or the text when ``as_text``)."""
        if field.source == "run":
            column = DERIVED_COLUMNS.get(field.key, f"r.{field.key}")  # field.key is one of RUN_COLUMNS (checked by the parser)
            assert field.key in RUN_COLUMNS
            return f"epoch({column})" if RUN_COLUMNS[field.key] == "time" else column
        alias = self.alias[(field.source, field.key)]
        if field.source == "params":
            return f"{alias}.value_text" if as_text else f"{alias}.value_num"
        if field.source == "tags":
            return f"{alias}.value"
        if field.source == "env":
            return f"{alias}.version"
        assert field.summary is not None
        if field.summary == "summary":  # the value of the mode the run declared (track.summary), else missing
            s = self.declared[field.key]
            return (f"(case {s}.mode when 'min' then {alias}.min_value when 'max' then {alias}.max_value "
                    f"when 'last' then nullif({alias}.last_value, {NAN}) end)")
        return metric_keys.summary_sql(alias, field.summary)

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
            if field.source in ("params", "tags", "env"):
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
    return _select(con, parse_filter(where or ""), parse_sort(sort), limit)


def _select(con: duckdb.DuckDBPyConnection, node: Node | None, sort: list[SortKey], limit: int) -> list[str]:
    check_limit(limit, 10_000_000)
    query = _Query(node, sort)
    order = f"{query.order}, " if query.order else ""
    sql = f"select r.run_id {query.from_sql()} order by {order}r.created_at desc, r.run_id limit ?"
    return [r[0] for r in con.execute(sql, query.params + [limit]).fetchall()]


def list_runs(con: duckdb.DuckDBPyConnection, where: str | None = None, sort: str | None = None,
              limit: int = 200, keys: str | None = None, max_keys: int = LIST_KEYS) -> list[dict[str, Any]]:
    """Runs that pass the filter, with their params, tags and the summaries of some of their metric keys.

    Each run carries its first ``max_keys`` keys in key order (those matching
    the glob ``keys``; fewer when that many runs would pass LIST_ENTRIES
    keys in all), and always the keys the filter and sort name;
    ``metric_keys`` counts what was left out, ``points`` is over all keys.
    """
    check_limit(limit)
    metric_keys.check_count("--max-keys", max_keys, metric_keys.MAX_PAGE)
    pattern = metric_keys.check_pattern(keys)
    node, order = parse_filter(where or ""), parse_sort(sort)
    named = list(dict.fromkeys(f.key for f in fields_of(node) + [k.field for k in order] if f.source == "metrics"))
    ids = _select(con, node, order, limit)
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
    shown_matching = [0] * len(ids)
    per_run = max(1, min(max_keys, LIST_ENTRIES // len(ids)))
    for i, matches, key, points, lo, hi, mean, last, last_step in _listed_keys(con, ids, pattern, per_run, named):
        metrics = by_id[ids[i]]["metrics"]
        if key not in metrics:
            metrics[key] = {"min": finite(lo), "max": finite(hi), "mean": finite(mean), "last": finite(last),
                            "last_step": last_step, "points": points}
            shown_matching[i] += bool(matches)
    if named:  # the mode each run declared for the keys the filter names: metrics.K.summary, shown as it compared
        for run_id, key, mode in con.execute(f"""select run_id, key, mode from metric_summaries
                                                 where run_id in ({marks(ids)}) and list_contains(?::varchar[], key)""",
                                             [*ids, named]).fetchall():
            metric = by_id[run_id]["metrics"].get(key)
            if metric is not None and mode in ("min", "max", "last"):
                metric["summary"] = {"mode": mode, "value": metric[mode]}
    for i, total, matching, points in _key_counts(con, ids, pattern):
        run = by_id[ids[i]]
        run["points"] = int(points or 0)
        run["metrics"] = dict(sorted(run["metrics"].items()))
        run["metric_keys"] = {"total": int(total), "matching": int(matching), "shown": len(run["metrics"]),
                              "left_out": int(matching) - shown_matching[i]}
    return [by_id[i] for i in ids]


def _batches(ids: list[str]) -> list[range]:
    """Index ranges of at most _MAX_BRANCHES runs: one statement each, one ``UNION ALL`` branch per run."""
    return [range(a, min(len(ids), a + _MAX_BRANCHES)) for a in range(0, len(ids), _MAX_BRANCHES)]


def _listed_keys(con: duckdb.DuckDBPyConnection, ids: list[str], pattern: str | None, max_keys: int,
                 named: list[str]) -> list[tuple]:
    """(run index, matches the pattern, key, points, min, max, mean, last, last step) of the keys a list shows.

    Per run a top-N in key order (memory bounded by N however many keys the
    run has; zone maps on ``run_id`` skip other runs' rows), plus the keys
    the filter names.
    """
    matches = "key glob ?" if pattern is not None else "true"
    cond = " and key glob ?" if pattern is not None else ""
    glob = [pattern] if pattern is not None else []
    row = metric_keys.ROW_SQL.replace("last_value", f"nullif(last_value, {NAN})")
    out: list[tuple] = []
    for batch in _batches(ids):
        parts, params = [], []
        for i in batch:
            parts.append(f"select {i} as r, {matches}, {row} from metric_keys where run_id = ?{cond} "
                         "order by key limit ?")
            params += glob + [ids[i]] + glob + [max_keys]
            if named:
                parts.append(f"select {i} as r, {matches}, {row} from metric_keys where run_id = ? "
                             "and list_contains(?::varchar[], key)")
                params += glob + [ids[i], named]
        out += con.execute(union(parts), params).fetchall()
    return out


def _key_counts(con: duckdb.DuckDBPyConnection, ids: list[str], pattern: str | None) -> list[tuple]:
    """(run index, keys, keys matching the pattern, points over all keys) of each run."""
    matching = "count(*) filter (where key glob ?)" if pattern is not None else "count(*)"
    glob = [pattern] if pattern is not None else []
    out: list[tuple] = []
    for batch in _batches(ids):
        parts = [f"select {i} as r, count(*), {matching}, sum(points) from metric_keys where run_id = ?"
                 for i in batch]
        out += con.execute(union(parts), [p for i in batch for p in glob + [ids[i]]]).fetchall()
    return out


# ------------------------------------------------------------- shared pieces

def union(parts: list[str]) -> str:
    return " union all ".join(f"({p})" for p in parts)


def texts(values: list[str]) -> np.ndarray:
    """A text column DuckDB types as VARCHAR even when it is empty."""
    return np.array(values, dtype=object) if values else np.array([], dtype=str)
