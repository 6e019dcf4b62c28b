"""The controller's trigger tick: observe each armed pipeline, decide (triggers.decide), admit, act, record.

:class:`TriggerLoop` is given three seams by the pipelines service:
``start_run(pipeline, trigger, cause) -> run id`` (record the run, with the
cause, and plan it: the service's own ``pipeline run`` path), ``running(project,
name) -> [run ids]`` (default: the store's running runs of that pipeline) and
``cancel_run(run_id, reason)`` (concurrency: replace).

Per definition and tick, in order:

1. a queued firing starts once no run of the pipeline is going;
2. observe: the data globs hashed on the controller's machine off the event
   loop (core/pipelines/data_hash.py: a stat per unchanged file, at most
   ``max_bytes`` read per tick, at most every ``data_interval`` seconds);
   drift reports of the watched deployment since the last one read;
   succeeded runs of the ``after:`` pipelines since the last one read; a
   drift watch's finished check taken in and the next one started when due
   (``on: drift:`` with ``reference:``: the controller checks the captures
   itself, in a task, one per definition at a time);
3. decide, then admit each firing and start, queue, replace or skip it; the
   firings after the first that started or queued a run in one tick are
   skipped as covered by it (they saw the same world, and one run reads it);
4. the events (each with its audit row) and the new state in one transaction.

A run started but not yet recorded as started when the controller stops is
not started twice: its firing key (``cause.firing``, made from the state's
version) is looked up in ``pipeline_runs`` before a start.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.drift import stored_check
from mlfleet.core.controller.service import ControllerContext
from mlfleet.core.pipelines import trigger_records as records
from mlfleet.core.pipelines.data_hash import DataHasher
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import REFERENCE
from mlfleet.core.pipelines.triggers import (Firing, Observations, TriggerState, admit, decide, drift_check_due,
                                            drift_window)

log = logging.getLogger(__name__)

StartRun = Callable[[Pipeline, str, dict[str, Any]], Awaitable[str]]
Running = Callable[[str, str], Awaitable[list[str]] | list[str]]
CancelRun = Callable[[str, str], Awaitable[None]]


class TriggerLoop:
    """Evaluates every armed pipeline's ``on:`` once per :meth:`tick` and applies its ``concurrency:``."""

    def __init__(self, ctx: ControllerContext, start_run: StartRun, running: Running | None = None,
                 cancel_run: CancelRun | None = None, *, hasher: DataHasher | None = None,
                 data_interval: float = 10.0, actor: str = "controller") -> None:
        self.ctx = ctx
        self.start_run = start_run
        self.running = running
        self.cancel_run = cancel_run
        self.hasher = hasher or DataHasher()
        self.data_interval = data_interval
        self.actor = actor
        self._data_checked: dict[tuple[str, str], float] = {}  # (project, name) -> monotonic time of the last hash
        self._checks: dict[tuple[str, str], asyncio.Task[datetime | None]] = {}  # the drift watch's check going
        self._checked_at: dict[tuple[str, str], datetime] = {}  # when the drift watch last started a check
        self.ticks = 0

    async def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """One pass over the armed definitions; the events recorded (trigger, outcome, run_id, reason, name)."""
        now = now or datetime.now(timezone.utc)
        self.ticks += 1
        recorded: list[dict[str, Any]] = []
        for definition in await self.ctx.store.read(records.armed):
            if definition["pipeline"] is None:
                continue  # its spec no longer reads: triggers_view says so; running the file re-arms it
            try:
                recorded += await self._visit(definition["pipeline"], definition["state"], definition["armed_at"],
                                              now)
            except MlfleetError as exc:
                log.warning("pipeline %s/%s: its triggers were not evaluated this tick: %s",
                            definition["project"], definition["name"], exc)
            except Exception:  # one broken definition must not stop the others' triggers
                log.exception("pipeline %s/%s: its triggers failed this tick", definition["project"],
                              definition["name"])
        return recorded

    async def _visit(self, pipeline: Pipeline, state: TriggerState, armed_at: datetime,
                     now: datetime) -> list[dict[str, Any]]:
        read = msgspec.structs.replace(state)  # what the store holds: a tick that changes nothing writes nothing
        events: list[tuple[Firing, str, str | None, str]] = []
        covered: str | None = None  # the run (or queued firing) that covers the rest of this tick's firings
        running = await self._running(pipeline)
        if state.queued is not None and not running:
            waited = state.queued
            state.queued = None
            firing = msgspec.structs.replace(waited, at=now,
                                             cause={**waited.cause, "queued_at": waited.at.isoformat()})
            run_id, problem = await self._start(pipeline, firing)
            events.append((firing, "started" if run_id else "skipped", run_id,
                           "the run it waited for ended" if run_id else problem))
            running = [run_id] if run_id else running
            covered = f"run {run_id} started this tick" if run_id else None
        self._watch(pipeline, state, now)
        seen = Observations(now=now, data=await self._data(pipeline, now), drift=await self._drift(pipeline, state),
                            succeeded=await self._succeeded(pipeline, state))
        firings, state = decide(pipeline, state, seen)
        for firing in firings:
            if covered is not None:
                events.append((firing, "skipped", None, f"{covered} covers it (one tick, one world seen)"))
                continue
            before = await self._started_before(pipeline, firing)
            if before is not None:  # a tick replayed: the run it started is going already
                events.append((firing, "started", before, "started before the controller stopped"))
                covered = f"run {before} started this tick"
                continue
            admission = admit(pipeline.concurrency, running, 1 if state.queued is not None else 0, firing)
            if admission.outcome == "queued":
                state.queued = firing
                covered = f"the {firing.trigger} firing queued this tick"
                events.append((firing, "queued", None, admission.reason))
                continue
            if admission.outcome == "skipped":
                events.append((firing, "skipped", None, admission.reason))
                continue
            if admission.cancel:
                await self._cancel(admission.cancel, f"replaced by a run its {firing.trigger} trigger started")
                state.queued = None
                firing = msgspec.structs.replace(firing, cause={**firing.cause, "cancelled": admission.cancel})
            run_id, problem = await self._start(pipeline, firing)
            if run_id is None:
                events.append((firing, "skipped", None, problem))
                continue
            events.append((firing, admission.outcome, run_id, admission.reason))
            running = [run_id] if admission.cancel else running + [run_id]
            covered = f"run {run_id} started this tick"
        if not events and state == read:
            return []
        if not await self.ctx.store.run(records.settle_tick, pipeline.project, pipeline.name, state, events,
                                        armed_at, self.actor):
            return []  # disarmed while this tick ran: its firings stand (runs started are the service's), no rows
        return [{"project": pipeline.project, "name": pipeline.name, "trigger": f.trigger, "outcome": outcome,
                 "run_id": run_id, "reason": reason, "cause": f.cause} for f, outcome, run_id, reason in events]

    async def checks_done(self) -> None:
        """Wait for the drift watch's checks going (a stopping controller, a test that ticks by hand)."""
        going = [t for t in self._checks.values() if not t.done()]
        if going:
            await asyncio.gather(*going, return_exceptions=True)

    async def _running(self, pipeline: Pipeline) -> list[str]:
        if self.running is None:
            return await self.ctx.store.read(records.running_runs, pipeline.project, pipeline.name)
        found = self.running(pipeline.project, pipeline.name)
        return list(await found if inspect.isawaitable(found) else found)

    async def _start(self, pipeline: Pipeline, firing: Firing) -> tuple[str | None, str]:
        """The run the firing started (or had started before a restart), or None and the sentence why not."""
        before = await self._started_before(pipeline, firing)
        if before is not None:
            return before, ""
        try:
            return await self.start_run(pipeline, firing.trigger, dict(firing.cause)), ""
        except MlfleetError as exc:
            log.warning("pipeline %s/%s: the %s trigger fired but the run could not start: %s", pipeline.project,
                        pipeline.name, firing.trigger, exc)
            return None, f"the run could not start: {exc}"

    async def _started_before(self, pipeline: Pipeline, firing: Firing) -> str | None:
        key = str(firing.cause.get("firing", ""))
        return await self.ctx.store.read(records.run_of_firing, pipeline.project, pipeline.name, key) if key else None

    async def _cancel(self, run_ids: list[str], reason: str) -> None:
        if self.cancel_run is None:
            raise MlfleetError("concurrency: replace needs a way to cancel runs, and this loop was given none")
        for run_id in run_ids:
            await self.cancel_run(run_id, reason)

    async def _data(self, pipeline: Pipeline, now: datetime) -> dict[str, str] | None:
        if not pipeline.on.data:
            return None
        key = (pipeline.project, pipeline.name)
        last = self._data_checked.get(key)
        if last is not None and time.monotonic() - last < self.data_interval:
            return None
        base = Path(pipeline.source).parent if pipeline.source else None
        found = await asyncio.to_thread(self.hasher.hash_globs, list(pipeline.on.data), base)
        if found is not None:  # not finished: hash on at the next tick, whatever the interval
            self._data_checked[key] = time.monotonic()
        return found

    async def _drift(self, pipeline: Pipeline, state: TriggerState) -> list[Any]:
        if pipeline.on.drift is None or state.drift is None:
            return []
        return await self.ctx.store.read(records.drift_reports_since, pipeline.on.drift.deployment, state.drift.at)

    def _watch(self, pipeline: Pipeline, state: TriggerState, now: datetime) -> None:
        """The drift watch (``on: drift:`` with ``reference:``): take in a finished check (where the next window
        starts), and start the next one when due. One check per definition at a time, as a task: its DuckDB work
        runs in threads, so neither the event loop nor the other definitions' triggers wait for it. Its report,
        saved like anyone's, is read by :meth:`_drift` and fires through triggers.decide."""
        key = (pipeline.project, pipeline.name)
        task = self._checks.get(key)
        if task is not None:
            if not task.done():
                return
            del self._checks[key]
            checked = None if task.cancelled() else task.result()
            if checked is not None and (state.drift_checked is None or checked > state.drift_checked):
                state.drift_checked = checked
        if not drift_check_due(pipeline.on, self._checked_at.get(key), now):
            return
        self._checked_at[key] = now
        self._checks[key] = asyncio.get_running_loop().create_task(
            self._check_drift(pipeline, drift_window(state)), name=f"drift watch {pipeline.project}/{pipeline.name}")

    async def _check_drift(self, pipeline: Pipeline, since: datetime) -> datetime | None:
        """Check the deployment's captures made since ``since`` against the reference and save the report as the
        controller; where the next window starts (just past the newest capture read), or None when nothing was
        checked (no reference yet, no captures in the window, or a problem, which is logged)."""
        drift = pipeline.on.drift
        assert drift is not None and drift.reference is not None
        name = f"pipeline {pipeline.project}/{pipeline.name}"
        try:
            reference = await self._reference(pipeline, drift.reference)
            if reference is None:
                log.info("%s: the drift watch has no reference yet (%s): no step run of it has succeeded", name,
                         drift.reference)
                return None
            capture_dir = self.ctx.home.capture_dir
            count, newest = await asyncio.to_thread(stored_check.capture_window, capture_dir, drift.deployment,
                                                    since.timestamp())
            if not count or newest is None:
                return None
            report = await stored_check.check_and_store(self.ctx.store, capture_dir, self.actor, reference, None,
                                                        drift.deployment, drift.config, since=since.timestamp())
            log.info("%s: the drift watch checked %d captures of %s: report %s, %s", name, count, drift.deployment,
                     report["report_id"], "drifted" if report["drifted"] else "no drift")
            return datetime.fromtimestamp(newest, timezone.utc) + timedelta(microseconds=1)
        except MlfleetError as exc:
            log.warning("%s: the drift watch of %s could not check: %s", name, drift.deployment, exc)
        except Exception:  # one broken check must not stop the watch
            log.exception("%s: the drift watch of %s failed", name, drift.deployment)
        return None

    async def _reference(self, pipeline: Pipeline, text: str) -> str | None:
        """The watch's reference: a file as resolved at load, or where the controller keeps ``STEP.outputs.NAME``
        of this pipeline's newest succeeded or cached run of that step (None: no such run yet)."""
        ref = REFERENCE.match(text)
        if ref is None:
            if not Path(text).exists():
                raise MlfleetError(f"reference {text} does not exist")
            return text
        return await self.ctx.store.read(records.newest_output, pipeline.project, pipeline.name, ref.group(1),
                                         ref.group(2))

    async def _succeeded(self, pipeline: Pipeline, state: TriggerState) -> list[Any]:
        names = [n for n in pipeline.on.after if n != pipeline.name]
        if not names:
            return []
        since = min((state.after[n].at for n in names if n in state.after), default=state.armed_at)
        return await self.ctx.store.read(records.succeeded_since, pipeline.project, names, since)
