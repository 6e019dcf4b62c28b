"""What the controller writes and reads for jobs: submits, dispatches, state changes and their events.

Plain functions over a DuckDB connection, run on the store's threads. Each
state change and its event (and audit row) commit in one transaction.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import TERMINAL_STATES
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import resolve, rows
from mlfleet.core.tracking.records import merge_lineage, upsert_params, upsert_tags


def insert_job(con: duckdb.DuckDBPyConnection, job: dict[str, Any], actor: str) -> None:
    with transaction(con):
        insert_job_rows(con, job, actor)


def insert_job_rows(con: duckdb.DuckDBPyConnection, job: dict[str, Any], actor: str) -> None:
    """The job, its first event and its one ``job.submit`` audit, inside the caller's transaction."""
    con.execute(
        """insert into jobs (job_id, name, project, owner, spec, spec_hash, spec_path, priority, state, reason,
                             attempt, max_attempts, submitted_at, code_hash, lineage)
           values (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 0, ?, to_timestamp(?), ?, ?)""",
        [job["job_id"], job["name"], job["project"], job["owner"], json.dumps(job["spec"]), job["spec_hash"],
         job.get("spec_path"), job["priority"], job.get("reason", "waiting for the scheduler"),
         job["max_attempts"], job["submitted_at"], job.get("code_hash"),
         json.dumps(job["lineage"]) if job.get("lineage") is not None else None])
    _event(con, job["job_id"], "pending", "submitted", None, None)
    detail = {"name": job["name"], "project": job["project"], "spec_hash": job["spec_hash"],
              "spec_path": job.get("spec_path")}
    if job.get("key") is not None:
        detail["key"] = job["key"]
    audit(con, actor, "job.submit", job["job_id"], detail)


def _event(con: duckdb.DuckDBPyConnection, job_id: str, state: str, reason: str | None,
           host: str | None, run_id: str | None) -> None:
    con.execute("insert into job_events (job_id, ts, state, reason, host, run_id) values (?, to_timestamp(?), ?, ?, ?, ?)",
                [job_id, now(), state, reason, host, run_id])


def set_pending_reason(con: duckdb.DuckDBPyConnection, reasons: dict[str, str]) -> None:
    """Refresh the short "why pending" of waiting jobs (no event: it is not a transition)."""
    if not reasons:
        return
    con.executemany("update jobs set reason = ? where job_id = ? and state = 'pending' and reason is distinct from ?",
                    [[r, j, r] for j, r in reasons.items()])


def dispatch(con: duckdb.DuckDBPyConnection, job_id: str, run: dict[str, Any]) -> None:
    """Record an attempt: a new run, the job dispatched to it, one event."""
    with transaction(con):
        con.execute(
            """insert into runs (run_id, job_id, attempt, project, name, owner, host, gpus, state, spec_hash,
                                 workdir, command, created_at, code_hash)
               values (?, ?, ?, ?, ?, ?, ?, ?, 'dispatched', ?, ?, ?, to_timestamp(?), ?)""",
            [run["run_id"], job_id, run["attempt"], run["project"], run["name"], run["owner"], run["host"],
             run["gpus"], run["spec_hash"], run["workdir"], json.dumps(run["command"]), now(), run.get("code_hash")])
        con.execute("""insert into ingest_offsets (run_id, stream, byte_offset, lines) values (?, 'metrics', 0, 0)
                       on conflict do nothing""", [run["run_id"]])
        # What the spec declares is part of the run from its first moment; a value the job logs
        # for the same key later (track.log_params) replaces it: the job knows what it really used.
        upsert_params(con, run["run_id"], run.get("params") or {})
        upsert_tags(con, run["run_id"], {str(k): str(v) for k, v in (run.get("tags") or {}).items()})
        # The run starts with the job's submit-time lineage (git); the agent and the end add the rest.
        con.execute("update runs set lineage = (select lineage from jobs where job_id = ?) where run_id = ?",
                    [job_id, run["run_id"]])
        con.execute("""update jobs set state = 'dispatched', reason = ?, attempt = ?, host = ?, gpus = ?, run_id = ?
                       where job_id = ?""",
                    [f"dispatched to {run['host']}" + (f": {run['note']}" if run.get("note") else ""),
                     run["attempt"], run["host"], run["gpus"], run["run_id"], job_id])
        why = f" ({run['note']})" if run.get("note") else ""  # more than best fit chose the host, e.g. a built env
        _event(con, job_id, "dispatched", f"placed on {run['host']}{why}", run["host"], run["run_id"])


def mark_preparing(con: duckdb.DuckDBPyConnection, job_id: str, run_id: str, host: str) -> None:
    """A dispatched run whose environment is being prepared (resolved, shipped, built on the node)."""
    with transaction(con):
        con.execute("update runs set state = 'preparing' where run_id = ? and state = 'dispatched'", [run_id])
        changed = con.execute("""update jobs set state = 'preparing', reason = ?, preparing_since = to_timestamp(?)
                                 where job_id = ? and run_id = ? and state = 'dispatched' returning job_id""",
                              [f"preparing its environment on {host}", now(), job_id, run_id]).fetchall()
        if changed:
            _event(con, job_id, "preparing", f"preparing its environment on {host}", host, run_id)


def mark_running(con: duckdb.DuckDBPyConnection, job_id: str, run_id: str, started_at: float | None) -> None:
    with transaction(con):
        con.execute("update runs set state = 'running', started_at = to_timestamp(?) where run_id = ?",
                    [started_at or now(), run_id])
        con.execute("""update jobs set state = 'running', reason = null,
                       started_at = coalesce(started_at, to_timestamp(?)) where job_id = ?""", [started_at or now(), job_id])
        host = con.execute("select host from runs where run_id = ?", [run_id]).fetchall()
        _event(con, job_id, "running", "process started", host[0][0] if host else None, run_id)


def finish_run(con: duckdb.DuckDBPyConnection, job_id: str, run_id: str, run_state: str, job_state: str,
               reason: str, exit_code: int | None, signal: int | None, finished_at: float | None,
               end_reason: str, actor: str | None = None, lineage: dict[str, Any] | None = None) -> None:
    """Close an attempt; ``job_state`` is terminal, or ``pending`` when the job will retry.

    ``lineage`` (GPU use, what the agent reported) is merged into the run's lineage.
    """
    ts = finished_at or now()
    with transaction(con):
        if lineage:
            merge_lineage(con, run_id, lineage)
        con.execute("""update runs set state = ?, finished_at = to_timestamp(?), exit_code = ?, signal = ?,
                       end_reason = ? where run_id = ?""", [run_state, ts, exit_code, signal, end_reason, run_id])
        con.execute("update ingest_offsets set complete = true where run_id = ?", [run_id])
        if job_state == "pending":
            con.execute("update jobs set state = 'pending', reason = ?, host = null, gpus = null where job_id = ?",
                        [reason, job_id])
        else:
            con.execute("""update jobs set state = ?, reason = ?, finished_at = to_timestamp(?), exit_code = ?
                           where job_id = ?""", [job_state, reason, ts, exit_code, job_id])
        host = con.execute("select host from runs where run_id = ?", [run_id]).fetchall()
        _event(con, job_id, job_state, reason, host[0][0] if host else None, run_id)


def refuse_run(con: duckdb.DuckDBPyConnection, job_id: str, run_id: str, host: str, reason: str) -> None:
    """A launch the node refused (its GPUs held by another controller's run): the run ends ``refused``, the job
    waits again, and the refusal costs no attempt (``max_attempts`` grows by one with the attempt it used).

    The run row keeps the node's sentence as its ``end_reason``, so `jobs why` and `jobs show` say what happened;
    the refusal is audited.
    """
    with transaction(con):
        con.execute("""update runs set state = 'refused', finished_at = to_timestamp(?), end_reason = ?
                       where run_id = ?""", [now(), reason, run_id])
        con.execute("update ingest_offsets set complete = true where run_id = ?", [run_id])
        con.execute("""update jobs set state = 'pending', reason = ?, host = null, gpus = null,
                       max_attempts = max_attempts + 1 where job_id = ?""", [f"{host} {reason}", job_id])
        _event(con, job_id, "pending", f"{host} {reason}", host, run_id)
        audit(con, "controller", "run.refused", run_id, {"job_id": job_id, "host": host, "reason": reason})


def request_cancel(con: duckdb.DuckDBPyConnection, job_id: str, actor: str) -> None:
    """Remember a cancel of a started job until the agent has stopped it (survives a restart)."""
    with transaction(con):
        con.execute("update jobs set cancel_requested_by = ? where job_id = ?", [actor, job_id])
        audit(con, actor, "job.cancel", job_id, {})


def cancel_pending(con: duckdb.DuckDBPyConnection, job_id: str, actor: str) -> None:
    with transaction(con):
        con.execute("""update jobs set state = 'cancelled', reason = ?, finished_at = to_timestamp(?)
                       where job_id = ?""", [f"cancelled by {actor} before it started", now(), job_id])
        _event(con, job_id, "cancelled", f"cancelled by {actor}", None, None)
        audit(con, actor, "job.cancel", job_id, {"state": "pending"})


def jobs_in_states(con: duckdb.DuckDBPyConnection, states: tuple[str, ...]) -> list[dict[str, Any]]:
    marks = ",".join("?" for _ in states)
    return rows(con, f"""select j.job_id, j.name, j.project, j.owner, j.spec, j.priority, j.state, j.attempt,
                         j.max_attempts, j.host, j.gpus, j.run_id, j.cancel_requested_by, j.code_hash,
                         epoch(j.submitted_at) as submitted_epoch,
                         o.byte_offset, o.lines, ({_FAILED_HOSTS}) as failed_hosts
                  from jobs j left join ingest_offsets o on o.run_id = j.run_id and o.stream = 'metrics'
                  where j.state in ({marks}) order by j.submitted_at""", list(states))


# The hosts where a job's attempts failed, oldest first: a retry prefers another host (core/jobs/scheduler.py).
_FAILED_HOSTS = """select coalesce(list(h.host order by h.attempt), []) from (select host, min(attempt) as attempt
                   from runs where job_id = j.job_id and state in ('failed', 'refused') group by host) h"""


def resolve_job_id(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    """A job id from a whole id or a unique prefix (like git and docker)."""
    return resolve(con, "jobs", "job_id", ident, "job")


# A started job whose cancel is asked for shows as ``cancelling`` until its process is gone (the grace
# period): the stored state stays ``running``/``preparing``/``dispatched``, which is what the controller acts on.
SHOWN_STATE = """case when cancel_requested_by is not null and state in ('dispatched', 'preparing', 'running')
                 then 'cancelling'
                 else state end"""
_JOB_COLUMNS = f"""job_id, name, project, owner, {SHOWN_STATE} as state, reason, priority, attempt, max_attempts, host,
                  gpus, run_id, submitted_at, started_at, finished_at, exit_code, code_hash, preparing_since"""


def list_jobs(con: duckdb.DuckDBPyConnection, limit: int = 200, states: list[str] | None = None) -> list[dict[str, Any]]:
    where, params = "", []
    if states:
        where = f"where ({SHOWN_STATE}) in ({','.join('?' for _ in states)})"
        params = list(states)
    return rows(con, f"select {_JOB_COLUMNS} from jobs {where} order by submitted_at desc limit ?", params + [limit])


def get_job(con: duckdb.DuckDBPyConnection, ident: str) -> dict[str, Any]:
    job_id = resolve_job_id(con, ident)
    job = rows(con, f"select {_JOB_COLUMNS}, spec, spec_hash, spec_path from jobs where job_id = ?", [job_id])[0]
    job["spec"] = json.loads(job["spec"]) if isinstance(job["spec"], str) else job["spec"]
    job["events"] = rows(con, "select ts, state, reason, host, run_id from job_events where job_id = ? order by id",
                         [job_id])
    job["runs"] = rows(con, "select run_id, attempt, host, state, started_at, finished_at, exit_code, signal, end_reason "
                            "from runs where job_id = ? order by attempt", [job_id])
    return job


def job_run(con: duckdb.DuckDBPyConnection, ident: str) -> dict[str, Any]:
    """The job's current run (host and run id), for logs and cancel, and whose it is (owner, project)."""
    job_id = resolve_job_id(con, ident)
    return rows(con, "select job_id, state, host, run_id, owner, project from jobs where job_id = ?", [job_id])[0]



def set_job_priority(con: duckdb.DuckDBPyConnection, job_id: str, priority: int, actor: str) -> int:
    """Change a job's priority; return the previous one."""
    with transaction(con):
        before = con.execute("select priority from jobs where job_id = ?", [job_id]).fetchall()[0][0]
        con.execute("update jobs set priority = ? where job_id = ?", [priority, job_id])
        audit(con, actor, "job.priority", job_id, {"from": before, "to": priority})
    return int(before or 0)



def retry_job(con: duckdb.DuckDBPyConnection, job_id: str, actor: str, force: bool = False) -> dict[str, Any]:
    """Put an ended job back in the queue for one more attempt; return what the scheduler needs.

    A succeeded job is refused unless ``force``: running a finished result again by mistake costs GPU
    hours. The job's times restart with the new attempt (each run keeps its own).
    """
    with transaction(con):
        job = rows(con, f"""select job_id, state, spec, priority, attempt, max_attempts, owner, code_hash,
                            ({_FAILED_HOSTS}) as failed_hosts from jobs j where job_id = ?""", [job_id])[0]
        if job["state"] not in TERMINAL_STATES:
            raise UsageError(f"job {job_id} is {job['state']}; only an ended job can be retried (cancel it first)")
        if job["state"] == "succeeded" and not force:
            raise UsageError(f"job {job_id} already succeeded; retrying would run it again: "
                             "use 'mlfleet jobs retry --force' if that is what you want")
        max_attempts = max(int(job["max_attempts"] or 1), int(job["attempt"] or 0) + 1)
        con.execute("""update jobs set state = 'pending', reason = ?, max_attempts = ?, started_at = null,
                       finished_at = null, exit_code = null, host = null, gpus = null, cancel_requested_by = null
                       where job_id = ?""",
                    [f"retried by {actor}", max_attempts, job_id])
        _event(con, job_id, "pending", f"retried by {actor} (was {job['state']})", None, None)
        audit(con, actor, "job.retry", job_id, {"was": job["state"], "attempt": job["attempt"] + 1})
    job["max_attempts"] = max_attempts
    job["spec"] = json.loads(job["spec"]) if isinstance(job["spec"], str) else job["spec"]
    return job
