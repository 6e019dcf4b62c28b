"""Pipelines inside the controller: one driver task per run in flight, resumed from the store at start.

A run's whole state is in DuckDB (core/pipelines/records.py): the driver
(driver.py) reads it back on every pass, so this service keeps only the
tasks and a condition that wakes ``pipeline_wait`` callers when a step
moves. Triggers (trigger_loop.py, when armed) start runs through
:meth:`PipelineService.start_run` like ``pipeline run`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.jobs.service import JobsService
from mlfleet.core.pipelines import records
from mlfleet.core.pipelines.driver import RunDriver
from mlfleet.core.pipelines.models import Pipeline, decode_pipeline
from mlfleet.core.store.rows import rows

log = logging.getLogger(__name__)


class PipelineService(BaseService):
    name = "pipelines"

    def __init__(self, ctx: ControllerContext, jobs: JobsService) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.drivers: dict[str, RunDriver] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._changed: asyncio.Condition | None = None
        self._outputs: Any = None
        from mlfleet.core.jobs.code_upload import controller_user
        from mlfleet.core.pipelines.trigger_loop import TriggerLoop

        self.trigger_actor = controller_user()  # a trigger's runs are the controller's (audited with their cause)
        self.triggers = TriggerLoop(ctx, self._start_triggered, cancel_run=self._cancel_replaced,
                                    actor=self.trigger_actor)

    @property
    def outputs(self) -> Any:
        """Where the controller keeps step outputs (core/pipelines/output_store.py), made on first use."""
        if self._outputs is None:
            from mlfleet.core.pipelines.output_store import OutputStore

            self._outputs = OutputStore(self.ctx.home.data_dir / "pipeline-outputs")
        return self._outputs

    @property
    def condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def start(self) -> None:
        """Drive again every run the store says is running (a controller that stopped or was killed mid-run)."""
        for row in await self.ctx.store.read(rows, "select run_id, spec, actor, options from pipeline_runs "
                                                   "where state = 'running' order by created_at"):
            pipeline = decode_pipeline(row["spec"] if isinstance(row["spec"], (str, bytes)) else json.dumps(row["spec"]))
            options = json.loads(row["options"]) if isinstance(row["options"], str) else (row["options"] or {})
            self._drive(row["run_id"], pipeline, row["actor"], list(options.get("force") or []),
                        bool(options.get("no_cache")))

    async def start_run(self, pipeline: Pipeline, actor: str, *, trigger: str = "manual",
                        cause: dict[str, Any] | None = None, force: list[str] | None = None,
                        no_cache: bool = False) -> str:
        """Record a run and start driving it; its id."""
        run_id = await self.ctx.store.run(_new_run, pipeline, actor, trigger, cause,
                                          {"force": list(force or []), "no_cache": no_cache})
        self._drive(run_id, pipeline, actor, list(force or []), no_cache)
        return run_id

    async def _start_triggered(self, pipeline: Pipeline, trigger: str, cause: dict[str, Any]) -> str:
        return await self.start_run(pipeline, self.trigger_actor, trigger=trigger, cause=cause)

    async def _cancel_replaced(self, run_id: str, reason: str) -> None:
        await self.cancel(run_id, self.trigger_actor, reason)

    async def tick(self) -> None:
        """Evaluate the armed pipelines' triggers (schedule, data, drift, after) and start what is due."""
        await self.triggers.tick()

    def _drive(self, run_id: str, pipeline: Pipeline, actor: str, force: list[str], no_cache: bool) -> None:
        driver = RunDriver(self, run_id, pipeline, actor, force, no_cache)
        self.drivers[run_id] = driver
        task = asyncio.get_running_loop().create_task(driver.drive(), name=f"pipeline {run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(lambda _: (self.tasks.pop(run_id, None), self.drivers.pop(run_id, None)))

    async def first_plan(self, run_id: str, timeout: float = 30.0) -> None:
        """Wait until the run's first pass has decided what it can (or it ended), for ``pipeline run``'s answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            steps = await self.ctx.store.read(records.run_steps, run_id)
            run = await self.ctx.store.read(records.get_run, run_id)
            if run["state"] != "running" or any(s["state"] != "queued" or s["key"] for s in steps):
                return
            await self.wait_changed(deadline - loop.time())

    async def changed(self) -> None:
        async with self.condition:
            self.condition.notify_all()

    async def ended(self, run_id: str) -> None:
        await self.changed()

    async def wait_changed(self, timeout: float) -> None:
        async with self.condition:
            try:
                await asyncio.wait_for(self.condition.wait(), max(0.01, timeout))
            except asyncio.TimeoutError:
                pass

    async def cancel(self, run_id: str, actor: str, reason: str | None = None) -> list[str]:
        """Cancel a run: its jobs in flight stopped, every step not ended marked cancelled, the run cancelled."""
        from mlfleet.core.jobs.group import cancel_jobs

        driver = self.drivers.get(run_id)
        if driver is not None:
            driver.cancelled = True
        task = self.tasks.get(run_id)
        steps = await self.ctx.store.read(records.run_steps, run_id)
        jobs = [s["job_id"] for s in steps if s["state"] == "running" and s["job_id"]]
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # its end is ours to write now
                await task
        if jobs:
            await cancel_jobs(self.jobs, actor, jobs)
        cancelled = await self.ctx.store.run(_cancel_run, run_id, actor, reason or f"cancelled by {actor}")
        await self.changed()
        return cancelled

    def ticks_ended(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()

    def status(self) -> dict[str, Any]:
        return {"runs": len(self.tasks)}

    def rpcs(self) -> dict[str, Rpc]:
        from mlfleet.core.pipelines.api import PipelinesApi

        return rpc_methods(PipelinesApi(self))


def _new_run(con: Any, pipeline: Pipeline, actor: str, trigger: str, cause: dict[str, Any] | None,
             options: dict[str, Any]) -> str:
    return records.new_run(con, pipeline, actor, trigger, cause, options)


def _cancel_run(con: Any, run_id: str, actor: str, reason: str) -> list[str]:
    from mlfleet.core.audit.records import audit
    from mlfleet.core.store.db import transaction

    with transaction(con):
        run = records.get_run(con, run_id)
        if run["state"] != "running":
            return []
        open_steps = [r[0] for r in con.execute(
            "select step from pipeline_steps where run_id = ? and state in ('queued', 'running') order by position",
            [run_id]).fetchall()]
        for step in open_steps:
            records.set_step(con, run_id, step, "cancelled", reason=reason)
        records.end_run(con, run_id, "cancelled", reason)
        audit(con, actor, "pipeline.cancel", run_id, {"name": run["name"], "steps": open_steps})
    return open_steps
