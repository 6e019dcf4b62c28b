"""What ``pipeline show``, ``list`` and ``why`` answer, read from the store (the shapes docs/pipelines.md fixes)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import duckdb
import msgspec

from mlfleet.core.base.errors import NotFoundError
from mlfleet.core.pipelines import records
from mlfleet.core.pipelines.explain import explain
from mlfleet.core.pipelines.graph import upstream_of
from mlfleet.core.pipelines.keys import KeyParts
from mlfleet.core.pipelines.models import decode_pipeline
from mlfleet.core.store.rows import rows


def _iso(value: Any) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def resolve_run(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    """A run id, or a pipeline's name: its newest run."""
    if con.execute("select 1 from pipeline_runs where run_id = ?", [ident]).fetchall():
        return ident
    found = con.execute("select run_id from pipeline_runs where name = ? order by created_at desc limit 1",
                        [ident]).fetchall()
    if found:
        return str(found[0][0])
    raise NotFoundError(f"no pipeline run or pipeline named {ident!r}; see them with 'mlfleet pipeline list'")


def show(con: duckdb.DuckDBPyConnection, ident: str) -> dict[str, Any]:
    run_id = resolve_run(con, ident)
    run = records.get_run(con, run_id)
    spec = con.execute("select spec from pipeline_runs where run_id = ?", [run_id]).fetchall()[0][0]
    pipeline = decode_pipeline(spec if isinstance(spec, (str, bytes)) else json.dumps(spec))
    details = {r["step"]: _json(r["detail"]) for r in rows(con, "select step, detail from pipeline_steps "
                                                                  "where run_id = ?", [run_id])}
    # a step's tracking run: its own job's, or for a cached step the job's of the run it reused (what a gate judged
    # and a register registered, so `run` traces a model version back to this run's step either way)
    tracking = {r["step"]: r["run_id"] for r in rows(con, """select s.step, j.run_id from pipeline_steps s
                 left join pipeline_steps src on src.run_id = s.source_run and src.step = s.step
                 join jobs j on j.job_id = coalesce(s.job_id, src.job_id) where s.run_id = ?""", [run_id])}
    steps = []
    for row in records.run_steps(con, run_id):
        outputs = records.outputs_of(con, run_id, row["step"])
        detail = details.get(row["step"]) or {}
        if row["kind"] == "gate":
            decided = records.gate_decision(con, run_id, row["step"])
            if decided is not None:
                detail = {**detail, "gate": {k: _iso(v) for k, v in decided.items()}}
        steps.append({
            "step": row["step"], "kind": row["kind"], "state": row["state"], "key": row["key"],
            "reasons": (row["reason"] or "").split("; ") if row["reason"] else [], "forced": bool(row["forced"]),
            "job_id": row["job_id"], "run": tracking.get(row["step"]),
            "source_run": row["source_run"], "started_at": _iso(row["started_at"]), "ended_at": _iso(row["ended_at"]),
            "outputs": [{"name": d.name, "path": d.path, "sha256": d.sha256, "size": d.size, "files": d.files}
                        for d in outputs.values()],
            "detail": detail})
    return {"run_id": run_id, "name": run["name"], "project": run["project"], "state": run["state"],
            "trigger": run["trigger"], "cause": run["cause"], "actor": run["actor"], "reason": run["reason"],
            "created_at": _iso(run["created_at"]), "ended_at": _iso(run["ended_at"]), "source": run["source"],
            "upstream": upstream_of(pipeline), "steps": steps}


def list_runs(con: duckdb.DuckDBPyConnection, name: str | None, limit: int) -> list[dict[str, Any]]:
    where, args = ("where r.name = ?", [name]) if name else ("", [])
    found = rows(con, f"""select r.run_id, r.name, r.project, r.state, r.trigger, r.actor, r.created_at, r.ended_at
                          from pipeline_runs r {where} order by r.created_at desc, r.run_id desc limit ?""",
                 [*args, limit])
    counts: dict[str, dict[str, int]] = {}
    if found:
        marks = ",".join("?" for _ in found)
        for r in rows(con, f"select run_id, state, count(*) as n from pipeline_steps where run_id in ({marks}) "
                           "group by run_id, state", [f["run_id"] for f in found]):
            counts.setdefault(r["run_id"], {})[r["state"]] = int(r["n"])
    return [{**{k: _iso(v) for k, v in f.items()}, "steps": counts.get(f["run_id"], {})} for f in found]


def why(con: duckdb.DuckDBPyConnection, ident: str, step: str) -> dict[str, Any]:
    """Why a step ran or was cached: its recorded reasons, and its key parts against the last earlier run that had one."""
    run_id = resolve_run(con, ident)
    run = records.get_run(con, run_id)
    found = [r for r in records.run_steps(con, run_id) if r["step"] == step]
    if not found:
        names = [r["step"] for r in records.run_steps(con, run_id)]
        raise NotFoundError(f"pipeline run {run_id} has no step {step!r} (its steps: {', '.join(names)})")
    row = found[0]
    parts = msgspec.convert(row["key_parts"], KeyParts) if row["key_parts"] else None
    compared = con.execute("""select s.run_id, s.key_parts from pipeline_steps s join pipeline_runs r on r.run_id = s.run_id
                              where r.project = ? and r.name = ? and s.step = ? and s.key_parts is not null
                                and r.created_at < (select created_at from pipeline_runs where run_id = ?)
                              order by r.created_at desc limit 1""",
                           [run["project"], run["name"], step, run_id]).fetchall()
    previous = msgspec.json.decode(compared[0][1], type=KeyParts) if compared else None
    changes = explain(previous, parts) if parts is not None else []
    return {"run_id": run_id, "step": step, "state": row["state"], "key": row["key"],
            "reasons": (row["reason"] or "").split("; ") if row["reason"] else [],
            "changes": changes, "compared_with": compared[0][0] if compared else None}
