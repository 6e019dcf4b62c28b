"""What pipeline triggers write and read: armed definitions, their trigger state, every firing.

Plain functions over a DuckDB connection, run on the store's threads (as
records.py). A definition is one per (project, name): a run of a pipeline
file with ``on:`` arms it, a later run of that file re-arms it (the file is
the truth: a run of it without ``on:`` disarms it). Each firing is a row of
``pipeline_trigger_events`` and an audit event with its cause, in one
transaction with the state that accounts for it.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb
import msgspec

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.pipelines.graph import find_cycle
from mlfleet.core.pipelines.models import Pipeline, decode_pipeline, encode_pipeline
from mlfleet.core.pipelines.triggers import (DriftReport, Firing, SucceededRun, TriggerState, arm_state,
                                             has_triggers, next_due)
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import rows

OUTCOMES = ("started", "queued", "replaced", "skipped")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def utc(micros: int) -> datetime:
    """A time read as ``epoch_us(...)``: exact to the microsecond, so marks compare equal to what they marked."""
    return _EPOCH + timedelta(microseconds=int(micros))


def micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _state(value: Any) -> TriggerState:
    return msgspec.json.decode(value if isinstance(value, (str, bytes)) else json.dumps(value), type=TriggerState)


# ------------------------------------------------------------------ definitions

def arm(con: duckdb.DuckDBPyConnection, pipeline: Pipeline, actor: str,
        at: datetime | None = None) -> dict[str, Any] | None:
    """Arm (or re-arm) ``pipeline``'s ``on:``; its definition as :func:`armed` lists it, or None when disarmed.

    Re-arming keeps what the unchanged triggers accounted for (triggers.arm_state).
    A pipeline without ``on:`` disarms the definition of its name, if any.
    """
    if not has_triggers(pipeline.on):
        disarm(con, pipeline.project, pipeline.name, actor, missing_ok=True)
        return None
    at = at or datetime.now(timezone.utc)
    with transaction(con):
        _refuse_after_cycle(con, pipeline)
        old = load_state(con, pipeline.project, pipeline.name)
        state = arm_state(pipeline.on, at, old)
        con.execute("""insert or replace into pipeline_definitions (project, name, spec, source, armed_by, armed_at,
                                                                    state)
                       values (?, ?, ?, ?, ?, make_timestamptz(?::bigint), ?)""",
                    [pipeline.project, pipeline.name, encode_pipeline(pipeline), pipeline.source or None,
                     actor, micros(at), msgspec.json.encode(state).decode()])
        audit(con, actor, "pipeline.arm" if old is None else "pipeline.rearm", f"{pipeline.project}/{pipeline.name}",
              {"on": msgspec.to_builtins(pipeline.on), "concurrency": pipeline.concurrency,
               "source": pipeline.source or None})
    return armed(con, pipeline.name, project=pipeline.project)[0]


def _refuse_after_cycle(con: duckdb.DuckDBPyConnection, pipeline: Pipeline) -> None:
    """``after:`` edges among the project's armed pipelines must not close a loop (a → b → a runs forever)."""
    upstream = {d["name"]: list(d["pipeline"].on.after) for d in armed(con, project=pipeline.project)
                if d["pipeline"] is not None}
    upstream[pipeline.name] = [n for n in pipeline.on.after if n != pipeline.name]
    cycle = find_cycle(upstream)
    if cycle and pipeline.name in cycle:
        links = ", ".join(f"{a} after {b}" for a, b in zip(cycle, cycle[1:]))
        raise UsageError(f"arming pipeline {pipeline.name!r} would close a loop of after: in project "
                         f"{pipeline.project!r} ({links}), so each run would start the next forever; remove one "
                         "after: or disarm one of them")


def disarm(con: duckdb.DuckDBPyConnection, project: str, name: str, actor: str, missing_ok: bool = False) -> bool:
    """Remove a definition (its events stay, as history); False when there was none and ``missing_ok``."""
    with transaction(con):
        done = con.execute("delete from pipeline_definitions where project = ? and name = ? returning 1",
                           [project, name]).fetchall()
        if done:
            audit(con, actor, "pipeline.disarm", f"{project}/{name}", {})
    if not done and not missing_ok:
        raise NotFoundError(f"no armed pipeline {name!r} in project {project!r}; 'mlfleet pipeline triggers' lists them")
    return bool(done)


def armed(con: duckdb.DuckDBPyConnection, name: str | None = None,
          project: str | None = None) -> list[dict[str, Any]]:
    """The armed definitions (all, or of ``name``): project, name, pipeline, source, armed_by, armed_at, state."""
    found = con.execute("""select project, name, spec, source, armed_by, epoch_us(armed_at), state
                           from pipeline_definitions where (? is null or name = ?) and (? is null or project = ?)
                           order by project, name""", [name, name, project, project]).fetchall()
    out = []
    for p, n, spec, source, by, at, state in found:
        try:
            pipeline, problem = decode_pipeline(spec), None
        except msgspec.ValidationError as exc:  # armed by an mlfleet whose Pipeline had other fields
            pipeline, problem = None, f"its armed spec no longer reads ({exc}); run the file again to re-arm it"
        out.append({"project": p, "name": n, "pipeline": pipeline, "problem": problem, "source": source,
                    "armed_by": by, "armed_at": utc(at), "state": _state(state)})
    return out


def load_state(con: duckdb.DuckDBPyConnection, project: str, name: str) -> TriggerState | None:
    found = con.execute("select state from pipeline_definitions where project = ? and name = ?",
                        [project, name]).fetchall()
    return _state(found[0][0]) if found else None


def save_state(con: duckdb.DuckDBPyConnection, project: str, name: str, state: TriggerState) -> bool:
    """Write a definition's trigger state; False when it was disarmed meanwhile (nothing is written then)."""
    done = con.execute("update pipeline_definitions set state = ? where project = ? and name = ? returning 1",
                       [msgspec.json.encode(state).decode(), project, name]).fetchall()
    return bool(done)


def triggers_view(con: duckdb.DuckDBPyConnection, name: str | None = None, limit: int = 50) -> dict[str, Any]:
    """The ``pipeline_triggers`` answer: the armed definitions (with the next schedule time) and recent firings."""
    listed = []
    for d in armed(con, name):
        if d["pipeline"] is None:
            listed.append({"name": d["name"], "project": d["project"], "problem": d["problem"], "on": {},
                           "concurrency": None, "next": {}, "queued": False,
                           "armed_at": d["armed_at"].isoformat(), "armed_by": d["armed_by"]})
            continue
        on, due = d["pipeline"].on, next_due(d["pipeline"].on, d["state"])
        listed.append({"name": d["name"], "project": d["project"], "on": msgspec.to_builtins(on),
                       "concurrency": d["pipeline"].concurrency,
                       "next": {"schedule": due.isoformat()} if due is not None else {},
                       "queued": d["state"].queued is not None, "armed_at": d["armed_at"].isoformat(),
                       "armed_by": d["armed_by"]})
    return {"armed": listed, "history": events(con, name, limit)}


# ------------------------------------------------------------------ firings

def record_event(con: duckdb.DuckDBPyConnection, project: str, name: str, firing: Firing, outcome: str,
                 run_id: str | None, reason: str, actor: str = "controller") -> None:
    """A firing and what came of it, with its audit row ("each firing is audited with its cause")."""
    with transaction(con):
        _insert_event(con, project, name, firing, outcome, run_id, reason, actor)


def _insert_event(con: duckdb.DuckDBPyConnection, project: str, name: str, firing: Firing, outcome: str,
                  run_id: str | None, reason: str, actor: str) -> None:
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r} is not one of {', '.join(OUTCOMES)}")
    cause = {**firing.cause, "reason": reason}
    con.execute("""insert into pipeline_trigger_events (fired_at, project, name, trigger, cause, outcome, run_id)
                   values (make_timestamptz(?::bigint), ?, ?, ?, ?, ?, ?)""",
                [micros(firing.at), project, name, firing.trigger, json.dumps(cause, default=str), outcome, run_id])
    audit(con, actor, "pipeline.trigger", run_id or f"{project}/{name}",
          {"name": name, "project": project, "trigger": firing.trigger, "outcome": outcome, "cause": cause})


def settle_tick(con: duckdb.DuckDBPyConnection, project: str, name: str, state: TriggerState,
                events: list[tuple[Firing, str, str | None, str]], armed_at: datetime,
                actor: str = "controller") -> bool:
    """One definition's tick in one transaction: its events (firing, outcome, run id, reason) and its new state.

    ``armed_at`` is the arming the tick read: when the file was run again
    meanwhile (re-armed), its state wins and only the events are written
    (a firing replayed from it finds its run by its key). False, and
    nothing written, when the definition was disarmed meanwhile.
    """
    with transaction(con):
        found = con.execute("select epoch_us(armed_at) from pipeline_definitions where project = ? and name = ?",
                            [project, name]).fetchall()
        if not found:
            return False
        if utc(found[0][0]) == armed_at:
            save_state(con, project, name, state)
        for firing, outcome, run_id, reason in events:
            _insert_event(con, project, name, firing, outcome, run_id, reason, actor)
    return True


def events(con: duckdb.DuckDBPyConnection, name: str | None = None, limit: int = 50,
           project: str | None = None) -> list[dict[str, Any]]:
    """Firings newest first: at, project, name, trigger, cause, outcome, run_id."""
    found = rows(con, """select fired_at as "at", project, name, trigger, cause, outcome, run_id
                         from pipeline_trigger_events where (? is null or name = ?) and (? is null or project = ?)
                         order by fired_at desc, rowid desc limit ?""", [name, name, project, project, int(limit)])
    for row in found:
        row["cause"] = json.loads(row["cause"]) if isinstance(row["cause"], str) else row["cause"]
    return found


def run_of_firing(con: duckdb.DuckDBPyConnection, project: str, name: str, key: str) -> str | None:
    """The run a firing key (``cause.firing``) already started: a tick replayed after a crash finds it here."""
    found = con.execute("""select run_id from pipeline_runs where project = ? and name = ?
                           and json_extract_string(cause, '$.firing') = ? limit 1""", [project, name, key]).fetchall()
    return found[0][0] if found else None


# ------------------------------------------------------------------ observations

def running_runs(con: duckdb.DuckDBPyConnection, project: str, name: str) -> list[str]:
    """The runs of a pipeline still going, oldest first."""
    return [r[0] for r in con.execute("""select run_id from pipeline_runs where project = ? and name = ?
                                         and state = 'running' order by created_at, run_id""",
                                      [project, name]).fetchall()]


def succeeded_since(con: duckdb.DuckDBPyConnection, project: str, names: list[str], since: datetime,
                    limit: int = 100) -> list[SucceededRun]:
    """Succeeded runs of ``names`` in ``project`` that ended at or after ``since``, oldest first."""
    if not names:
        return []
    found = con.execute("""select name, run_id, epoch_us(ended_at) from pipeline_runs
                           where project = ? and list_contains(?, name) and state = 'succeeded'
                             and ended_at is not null and epoch_us(ended_at) >= ?
                           order by ended_at, run_id limit ?""", [project, names, micros(since), limit]).fetchall()
    return [SucceededRun(name=n, run_id=r, ended_at=utc(at)) for n, r, at in found]


def drift_reports_since(con: duckdb.DuckDBPyConnection, deployment: str, since: datetime,
                        limit: int = 100) -> list[DriftReport]:
    """Drift reports linked to ``deployment`` (core/drift/records.py save_report) made at or after ``since``.

    A report a pipeline's drift step saved has the actor ``pipeline:RUN_ID``
    (REPORT_ACTOR); ``made_by`` names that run's pipeline (PROJECT/NAME), so a
    pipeline's own check never fires its own drift trigger.
    """
    found = con.execute("""select d.report_id, epoch_us(d.created_at), d.drifted, d.drifted_columns, d.drift_share,
                                  r.project || '/' || r.name,
                                  (select list(c.column_name order by c.position) from drift_columns c
                                   where c.report_id = d.report_id and c.drifted)
                           from drift_reports d left join pipeline_runs r on d.actor = 'pipeline:' || r.run_id
                           where d.deployment = ? and epoch_us(d.created_at) >= ?
                           order by d.created_at, d.report_id limit ?""",
                        [deployment, micros(since), limit]).fetchall()
    return [DriftReport(report_id=r, created_at=utc(at), drifted=bool(d), drifted_columns=int(c or 0),
                        drift_share=float(s or 0.0), made_by=by, drifted_features=tuple(f or ()))
            for r, at, d, c, s, by, f in found]


def newest_output(con: duckdb.DuckDBPyConnection, project: str, name: str, step: str,
                  output: str) -> str | None:
    """Where the controller keeps ``step``'s output ``output`` of this pipeline's newest succeeded or cached step run
    (what ``on: drift: reference: STEP.outputs.NAME`` compares with); None when no run has it stored."""
    found = con.execute("""select o.stored from pipeline_step_outputs o
                           join pipeline_steps s on s.run_id = o.run_id and s.step = o.step
                           join pipeline_runs r on r.run_id = s.run_id
                           where r.project = ? and r.name = ? and s.step = ? and o.name = ?
                             and s.state in ('succeeded', 'cached') and o.stored is not null
                           order by coalesce(s.ended_at, s.created_at) desc, r.created_at desc limit 1""",
                        [project, name, step, output]).fetchall()
    return str(found[0][0]) if found else None


def report_actor(run_id: str) -> str:
    """The actor a pipeline's drift step saves its report as (so its own drift trigger knows it: see above)."""
    return f"pipeline:{run_id}"


def now_utc() -> datetime:
    return datetime.fromtimestamp(now(), timezone.utc)
