"""What the pipelines service writes and reads: runs, their steps' states and keys, outputs, gate decisions.

Plain functions over a DuckDB connection, run on the store's threads (like
core/registry/records.py). The step cache is a query, not a second store:
:func:`cached_step` is the newest *succeeded* step run of the project with
that key, with the outputs it recorded. Whether those outputs are still
there is not the store's to say: the service checks them
(outputs.verify_outputs) and the planner treats a hit that fails the check
as a miss. :func:`settled` gives a run's steps back as the planner reads
them, so a controller that restarts mid-run plans on from what ended.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

import duckdb
import msgspec

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.pipelines.gates import GateDecision
from mlfleet.core.pipelines.keys import KeyParts, StepKey
from mlfleet.core.pipelines.models import Pipeline, encode_pipeline
from mlfleet.core.pipelines.state import ENDED, RUN_STATES, STEP_STATES, CacheHit, OutputDigest, Settled
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import rows

TRIGGERS = ("manual", "schedule", "data", "drift", "after")
_STEP_COLUMNS = ("step, position, kind, state, key, key_parts, forced, job_id, source_run, reason, created_at, "
                 "started_at, ended_at")
_OUTPUT_COLUMNS = "name, path, sha256, size, files, host, stored"


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _parts(value: Any) -> KeyParts | None:
    if value is None:
        return None
    return msgspec.json.decode(value if isinstance(value, (str, bytes)) else json.dumps(value), type=KeyParts)


# ------------------------------------------------------------------ writes

def new_run(con: duckdb.DuckDBPyConnection, pipeline: Pipeline, actor: str, trigger: str = "manual",
            cause: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> str:
    """Record a run of ``pipeline`` (running) and one queued row per step, with its audit event; the run's id.

    ``options``: what the run was asked (``force``, ``no_cache``), kept so a restarted controller plans alike.
    """
    if trigger not in TRIGGERS:
        raise UsageError(f"trigger {trigger!r} is not one of {', '.join(TRIGGERS)}")
    at = now()
    with transaction(con):
        run_id = "p" + secrets.token_hex(6)
        while con.execute("select 1 from pipeline_runs where run_id = ?", [run_id]).fetchall():
            run_id = "p" + secrets.token_hex(6)
        con.execute("""insert into pipeline_runs (run_id, name, project, source, spec, params, state, trigger, cause,
                                                  actor, created_at, options)
                       values (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?, to_timestamp(?), ?)""",
                    [run_id, pipeline.name, pipeline.project, pipeline.source or None,
                     encode_pipeline(pipeline), json.dumps(pipeline.params, default=str), trigger,
                     json.dumps(dict(cause)) if cause is not None else None, actor, at,
                     json.dumps(dict(options)) if options is not None else None])
        con.executemany("""insert into pipeline_steps (run_id, step, position, kind, state, created_at)
                           values (?, ?, ?, ?, 'queued', to_timestamp(?))""",
                        [[run_id, name, i, step.kind, at] for i, (name, step) in enumerate(pipeline.steps.items())])
        audit(con, actor, "pipeline.run", run_id, {"name": pipeline.name, "project": pipeline.project,
                                                   "trigger": trigger, "cause": dict(cause or {})})
    return run_id


def set_step(con: duckdb.DuckDBPyConnection, run_id: str, step: str, state: str, *, key: StepKey | None = None,
             reason: str | None = None, job_id: str | None = None, forced: bool | None = None) -> None:
    """Move a step run to ``state``; the key, reason and job are set when given and kept otherwise.

    ``running`` stamps started_at (once); an ended state stamps ended_at.
    """
    if state not in STEP_STATES:
        raise UsageError(f"step state {state!r} is not one of {', '.join(STEP_STATES)}")
    at = now()
    done = con.execute(
        """update pipeline_steps set state = ?, key = coalesce(?, key), key_parts = coalesce(?, key_parts),
                  reason = coalesce(?, reason), job_id = coalesce(?, job_id), forced = coalesce(?, forced),
                  started_at = case when ? = 'running' and started_at is null then to_timestamp(?) else started_at end,
                  ended_at = case when ? then to_timestamp(?) else ended_at end
           where run_id = ? and step = ? returning 1""",
        [state, key.key if key else None, msgspec.json.encode(key.parts).decode() if key else None, reason, job_id,
         forced, state, at, state in ENDED, at, run_id, step]).fetchall()
    if not done:
        raise NotFoundError(f"pipeline run {run_id} has no step {step!r}")


def record_outputs(con: duckdb.DuckDBPyConnection, run_id: str, step: str,
                   outputs: Mapping[str, OutputDigest]) -> None:
    """The digests of what a step wrote (outputs.hash_outputs), where they are kept."""
    if not outputs:
        return
    at = now()
    con.executemany(f"""insert or replace into pipeline_step_outputs (run_id, step, {_OUTPUT_COLUMNS}, recorded_at)
                        values (?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?))""",
                    [[run_id, step, d.name, d.path, d.sha256, d.size, d.files, d.host, d.stored, at]
                     for d in outputs.values()])


def succeed_step(con: duckdb.DuckDBPyConnection, run_id: str, step: str, outputs: Mapping[str, OutputDigest],
                 reason: str | None = None) -> None:
    """A step that ended well, with its outputs, in one transaction: from now on its key is a cache entry."""
    with transaction(con):
        record_outputs(con, run_id, step, outputs)
        set_step(con, run_id, step, "succeeded", reason=reason)


def mark_cached(con: duckdb.DuckDBPyConnection, run_id: str, step: str, key: StepKey, hit: CacheHit,
                reason: str) -> None:
    """The step reuses ``hit``: state cached, the run it came from, and a copy of the outputs it stands on."""
    with transaction(con):
        _mark_cached(con, run_id, step, key, hit, reason)


def _mark_cached(con: duckdb.DuckDBPyConnection, run_id: str, step: str, key: StepKey, hit: CacheHit,
                 reason: str) -> None:
    set_step(con, run_id, step, "cached", key=key, reason=reason)
    con.execute("update pipeline_steps set source_run = ? where run_id = ? and step = ?", [hit.run_id, run_id, step])
    record_outputs(con, run_id, step, hit.outputs)


def mark_many(con: duckdb.DuckDBPyConnection, run_id: str,
              items: list[tuple[str, str, StepKey | None, CacheHit | None, str]]) -> None:
    """Many steps' plan in one transaction: (step, "cached" or "skipped", key, hit, reason) each.

    Set-based (one update of the steps, one insert of the reused outputs), so a 200-step re-run that is
    all cached costs three statements, not three per step.
    """
    if not items:
        return
    at = now()
    steps = [[step, state, key.key if key else None, msgspec.json.encode(key.parts).decode() if key else None,
              hit.run_id if hit is not None and state == "cached" else None, reason]
             for step, state, key, hit, reason in items]
    outputs = [[run_id, step, d.name, d.path, d.sha256, d.size, d.files, d.host, d.stored, at]
               for step, state, _, hit, _ in items if state == "cached" and hit is not None
               for d in hit.outputs.values()]
    with transaction(con):
        con.execute("create temp table if not exists _plan_marks (step VARCHAR, state VARCHAR, key VARCHAR, "
                    "key_parts VARCHAR, source_run VARCHAR, reason VARCHAR)")
        con.execute("delete from _plan_marks")
        con.executemany("insert into _plan_marks values (?, ?, ?, ?, ?, ?)", steps)
        con.execute("""update pipeline_steps s set state = m.state, key = coalesce(m.key, s.key),
                              key_parts = coalesce(m.key_parts::JSON, s.key_parts), reason = m.reason,
                              source_run = coalesce(m.source_run, s.source_run), ended_at = to_timestamp(?)
                       from _plan_marks m where s.run_id = ? and s.step = m.step""", [at, run_id])
        if outputs:
            con.executemany(f"""insert or replace into pipeline_step_outputs (run_id, step, {_OUTPUT_COLUMNS},
                                                                              recorded_at)
                                values (?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?))""", outputs)


def record_gate(con: duckdb.DuckDBPyConnection, run_id: str, step: str, champion: str, decision: GateDecision, *,
                challenger_run: str | None, champion_version: int | None, champion_run: str | None,
                actor: str = "controller") -> None:
    """A gate's decision and the runs it compared, on the audit chain too; the step ends succeeded or gate-failed."""
    with transaction(con):
        audit(con, actor, "pipeline.gate", f"{run_id}/{step}",
              {"passed": decision.passed, "challenger_run": challenger_run, "champion": champion,
               "champion_version": champion_version, "champion_run": champion_run, "summary": decision.summary,
               "requirements": [{"requirement": r.text, "left": r.left, "right": r.right, "passed": r.passed}
                                for r in decision.requirements]})
        con.execute("""insert or replace into pipeline_gate_decisions (run_id, step, passed, challenger_run, champion,
                                                                       champion_version, champion_run, decision,
                                                                       decided_at)
                       values (?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?))""",
                    [run_id, step, decision.passed, challenger_run, champion, champion_version, champion_run,
                     msgspec.json.encode(decision).decode(), now()])
        set_step(con, run_id, step, "succeeded" if decision.passed else "gate-failed", reason=decision.summary)


def end_run(con: duckdb.DuckDBPyConnection, run_id: str, state: str, reason: str | None = None) -> None:
    if state not in RUN_STATES or state == "running":
        raise UsageError(f"a run ends succeeded, failed or cancelled, not {state!r}")
    done = con.execute("update pipeline_runs set state = ?, reason = ?, ended_at = to_timestamp(?) "
                       "where run_id = ? returning 1", [state, reason, now(), run_id]).fetchall()
    if not done:
        raise NotFoundError(f"no pipeline run {run_id!r}")


# ------------------------------------------------------------------ reads

def outputs_of(con: duckdb.DuckDBPyConnection, run_id: str, step: str) -> dict[str, OutputDigest]:
    found = rows(con, f"select {_OUTPUT_COLUMNS} from pipeline_step_outputs where run_id = ? and step = ? "
                      "order by name", [run_id, step])
    return {r["name"]: msgspec.convert(r, OutputDigest) for r in found}


def cached_step(con: duckdb.DuckDBPyConnection, project: str, key: str) -> CacheHit | None:
    """The newest succeeded step run of ``project`` with ``key``, and its outputs; None when there is none.

    Only steps that ran count (``succeeded``): a cached step's outputs are
    its source's, so the source is the entry. Newest by when it ended.
    """
    found = rows(con, """select s.run_id, s.step, s.key, s.key_parts from pipeline_steps s
                         join pipeline_runs r on r.run_id = s.run_id
                         where r.project = ? and s.key = ? and s.state = 'succeeded'
                         order by s.ended_at desc nulls last, s.run_id desc limit 1""", [project, key])
    if not found:
        return None
    row = found[0]
    return CacheHit(run_id=row["run_id"], step=row["step"], key=row["key"], parts=_parts(row["key_parts"]),
                    outputs=outputs_of(con, row["run_id"], row["step"]))


def cached_steps(con: duckdb.DuckDBPyConnection, project: str, keys: list[str]) -> dict[str, CacheHit]:
    """:func:`cached_step` for many keys in two queries: key -> its newest succeeded step run (absent: none)."""
    if not keys:
        return {}
    marks = ",".join("?" for _ in keys)
    found = rows(con, f"""select run_id, step, key, key_parts from (
                             select s.run_id, s.step, s.key, s.key_parts,
                                    row_number() over (partition by s.key
                                                       order by s.ended_at desc nulls last, s.run_id desc) as n
                             from pipeline_steps s join pipeline_runs r on r.run_id = s.run_id
                             where r.project = ? and s.state = 'succeeded' and s.key in ({marks}))
                          where n = 1""", [project, *keys])
    made = outputs_of_many(con, [(r["run_id"], r["step"]) for r in found])
    return {r["key"]: CacheHit(run_id=r["run_id"], step=r["step"], key=r["key"], parts=_parts(r["key_parts"]),
                               outputs=made.get((r["run_id"], r["step"]), {})) for r in found}


def outputs_of_many(con: duckdb.DuckDBPyConnection,
                    steps: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, OutputDigest]]:
    """:func:`outputs_of` for many (run, step) pairs in one query."""
    if not steps:
        return {}
    runs = sorted({run for run, _ in steps})
    marks = ",".join("?" for _ in runs)
    wanted = set(steps)
    out: dict[tuple[str, str], dict[str, OutputDigest]] = {}
    for r in rows(con, f"select run_id, step, {_OUTPUT_COLUMNS} from pipeline_step_outputs "
                       f"where run_id in ({marks}) order by name", runs):
        pair = (r.pop("run_id"), r.pop("step"))
        if pair in wanted:
            out.setdefault(pair, {})[r["name"]] = msgspec.convert(r, OutputDigest)
    return out


def previous_parts_all(con: duckdb.DuckDBPyConnection, project: str, pipeline: str,
                       before_run: str | None = None) -> dict[str, KeyParts]:
    """:func:`previous_parts` of every step of a pipeline in one query."""
    found = con.execute("""select step, key_parts from (
                               select s.step, s.key_parts,
                                      row_number() over (partition by s.step
                                                         order by r.created_at desc, s.run_id desc) as n
                               from pipeline_steps s join pipeline_runs r on r.run_id = s.run_id
                               where r.project = ? and r.name = ? and s.key_parts is not null
                                 and s.run_id is distinct from ?)
                           where n = 1""", [project, pipeline, before_run]).fetchall()
    return {step: parts for step, raw in found if (parts := _parts(raw)) is not None}


def previous_parts(con: duckdb.DuckDBPyConnection, project: str, pipeline: str, step: str,
                   before_run: str | None = None) -> KeyParts | None:
    """The key parts of the last earlier run of this pipeline's step that had a key (what ``why`` compares with)."""
    found = con.execute("""select s.key_parts from pipeline_steps s join pipeline_runs r on r.run_id = s.run_id
                           where r.project = ? and r.name = ? and s.step = ? and s.key_parts is not null
                             and s.run_id is distinct from ?
                           order by r.created_at desc, s.run_id desc limit 1""",
                        [project, pipeline, step, before_run]).fetchall()
    return _parts(found[0][0]) if found else None


def get_run(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    found = rows(con, """select run_id, name, project, source, params, state, trigger, cause, actor, reason,
                                created_at, ended_at from pipeline_runs where run_id = ?""", [run_id])
    if not found:
        raise NotFoundError(f"no pipeline run {run_id!r}")
    run = found[0]
    run["params"], run["cause"] = _json(run["params"]), _json(run["cause"])
    return run


def run_steps(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    """A run's steps in the file's order: state, key, key parts, job, reason, times."""
    get_run(con, run_id)
    found = rows(con, f"select {_STEP_COLUMNS} from pipeline_steps where run_id = ? order by position", [run_id])
    for row in found:
        row["key_parts"] = _json(row["key_parts"])
    return found


def settled(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Settled]:
    """A run's steps past planning (any state but queued without a key), as plan.plan reads them."""
    out: dict[str, Settled] = {}
    steps = run_steps(con, run_id)
    kept = outputs_of_many(con, [(run_id, r["step"]) for r in steps if r["state"] in ("cached", "succeeded")])
    for row in steps:
        if row["state"] == "queued" and row["key"] is None:
            continue
        parts = _parts(row["key_parts"]) if row["key_parts"] is not None else None
        key = StepKey(key=row["key"], parts=parts) if row["key"] is not None and parts is not None else None
        made = kept.get((run_id, row["step"]), {})
        out[row["step"]] = Settled(state=row["state"], key=key, outputs={n: d.sha256 for n, d in made.items()},
                                   reason=row["reason"])
    return out


def gate_decision(con: duckdb.DuckDBPyConnection, run_id: str, step: str) -> dict[str, Any] | None:
    found = rows(con, """select passed, challenger_run, champion, champion_version, champion_run, decision, decided_at
                         from pipeline_gate_decisions where run_id = ? and step = ?""", [run_id, step])
    if not found:
        return None
    found[0]["decision"] = _json(found[0]["decision"])
    return found[0]
