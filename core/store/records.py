"""What the controller writes to and reads from the DuckDB file.

Plain functions over a DuckDB connection, run on the store's threads. Each
write that must be atomic (a state change and its event, a metrics batch
and its offset) happens in one transaction here.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.tracking.ingest import ParsedBatch
from mlfleet.core.base.models import TERMINAL_STATES

from mlfleet.core.tracking import metric_keys
from mlfleet.core.store.db import jsonable, now, transaction


def rows(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    rel = con.execute(sql, params or [])
    names = [d[0] for d in rel.description or []]
    return [{n: jsonable(v) for n, v in zip(names, r)} for r in rel.fetchall()]


# ------------------------------------------------------------------ audit

def audit(con: duckdb.DuckDBPyConnection, actor: str, action: str, target: str | None,
          detail: dict[str, Any] | None = None) -> None:
    con.execute("insert into audit (ts, actor, action, target, detail) values (to_timestamp(?), ?, ?, ?, ?)",
                [now(), actor, action, target, json.dumps(detail or {})])


def list_audit(con: duckdb.DuckDBPyConnection, limit: int = 200, action: str | None = None) -> list[dict[str, Any]]:
    where, params = "", []
    if action:
        where, params = "where action = ?", [action]
    return rows(con, f"select id, ts, actor, action, target, detail from audit {where} order by id desc limit ?",
                params + [limit])


# ------------------------------------------------------------------ hosts

def upsert_host(con: duckdb.DuckDBPyConnection, name: str, kind: str, address: str | None,
                labels: dict[str, str], state: str, agent_version: str | None = None,
                info: dict[str, Any] | None = None, seen: bool = False) -> None:
    ts = now()
    con.execute(
        """insert into hosts (name, kind, address, labels, state, agent_version, info, first_seen, last_seen)
           values (?, ?, ?, ?, ?, ?, ?, to_timestamp(?), case when ? then to_timestamp(?) end)
           on conflict (name) do update set kind = excluded.kind, address = excluded.address,
             labels = excluded.labels, state = excluded.state,
             agent_version = coalesce(excluded.agent_version, hosts.agent_version),
             info = coalesce(excluded.info, hosts.info),
             last_seen = coalesce(excluded.last_seen, hosts.last_seen)""",
        [name, kind, address, json.dumps(labels), state, agent_version,
         json.dumps(info) if info is not None else None, ts, seen, ts])


def set_drain(con: duckdb.DuckDBPyConnection, name: str, actor: str | None, reason: str | None) -> None:
    con.execute("update hosts set drained_by = ?, drain_reason = ? where name = ?", [actor, reason, name])


def set_host_state(con: duckdb.DuckDBPyConnection, name: str, state: str) -> None:
    con.execute("update hosts set state = ? where name = ?", [state, name])


# ------------------------------------------------------------------- jobs

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
        _upsert_params(con, run["run_id"], run.get("params") or {})
        _upsert_tags(con, run["run_id"], {str(k): str(v) for k, v in (run.get("tags") or {}).items()})
        # The run starts with the job's submit-time lineage (git); the agent and the end add the rest.
        con.execute("update runs set lineage = (select lineage from jobs where job_id = ?) where run_id = ?",
                    [job_id, run["run_id"]])
        con.execute("""update jobs set state = 'dispatched', reason = ?, attempt = ?, host = ?, gpus = ?, run_id = ?
                       where job_id = ?""",
                    [f"dispatched to {run['host']}", run["attempt"], run["host"], run["gpus"], run["run_id"], job_id])
        _event(con, job_id, "dispatched", f"placed on {run['host']}", run["host"], run["run_id"])


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
            _merge_lineage(con, run_id, lineage)
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


# The hosts where a job's attempts failed, oldest first: a retry prefers another host (core/scheduler.py).
_FAILED_HOSTS = """select coalesce(list(h.host order by h.attempt), []) from (select host, min(attempt) as attempt
                   from runs where job_id = j.job_id and state = 'failed' group by host) h"""


def resolve_job_id(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    """A job id from a whole id or a unique prefix (like git and docker)."""
    return _resolve(con, "jobs", "job_id", ident, "job")


def resolve_run_id(con: duckdb.DuckDBPyConnection, ident: str) -> str:
    return _resolve(con, "runs", "run_id", ident, "run")


def _resolve(con: duckdb.DuckDBPyConnection, table: str, column: str, ident: str, what: str) -> str:
    ident = ident.strip()
    if not ident:
        raise UsageError(f"give a {what} id")
    exact = con.execute(f"select {column} from {table} where {column} = ?", [ident]).fetchall()
    if exact:
        return exact[0][0]
    found = [r[0] for r in con.execute(f"select {column} from {table} where starts_with({column}, ?) limit 5",
                                       [ident]).fetchall()]
    if not found:
        raise NotFoundError(f"no {what} {ident!r}; list them with 'mlfleet {what}s list'")
    if len(found) > 1:
        raise UsageError(f"{what} id {ident!r} is ambiguous ({', '.join(found)}, ...); give more characters")
    return found[0]


# A started job whose cancel is asked for shows as ``cancelling`` until its process is gone (the grace
# period): the stored state stays ``running``/``dispatched``, which is what the controller acts on.
SHOWN_STATE = """case when cancel_requested_by is not null and state in ('dispatched', 'running') then 'cancelling'
                 else state end"""
_JOB_COLUMNS = f"""job_id, name, project, owner, {SHOWN_STATE} as state, reason, priority, attempt, max_attempts, host,
                  gpus, run_id, submitted_at, started_at, finished_at, exit_code, code_hash"""


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
    """The job's current run (host and run id), for logs and cancel."""
    job_id = resolve_job_id(con, ident)
    return rows(con, "select job_id, state, host, run_id from jobs where job_id = ?", [job_id])[0]


# ------------------------------------------------------------------- runs

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
        _merge_lineage(con, run_id, lineage)


def _merge_lineage(con: duckdb.DuckDBPyConnection, run_id: str, lineage: dict[str, Any]) -> None:
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
        _upsert_params(con, run_id, parsed.params)
        _upsert_tags(con, run_id, parsed.tags)
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


def _upsert_params(con: duckdb.DuckDBPyConnection, run_id: str, params: dict[str, Any]) -> None:
    """A run's params, last value wins (the spec's at dispatch, then what the job logs)."""
    if params:
        con.executemany(
            """insert into params (run_id, key, value, value_text, value_num) values (?, ?, ?, ?, ?)
               on conflict (run_id, key) do update set value = excluded.value, value_text = excluded.value_text,
               value_num = excluded.value_num""",
            [[run_id, k, json.dumps(v, default=str), v if isinstance(v, str) else json.dumps(v, default=str),
              _param_number(v)] for k, v in params.items()])


def _upsert_tags(con: duckdb.DuckDBPyConnection, run_id: str, tags: dict[str, str]) -> None:
    if tags:
        con.executemany("""insert into tags (run_id, key, value) values (?, ?, ?)
                           on conflict (run_id, key) do update set value = excluded.value""",
                        [[run_id, k, v] for k, v in tags.items()])


# -------------------------------------------------------------- telemetry

def write_telemetry(con: duckdb.DuckDBPyConnection, host_rows: list[list[Any]], gpu_rows: list[list[Any]]) -> None:
    with transaction(con):
        if host_rows:
            con.executemany("""insert into telemetry (host, ts, window_s, cpu_percent, load1, memory_used, memory_total,
                               swap_used, disk_used, disk_total, net_rx_bps, net_tx_bps, gpu_state)
                               values (?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", host_rows)
            con.executemany("update hosts set last_seen = to_timestamp(?) where name = ?",
                            [[row[1], row[0]] for row in host_rows])
        if gpu_rows:
            con.executemany("""insert into gpu_telemetry (host, ts, window_s, gpu_index, uuid, name, utilization,
                               memory_used, memory_total, temperature, power_draw, processes)
                               values (?, to_timestamp(?), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""", gpu_rows)


def prune_telemetry(con: duckdb.DuckDBPyConnection, keep_seconds: float) -> None:
    cutoff = now() - keep_seconds
    with transaction(con):
        con.execute("delete from telemetry where ts < to_timestamp(?)", [cutoff])
        con.execute("delete from gpu_telemetry where ts < to_timestamp(?)", [cutoff])


# ------------------------------------------------- job priority and retry (TUI/CLI)

def set_job_priority(con: duckdb.DuckDBPyConnection, job_id: str, priority: int, actor: str) -> int:
    """Change a job's priority; return the previous one."""
    with transaction(con):
        before = con.execute("select priority from jobs where job_id = ?", [job_id]).fetchall()[0][0]
        con.execute("update jobs set priority = ? where job_id = ?", [priority, job_id])
        audit(con, actor, "job.priority", job_id, {"from": before, "to": priority})
    return int(before or 0)


def _param_number(value: Any) -> float | None:
    """The numeric copy of a param for filters; None for text, bools and integers too big for a double."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


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
