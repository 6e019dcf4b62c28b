"""The DuckDB side of a drift check: scans and aggregates, never raw rows into Python.

Each column of each side is reduced once to a value-count table (value,
count), a temporary DuckDB table that spills to disk past the memory
limit. Everything else (null and infinity counts, moments, quantile edges,
bin counts, categories, the merged ECDFs for KS and Wasserstein) is an
aggregate over those tables, so what comes back to Python is a few numbers
per column, whatever the size of the data.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import duckdb

from mlfleet.core.base.errors import UsageError

from mlfleet.core.drift import types
from mlfleet.core.drift.sources import FileSource, sql_name, sql_string


@dataclass
class Side:
    """One side of a check as DuckDB sees it."""

    label: str
    relation: str  # a view or table name
    types: dict[str, str]  # column -> DuckDB type, in file order
    rows: int


@dataclass
class NumericSummary:
    rows: int
    nulls: int  # NULL or NaN
    pos_inf: int
    neg_inf: int
    finite: int
    distinct: int  # distinct finite values
    min: float | None
    max: float | None
    mean: float | None
    std: float | None  # population standard deviation of the finite values


@dataclass
class CategorySummary:
    rows: int
    nulls: int
    distinct: int
    counts: dict[str, int] | None  # None when there are more than max_categories


class Engine:
    """An in-memory DuckDB connection over the user's files, spilling to a private temp folder."""

    def __init__(self, memory_limit: str | None = "2GB", threads: int | None = None) -> None:
        self._tmp = tempfile.mkdtemp(prefix="mlfleet-drift-")
        self.con = duckdb.connect(":memory:")
        self.con.execute(f"set temp_directory = {sql_string(self._tmp)}")
        self.con.execute("set preserve_insertion_order = false")
        self.con.execute("set enable_progress_bar = false")  # it would write into --json output
        self.con.execute("set TimeZone = 'UTC'")  # text and naive timestamps read the same on every machine
        if memory_limit:
            try:
                self.con.execute(f"set memory_limit = {sql_string(memory_limit)}")
            except duckdb.Error:
                raise UsageError(f"engine.memory_limit {memory_limit!r} is not a size; write it like 2GB or 512MB") \
                    from None
        if threads:
            self.con.execute(f"set threads = {int(threads)}")
        self._names = 0
        self._tables: set[str] = set()
        self._raw: set[str] = set()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _name(self, prefix: str) -> str:
        self._names += 1
        name = f"{prefix}_{self._names}"
        if prefix == "vc":
            self._tables.add(name)
        return name

    def execute(self, sql: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, params or [])
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"DuckDB could not read the data: {first}") from None

    # ------------------------------------------------------------ sides
    def describe(self, source: FileSource) -> dict[str, str]:
        """Column names and types only (a schema read; CSV types come from a sample)."""
        try:
            described = self.con.execute(f"describe select * from {source.table_function()}").fetchall()
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"{source.label}: DuckDB cannot read it as {source.fmt} ({first}); "
                             "check that the files are well-formed") from None
        return {str(r[0]): str(r[1]) for r in described}

    def open_side(self, source: FileSource) -> Side:
        """A view over Parquet (read in place, column by column); CSV and JSON are parsed once into a table."""
        name = self._name("side")
        kind = "view" if source.fmt == "parquet" else "temp table"
        try:
            self.con.execute(f"create {kind} {name} as select * from {source.table_function()}")
            described = self.con.execute(f"describe select * from {name}").fetchall()
            rows = int(self.con.execute(f"select count(*) from {name}").fetchone()[0])
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0]
            raise UsageError(f"{source.label}: DuckDB cannot read it as {source.fmt} ({first}); "
                             "check that the files are well-formed") from None
        return Side(source.label, name, {str(r[0]): str(r[1]) for r in described}, rows)

    def numeric_counts(self, side: Side, column: str, grouped: bool = True, measure: str = types.NUMBER) -> str:
        """A relation (v DOUBLE, n BIGINT) over the column's values, NULL and NaN included.

        measure: what the values are (types.MEASURES); times, times of day and durations become
        seconds on that measure's scale (types.SCALES), so they are compared as numbers.

        grouped: a temp table of each distinct value with its count (what a profile saves).
        Otherwise a view of the raw values with n = 1: every aggregate below is a sum of n, so
        the answers are the same, and a direct check skips a hash aggregation that, for
        continuous data, has as many groups as rows.
        """
        if not grouped:
            name = self._name("raw")
            self.execute(f"create temp view {name} as select {types.to_double_sql(sql_name(column), measure)} as v, "
                         f"1::bigint as n from {side.relation}")
            self._raw.add(name)
            return name
        name = self._name("vc")
        self.execute(f"create temp table {name} as select {types.to_double_sql(sql_name(column), measure)} as v, "
                     f"count(*)::bigint as n from {side.relation} group by 1")
        return name

    def compact(self, numeric: str, rows: int, distinct: int) -> str:
        """Group a raw view by value when that shrinks it at least tenfold (integers, codes, ties):
        the sorted walk then sorts the distinct values, not the rows. Returns the relation to use."""
        if numeric not in self._raw or distinct * 10 > rows:
            return numeric
        name = self._name("vc")
        self.execute(f"create temp table {name} as select v, sum(n)::bigint as n from {numeric} group by v")
        self.drop(numeric)
        return name

    def text_counts(self, side: Side, column: str) -> str:
        """A temp table (label VARCHAR, n BIGINT) of the column's values as text."""
        name = self._name("vc")
        self.execute(f"create temp table {name} as select cast({sql_name(column)} as varchar) as label, "
                     f"count(*)::bigint as n from {side.relation} group by 1")
        return name

    def labels_from_numbers(self, numeric_vc: str, measure: str = types.NUMBER) -> str:
        """Categories from a numeric value-count relation; values are written as doubles on both sides
        so that an integer column and a float column agree (1 and 1.0 are both '1.0'); NaN is null.
        A time, time of day or duration is written as one (a date category reads as a date)."""
        name = self._name("vc")
        self.execute(f"create temp table {name} as select case when isnan(v) then null else "
                     f"{types.label_sql('v', measure)} end as label, sum(n)::bigint as n from {numeric_vc} group by 1")
        return name

    def parse_labels(self, text_vc: str, measure: str) -> tuple[str, int, str | None, int]:
        """Text value counts parsed as ``measure``: (the numeric relation, how many non-null values do not
        parse, one of them, how many do). Used where one side holds as text what the other holds as a type."""
        target = types.PARSE_AS[measure]
        bad, example, good = self.execute(
            f"select coalesce(sum(n) filter (where try_cast(label as {target}) is null), 0), "
            f"min(label) filter (where try_cast(label as {target}) is null), "
            f"coalesce(sum(n) filter (where try_cast(label as {target}) is not null), 0) "
            f"from {text_vc} where label is not null").fetchone()
        name = self._name("vc")
        self.execute(f"create temp table {name} as select "
                     f"{types.to_double_sql(f'try_cast(label as {target})', measure)} as v, sum(n)::bigint as n "
                     f"from {text_vc} group by 1")
        return name, int(bad), None if example is None else str(example), int(good)

    def drop(self, *relations: str | None) -> None:
        """Free value-count tables (views over saved files cost nothing to keep)."""
        for rel in relations:
            if rel and rel in self._tables:
                self._tables.discard(rel)
                self.con.execute(f"drop table if exists {rel}")
            elif rel and rel in self._raw:
                self._raw.discard(rel)
                self.con.execute(f"drop view if exists {rel}")

    # ------------------------------------------------------- aggregates
    def numeric_summary(self, vc: str) -> NumericSummary:
        if vc in self._raw:
            return self._raw_summary(vc)
        row = self.execute(f"""
            select coalesce(sum(n), 0), coalesce(sum(n) filter (where v is null or isnan(v)), 0),
                   coalesce(sum(n) filter (where v = 'inf'::double), 0),
                   coalesce(sum(n) filter (where v = '-inf'::double), 0),
                   coalesce(sum(n) filter (where isfinite(v)), 0), count(*) filter (where isfinite(v)),
                   min(v) filter (where isfinite(v)), max(v) filter (where isfinite(v)),
                   sum(v * n) filter (where isfinite(v)) / sum(n) filter (where isfinite(v))
            from {vc}""").fetchone()
        rows, nulls, pos_inf, neg_inf, finite, distinct, lo, hi, mean = row
        std = None
        if finite:
            var = self.execute(f"select sum(n * (v - ?) * (v - ?)) / ? from {vc} where isfinite(v)",
                               [mean, mean, int(finite)]).fetchone()[0]
            std = max(float(var), 0.0) ** 0.5
        return NumericSummary(int(rows), int(nulls), int(pos_inf), int(neg_inf), int(finite), int(distinct),
                              None if lo is None else float(lo), None if hi is None else float(hi),
                              None if mean is None else float(mean), std)

    def _raw_summary(self, raw: str) -> NumericSummary:
        """The same summary in one scan of raw values; the distinct count is exact when it is small
        (<= 1000, where it decides the kind), DuckDB's HyperLogLog estimate above."""
        row = self.execute(f"""
            select count(*), count(*) filter (where v is null or isnan(v)),
                   count(*) filter (where v = 'inf'::double), count(*) filter (where v = '-inf'::double),
                   count(*) filter (where isfinite(v)), approx_count_distinct(v) filter (where isfinite(v)),
                   min(v) filter (where isfinite(v)), max(v) filter (where isfinite(v)),
                   avg(v) filter (where isfinite(v)), stddev_pop(v) filter (where isfinite(v))
            from {raw}""").fetchone()
        rows, nulls, pos_inf, neg_inf, finite, distinct, lo, hi, mean, std = row
        if distinct <= 1000:
            distinct = self.execute(f"select count(distinct v) from {raw} where isfinite(v)").fetchone()[0]
        return NumericSummary(int(rows), int(nulls), int(pos_inf), int(neg_inf), int(finite), int(distinct),
                              None if lo is None else float(lo), None if hi is None else float(hi),
                              None if mean is None else float(mean), None if std is None else float(std))

    def quantiles(self, vc: str, bins: int, finite: int) -> list[float | None]:
        """For k = 1 .. bins-1, the smallest finite value x with C(x) * bins >= k * n (one sorted walk)."""
        picks = ", ".join(f"min(v) filter (where cum * {int(bins)} >= {k} * {int(finite)})" for k in range(1, bins))
        row = self.execute(f"""
            select {picks} from (
                select v, sum(n) over (order by v range between unbounded preceding and current row) as cum
                from {vc} where isfinite(v))""").fetchone()
        return [None if x is None else float(x) for x in row]

    def bin_counts(self, vc: str, edges: list[float]) -> list[int]:
        """Counts per bin (-inf, e0], (e0, e1], ..., (e_last, +inf); infinities land in the outer bins."""
        index = " + ".join(f"(v > {float(e)!r}::double)::int" for e in edges) or "0"
        found = dict(self.execute(f"select {index} as bin, sum(n)::bigint from {vc} "
                                  "where v is not null and not isnan(v) group by bin").fetchall())
        return [int(found.get(i, 0)) for i in range(len(edges) + 1)]

    def out_of_range(self, vc: str, lo: float, hi: float) -> int:
        value = self.execute(f"select coalesce(sum(n), 0) from {vc} where v is not null and not isnan(v) "
                             f"and (v < ? or v > ?)", [lo, hi]).fetchone()[0]
        return int(value)

    def ks_wasserstein(self, ref_vc: str, cur_vc: str, n_ref: int, n_cur: int,
                       bins: int) -> tuple[int, float, list[float | None], tuple[float, float]]:
        """One ordered walk over the finite values of both sides together, inside DuckDB.

        With C_ref, C_cur the cumulative counts at each value (a RANGE frame, so tied values,
        within and across sides, all see the count after the tie), returns the exact integer
        max |C_ref(x) n_cur - C_cur(x) n_ref| (KS D times n_ref n_cur), the integral of
        |F_ref - F_cur| (Wasserstein-1), the reference's quantiles as :meth:`quantiles`, and the
        (lower) medians of the reference and the current values, from the same walk.
        """
        picks = ", ".join(f"min(v) filter (where r > 0 and cr * {int(bins)} >= {k} * {int(n_ref)})"
                          for k in range(1, bins))
        row = self.execute(f"""
            with both_sides as (
                select v, n as r, 0::bigint as c from {ref_vc} where isfinite(v)
                union all
                select v, 0::bigint, n from {cur_vc} where isfinite(v)),
            walked as (
                select v, r, c, sum(r) over w as cr, sum(c) over w as cc, lead(v) over w as next_v
                from both_sides window w as (order by v range between unbounded preceding and current row))
            select max(abs(cr * {int(n_cur)} - cc * {int(n_ref)})),
                   sum(abs(cr / {int(n_ref)} - cc / {int(n_cur)}) * (next_v - v)) filter (where next_v is not null),
                   min(v) filter (where r > 0 and cr * 2 >= {int(n_ref)}),
                   min(v) filter (where c > 0 and cc * 2 >= {int(n_cur)}),
                   {picks}
            from walked""").fetchone()
        return (int(row[0] or 0), float(row[1] or 0.0), [None if x is None else float(x) for x in row[4:]],
                (float(row[2]), float(row[3])))

    def category_summary(self, vc: str, max_categories: int) -> CategorySummary:
        rows, nulls, distinct = self.execute(
            f"select coalesce(sum(n), 0), coalesce(sum(n) filter (where label is null), 0), "
            f"count(*) filter (where label is not null) from {vc}").fetchone()
        counts = None
        if distinct <= max_categories:
            counts = {str(k): int(v) for k, v in
                      self.execute(f"select label, n from {vc} where label is not null").fetchall()}
        return CategorySummary(int(rows), int(nulls), int(distinct), counts)

    def counts_of_reference_categories(self, cur_vc: str, ref_vc: str) -> dict[str, int]:
        """The current counts of the reference's categories only (for a current side with too many to fetch)."""
        return {str(k): int(v) for k, v in self.execute(
            f"select r.label, coalesce(c.n, 0) from {ref_vc} r left join {cur_vc} c on r.label = c.label "
            "where r.label is not null").fetchall()}

    # ---------------------------------------------------------- profile
    def copy_to_parquet(self, relation: str, path: str) -> None:
        self.execute(f"copy (select * from {relation}) to {sql_string(path)} (format parquet)")

    def parquet_relation(self, path: str) -> str:
        """A saved value-count file as a relation (read in place)."""
        name = self._name("saved")
        self.execute(f"create temp view {name} as select * from read_parquet({sql_string(path)})")
        return name
