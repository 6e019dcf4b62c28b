"""What the controller writes and reads for deployments: the declared state, revisions, replicas, events, scrapes.

Plain functions over a DuckDB connection, run on the store's threads.
Times go in as epoch seconds and come back as epoch seconds (the planner
and serving statistics work in plain floats). A replica's row is written
inside its job's submit transaction (core/jobs/group.py's ``record``), so
after a crash at any moment a replica either has its job or never existed.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb
import numpy as np

from mlfleet.core.audit.records import audit
from mlfleet.core.base.errors import NotFoundError
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import rows

_DEPLOYMENT_COLUMNS = """name, spec, spec_path, spec_hash, model_ref, follows_alias, alias_version, target_version,
    stable_version, target_revision, stable_revision, phase, reason, epoch(rollout_started_at) as rollout_started_at,
    created_by, epoch(created_at) as created_at, epoch(updated_at) as updated_at"""
_REPLICA_COLUMNS = """replica_id, deployment, version, revision, job_id, epoch(created_at) as created_at,
    epoch(healthy_since) as healthy_since, epoch(draining_since) as draining_since, stopping,
    epoch(ended_at) as ended_at, host, port"""
# Fields of a deployment a tick or an action may change, and how each is written.
_TIMES = {"rollout_started_at", "updated_at", "healthy_since", "draining_since", "ended_at"}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _deployment(row: dict[str, Any]) -> dict[str, Any]:
    row["spec"] = _json(row["spec"])
    return row


def deployments(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return [_deployment(r) for r in rows(con, f"select {_DEPLOYMENT_COLUMNS} from deployments order by name")]


def deployment(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any]:
    found = rows(con, f"select {_DEPLOYMENT_COLUMNS} from deployments where name = ?", [name])
    if not found:
        raise NotFoundError(f"no deployment {name!r}; list them with 'mlfleet deploy list'")
    return _deployment(found[0])


def find_deployment(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, Any] | None:
    found = rows(con, f"select {_DEPLOYMENT_COLUMNS} from deployments where name = ?", [name])
    return _deployment(found[0]) if found else None


def open_replicas(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Replicas not ended: the ones a restarted controller still manages (their jobs may have ended meanwhile)."""
    return rows(con, f"select {_REPLICA_COLUMNS} from deploy_replicas where ended_at is null order by created_at")


def replicas_of(con: duckdb.DuckDBPyConnection, name: str, include_ended: bool = False) -> list[dict[str, Any]]:
    ended = "" if include_ended else "and ended_at is null"
    return rows(con, f"select {_REPLICA_COLUMNS} from deploy_replicas where deployment = ? {ended} order by created_at",
                [name])


def revisions(con: duckdb.DuckDBPyConnection, name: str) -> list[dict[str, Any]]:
    found = rows(con, """select deployment, revision, model_version, model_sha256, model_file, spec, spec_hash, cause,
                                epoch(created_at) as created_at, code, code_by
                         from deploy_revisions where deployment = ? order by revision""", [name])
    for r in found:
        r["spec"] = _json(r["spec"])
        r["code"] = _json(r["code"])
    return found


def model_origin_spec(con: duckdb.DuckDBPyConnection, name: str, version: int) -> dict[str, Any] | None:
    """The spec of the job whose run made this model version (its residency holds for the replicas that serve it)."""
    found = rows(con, """select j.spec from model_versions m left join runs r on r.run_id = m.run_id
                         join jobs j on j.job_id = coalesce(m.job_id, r.job_id)
                         where m.name = ? and m.version = ?""", [name, version])
    return _json(found[0]["spec"]) if found else None


def next_replica_number(con: duckdb.DuckDBPyConnection, name: str) -> int:
    """Replica numbers are never reused within a deployment: a name always means one job."""
    found = con.execute("select count(*) from deploy_replicas where deployment = ?", [name]).fetchall()
    return int(found[0][0]) + 1


def insert_revision(con: duckdb.DuckDBPyConnection, rev: dict[str, Any]) -> int:
    """The next revision of the deployment, numbered here (on the writer): returns its number.

    It is written before the deployment row that names it; one left behind by a crash in between is
    harmless, and the next one is numbered past it. ``code``/``code_by``: the snapshot its applier sent
    and who (None: its replicas are packed from the workdir by the controller's own user).
    """
    with transaction(con):
        number = int(con.execute("select coalesce(max(revision), 0) + 1 from deploy_revisions where deployment = ?",
                                 [rev["deployment"]]).fetchall()[0][0])
        code = rev.get("code")
        con.execute("""insert into deploy_revisions (deployment, revision, model_version, model_sha256, model_file,
                                                     spec, spec_hash, cause, created_at, code, code_by)
                       values (?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), ?, ?)""",
                    [rev["deployment"], number, rev["model_version"], rev["model_sha256"], rev["model_file"],
                     json.dumps(rev["spec"]), rev["spec_hash"], rev.get("cause"), now(),
                     json.dumps(code) if code is not None else None, rev.get("code_by")])
    return number


def write_deployment(con: duckdb.DuckDBPyConnection, row: dict[str, Any]) -> None:
    """The whole row, as the service holds it (insert or replace)."""
    con.execute("""insert or replace into deployments (name, spec, spec_path, spec_hash, model_ref, follows_alias,
                       alias_version, target_version, stable_version, target_revision, stable_revision, phase, reason,
                       rollout_started_at, created_by, created_at, updated_at)
                   values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, to_timestamp(?), ?, to_timestamp(?), to_timestamp(?))""",
                [row["name"], json.dumps(row["spec"]), row.get("spec_path"), row["spec_hash"], row["model_ref"],
                 row.get("follows_alias"), row.get("alias_version"), row.get("target_version"),
                 row.get("stable_version"), row.get("target_revision"), row.get("stable_revision"), row["phase"],
                 row.get("reason"), row.get("rollout_started_at"), row["created_by"], row["created_at"],
                 row.get("updated_at") or now()])


def add_events(con: duckdb.DuckDBPyConnection, events: list[dict[str, Any]]) -> None:
    """History rows: ``{"deployment", "actor", "kind", "version", "detail"}`` each (inside the caller's transaction)."""
    for e in events:
        con.execute("""insert into deploy_events (deployment, ts, actor, kind, version, detail)
                       values (?, to_timestamp(?), ?, ?, ?, ?)""",
                    [e["deployment"], e.get("ts") or now(), e.get("actor", "controller"), e["kind"], e.get("version"),
                     json.dumps(e.get("detail") or {})])


def insert_replicas(con: duckdb.DuckDBPyConnection, replicas: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """New replicas with their job ids, inside the jobs' submit transaction."""
    for r in replicas:
        con.execute("""insert into deploy_replicas (replica_id, deployment, version, revision, job_id, created_at)
                       values (?, ?, ?, ?, ?, to_timestamp(?))""",
                    [r["replica_id"], r["deployment"], r["version"], r["revision"], r["job_id"], r["created_at"]])
    add_events(con, events)


def apply_tick(con: duckdb.DuckDBPyConnection, deployment_row: dict[str, Any] | None,
               replica_changes: list[dict[str, Any]], events: list[dict[str, Any]],
               audits: list[tuple[str, str, str, dict[str, Any]]]) -> None:
    """What one tick decided for one deployment: its row, its replicas' new facts, events and audits, together."""
    with transaction(con):
        if deployment_row is not None:
            write_deployment(con, deployment_row)
        for change in replica_changes:
            fields = {k: v for k, v in change.items() if k != "replica_id"}
            sets = ", ".join(f"{k} = to_timestamp(?)" if k in _TIMES else f"{k} = ?" for k in fields)
            con.execute(f"update deploy_replicas set {sets} where replica_id = ?", [*fields.values(), change["replica_id"]])
        add_events(con, events)
        for actor, action, target, detail in audits:
            audit(con, actor, action, target, detail)


def history(con: duckdb.DuckDBPyConnection, name: str, limit: int = 500) -> list[dict[str, Any]]:
    found = rows(con, """select seq, deployment, epoch(ts) as ts, actor, kind, version, detail from deploy_events
                         where deployment = ? order by seq desc limit ?""", [name, limit])
    for r in found:
        r["detail"] = _json(r["detail"])
    return list(reversed(found))


def insert_scrapes(con: duckdb.DuckDBPyConnection, samples: list[dict[str, Any]]) -> None:
    """New scrapes of every replica of one tick: one bulk scan, not a statement per sample."""
    if not samples:
        return
    batch = {
        "deployment": np.array([s["deployment"] for s in samples], dtype=object),
        "version": np.array([s["version"] for s in samples], dtype=np.int64),
        "replica_id": np.array([s["replica_id"] for s in samples], dtype=object),
        "run_id": np.array([s["run_id"] for s in samples], dtype=object),
        "ts": np.array([s["ts"] for s in samples], dtype=np.float64),
        "requests": np.array([_num(s.get("requests")) for s in samples], dtype=np.float64),
        "errors": np.array([_num(s.get("errors")) for s in samples], dtype=np.float64),
        "latency_buckets": np.array([json.dumps(s.get("latency_buckets") or []) for s in samples], dtype=object),
        "latency_sum": np.array([_num(s.get("latency_sum")) for s in samples], dtype=np.float64),
        "latency_count": np.array([_num(s.get("latency_count")) for s in samples], dtype=np.float64),
        "gauges": np.array([json.dumps(s.get("gauges") or {}) for s in samples], dtype=object),
        "error": np.array([s.get("error") or None for s in samples], dtype=object),
    }
    con.register("_scrape_batch", batch)
    try:
        # NaN (a value the scrape did not have) is stored as NULL, not as a number
        con.execute("""insert into serving_scrapes (deployment, version, replica_id, run_id, ts, requests, errors,
                           latency_buckets, latency_sum, latency_count, gauges, error)
                       select deployment, version, replica_id, run_id, to_timestamp(ts),
                              case when isnan(requests) then null else requests end,
                              case when isnan(errors) then null else errors end, latency_buckets,
                              case when isnan(latency_sum) then null else latency_sum end,
                              case when isnan(latency_count) then null else latency_count end, gauges, error
                       from _scrape_batch""")
    finally:
        con.unregister("_scrape_batch")


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def last_scrape_ts(con: duckdb.DuckDBPyConnection) -> dict[str, float]:
    """The newest stored scrape per open replica: a restarted controller stores only what is new."""
    found = rows(con, """select s.replica_id, max(epoch(s.ts)) as ts from serving_scrapes s
                         join deploy_replicas r on r.replica_id = s.replica_id where r.ended_at is null
                         group by s.replica_id""")
    return {r["replica_id"]: r["ts"] for r in found}


def scrapes_since(con: duckdb.DuckDBPyConnection, name: str, since: float) -> list[dict[str, Any]]:
    """A deployment's scrapes from ``since`` on, ts-ordered, as ScrapeSample-like dicts with their replica and version."""
    found = rows(con, """select deployment, version, replica_id, run_id, epoch(ts) as ts, requests, errors,
                                latency_buckets, latency_sum, latency_count, gauges, error
                         from serving_scrapes where deployment = ? and ts >= to_timestamp(?)
                         order by replica_id, ts""", [name, since])
    for r in found:
        r["latency_buckets"] = [tuple(b) for b in (_json(r["latency_buckets"]) or [])]
        r["gauges"] = _json(r["gauges"]) or {}
        r["error"] = r["error"] or ""
    return found
