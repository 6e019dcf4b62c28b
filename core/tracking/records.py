"""What the controller writes and reads for tracked runs: metrics batches, params, tags, lineage, artifacts.

Plain functions over a DuckDB connection, run on the store's threads. A
metrics batch and its offset commit in one transaction (exactly once).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.tracking import metric_keys
from mlfleet.core.tracking.ingest import ParsedBatch
from mlfleet.core.store.db import jsonable, transaction
from mlfleet.core.store.rows import resolve, rows


def resolve_run_id(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    return resolve(con, "runs", "run_id", ident, "run")



def get_run(con: duckdb.DuckDBPyConnection, ident: str, keys: str | None = None,
            max_keys: int = 100) -> dict[str, Any]:
    """A run with its params, tags, and the first ``max_keys`` of its metric keys (matching the glob ``keys``).

    ``metric_keys`` says how many keys the run has and how many were left
    out; the rest come page by page from :func:`metric_keys.page`.
    """
    run_id = resolve_run_id(con, ident)
    shown = metric_keys.page(con, run_id, keys, None, max_keys)
    run = rows(con, "select * from runs where run_id = ?", [run_id])[0]
    run["command"] = json.loads(run["command"]) if isinstance(run.get("command"), str) else run.get("command")
    run["params"] = {r["key"]: json.loads(r["value"]) for r in
                     rows(con, "select key, value from params where run_id = ? order by key", [run_id])}
    run["tags"] = {r["key"]: r["value"] for r in rows(con, "select key, value from tags where run_id = ? order by key",
                                                      [run_id])}
    # NaN is left out of min and max (DuckDB orders NaN above every number), as runs list and compare do.
    run["metrics"] = [{n: jsonable(v) for n, v in m.items()} for m in shown.pop("metrics")]
    run["metric_keys"] = {"shown": len(run["metrics"]), **shown}
    run["ingest"] = rows(con, "select stream, byte_offset, lines, bad_lines, complete from ingest_offsets "
                              "where run_id = ?", [run_id])
    run["summary"] = {k: {n: jsonable(v) for n, v in s.items()} for k, s in
                      metric_keys.declared(con, run_id, [m["key"] for m in run["metrics"]], max_keys).items()}
    run["artifacts"] = list_artifacts(con, run_id)
    lineage = run.get("lineage")
    lineage = json.loads(lineage) if isinstance(lineage, str) else (lineage or {})
    run["lineage"] = {"spec_hash": run.get("spec_hash"), "code_hash": run.get("code_hash"), "host": run.get("host"),
                      "gpus": run.get("gpus"), **lineage}
    return run


# --------------------------------------------------------- lineage, artifacts

def merge_run_lineage(con: duckdb.DuckDBPyConnection, run_id: str, lineage: dict[str, Any]) -> None:
    with transaction(con):
        merge_lineage(con, run_id, lineage)


def merge_lineage(con: duckdb.DuckDBPyConnection, run_id: str, lineage: dict[str, Any]) -> None:
    found = con.execute("select lineage from runs where run_id = ?", [run_id]).fetchall()
    current = json.loads(found[0][0]) if found and found[0][0] else {}
    current.update(lineage)
    con.execute("update runs set lineage = ? where run_id = ?", [json.dumps(current), run_id])


def list_artifacts(con: duckdb.DuckDBPyConnection, ident: str) -> list[dict[str, Any]]:
    run_id = resolve_run_id(con, ident)
    return rows(con, "select path, size, sha256, created_at from artifacts where run_id = ? order by path", [run_id])


def find_artifact(con: duckdb.DuckDBPyConnection, ident: str, path: str) -> dict[str, Any]:
    """An artifact of a run by its logged path, or by a unique ending of it (``model.pt``)."""
    run_id = resolve_run_id(con, ident)
    found = rows(con, "select run_id, path, size, sha256 from artifacts where run_id = ? and path = ?", [run_id, path])
    if not found:
        tail = "/" + path.lstrip("/")
        found = rows(con, "select run_id, path, size, sha256 from artifacts where run_id = ? and ends_with(path, ?) "
                          "order by path limit 6", [run_id, tail])
    if not found:
        raise NotFoundError(f"run {run_id} has no artifact {path!r}; list them with 'mlfleet runs artifacts {run_id}'")
    if len(found) > 1:
        names = ", ".join(r["path"] for r in found[:5])
        raise UsageError(f"{path!r} matches several artifacts of run {run_id} ({names}); give the whole path")
    artifact = found[0]
    artifact["host"] = con.execute("select host from runs where run_id = ?", [run_id]).fetchall()[0][0]
    return artifact


def ingest_metrics(con: duckdb.DuckDBPyConnection, run_id: str, offset: int, end: int, parsed: ParsedBatch) -> bool:
    """Write one chunk of a run's metrics stream exactly once.

    The chunk is taken only if it starts at the offset already committed;
    points, their per-key summary (``metric_keys``), params, tags and the
    new offset commit together, so a replay
    after any crash is refused by key, not by luck. Returns whether it was taken.
    """
    with transaction(con):
        row = con.execute("select byte_offset, lines from ingest_offsets where run_id = ? and stream = 'metrics'",
                          [run_id]).fetchall()
        if not row or row[0][0] != offset:
            return False
        if parsed.keys:
            n = len(parsed.keys)
            if None in parsed.steps:
                step = np.array([s if s is not None else -1 for s in parsed.steps], dtype=np.int64)
                has_step = np.array([s is not None for s in parsed.steps], dtype=bool)
            else:  # the usual batch: every point has a step, converted in one C call
                step, has_step = np.array(parsed.steps, dtype=np.int64), np.ones(n, dtype=bool)
            batch = {  # run_id is one constant (a parameter), not a column of n strings
                "key": np.array(parsed.keys, dtype=object),
                "step": step,
                "has_step": has_step,
                "value": np.array(parsed.values, dtype=np.float64),
                "ts": np.array(parsed.timestamps, dtype=np.float64),  # None becomes NaN, stored as NULL
                "seq": np.array(parsed.seqs, dtype=np.int64),
            }
            con.register("_metrics_batch", batch)
            try:
                con.execute("""insert into metrics (run_id, key, step, value, ts, seq)
                               select ?, key, case when has_step then step end, value,
                                      case when isnan(ts) then null else to_timestamp(ts) end, seq
                               from _metrics_batch""", [run_id])
                metric_keys.merge_batch(con, run_id, "_metrics_batch")  # same transaction: counted once
            finally:
                con.unregister("_metrics_batch")
        upsert_params(con, run_id, parsed.params)
        upsert_tags(con, run_id, parsed.tags)
        if parsed.summaries:
            con.executemany("""insert into metric_summaries (run_id, key, mode) values (?, ?, ?)
                               on conflict (run_id, key) do update set mode = excluded.mode""",
                            [[run_id, k, v] for k, v in parsed.summaries.items()])
        if parsed.artifacts:
            con.executemany("""insert into artifacts (run_id, path, sha256, size, created_at)
                               values (?, ?, ?, ?, to_timestamp(coalesce(?, epoch(current_timestamp))))
                               on conflict (run_id, path) do update set sha256 = excluded.sha256,
                               size = excluded.size, created_at = excluded.created_at""",
                            [[run_id, path, a["sha256"], a["size"], a["ts"]] for path, a in parsed.artifacts.items()])
        con.execute("""update ingest_offsets set byte_offset = ?, lines = lines + ?, bad_lines = bad_lines + ?
                       where run_id = ? and stream = 'metrics'""", [end, parsed.lines, parsed.bad_lines, run_id])
    return True


def upsert_params(con: duckdb.DuckDBPyConnection, run_id: str, params: dict[str, Any]) -> None:
    """A run's params, last value wins (the spec's at dispatch, then what the job logs)."""
    if params:
        con.executemany(
            """insert into params (run_id, key, value, value_text, value_num) values (?, ?, ?, ?, ?)
               on conflict (run_id, key) do update set value = excluded.value, value_text = excluded.value_text,
               value_num = excluded.value_num""",
            [[run_id, k, json.dumps(v, default=str), v if isinstance(v, str) else json.dumps(v, default=str),
              _param_number(v)] for k, v in params.items()])


def upsert_tags(con: duckdb.DuckDBPyConnection, run_id: str, tags: dict[str, str]) -> None:
    if tags:
        con.executemany("""insert into tags (run_id, key, value) values (?, ?, ?)
                           on conflict (run_id, key) do update set value = excluded.value""",
                        [[run_id, k, v] for k, v in tags.items()])



def _param_number(value: Any) -> float | None:
    """The numeric copy of a param for filters; None for text, bools and integers too big for a double."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None
