"""A host's runs in its sync: fencing on connect, cancels and launches, status and metrics, the end of a run.

This is the jobs service's part in the fleet's host sync
(:class:`~mlfleet.core.fleet.service.HostWork`): every run in flight on a
host rides that host's one poll per tick, which brings its status and the
next chunk of its metrics stream; a run is closed only after its stream has
been read to the end.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from mlfleet.core.audit import records as audit_records
from mlfleet.core.base.errors import MlfleetError, RemoteError
from mlfleet.core.base.models import NOT_STARTED_STATES, RunStatus, StreamChunk
from mlfleet.core.base.protocol import Peer
from mlfleet.core.environments.warm import env_key
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.jobs import records
from mlfleet.core.jobs.launch import controller_identity
from mlfleet.core.jobs.runs import ActiveRun, PendingJob, failure_words
from mlfleet.core.store.rows import rows
from mlfleet.core.tracking import records as run_records
from mlfleet.core.tracking.lineage import gpu_usage
from mlfleet.core.tracking.run_ingest import take_chunk

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService

log = logging.getLogger(__name__)


ENV_GC_EVERY_S = 600.0  # how often a node is asked to collect its environments' garbage


class HostRuns:
    def __init__(self, jobs: "JobsService") -> None:
        self.jobs = jobs
        self._env_gc_at: dict[str, float] = {}  # host -> when env_gc was last asked (monotonic)

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.jobs.ctx.store

    # ------------------------------------------------- the fleet's HostWork
    def busy_on(self, host: str) -> list[str]:
        """Runs in flight on ``host``."""
        return [r.run_id for r in self.jobs.active.values() if r.host == host]

    async def host_unreachable(self, link: HostLink) -> None:
        await self._give_up_on_lost_runs(link)

    async def before_poll(self, link: HostLink) -> "_RunsPoll":
        """Cancels asked for and launches not yet made on this host; then its runs ride the poll."""
        runs = [r for r in self.jobs.active.values() if r.host == link.name]
        with self.jobs.launcher.together():  # launches retried together: a sweep's runs stay one job array
            for run in runs:
                if run.job_id in self.jobs.cancels and not run.cancel_requested_by:
                    run.cancel_requested_by = self.jobs.cancels.pop(run.job_id)
                if run.state in NOT_STARTED_STATES and not run.launched and not run.cancel_requested_by:
                    self.jobs.launcher.launch_soon(link, run)
                if run.cancel_requested_by and run.finished_status is None:
                    with contextlib.suppress(MlfleetError):
                        await link.request("cancel", run_id=run.run_id)
        await self._ask_env_ready(link)
        await self._collect_env_garbage(link)
        return _RunsPoll(self, link, runs)

    async def _collect_env_garbage(self, link: HostLink) -> None:
        """The node removes old and over-budget environments, at most every ENV_GC_EVERY_S, with our settings."""
        now = time.monotonic()
        if now - self._env_gc_at.get(link.name, float("-inf")) < ENV_GC_EVERY_S:
            return
        self._env_gc_at[link.name] = now
        conf = self.jobs.ctx.settings.environments
        try:
            answer = await link.request("env_gc", keep_for=float(conf.keep_for),
                                        disk_budget=None if conf.disk_budget is None else int(conf.disk_budget),
                                        request_timeout=self.jobs.ctx.answer_timeout)
        except MlfleetError as exc:  # an older agent, or a slow disk: next time
            log.info("env_gc on %s: %s", link.name, exc)
            return
        removed = answer.get("removed") or {}
        if removed:
            log.info("%s removed %d environments: %s", link.name, len(removed), removed)
            self.jobs.environments.warm.answered(link.name, dict.fromkeys(removed, False))

    async def _ask_env_ready(self, link: HostLink) -> None:
        """Which waiting jobs' environments are built here (at most once a minute; for warm-first placement)."""
        warm = self.jobs.environments.warm
        keys = [env_key(j.spec.environment, j.code_hash) for j in self.jobs.pending.values()
                if j.spec.builds_environment and j.spec.environment]
        hashes = warm.to_ask(link.name, keys, time.monotonic()) if keys else []
        if not hashes:
            return
        try:
            warm.answered(link.name, await link.request("env_ready", env_hashes=hashes))
        except MlfleetError as exc:  # an older agent, or a slow one: placement just knows less
            log.info("env_ready on %s: %s", link.name, exc)

    async def _give_up_on_lost_runs(self, link: HostLink) -> None:
        """A host gone longer than ``lost_after``: its runs count as lost and retry elsewhere (per ``retries``)."""
        limit = float(self.jobs.ctx.settings.scheduler.lost_after)
        if link.down_since is None or time.time() - link.down_since < limit:
            return
        for run in [r for r in self.jobs.active.values() if r.host == link.name]:
            log.warning("giving up on %s: %s unreachable for %.0f s", run.run_id, link.name, limit)
            await self.finish(run, RunStatus(run_id=run.run_id, state="exited", reason="lost",
                                             message=f"{link.name} was unreachable for {limit:.0f} s"))

    async def fence(self, link: HostLink, peer: Peer) -> None:
        """On every new connection, before anything else uses it: a run still going on the node that the
        controller has closed (given up on it as lost, or cancelled it while the host was away) is
        stopped, so a job never runs twice past the partition. A fence that cannot be completed fails
        the connection (it is tried again), so nothing is launched on a node that was not fenced."""
        statuses = await peer.request("status", request_timeout=self.jobs.ctx.answer_timeout)
        me = controller_identity(self.jobs.ctx.home.data_dir)  # another controller's run sharing the node is not ours
        going = [s["run_id"] for s in statuses if s.get("state") in ("starting", "running")
                 and s["run_id"] not in self.jobs.active and s.get("controller", me) == me]
        if not going:
            return
        marks = ",".join("?" for _ in going)
        closed = await self.store.read(rows, f"select run_id, state from runs where run_id in ({marks}) "
                                             "and state not in ('dispatched', 'preparing', 'running')", going)
        for row in closed:
            log.warning("stopping stray run %s on %s (it is %s here)", row["run_id"], link.name, row["state"])
            try:
                await peer.request("cancel", run_id=row["run_id"], request_timeout=self.jobs.ctx.answer_timeout)
            except RemoteError as exc:  # it ended on its own meanwhile: nothing left to stop
                log.info("stray run %s on %s: %s", row["run_id"], link.name, exc)
            await self.store.run(audit_records.audit, "controller", "run.stop-stray", row["run_id"],
                                 {"host": link.name, "state": row["state"]})

    async def _absorb_run(self, link: HostLink, run: ActiveRun, item: dict[str, Any]) -> None:
        if "error" in item:
            log.warning("agent on %s could not report run %s: %s", link.name, run.run_id, item["error"])
            return
        status_raw = item.get("status", {})
        if status_raw.get("state") == "unknown":
            if run.state in NOT_STARTED_STATES and run.cancel_requested_by:
                await self.finish(run, RunStatus(run_id=run.run_id, state="exited", reason="cancelled",
                                                 message="cancelled before it started"))
                return
            if run.state in NOT_STARTED_STATES:
                # Written down but never launched there (a crash in between): launch it now.
                run.launched = False
                return
            # It ran there, and the agent has forgotten it (its state dir was wiped).
            status_raw = {"run_id": run.run_id, "state": "exited", "reason": "lost",
                          "message": f"the agent on {link.name} no longer knows this run"}
            item = {"status": status_raw, "metrics": {"run_id": run.run_id, "stream": "metrics", "offset": run.offset,
                                                      "end": run.offset, "data": "", "eof": True}}
        status = msgspec.convert(status_raw, RunStatus)
        run.service = status.service  # a replica's port, health and latest scrape (core/deploy/ reads it)
        run.waiting = status.message if status.state == "starting" else ""
        chunk_raw = item.get("metrics")
        drained = False
        if chunk_raw is not None:
            drained = await take_chunk(self.store, run, msgspec.convert(chunk_raw, StreamChunk))
        if status.started_at:
            run.started_at = status.started_at
        if run.state in NOT_STARTED_STATES and status.state in ("running", "exited") and status.started_at:
            await self.store.run(records.mark_running, run.job_id, run.run_id, status.started_at)
            run.state = "running"
        if not run.node_lineage and status.state in ("running", "exited") and status.started_at:
            await self._fetch_node_lineage(link, run, force=status.state == "exited")
        if status.state == "exited" and drained:
            await self.finish(run, status)

    async def _fetch_node_lineage(self, link: HostLink, run: ActiveRun, force: bool = False) -> None:
        """Merge the agent's lineage.json (inputs, Python, packages) into the run, once."""
        if not force and time.monotonic() - run.lineage_asked < 2.0:
            return
        run.lineage_asked = time.monotonic()
        try:
            found = await link.request("lineage", run_id=run.run_id)
        except MlfleetError as exc:  # an older agent, or the run's folder is gone: lineage stays partial
            log.info("no lineage for %s from %s: %s", run.run_id, link.name, exc)
            run.node_lineage = force
            return
        if found:
            await self.store.run(run_records.merge_run_lineage, run.run_id, found)
            run.node_lineage = True
        elif force:
            run.node_lineage = True  # exited without one (it never started): do not ask forever

    async def _usage(self, run: ActiveRun, status: RunStatus) -> dict[str, Any]:
        """GPU-hours and GPU use of a run that ended, from the telemetry held here and in the file."""
        started, finished = status.started_at or run.started_at, status.finished_at
        if started is None or finished is None:
            return {}
        stored: list[dict[str, Any]] = []
        if run.gpus:
            marks = ",".join("?" for _ in run.gpus)
            stored = await self.store.read(rows, f"""select epoch(ts) as ts, window_s, gpu_index, utilization,
                                           memory_used from gpu_telemetry where host = ? and gpu_index in ({marks})
                                           and ts between to_timestamp(?) and to_timestamp(?)""",
                                           [run.host, *run.gpus, started, finished + 3600])
        link = self.jobs.ctx.links.get(run.host)
        samples = list(link.history) if link is not None else []
        return gpu_usage(run.run_id, run.gpus, started, finished, samples, stored,
                         float(self.jobs.ctx.settings.telemetry.sample_interval))

    async def refused(self, run: ActiveRun, reason: str) -> None:
        """The node refused the launch (its GPUs are another live run's, docs/scheduler.md "Many controllers, one
        node"): not the job's failure. The run ends ``refused`` with the node's sentence, the job waits again with
        no attempt spent, and the scheduler keeps off those GPUs until the node's telemetry shows the claim."""
        if run.run_id not in self.jobs.active:
            return
        log.info("%s refused %s: %s", run.host, run.run_id, reason)
        await self.store.run(records.refuse_run, run.job_id, run.run_id, run.host, reason)
        del self.jobs.active[run.run_id]
        self.jobs.dispatcher.note_refusal(run.host, run.gpus)
        if run.job_id in self.jobs.cancels or run.cancel_requested_by:  # cancelled while it was being refused
            await self.store.run(records.cancel_pending, run.job_id,
                                 run.cancel_requested_by or self.jobs.cancels.pop(run.job_id))
        else:
            priority = (await self.store.read(rows, "select priority from jobs where job_id = ?",
                                              [run.job_id]))[0]["priority"]
            self.jobs.pending[run.job_id] = PendingJob(run.job_id, run.spec, priority, time.time(), run.attempt,
                                                       run.max_attempts + 1, run.owner, code_hash=run.code_hash,
                                                       failed_hosts=run.failed_hosts + (run.host,))
        await self.jobs.notify_jobs()

    async def finish(self, run: ActiveRun, status: RunStatus) -> None:
        run.cancel_requested_by = run.cancel_requested_by or self.jobs.cancels.pop(run.job_id, None)
        if status.reason == "cancelled" or (run.cancel_requested_by and status.exit_code != 0):
            run_state, job_state = "cancelled", "cancelled"
            reason = f"cancelled by {run.cancel_requested_by or 'a user'}"
        elif status.exit_code == 0 and status.reason == "exited":
            run_state, job_state, reason = "succeeded", "succeeded", "exited 0"
        else:
            run_state = "failed"
            reason = failure_words(status)
            if run.attempt < run.max_attempts:
                job_state = "pending"
                reason = f"attempt {run.attempt} {reason}; retrying ({run.attempt + 1} of {run.max_attempts})"
            else:
                job_state = "failed"
        try:
            usage = await self._usage(run, status)
        except Exception:  # lineage must never keep a run from closing
            log.exception("GPU use of %s could not be computed", run.run_id)
            usage = {}
        await self.store.run(records.finish_run, run.job_id, run.run_id, run_state, job_state, reason,
                             status.exit_code, status.signal, status.finished_at, status.reason, lineage=usage)
        del self.jobs.active[run.run_id]
        if job_state == "pending" and run.job_id in self.jobs.cancels:  # cancelled while it was being re-queued
            await self.store.run(records.cancel_pending, run.job_id, self.jobs.cancels.pop(run.job_id))
        elif job_state == "pending":
            # The job's priority as it stands now: `jobs priority` may have changed it since submit.
            priority = (await self.store.read(rows, "select priority from jobs where job_id = ?",
                                              [run.job_id]))[0]["priority"]
            self.jobs.pending[run.job_id] = PendingJob(run.job_id, run.spec, priority, time.time(), run.attempt,
                                                       run.max_attempts, run.owner, code_hash=run.code_hash,
                                                       failed_hosts=run.failed_hosts + (run.host,))
        await self.jobs.notify_jobs()


class _RunsPoll:
    """The runs of one host in its polls: each one launched (or being cancelled) asks for its metrics from its offset."""

    def __init__(self, host_runs: HostRuns, link: HostLink, runs: list[ActiveRun]) -> None:
        self.host_runs = host_runs
        self.link = link
        self.runs = runs  # those on the host when its sync began: a run placed meanwhile waits for the next

    def params(self) -> dict[str, Any]:
        active = self.host_runs.jobs.active
        return {"metrics": {r.run_id: r.offset for r in self.runs
                            if (r.launched or r.cancel_requested_by) and r.run_id in active}}

    async def absorb(self, answer: dict[str, Any]) -> bool:
        more = False
        for run_id, item in answer.get("runs", {}).items():
            run = self.host_runs.jobs.active.get(run_id)
            if run is not None:
                offset_before = run.offset
                try:
                    await self.host_runs._absorb_run(self.link, run, item)
                except Exception:  # one run's trouble never stops the others
                    log.exception("run %s on %s could not be absorbed", run_id, self.link.name)
                more = more or (bool((item.get("metrics") or {}).get("more")) and run.offset > offset_before)
        return more
