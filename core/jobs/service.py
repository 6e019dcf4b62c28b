"""Jobs inside the controller: the queue, the runs in flight, and placing waiting jobs each tick.

Crash safety: a dispatch is written to DuckDB before the agent is asked to
launch (and launching is idempotent by run id), and a run is closed only
after its metrics stream has been read to the end. A controller killed at
any point therefore resumes without losing a point or starting a job twice:
:meth:`JobsService.start` rebuilds this state from the file.

The parts: :mod:`~mlfleet.core.jobs.dispatch` (the scheduler's view and
placements), :mod:`~mlfleet.core.jobs.launch` (code shipping and launches),
:mod:`~mlfleet.core.jobs.host_runs` (a host's runs in its sync: status,
metrics, the end of a run), :mod:`~mlfleet.core.jobs.api` (clients).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

from mlfleet.core.base.models import JobSpec, spec_from_plain
from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.environments.prepare import EnvironmentPreparer
from mlfleet.core.fleet.service import FleetService
from mlfleet.core.jobs import records, scheduler
from mlfleet.core.jobs.code_upload import CodeUploadApi, CodeUploads
from mlfleet.core.jobs.dispatch import Dispatcher
from mlfleet.core.jobs.host_runs import HostRuns
from mlfleet.core.jobs.launch import Launcher
from mlfleet.core.jobs.runs import ActiveRun, PendingJob


class JobsService(BaseService):
    name = "jobs"

    def __init__(self, ctx: ControllerContext, fleet: FleetService) -> None:
        self.ctx = ctx
        self.fleet = fleet
        self.pending: dict[str, PendingJob] = {}
        self.active: dict[str, ActiveRun] = {}  # by run id
        self.cancels: dict[str, str] = {}  # job -> who, for cancels that arrive while a job changes state
        self.waiting_reasons: dict[str, list[scheduler.Reason]] = {}
        # Asked each tick which waiting jobs to keep back (core/jobs/group.py's Hold: a sweep's max_parallel).
        self.holds: list[Callable[[list[str], list[str]], dict[str, tuple[str, str]]]] = []
        # Takes a spec with a sweep: block from the submit RPC (core/sweeps/service.py sets it).
        self.sweep_submit: Callable[..., Awaitable[dict[str, Any]]] | None = None
        # The sweep a job belongs to (None: none); runs of one sweep sent to a Slurm host in one tick become
        # one job array (core/jobs/launch.py). core/sweeps/service.py sets it.
        self.array_group: Callable[[str], str | None] = lambda job_id: None
        # The spec of the run whose data a job carries (None: its own only): a deployment's replica serves a model
        # made by a run, and that run's residency holds for the replica too. core/deploy/service.py sets it.
        self.data_from: Callable[[str], JobSpec | None] = lambda job_id: None
        self.job_changed = asyncio.Condition()
        self.launcher = Launcher(self)
        self.environments = EnvironmentPreparer(ctx.home, ctx.settings)  # resolved, fetched, shipped before a launch
        self.dispatcher = Dispatcher(self)
        self.host_runs = HostRuns(self)
        self.code_uploads = CodeUploads(ctx.home)  # snapshots other users send (they are never read from their paths)
        fleet.take_part(self.host_runs)  # a host's runs ride its connection (fence) and its poll

    async def start(self) -> None:
        """Rebuild the in-memory queue and active runs from the file (after a crash too)."""
        await asyncio.to_thread(self.code_uploads.start)  # partial uploads of a controller that stopped are gone
        store = self.ctx.store
        for row in await store.run(records.jobs_in_states, ("pending", "dispatched", "preparing", "running")):
            spec = spec_from_plain(json.loads(row["spec"]) if isinstance(row["spec"], str) else row["spec"])
            if row["state"] == "pending" and row.get("cancel_requested_by"):
                await store.run(records.cancel_pending, row["job_id"], row["cancel_requested_by"])
            elif row["state"] == "pending":
                self.pending[row["job_id"]] = PendingJob(row["job_id"], spec, row["priority"], row["submitted_epoch"],
                                                         row["attempt"], row["max_attempts"], row["owner"],
                                                         code_hash=row["code_hash"],
                                                         failed_hosts=tuple(row.get("failed_hosts") or ()))
            else:
                self.active[row["run_id"]] = ActiveRun(
                    job_id=row["job_id"], run_id=row["run_id"], host=row["host"], state=row["state"],
                    offset=row["byte_offset"] or 0, lines=row["lines"] or 0, attempt=row["attempt"],
                    max_attempts=row["max_attempts"], spec=spec, gpus=list(row["gpus"] or []), owner=row["owner"],
                    cancel_requested_by=row.get("cancel_requested_by"), code_hash=row["code_hash"],
                    failed_hosts=tuple(row.get("failed_hosts") or ()),
                    # a dispatched run may never have reached its agent: launch again (idempotent)
                    launched=row["state"] == "running")

    async def tick(self) -> None:
        await self.dispatcher.schedule()  # after the fleet's sync: placements see this tick's telemetry

    def status(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "active": len(self.active)}

    def rpcs(self) -> dict[str, Rpc]:
        from mlfleet.core.jobs.api import JobsApi

        return {**rpc_methods(JobsApi(self)), **rpc_methods(CodeUploadApi(self.code_uploads, self.ctx.require))}

    def runs_on(self, host: str) -> list[ActiveRun]:
        return [r for r in self.active.values() if r.host == host]

    async def notify_jobs(self) -> None:
        async with self.job_changed:
            self.job_changed.notify_all()
