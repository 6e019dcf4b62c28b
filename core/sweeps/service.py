"""Sweeps inside the controller: which children belong to which sweep, and the hold that keeps max_parallel.

Membership is rebuilt from the file at start (children not ended yet),
so a restarted controller keeps holding a sweep's extra children back.
The jobs service asks :meth:`SweepsService.hold` each tick (core/jobs/group.py).
"""

from __future__ import annotations

from typing import Any

from mlfleet.core.base.models import JobSpec
from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.jobs.service import JobsService
from mlfleet.core.sweeps import limits, records
from mlfleet.core.sweeps.api import SweepsApi


class SweepsService(BaseService):
    name = "sweeps"

    def __init__(self, ctx: ControllerContext, jobs: JobsService) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.members: dict[str, limits.Member] = {}  # job id -> its sweep, for children not ended yet
        self.api = SweepsApi(self)
        jobs.holds.append(self.hold)
        jobs.sweep_submit = self.submit
        jobs.array_group = self.sweep_of

    async def start(self) -> None:
        for row in await self.ctx.store.read(records.open_members):
            self.members[row["job_id"]] = limits.Member(row["name"], row["idx"], row["max_parallel"])

    async def submit(self, actor: str, spec: JobSpec, spec_path: str | None, queue_anyway: bool,
                     key: str | None, code: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.api.submit(actor, spec, spec_path, queue_anyway, key, code=code)

    def hold(self, waiting: list[str], in_flight: list[str]) -> dict[str, tuple[str, str]]:
        # Ended children stay in ``members`` until a restart (a few bytes each): a child between
        # states (a retry going back to the queue) must never be taken for one without a sweep.
        return limits.held(self.members, waiting, in_flight)

    def sweep_of(self, job_id: str) -> str | None:
        """The name of the sweep a job is a child of (None: not a sweep's), so its runs can share a job array."""
        member = self.members.get(job_id)
        return member.sweep if member is not None else None

    def status(self) -> dict[str, Any]:
        return {"children": len(self.members)}

    def rpcs(self) -> dict[str, Rpc]:
        return rpc_methods(self.api)
