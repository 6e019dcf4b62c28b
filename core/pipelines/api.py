"""The pipelines service's RPCs: run, wait, list, show, why, cancel (docs/pipelines.md has the shapes).

A pipeline arrives resolved (the client read and checked the file:
``load_pipeline_spec``) and is checked again here as data: its shape by
msgspec, its graph, and each job step by the jobs' own rules, so a client
cannot send what a file could not say.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from mlfleet.core.base.bounds import Ident, ListLimit, WaitSeconds
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import Name, to_plain
from mlfleet.core.base.protocol import Peer
from mlfleet.core.jobs.code_upload import must_be_controller_user
from mlfleet.core.jobs.spec import validate_job_spec
from mlfleet.core.pipelines import trigger_records, views
from mlfleet.core.pipelines.graph import find_cycle, upstream_of
from mlfleet.core.pipelines.models import MAX_STEPS, STEP_KINDS, STEP_NAME_PATTERN, Pipeline, decode_pipeline
from mlfleet.core.pipelines.plan import check_force
from mlfleet.core.team.roles import Permission

if TYPE_CHECKING:
    from mlfleet.core.pipelines.service import PipelineService


def pipeline_from_data(data: Any) -> Pipeline:
    """A resolved pipeline sent as data, checked: shape, references, no cycle, every job a valid job."""
    try:
        pipeline = decode_pipeline(data)
    except msgspec.ValidationError as exc:
        raise UsageError(f"pipeline_run: the pipeline is not a resolved pipeline ({exc}); send what "
                         "load_pipeline_spec returns") from None
    if not pipeline.steps:
        raise UsageError(f"pipeline {pipeline.name} has no steps")
    _within_file_limits(pipeline)
    for name, step in pipeline.steps.items():
        if step.name != name:
            raise UsageError(f"pipeline {pipeline.name}: step {name!r} calls itself {step.name!r}")
        for up in step.upstream():
            if up not in pipeline.steps:
                raise UsageError(f"pipeline {pipeline.name}: step {name} waits for {up!r}, which is not a step")
        if step.job is not None:
            job = validate_job_spec(to_plain(step.job))
            if not Path(job.workdir).is_absolute():
                raise UsageError(f"pipeline {pipeline.name}: step {name}'s workdir must be an absolute path")
    cycle = find_cycle(upstream_of(pipeline))
    if cycle:
        raise UsageError(f"pipeline {pipeline.name}: the steps make a cycle: {' → '.join(cycle)}")
    return pipeline


def _within_file_limits(pipeline: Pipeline) -> None:
    """What pipeline.yaml's own types bound (models.py), bounded here too: a client skipping the CLI gets no more.

    Why: a run of 10,000 steps, or a step named ``a/../b``, is nothing a file
    can say; the planner, the job names and the tables take the file's limits
    for granted.
    """
    for value, kind in ((pipeline.name, Name), (pipeline.project, Name)):
        try:
            msgspec.convert(value, kind)
        except msgspec.ValidationError:
            raise UsageError(f"pipeline_run: {value!r} is not a valid pipeline or project name") from None
    if len(pipeline.steps) > MAX_STEPS:
        raise UsageError(f"pipeline {pipeline.name} has {len(pipeline.steps)} steps; {MAX_STEPS} at most")
    for name, step in pipeline.steps.items():
        for what, names in (("step", [name]), ("output", list(step.outputs))):
            bad = next((n for n in names if len(n) > 64 or not re.match(STEP_NAME_PATTERN, n)), None)
            if bad is not None:
                raise UsageError(f"pipeline {pipeline.name}: {what} name {bad!r} is not valid (letters, digits, "
                                 "_ and -, a letter or digit first, 64 at most)")
        kinds = [k for k in STEP_KINDS if getattr(step, k) is not None]
        if kinds != [step.kind]:
            raise UsageError(f"pipeline {pipeline.name}: step {name} is of kind {step.kind} but carries "
                             f"{', '.join(kinds) or 'no kind'}; a step has exactly its own kind's fields")
        for item in step.inputs:
            if (item.kind == "step") != (item.step is not None and item.output is not None) or \
                    (item.kind == "host") != item.text.startswith("/"):
                raise UsageError(f"pipeline {pipeline.name}: step {name}'s input {item.text!r} is not a "
                                 f"{item.kind} input as load_pipeline_spec makes one")
        if len(step.needs) > MAX_STEPS or len(step.inputs) > 1000 or len(step.outputs) > 100:
            raise UsageError(f"pipeline {pipeline.name}: step {name} has more needs, inputs or outputs than a "
                             "pipeline file may declare")


class PipelinesApi:
    def __init__(self, service: "PipelineService") -> None:
        self.s = service

    @property
    def store(self) -> Any:
        return self.s.ctx.store  # opened after the RPC table is made

    async def rpc_pipeline_run(self, peer: Peer, pipeline: dict[str, Any], force: list[str] | None = None,
                               no_cache: bool = False, reason: str | None = None) -> dict[str, Any]:
        actor = peer.info["actor"]
        if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
            raise UsageError("pipeline_run: reason must be text of at most 1000 characters")
        resolved = pipeline_from_data(pipeline)
        await self.s.ctx.require(actor, Permission.SUBMIT, method="pipeline_run", project=resolved.project)
        if any(step.job is not None for step in resolved.steps.values()):
            # The controller packs each job step's workdir as its own user (code and inputs).
            must_be_controller_user(actor, f"run pipeline {resolved.name}")
        check_force(resolved, force or [])
        await self.store.run(trigger_records.arm, resolved, actor)  # its on: (a file without one disarms)
        run_id = await self.s.start_run(resolved, actor, force=list(force or []), no_cache=no_cache,
                                        cause={"reason": reason} if reason else None)
        await self.s.first_plan(run_id)
        return await self.store.read(views.show, run_id)

    async def rpc_pipeline_wait(self, peer: Peer, run_id: Ident, timeout: WaitSeconds = 60.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout)
        while True:
            shown = await self.store.read(views.show, run_id)
            left = deadline - loop.time()
            if shown["state"] != "running" or left <= 0:
                return shown
            await self.s.wait_changed(min(left, 2.0))

    async def rpc_pipeline_list(self, peer: Peer, name: str | None = None, limit: ListLimit = 50) -> list[dict[str, Any]]:
        return await self.store.read(views.list_runs, name, int(limit))

    async def rpc_pipeline_show(self, peer: Peer, run_id: Ident) -> dict[str, Any]:
        return await self.store.read(views.show, run_id)

    async def rpc_pipeline_why(self, peer: Peer, run_id: Ident, step: Ident) -> dict[str, Any]:
        return await self.store.read(views.why, run_id, step)

    async def rpc_pipeline_cancel(self, peer: Peer, run_id: Ident) -> dict[str, Any]:
        actor = peer.info["actor"]
        shown = await self.store.read(views.show, run_id)
        await self.s.ctx.require(actor, Permission.CANCEL, method="pipeline_cancel", project=shown["project"],
                                 owner=shown["actor"], target=f"pipeline run {shown['run_id']}")
        cancelled = await self.s.cancel(shown["run_id"], actor)
        after = await self.store.read(views.show, shown["run_id"])
        return {"run_id": shown["run_id"], "state": after["state"], "cancelled": cancelled}

    async def rpc_pipeline_triggers(self, peer: Peer, name: str | None = None,
                                    limit: ListLimit = 50) -> dict[str, Any]:
        return await self.store.read(trigger_records.triggers_view, name, int(limit))
