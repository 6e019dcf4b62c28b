"""What a run's driver reads and writes in the store, on the store's thread (core/pipelines/driver.py).

Kept apart from the driver's loop so each reads as one thing: the loop
decides, these are the queries and the small transactions it makes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from mlfleet.core.base.models import TERMINAL_STATES
from mlfleet.core.pipelines import records
from mlfleet.core.pipelines.keys import KeyParts, champion_input
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.step_run import StepOutcome
from mlfleet.core.store.db import transaction
from mlfleet.core.store.rows import rows

def champions(con: duckdb.DuckDBPyConnection, pipeline: Pipeline) -> dict[str, str]:
    """Each gate's NAME@ALIAS -> the model file behind it now (its sha256 and version), or "none"."""
    out: dict[str, str] = {}
    for step in pipeline.steps.values():
        if step.gate is None or champion_input(step) is None:
            continue
        name, _, alias = step.gate.champion.partition("@")
        found = con.execute("""select v.version, v.sha256 from model_alias_history h
                               join model_versions v on v.name = h.name and v.version = h.to_version
                               where h.name = ? and h.alias = ? order by h.id desc limit 1""", [name, alias]).fetchall()
        out[step.gate.champion] = f"v{found[0][0]} {found[0][1]}" if found else "none"
    return out


def previous_parts(con: duckdb.DuckDBPyConnection, pipeline: Pipeline, run_id: str) -> dict[str, KeyParts]:
    """Each step's key parts in the last earlier run of this pipeline that had them (explain's "before")."""
    return records.previous_parts_all(con, pipeline.project, pipeline.name, before_run=run_id)


def ended_job_steps(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    terminal = ",".join(f"'{s}'" for s in sorted(TERMINAL_STATES))
    return rows(con, f"""select s.step, s.job_id, s.reason, j.state as job_state, j.reason as job_reason, j.host, j.run_id
                         from pipeline_steps s join jobs j on j.job_id = s.job_id
                         where s.run_id = ? and s.state = 'running' and j.state in ({terminal})""", [run_id])


def stored_outputs(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[tuple[str, str], Path]:
    found = rows(con, "select step, name, stored from pipeline_step_outputs where run_id = ? and stored is not null",
                 [run_id])
    return {(r["step"], r["name"]): Path(r["stored"]) for r in found}


def job_runs(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, str]:
    """Each job step of the run -> the tracking run behind it (a cached step's: the run it reused)."""
    found = rows(con, """select s.step, coalesce(j.run_id, src_job.run_id) as run
                         from pipeline_steps s
                         left join jobs j on j.job_id = s.job_id
                         left join pipeline_steps src on src.run_id = s.source_run and src.step = s.step
                         left join jobs src_job on src_job.job_id = src.job_id
                         where s.run_id = ? and s.kind = 'job'""", [run_id])
    return {r["step"]: r["run"] for r in found if r["run"]}


def outcomes(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, StepOutcome]:
    found = rows(con, "select step, state, reason, detail from pipeline_steps where run_id = ? and detail is not null",
                 [run_id])
    out = {}
    for r in found:
        detail = json.loads(r["detail"]) if isinstance(r["detail"], str) else r["detail"]
        state = r["state"] if r["state"] in ("succeeded", "failed", "gate-failed") else "failed"
        out[r["step"]] = StepOutcome(state, r["reason"] or "", detail or {})
    return out


def record_outcome(con: duckdb.DuckDBPyConnection, run_id: str, step: str, outcome: StepOutcome) -> None:
    with transaction(con):
        records.set_step(con, run_id, step, outcome.state, reason=outcome.reason)
        con.execute("update pipeline_steps set detail = ? where run_id = ? and step = ?",
                    [json.dumps(outcome.details, default=str), run_id, step])


def requeue_interrupted(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    con.execute("""update pipeline_steps set state = 'queued', key = null, key_parts = null, started_at = null
                   where run_id = ? and state = 'running' and kind <> 'job'""", [run_id])


def end_if_running(con: duckdb.DuckDBPyConnection, run_id: str, state: str, reason: str) -> None:
    if con.execute("select state from pipeline_runs where run_id = ?", [run_id]).fetchall()[0][0] == "running":
        records.end_run(con, run_id, state, reason)
