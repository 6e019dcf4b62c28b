"""What the controller writes and reads for sweeps: the sweep row, its children, progress and the best run.

Plain functions over a DuckDB connection, run on the store's threads. The
sweep and its children are written inside the jobs' own transaction
(core/jobs/group.py), so a sweep never exists without its jobs or the other
way round.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.store.db import now
from mlfleet.core.store.rows import rows

PROGRESS_STATES = ("pending", "running", "succeeded", "failed", "cancelled", "lost")


def find_by_key(con: duckdb.DuckDBPyConnection, owner: str, key: str) -> dict[str, Any] | None:
    found = rows(con, "select sweep_id, spec_hash, answer, spec from sweeps where owner = ? and submit_key = ?",
                 [owner, key])
    if not found:
        return None
    row = found[0]
    row["answer"] = _json(row["answer"])
    row["spec"] = _json(row["spec"])
    return row


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def insert_sweep(con: duckdb.DuckDBPyConnection, sweep: dict[str, Any], children: list[dict[str, Any]],
                 job_ids: list[str], actor: str) -> dict[str, Any] | None:
    """The sweep and its children's rows (inside the caller's transaction); an earlier submit with the key instead."""
    if sweep.get("key") is not None:
        earlier = find_by_key(con, actor, sweep["key"])
        if earlier is not None:
            return earlier
    taken = con.execute("select sweep_id from sweeps where name = ?", [sweep["name"]]).fetchall()
    if taken:
        raise UsageError(f"a sweep named {sweep['name']!r} exists already ({taken[0][0]}); give this one another "
                         "name with --name, or see it with 'mlfleet sweeps show " + sweep["name"] + "'")
    con.execute("""insert into sweeps (sweep_id, name, project, owner, spec, spec_hash, spec_path, points, max_parallel,
                                       objective_metric, objective_mode, submit_key, answer, created_at)
                   values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?))""",
                [sweep["sweep_id"], sweep["name"], sweep["project"], actor, json.dumps(sweep["spec"]), sweep["spec_hash"],
                 sweep.get("spec_path"), len(children), sweep.get("max_parallel"), sweep.get("metric"),
                 sweep.get("mode"), sweep.get("key"), json.dumps({**sweep["answer"], "jobs": job_ids}), now()])
    con.register("_sweep_batch", {"job_id": np.array(job_ids, dtype=object),
                                  "idx": np.array([c["index"] for c in children], dtype=np.int64),
                                  "point": np.array([json.dumps(c["point"]) for c in children], dtype=object)})
    try:  # one bulk scan, not a statement per child
        con.execute("insert into sweep_jobs (job_id, sweep_id, idx, point) select job_id, ?, idx, point from _sweep_batch",
                    [sweep["sweep_id"]])
    finally:
        con.unregister("_sweep_batch")
    audit(con, actor, "sweep.submit", sweep["sweep_id"], {"name": sweep["name"], "points": len(children),
                                                          "spec_hash": sweep["spec_hash"],
                                                          "max_parallel": sweep.get("max_parallel")})
    return None


def open_members(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Children not ended yet, with their sweep's name and limit: what the hold needs after a restart."""
    return rows(con, """select sj.job_id, sj.idx, s.sweep_id, s.name, s.max_parallel from sweep_jobs sj
                        join sweeps s on s.sweep_id = sj.sweep_id join jobs j on j.job_id = sj.job_id
                        where j.state not in ('succeeded', 'failed', 'cancelled', 'lost')""")


def resolve_sweep(con: duckdb.DuckDBPyConnection, ident: str) -> dict[str, Any]:
    """A sweep by name, or by id (or a unique id prefix)."""
    found = rows(con, "select * from sweeps where name = ?", [ident]) or \
        rows(con, "select * from sweeps where sweep_id like ? || '%' escape '\\'",
             [ident.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")])
    if not found:
        names = [r["name"] for r in rows(con, "select name from sweeps order by created_at desc limit 5")]
        known = f"; sweeps are {', '.join(names)}" if names else "; there are no sweeps yet"
        raise NotFoundError(f"no sweep named {ident!r}{known}")
    if len(found) > 1:
        raise UsageError(f"{ident!r} names {len(found)} sweeps; give more of the id")
    sweep = found[0]
    sweep["spec"] = _json(sweep["spec"])
    sweep["answer"] = _json(sweep["answer"])
    return sweep


_SHOWN = """case when j.cancel_requested_by is not null and j.state in ('dispatched', 'running') then 'cancelling'
            else j.state end"""


def list_sweeps(con: duckdb.DuckDBPyConnection, limit: int = 200) -> list[dict[str, Any]]:
    found = rows(con, """select sweep_id, name, project, owner, points, max_parallel, objective_metric,
                                objective_mode, created_at, cancelled_by from sweeps order by created_at desc limit ?""",
                 [limit])
    for sweep in found:
        sweep["progress"] = progress(con, sweep["sweep_id"])
        sweep["best"] = best_run(con, sweep)
    return found


def progress(con: duckdb.DuckDBPyConnection, sweep_id: str) -> dict[str, int]:
    """Children by state; ``running`` counts dispatched and cancelling ones too (they hold a slot)."""
    counts = dict.fromkeys(PROGRESS_STATES, 0)
    for state, n in con.execute("""select case when j.state in ('dispatched', 'running') then 'running' else j.state end,
                                          count(*) from sweep_jobs sj join jobs j on j.job_id = sj.job_id
                                   where sj.sweep_id = ? group by all""", [sweep_id]).fetchall():
        counts[state] = counts.get(state, 0) + int(n)
    counts["total"] = sum(counts.values())
    return counts


def best_run(con: duckdb.DuckDBPyConnection, sweep: dict[str, Any]) -> dict[str, Any] | None:
    """The run with the lowest (mode min) or highest (max) value of the objective metric so far, with its point."""
    metric, mode = sweep.get("objective_metric"), sweep.get("objective_mode") or "min"
    if not metric:
        return None
    column, order = ("min_value", "asc") if mode == "min" else ("max_value", "desc")
    found = rows(con, f"""select r.run_id, r.job_id, j.name, r.state, mk.{column} as value, sj.idx, sj.point
                          from sweep_jobs sj join runs r on r.job_id = sj.job_id join jobs j on j.job_id = sj.job_id
                          join metric_keys mk on mk.run_id = r.run_id and mk.key = ?
                          where sj.sweep_id = ? and mk.{column} is not null and isfinite(mk.{column})
                          order by mk.{column} {order}, sj.idx limit 1""", [metric, sweep["sweep_id"]])
    if not found:
        return None
    best = found[0]
    best["point"] = _json(best["point"])
    best.update(metric=metric, mode=mode)
    return best


def children(con: duckdb.DuckDBPyConnection, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every child in order, with its state, run and the objective's value for its latest run."""
    metric = sweep.get("objective_metric")
    column = "min_value" if (sweep.get("objective_mode") or "min") == "min" else "max_value"
    found = rows(con, f"""select sj.idx, sj.job_id, j.name, {_SHOWN} as state, j.run_id, j.host, j.reason, sj.point,
                                 mk.{column} as objective
                          from sweep_jobs sj join jobs j on j.job_id = sj.job_id
                          left join metric_keys mk on mk.run_id = j.run_id and mk.key = ?
                          where sj.sweep_id = ? order by sj.idx""", [metric or "", sweep["sweep_id"]])
    for child in found:
        child["point"] = _json(child["point"])
        if child["objective"] is not None and child["objective"] != child["objective"]:  # NaN
            child["objective"] = None
    return found


def job_ids(con: duckdb.DuckDBPyConnection, sweep_id: str) -> list[str]:
    return [r[0] for r in con.execute("select job_id from sweep_jobs where sweep_id = ? order by idx", [sweep_id]).fetchall()]


def mark_cancelled(con: duckdb.DuckDBPyConnection, sweep_id: str, actor: str) -> None:
    con.execute("update sweeps set cancelled_by = coalesce(cancelled_by, ?) where sweep_id = ?", [actor, sweep_id])
    audit(con, actor, "sweep.cancel", sweep_id, {})
