"""Runs out to a file: one row per run, or their metric points, as Parquet or CSV (docs/runs.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import duckdb
import numpy as np

from mlfleet.core.base.errors import UsageError
from mlfleet.core.tracking.export_format import FORMATS, compression, export_format
from mlfleet.core.base.output_path import check_output
from mlfleet.core.store.copy_out import copy_to_file

from mlfleet.core.tracking.run_queries import LIST_COLUMNS, NAN, marks, select_run_ids, texts

MAX_WIDE_KEYS = 2_000  # metric keys in a row per run (10,000 columns) unless they are named
EXPORT_FORMATS = {"parquet": "(format parquet)", "csv": "(format csv, header true)"}
assert set(EXPORT_FORMATS) == set(FORMATS)


def export_runs(con: duckdb.DuckDBPyConnection, output: str, fmt: str | None = None, where: str | None = None,
                sort: str | None = None, points: bool = False, metrics: list[str] | None = None,
                mode: int | None = None, own_folders: Iterable[Path] = (), force: bool = False) -> dict[str, Any]:
    """Write the runs that pass the filter (one row each) or, with ``points``, their metric points (long).

    The format is ``fmt``, or the one ``output``'s name ends in (:func:`export_format`).
    The file appears whole or not at all: DuckDB's COPY writes a temporary
    file next to ``output``, which is then put in its place. Where it may go
    (never into ``own_folders``, over an existing file only with ``force``)
    is core/base/output_path.py's to say, here on the controller, because the TUI
    and scripts call the RPC without the CLI's check.
    """
    fmt = export_format(output, fmt)
    target = check_output(output, own_folders, force)
    ids = select_run_ids(con, where, sort, limit=10_000_000)
    order = np.arange(len(ids), dtype=np.int64)
    con.register("_export_ids", {"run_id": texts(ids), "_order": order})
    try:
        if points:
            keys = list(dict.fromkeys(metrics or []))
            key_filter = f"and m.key in ({marks(keys)})" if keys else ""
            query = ("select m.run_id, m.key, m.step, m.value, m.ts, m.seq from metrics m "
                     f"join _export_ids i on i.run_id = m.run_id where true {key_filter} "
                     "order by i._order, m.key, m.seq")
            params = keys
        else:
            con.register("_export_extra", _wide_columns(con, ids, list(dict.fromkeys(metrics or []))))
            query = (f"select {', '.join('r.' + c for c in LIST_COLUMNS)}, x.* exclude (run_id, _order) "
                     "from runs r join _export_extra x on x.run_id = r.run_id order by x._order")
            params = []
        packed = compression(output) if fmt == "csv" else None  # a fixed word, chosen by the name's ending
        options = EXPORT_FORMATS[fmt][:-1] + (f", compression {packed})" if packed else ")")
        count = copy_to_file(con, query, params, options, target, mode, force)
    finally:
        for name in ("_export_ids", "_export_extra"):
            try:
                con.unregister(name)
            except duckdb.Error:
                pass
    return {"output": str(target), "format": fmt, "rows": count, "runs": len(ids),
            "kind": "points" if points else "runs"}


def _wide_columns(con: duckdb.DuckDBPyConnection, ids: list[str], keys: list[str]) -> dict[str, np.ndarray]:
    """``params.K``, ``tags.K`` and ``metrics.K.min|max|last|last_step|points`` columns, one row per run.

    Column names come from the data and reach DuckDB as the names of a
    registered table's columns, never as SQL text. The metrics are ``keys``,
    or every key of the runs when there are at most MAX_WIDE_KEYS of them: a
    run with a million keys would make five million columns (built here, in
    the controller's memory), so that is refused in one sentence instead.
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
        if len(keys) > MAX_WIDE_KEYS:
            raise UsageError(f"a row per run holds at most {MAX_WIDE_KEYS:,} metric keys, got {len(keys):,} --metric")
        chosen = "where list_contains(?::varchar[], m.key)" if keys else ""
        if not keys:
            found = con.execute("select count(distinct m.key) from metric_keys m "
                                "join _export_ids s on s.run_id = m.run_id").fetchall()[0][0]
            if found > MAX_WIDE_KEYS:
                raise UsageError(f"the {n:,} runs have {found:,} metric keys, 5 columns each, and a row per run holds "
                                 f"at most {MAX_WIDE_KEYS:,} keys; name them with --metric K, or write the points "
                                 "with --metrics")
        for run_id, key, lo, hi, last, last_step, count in con.execute(
                f"""select m.run_id, m.key, m.min_value, m.max_value, nullif(m.last_value, {NAN}), m.last_step, m.points
                    from metric_keys m join _export_ids s on s.run_id = m.run_id {chosen} order by m.key""",
                [keys] if keys else []).fetchall():
            for part, value in (("min", lo), ("max", hi), ("last", last), ("last_step", last_step),
                                ("points", count)):
                put(f"metrics.{key}.{part}", run_id, value)
    out: dict[str, np.ndarray] = {"run_id": texts(ids), "_order": np.arange(n, dtype=np.int64)}
    seen = {"run_id", "_order"} | set(LIST_COLUMNS)
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


def _column(values: list[Any]) -> np.ndarray:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present):
            return np.ma.masked_array([v if v is not None else 0 for v in values], mask=[v is None for v in values],
                                      dtype=np.int64)
        return np.ma.masked_array([v if v is not None else 0.0 for v in values], mask=[v is None for v in values],
                                  dtype=np.float64)
    return np.array([None if v is None else str(v) for v in values], dtype=object)
