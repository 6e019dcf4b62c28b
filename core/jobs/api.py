"""Client RPCs for jobs: submit, list, show, wait, cancel, priority, retry, logs.

The caller's identity (``peer.info["actor"]``) is the OS user behind the
socket; it owns what it submits and is audited for what it changes.
A submit with a key is idempotent: a retry gets the same job back.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfleet.core.base.bounds import ChunkSize, Ident, ListLimit, Offset, WaitSeconds
from mlfleet.core.base.errors import NotFoundError, RemoteError, UsageError
from mlfleet.core.base.models import SHOWN_JOB_STATES, TERMINAL_STATES, JobSpec, spec_from_plain, to_plain
from mlfleet.core.base.protocol import Peer
from mlfleet.core.jobs import records
from mlfleet.core.jobs.policy_limits import refuse_contradictions, residency_of
from mlfleet.core.jobs import submit_store as submit_keys
from mlfleet.core.jobs.code_upload import must_send_code
from mlfleet.core.jobs.runs import PendingJob, queued_job
from mlfleet.core.jobs.scheduler import Decision, never_fits
from mlfleet.core.jobs.slurm_plan import free_gpus_words
from mlfleet.core.jobs.snapshot import snapshot
from mlfleet.core.jobs.spec import validate_job_spec
from mlfleet.core.team.roles import Permission
from mlfleet.core.team.secret_store import SecretStore, unknown_secrets
from mlfleet.core.jobs.submit_key import check_submit_key
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking.lineage import git_lineage

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService


class JobsApi:
    """``rpc_job_*`` and ``rpc_jobs_*``; ``self.c`` is the jobs service (queue, runs in flight)."""

    def __init__(self, jobs: "JobsService") -> None:
        self.c = jobs

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.c.ctx.store

    async def rpc_submit(self, peer: Peer, spec: dict[str, Any], spec_path: str | None = None,
                         queue_anyway: bool = False, key: str | None = None,
                         code: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a job. With ``key`` (the client's idempotency key) a retry gets the same job back.

        ``code`` names a snapshot the caller sent (core/jobs/code_upload.py):
        then the workdir is only a label and is never read here. Without it
        the controller packs the workdir itself, which only its own OS user
        may ask for: it would read the files as that user.
        """
        actor = peer.info["actor"]
        job_spec = validate_job_spec(spec)
        await self.c.ctx.require(actor, Permission.SUBMIT, method="submit", project=job_spec.project)
        if code is None:
            must_send_code(actor)
        unknown_secrets(SecretStore(self.c.ctx.home.secrets_file), job_spec.secret_refs())
        if not Path(job_spec.workdir).is_absolute():
            raise UsageError("workdir must be an absolute path when submitting through the API")
        if job_spec.sweep is not None:  # one child job per point: the sweeps capability queues them
            if self.c.sweep_submit is None:
                raise UsageError("this controller does not run sweeps")
            if key is not None:
                check_submit_key(key)
            return await self.c.sweep_submit(actor, job_spec, spec_path, queue_anyway, key, code=code)
        if key is not None:
            check_submit_key(key)
            earlier = await self.store.read(submit_keys.find, actor, key)
            if earlier is not None:  # a retry: the job is there, whatever the fleet looks like now
                return submit_keys.same_job(earlier, job_spec.content_hash(), to_plain(job_spec))
        await refuse_contradictions(self.c, actor, [job_spec])  # residency the job's own constraints defy: refused now
        uploaded = await self.c.code_uploads.uploaded(code, actor) if code is not None else None
        dispatcher = self.c.dispatcher
        residency = residency_of(self.c.ctx.access.loaded, job_spec)
        impossible = never_fits(dispatcher.host_views(),
                                queued_job("new", job_spec, time.time(), peer.info["actor"], residency=residency),
                                dispatcher.policy)
        if impossible and not queue_anyway:
            where = "; ".join(f"{r.host}: {r.message}" for r in impossible[:5])
            raise UsageError(f"{job_spec.name} can never fit on this fleet ({where}); change its resources or "
                             "constraints, or add a host that has them and submit with --queue-anyway")
        job_id = await self._new_job_id()
        submitted = time.time()
        workdir = Path(job_spec.workdir)
        home = self.c.ctx.home
        if uploaded is not None:  # the caller's own snapshot: the workdir is never read here
            snap, git = uploaded
        else:
            snap, git = await asyncio.gather(asyncio.to_thread(snapshot, workdir, home.code_cache_dir, home.own_paths()),
                                             asyncio.to_thread(git_lineage, workdir))
        answer = {"job_id": job_id, "state": "pending", "name": job_spec.name, "project": job_spec.project,
                  "code_hash": snap.sha256, "code_files": snap.files, "code_skipped": snap.skipped, "lineage": git,
                  "key": key}
        # Shielded: a client that hangs up mid-submit must not leave a job in the file but not in the queue.
        earlier = await asyncio.shield(self._record_job(job_id, job_spec, snap.sha256, spec_path, actor, submitted,
                                                        git, key, answer))
        if earlier is not None:  # another attempt with this key was recorded while this one snapshotted
            return submit_keys.same_job(earlier, job_spec.content_hash(), to_plain(job_spec))
        await self.c.notify_jobs()
        return {**answer, "existing": False}

    async def _record_job(self, job_id: str, job_spec: JobSpec, code_hash: str, spec_path: str | None, actor: str,
                          submitted: float, lineage: dict[str, Any], key: str | None = None,
                          answer: dict[str, Any] | None = None) -> submit_keys.EarlierSubmit | None:
        """The job, its lineage, event, audit and key in one transaction, then in the queue."""
        job = {"code_hash": code_hash, "lineage": lineage,  # lineage before the job can be dispatched
            "job_id": job_id, "name": job_spec.name, "project": job_spec.project, "owner": actor,
            "spec": to_plain(job_spec), "spec_hash": job_spec.content_hash(), "spec_path": spec_path,
            "priority": job_spec.priority, "max_attempts": job_spec.retries + 1, "submitted_at": submitted}
        if key is None:
            await self.store.run(records.insert_job, job, actor)
        else:
            earlier = await self.store.run(submit_keys.record, job, actor, key, answer or {"job_id": job_id})
            if earlier is not None:
                return earlier
        self.c.pending[job_id] = PendingJob(job_id, job_spec, job_spec.priority, submitted, 0, job_spec.retries + 1, actor,
                                            code_hash=code_hash)
        return None

    async def _new_job_id(self) -> str:
        while True:
            job_id = "j" + secrets.token_hex(4)
            found = await self.store.read(rows, "select 1 from jobs where job_id = ?", [job_id])
            if not found and job_id not in self.c.pending:
                return job_id

    async def rpc_jobs_list(self, peer: Peer, limit: ListLimit = 200, states: list[str] | None = None,
                            key: str | None = None) -> list[dict[str, Any]]:
        unknown = sorted(set(states or ()) - set(SHOWN_JOB_STATES))
        if unknown:
            raise UsageError(f"unknown job state {unknown[0]!r}; use one of {', '.join(SHOWN_JOB_STATES)}")
        if key is not None:  # the caller's job submitted with this key: does a submit that lost its answer exist?
            jobs = [j for j in await self.store.read(submit_keys.jobs_with_key, peer.info["actor"], key)
                    if not states or j["state"] in states]
        else:
            jobs = await self.store.read(records.list_jobs, limit, states)
        for job in jobs:
            if job["state"] == "pending" and job["job_id"] in self.c.pending:
                job["reason"] = self._short_reason(job["job_id"]) or job["reason"]
        return jobs

    def _short_reason(self, job_id: str) -> str | None:
        reasons = self.c.waiting_reasons.get(job_id)
        if not reasons:
            return None
        return Decision(waiting={job_id: reasons}).short_reason(job_id)

    async def rpc_job_show(self, peer: Peer, job: Ident) -> dict[str, Any]:
        detail = await self.store.read(records.get_job, job)
        reasons = self.c.waiting_reasons.get(detail["job_id"], []) if detail["state"] == "pending" else []
        detail["why_pending"] = [{"host": r.host, "check": r.check, "message": r.message} for r in reasons]
        run = self.c.active.get(detail.get("run_id") or "")
        if run is not None and run.waiting and run.state != "running":  # queued on the host (a Slurm job)
            detail["waiting_on_host"] = {"host": run.host, "message": run.waiting}
            config = self.c.fleet.inventory.get(run.host)
            link = self.c.ctx.links.get(run.host)
            if config is not None and config.slurm is not None and link is not None:  # and the partition's free GPUs
                detail["waiting_on_host"]["cluster"] = free_gpus_words(
                    config.slurm, link.info.get("slurm"), run.spec.resources.gpus, run.spec.resources.gpu_types)
        detail["key"] = await self.store.read(submit_keys.key_of, detail["job_id"])
        return detail

    async def rpc_job_wait(self, peer: Peer, job: Ident, timeout: WaitSeconds = 30.0) -> dict[str, Any]:
        """Return when the job has ended, or after ``timeout`` seconds with its current state."""
        job_id = (await self.store.read(records.job_run, job))["job_id"]
        deadline = time.monotonic() + max(0.0, min(timeout, 300.0))
        while True:
            current = await self.store.read(records.job_run, job_id)
            left = deadline - time.monotonic()
            if current["state"] in TERMINAL_STATES or left <= 0:
                return await self.store.read(records.get_job, job_id)
            async with self.c.job_changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.c.job_changed.wait(), min(left, 1.0))

    async def _allowed(self, peer: Peer, permission: Permission, method: str, job: str) -> dict[str, Any]:
        """The job's current run, once the caller may act on it (their own: operator; another's: maintainer)."""
        current = await self.store.read(records.job_run, job)
        await self.c.ctx.require(peer.info["actor"], permission, method=method, project=current["project"],
                                 owner=current["owner"], target=f"job {current['job_id']}")
        return current

    async def rpc_job_cancel(self, peer: Peer, job: Ident) -> dict[str, Any]:
        current = await self._allowed(peer, Permission.CANCEL, "job_cancel", job)
        return await self.cancel(current["job_id"], peer.info["actor"])

    async def cancel(self, job: str, actor: str) -> dict[str, Any]:
        """Cancel a queued job, or ask a started one's agent to stop it (sweeps cancel their children so too)."""
        current = await self.store.read(records.job_run, job)
        job_id, state = current["job_id"], current["state"]
        if state in TERMINAL_STATES:
            return {"job_id": job_id, "state": state, "changed": False, "message": f"job {job_id} already {state}"}
        pending = self.c.pending.pop(job_id, None)
        if pending is not None:
            await self.store.run(records.cancel_pending, job_id, actor)
            await self.c.notify_jobs()
            return {"job_id": job_id, "state": "cancelled", "changed": True, "message": f"job {job_id} cancelled"}
        await self.store.run(records.request_cancel, job_id, actor)
        run = self.c.active.get(current["run_id"]) if current["run_id"] else None
        if run is None or run.job_id != job_id or current["state"] == "pending":
            self.c.cancels[job_id] = actor  # between states (being dispatched or re-queued): applied there
        if run is not None and run.job_id == job_id:
            run.cancel_requested_by = actor
            link = self.c.ctx.links.get(run.host)
            if link is not None and link.up and run.launched:
                with contextlib.suppress(Exception):
                    await link.request("cancel", run_id=run.run_id)
        return {"job_id": job_id, "state": "cancelling", "changed": True,
                "message": f"job {job_id} is being stopped (SIGTERM, then SIGKILL after the grace period)"}

    async def rpc_job_set_priority(self, peer: Peer, job: Ident, priority: int) -> dict[str, Any]:
        """Change a job's priority (higher is placed first); a queued job is re-ranked at once."""
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise UsageError(f"priority must be a whole number, not {priority!r}")
        if not -1000 <= priority <= 1000:
            raise UsageError(f"priority {priority} is out of range; use a number from -1000 to 1000, as in job specs")
        job_id = (await self._allowed(peer, Permission.PRIORITISE, "job_set_priority", job))["job_id"]
        before = await self.store.run(records.set_job_priority, job_id, priority, peer.info["actor"])
        pending = self.c.pending.get(job_id)
        if pending is not None:
            pending.priority = priority
            await self.c.notify_jobs()
        return {"job_id": job_id, "priority": priority, "previous": before, "changed": before != priority,
                "message": f"job {job_id} priority {before} -> {priority}"}

    async def rpc_job_retry(self, peer: Peer, job: Ident, force: bool = False) -> dict[str, Any]:
        """Queue an ended job (failed, cancelled, lost; succeeded only with ``force``) for one more attempt."""
        current = await self._allowed(peer, Permission.RETRY, "job_retry", job)
        job_id, state = current["job_id"], current["state"]
        if state not in TERMINAL_STATES:
            raise UsageError(f"job {job_id} is {state}; only an ended job can be retried (cancel it first)")
        row = await self.store.run(records.retry_job, job_id, peer.info["actor"], force)
        self.c.pending[job_id] = PendingJob(job_id, spec_from_plain(row["spec"]), row["priority"], time.time(),
                                            row["attempt"], row["max_attempts"], row["owner"],
                                            code_hash=row["code_hash"], failed_hosts=tuple(row["failed_hosts"] or ()))
        await self.c.notify_jobs()
        return {"job_id": job_id, "state": "pending", "previous": state, "attempt": row["attempt"] + 1,
                "message": f"job {job_id} queued again (attempt {row['attempt'] + 1})"}

    async def rpc_job_logs(self, peer: Peer, job: Ident, stream: str = "stdout", offset: Offset = 0,
                           max_bytes: ChunkSize = 256 * 1024, run: Ident | None = None) -> dict[str, Any]:
        if stream not in ("stdout", "stderr"):
            raise UsageError(f"unknown log stream {stream!r}; use stdout or stderr")
        current = await self.store.read(records.job_run, job)
        run_id = run or current["run_id"]
        if run_id is None:
            return {"job_id": current["job_id"], "run_id": None, "state": current["state"], "offset": offset,
                    "end": offset, "data": "", "eof": current["state"] in TERMINAL_STATES}
        host = current["host"]
        if run is not None or host is None:
            found = await self.store.read(rows, "select host from runs where run_id = ?", [run_id])
            if not found:
                raise NotFoundError(f"no run {run_id!r}")
            host = found[0]["host"]
        link = self.c.ctx.links.get(host)
        if link is None:
            raise NotFoundError(f"host {host} is no longer configured")
        try:
            chunk = await link.request("read", run_id=run_id, stream=stream, offset=offset, max_bytes=max_bytes)
        except RemoteError as error:
            # Dispatched or preparing: the run has its id but its launch (code, environment) is still on its way, so nothing
            # is there to read yet (a follower asking this early must keep waiting, not be told the run is unknown).
            if error.kind != "NotFoundError" or current["state"] not in ("dispatched", "preparing") or run is not None:
                raise
            chunk = {"run_id": run_id, "stream": stream, "offset": offset, "end": offset, "data": "", "eof": False}
        chunk.update(job_id=current["job_id"], state=current["state"])
        return chunk
