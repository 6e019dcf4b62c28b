"""Many jobs as one: submitted in one request and one transaction, held back by a limit, cancelled together.

The face that sweeps (core/sweeps/) build on, and anything else that makes
jobs in bulk: :func:`submit_group` checks, snapshots and records every job
in one store transaction together with the caller's own rows, then queues
them, so a 1,000-point sweep costs one round trip and one commit, not a
thousand. A :data:`Hold` is asked each tick which waiting jobs must not be
placed yet (a sweep's ``max_parallel``), and its words become their
why-pending reason.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import duckdb
import numpy as np

from mlfleet.core.audit.records import audit_many
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import TERMINAL_STATES, JobSpec, to_plain
from mlfleet.core.jobs.policy_limits import refuse_contradictions, residency_of
from mlfleet.core.jobs.runs import PendingJob, queued_job
from mlfleet.core.jobs.scheduler import never_fits
from mlfleet.core.jobs.snapshot import Snapshot, snapshot
from mlfleet.core.store.db import now, transaction
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking.lineage import git_lineage

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService

# Asked each tick with the waiting job ids and the job ids of runs in flight; answers
# {job id: (where, why)} for the jobs to keep out of this cycle ("sweep s", "max_parallel 2 reached ...").
Hold = Callable[[list[str], list[str]], dict[str, tuple[str, str]]]
# Writes the caller's own rows inside the jobs' transaction, given the new job ids; what it returns
# comes back from submit_group (None, or an earlier submit that a race with the same key already made).
Record = Callable[[duckdb.DuckDBPyConnection, list[str]], Any]


async def submit_group(jobs: "JobsService", actor: str, specs: list[JobSpec], spec_path: str | None,
                       queue_anyway: bool, record: Record, label: Callable[[int], str],
                       check_policy: bool = True, code: dict[str, Any] | None = None,
                       code_from: str | None = None,
                       prepared: "tuple[Snapshot, dict[str, Any] | None] | None" = None) -> tuple[list[str], Any, dict]:
    """Queue every spec as a job; ``record`` writes the caller's rows in the same transaction.

    Returns the job ids, what ``record`` returned (when it is not None
    nothing was written and nothing queued), and the code snapshot's facts.
    ``label(i)`` names the i-th job in a refusal. ``check_policy`` refuses
    a spec whose constraints defy the policy's residency (a sweep's points);
    deployments check theirs at apply and pass False, so a policy changed
    later makes their replicas wait with the reason rather than fail a tick.
    ``code``: the snapshot the caller sent of the one workdir all specs share
    (core/jobs/code_upload.py); without it the controller packs each
    workdir, as its own user. ``code_from``: who sent ``code`` when the
    jobs are submitted by someone else on their behalf (a deployment's
    replicas, submitted by the controller with the code its applier sent);
    by default ``actor``. ``prepared``: the snapshot (already in the code
    cache) and git lineage the caller made of the one workdir, shipped as
    is: a pipeline step's bundle, its code with its inputs put in place
    (core/pipelines/bundle.py).
    """
    for spec in specs:
        if not Path(spec.workdir).is_absolute():
            raise UsageError("workdir must be an absolute path when submitting through the API")
    workdirs = sorted({spec.workdir for spec in specs})
    if code is not None and len(workdirs) > 1:
        raise UsageError(f"the jobs name {len(workdirs)} workdirs but one code snapshot was sent; "
                         "submit them separately, one workdir each")
    if check_policy:
        await refuse_contradictions(jobs, actor, specs)
    _check_fits(jobs, actor, specs, queue_anyway, label)
    ids = await _new_job_ids(jobs, len(specs))
    home = jobs.ctx.home
    if prepared is not None:
        if len(workdirs) != 1:
            raise UsageError("a prepared snapshot stands for one workdir; the jobs name "
                             f"{len(workdirs)}")
        made = [prepared]
    elif code is not None:
        made = [await jobs.code_uploads.uploaded(code, code_from or actor)] if workdirs else []
    else:
        made = await asyncio.gather(*(asyncio.gather(
            asyncio.to_thread(snapshot, Path(w), home.code_cache_dir, home.own_paths()),
            asyncio.to_thread(git_lineage, Path(w))) for w in workdirs))
    by_workdir = dict(zip(workdirs, made))
    submitted = time.time()
    job_rows = []
    for job_id, spec in zip(ids, specs):
        snap, git = by_workdir[spec.workdir]
        job_rows.append({"job_id": job_id, "name": spec.name, "project": spec.project, "owner": actor,
                         "spec": to_plain(spec), "spec_hash": spec.content_hash(), "spec_path": spec_path,
                         "priority": spec.priority, "max_attempts": spec.retries + 1, "submitted_at": submitted,
                         "code_hash": snap.sha256, "lineage": git})
    earlier = await asyncio.shield(jobs.ctx.store.run(_record_all, job_rows, actor, record))
    if earlier is not None:
        return ids, earlier, {}
    for row, spec in zip(job_rows, specs):
        jobs.pending[row["job_id"]] = PendingJob(row["job_id"], spec, spec.priority, submitted, 0, spec.retries + 1,
                                                 actor, code_hash=row["code_hash"])
    await jobs.notify_jobs()
    snap = by_workdir[workdirs[0]][0] if workdirs else None
    facts = {"code_hash": snap.sha256, "code_files": snap.files, "code_skipped": snap.skipped} if snap else {}
    return ids, None, facts


def _check_fits(jobs: "JobsService", actor: str, specs: list[JobSpec], queue_anyway: bool,
                label: Callable[[int], str]) -> None:
    """Each distinct shape once: a job that no host of the fleet could ever run is refused, as a single submit is."""
    if queue_anyway:
        return
    views = jobs.dispatcher.host_views()
    seen: set[bytes] = set()
    for i, spec in enumerate(specs):
        shape = json.dumps([to_plain(spec.resources), to_plain(spec.constraints)], sort_keys=True).encode()
        if shape in seen:
            continue
        seen.add(shape)
        where = never_fits_words(jobs, spec, actor, views)
        if where:
            raise UsageError(f"{label(i)} can never fit on this fleet ({where}); change its resources or "
                             "constraints, or add a host that has them and submit with --queue-anyway")


def never_fits_words(jobs: "JobsService", spec: JobSpec, actor: str, views: list[Any] | None = None,
                     origin: JobSpec | None = None) -> str | None:
    """Why no host of the fleet could ever run ``spec`` ("host: reason; ..."), or None when one could.

    Deployments ask it to warn about replicas that will never be placed
    (``origin``: the spec of the run that made the model, whose residency holds too).
    """
    views = jobs.dispatcher.host_views() if views is None else views
    loaded = jobs.ctx.access.loaded
    residency = residency_of(loaded, spec, residency_of(loaded, origin) if origin is not None else None)
    impossible = never_fits(views, queued_job("new", spec, time.time(), actor, residency=residency),
                            jobs.dispatcher.policy)
    return "; ".join(f"{r.host}: {r.message}" for r in impossible[:5]) if impossible else None


async def _new_job_ids(jobs: "JobsService", count: int) -> list[str]:
    ids: list[str] = []
    while len(ids) < count:
        wanted = list(dict.fromkeys("j" + secrets.token_hex(4) for _ in range(count - len(ids))))
        wanted = [i for i in wanted if i not in jobs.pending and i not in ids]
        marks = ",".join("?" for _ in wanted) or "null"
        taken = {r["job_id"] for r in await jobs.ctx.store.read(rows, f"select job_id from jobs where job_id in ({marks})",
                                                                  wanted)}
        ids.extend(i for i in wanted if i not in taken)
    return ids[:count]


def _record_all(con: duckdb.DuckDBPyConnection, job_rows: list[dict[str, Any]], actor: str, record: Record) -> Any:
    """The jobs, their first events and audits, and the caller's rows: one transaction, or nothing."""
    with transaction(con):
        earlier = record(con, [row["job_id"] for row in job_rows])
        if earlier is not None:
            return earlier
        insert_jobs(con, job_rows, actor)
    return None


def insert_jobs(con: duckdb.DuckDBPyConnection, job_rows: list[dict[str, Any]], actor: str) -> None:
    """Many jobs at once, inside the caller's transaction: the rows :func:`records.insert_job_rows` writes for one.

    One bulk scan of column arrays per table (as metric batches are written),
    not a statement per job: a thousand jobs take milliseconds, not seconds.
    """
    if not job_rows:
        return
    batch = {
        "job_id": _texts(j["job_id"] for j in job_rows),
        "name": _texts(j["name"] for j in job_rows),
        "project": _texts(j["project"] for j in job_rows),
        "spec": _texts(json.dumps(j["spec"]) for j in job_rows),
        "spec_hash": _texts(j["spec_hash"] for j in job_rows),
        "priority": np.array([j["priority"] for j in job_rows], dtype=np.int64),
        "max_attempts": np.array([j["max_attempts"] for j in job_rows], dtype=np.int64),
        "submitted_at": np.array([j["submitted_at"] for j in job_rows], dtype=np.float64),
        "code_hash": _texts(j["code_hash"] for j in job_rows),
        "lineage": _texts(json.dumps(j["lineage"]) if j.get("lineage") is not None else None for j in job_rows),
        "detail": _texts(json.dumps({"name": j["name"], "project": j["project"], "spec_hash": j["spec_hash"],
                                     "spec_path": j["spec_path"]}) for j in job_rows),
    }
    con.register("_jobs_batch", batch)
    try:
        con.execute("""insert into jobs (job_id, name, project, owner, spec, spec_hash, spec_path, priority, state, reason,
                                         attempt, max_attempts, submitted_at, code_hash, lineage)
                       select job_id, name, project, ?, spec, spec_hash, ?, priority, 'pending',
                              'waiting for the scheduler', 0, max_attempts, to_timestamp(submitted_at), code_hash, lineage
                       from _jobs_batch""", [actor, job_rows[0]["spec_path"]])
        con.execute("""insert into job_events (job_id, ts, state, reason, host, run_id)
                       select job_id, to_timestamp(?), 'pending', 'submitted', null, null from _jobs_batch""", [now()])
        # One audit row each, as a single submit writes: the trail says who queued every job.
        audit_many(con, actor, "job.submit", zip(batch["job_id"], batch["detail"]))
    finally:
        con.unregister("_jobs_batch")


def _texts(values: Any) -> np.ndarray:
    return np.array(list(values), dtype=object)


async def cancel_jobs(jobs: "JobsService", actor: str, job_ids: list[str]) -> dict[str, int]:
    """Cancel each job not ended yet: the queued ones in one transaction, the started ones as ``jobs cancel`` does."""
    from mlfleet.core.jobs.api import JobsApi

    queued = [job_id for job_id in job_ids if job_id in jobs.pending]
    for job_id in queued:
        jobs.pending.pop(job_id, None)
    if queued:
        await jobs.ctx.store.run(_cancel_pending_many, queued, actor)
    api = JobsApi(jobs)
    stopping = 0
    states = await jobs.ctx.store.read(rows, f"select job_id, state from jobs where job_id in ({','.join('?' for _ in job_ids) or 'null'})",
                                       job_ids)
    for row in states:
        if row["job_id"] in queued or row["state"] in TERMINAL_STATES:
            continue
        answer = await api.cancel(row["job_id"], actor)
        stopping += answer["changed"]
    await jobs.notify_jobs()
    return {"cancelled": len(queued), "stopping": stopping}


def _cancel_pending_many(con: duckdb.DuckDBPyConnection, job_ids: list[str], actor: str) -> None:
    """What ``records.cancel_pending`` writes for one job, for many in one transaction and one scan each."""
    ts = now()
    con.register("_cancel_batch", {"job_id": _texts(job_ids)})
    try:
        with transaction(con):
            con.execute("""update jobs set state = 'cancelled', reason = ?, finished_at = to_timestamp(?)
                           where state = 'pending' and job_id in (select job_id from _cancel_batch)""",
                        [f"cancelled by {actor} before it started", ts])
            con.execute("""insert into job_events (job_id, ts, state, reason, host, run_id)
                           select job_id, to_timestamp(?), 'cancelled', ?, null, null from _cancel_batch""",
                        [ts, f"cancelled by {actor}"])
            audit_many(con, actor, "job.cancel", ((job_id, {"state": "pending"}) for job_id in job_ids))
    finally:
        con.unregister("_cancel_batch")
