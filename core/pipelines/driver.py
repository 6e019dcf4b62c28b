"""One pipeline run driven to its end: plan, reuse what is cached, run the rest, collect outputs, plan again.

The loop (docs/pipelines.md, "Tables, the step cache and the planner"):

1. a job step whose job ended is closed: succeeded, its outputs fetched from
   the node into the controller's output store and recorded with their
   sha256 (from then on its key is a cache entry); failed or cancelled, with
   the job's reason; a succeeded job whose host is away when its outputs
   are asked for (an agent restarted while packing) stays running, asked
   again on a later pass;
2. the planner decides every step not settled yet, asking the cache about
   each key it can make (a hit's outputs are re-read before it counts);
3. cached steps are recorded with the run they reuse, skipped ones with why,
   job steps are submitted as jobs with their bundle (the step marked
   running with its key and job in the jobs' own transaction, so a crash
   never leaves a job without its step or a step without its job), and
   drift, gate, register and promote steps run here (executors.py);
4. when no step is left to decide or running, the run ends: succeeded when
   every step succeeded or was cached, else failed (or cancelled) with the
   first reason.

Everything it acts on is read back from the store each pass, so a
controller killed at any point resumes by driving the run again
(service.py, at start): finished steps are settled and never re-run, a job
in flight is waited for, a step whose job ended while the controller was
down is closed now.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from mlfleet.core.base.errors import MlfleetError, UnavailableError
from mlfleet.core.jobs.group import submit_group
from mlfleet.core.pipelines import records, run_reads
from mlfleet.core.pipelines.bundle import bundle_sources, make_bundle
from mlfleet.core.pipelines.spec import code_excludes
from mlfleet.core.pipelines.facts import Measured, measure
from mlfleet.core.pipelines.keys import KeyParts
from mlfleet.core.pipelines.models import Pipeline, Step
from mlfleet.core.pipelines.outputs import verify_outputs
from mlfleet.core.pipelines.plan import Decision, Lookup, Plan, plan
from mlfleet.core.pipelines.state import OutputDigest, Settled
from mlfleet.core.pipelines.step_run import StepOutcome, StepRun

if TYPE_CHECKING:
    from mlfleet.core.pipelines.service import PipelineService

log = logging.getLogger(__name__)
COLLECT_PATIENCE_S = 600.0  # how long a succeeded job's outputs wait for its host to be back
POLL_S = 1.0  # a job's end is noticed at once (jobs.job_changed); this is the fallback
_OK = ("succeeded", "cached")


class RunDriver:
    """Drives one run; one task per run, made by the service (at a run's start, or at the controller's)."""

    def __init__(self, service: "PipelineService", run_id: str, pipeline: Pipeline, actor: str,
                 force: list[str], no_cache: bool) -> None:
        self.service = service
        self.store = service.ctx.store
        self.run_id = run_id
        self.pipeline = pipeline
        self.actor = actor
        self.force = list(force)
        self.no_cache = no_cache
        self.measured: Measured | None = None
        self.previous: dict[str, KeyParts] = {}
        self.cancelled = False
        self.outcomes: dict[str, StepOutcome] = {}
        self._lineages: dict[str, dict[str, Any] | None] = {}
        self._collect_waiting: dict[str, float] = {}  # step -> when its host was first found away at collect

    # ------------------------------------------------------------ the loop
    async def drive(self) -> None:
        try:
            await self._prepare()
            while not self.cancelled:
                moved = await self.advance()
                if moved is None:
                    return
                if not moved:
                    await self._wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the run ends failed with the sentence; the controller carries on
            words = str(exc) if isinstance(exc, MlfleetError) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, MlfleetError):
                log.exception("pipeline run %s", self.run_id)
            await self._end("failed", f"the run stopped: {words}")
        finally:
            await self.service.changed()

    async def _prepare(self) -> None:
        # A drift, gate, register or promote step that was running when the controller stopped ran
        # inside it and was cut short: it is decided and run again (each is safe to repeat).
        await self.store.run(run_reads.requeue_interrupted, self.run_id)
        home = self.service.ctx.home
        champions = await self.store.read(run_reads.champions, self.pipeline)
        self.measured = await asyncio.to_thread(measure, self.pipeline, home.code_cache_dir, home.own_paths(),
                                                champions)
        self.previous = await self.store.read(run_reads.previous_parts, self.pipeline, self.run_id)

    async def advance(self) -> bool | None:
        """One pass; True: something changed (go again at once), False: wait for a job, None: the run ended."""
        state = (await self.store.read(records.get_run, self.run_id))["state"]
        if state != "running":
            return None
        if await self._close_ended_jobs():
            return True
        settled = await self.store.read(records.settled, self.run_id)
        decided = await self._plan(settled)
        todo = [d for d in decided.decisions.values() if not d.settled and not self.cancelled]
        acted = await self._record_cached_and_skipped([d for d in todo if d.state in ("cached", "skipped")])
        jobs = [d for d in todo if d.state == "run" and d.key is not None and self.pipeline.steps[d.step].job is not None]
        if jobs:
            await self._submit_all(jobs)
            acted = True
        for decision in todo:
            if decision.state == "run" and decision.key is not None and self.pipeline.steps[decision.step].job is None:
                await self._run_here(decision)
                acted = True
        if acted:
            return True
        if any(d.state in ("running", "queued") for d in decided.decisions.values() if d.settled) or \
                any(d.state in ("waiting", "lookup", "run") for d in decided.decisions.values() if not d.settled):
            return False
        await self._finish(decided)
        return None

    async def _wait(self) -> None:
        condition = self.service.jobs.job_changed
        async with condition:
            try:
                await asyncio.wait_for(condition.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass

    # ------------------------------------------------------------ planning
    async def _plan(self, settled: dict[str, Settled]) -> Plan:
        assert self.measured is not None
        found: dict[str, Lookup] = {}
        while True:
            current = plan(self.pipeline, self.measured.facts, found, settled=settled, previous=self.previous,
                           force=self.force, no_cache=self.no_cache)
            needed = current.lookups()
            if not needed:
                return current
            keys = sorted({key.key for key in needed.values()})
            hits = await self.store.read(records.cached_steps, self.pipeline.project, keys)
            problems = await asyncio.to_thread(lambda: {k: verify_outputs(h.outputs) for k, h in hits.items()})
            for key in keys:
                hit = hits.get(key)
                found[key] = Lookup(hit=hit, problems=problems[key]) if hit is not None else Lookup()

    # ------------------------------------------------------------ acting
    async def _record_cached_and_skipped(self, decisions: list[Decision]) -> bool:
        """Every cached and skipped decision of a pass in one transaction (a 200-step re-run is one commit)."""
        if not decisions:
            return False
        items = [(d.step, d.state, d.key, d.hit, "; ".join(d.reasons) or d.state) for d in decisions]
        await self.store.run(records.mark_many, self.run_id, items)
        await self.service.changed()
        return True

    async def _run_here(self, decision: Decision) -> None:
        """A drift, gate, register or promote step, run inside the controller."""
        name = decision.step
        await self.store.run(records.set_step, self.run_id, name, "running", key=decision.key,
                             reason="; ".join(decision.reasons) or None, forced=decision.forced)
        await self.service.changed()
        outcome = await self._execute(self.pipeline.steps[name])
        self.outcomes[name] = outcome
        await self.store.run(run_reads.record_outcome, self.run_id, name, outcome)
        await self.service.changed()

    async def _submit_all(self, decisions: list[Decision]) -> None:
        """The job steps decided to run, as jobs: steps that ship the same bundle go in one submit (one commit)."""
        assert self.measured is not None
        groups: dict[tuple[Any, ...], list[tuple[Decision, dict[str, Path]]]] = {}
        failed: list[tuple[Decision, str]] = []
        reads = sorted({(self.run_id, i.step) for d in decisions for i in self.pipeline.steps[d.step].inputs
                        if i.step is not None})
        kept = await self.store.read(records.outputs_of_many, reads)
        for decision in decisions:
            step = self.pipeline.steps[decision.step]
            assert step.job is not None
            try:
                upstream = {(up, name): digest for (_, up), outputs in kept.items()
                            if up in {i.step for i in step.inputs} for name, digest in outputs.items()}
                extra = bundle_sources(self.pipeline, step.name, self.measured.matched.get(step.name, {}), upstream)
            except MlfleetError as exc:
                failed.append((decision, str(exc)))
                continue
            group = (step.job.workdir, code_excludes(self.pipeline, step.name), tuple(sorted(extra.items())))
            groups.setdefault(group, []).append((decision, extra))
        for members in groups.values():
            try:
                await self._submit_group(members)
            except MlfleetError as exc:  # a bundle too big, a job no host could run: these steps fail, with why
                failed += [(decision, str(exc)) for decision, _ in members]
        for decision, words in failed:
            await self.store.run(records.set_step, self.run_id, decision.step, "failed", key=decision.key,
                                 reason=f"its job could not be submitted: {words}")
        await self.service.changed()

    async def _submit_group(self, members: list[tuple[Decision, dict[str, Path]]]) -> None:
        assert self.measured is not None
        first = self.pipeline.steps[members[0][0].step]
        assert first.job is not None
        extra = members[0][1]
        home = self.service.ctx.home
        if extra:
            made = await asyncio.to_thread(make_bundle, self.pipeline, first.name, home.code_cache_dir,
                                           home.own_paths(), extra)
        else:  # nothing to put in place: the code snapshot measured at the start is the bundle
            made = self.measured.code[first.name]
        lineage = await self._lineage(first.job.workdir)
        run_id = self.run_id
        steps = [(d.step, d.key, "; ".join(d.reasons) or None, d.forced) for d, _ in members]

        def record(con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
            for (name, key, why, forced), job_id in zip(steps, ids):
                records.set_step(con, run_id, name, "running", key=key, reason=why, job_id=job_id, forced=forced)

        specs = [self.pipeline.steps[d.step].job for d, _ in members]
        await submit_group(self.service.jobs, self.actor, specs, self.pipeline.source or None, True, record,  # type: ignore[arg-type]
                           lambda i: f"step {steps[i][0]}", prepared=(made, lineage))

    async def _lineage(self, workdir: str) -> dict[str, Any] | None:
        if workdir not in self._lineages:
            from mlfleet.core.tracking.lineage import git_lineage

            self._lineages[workdir] = await asyncio.to_thread(git_lineage, Path(workdir))
        return self._lineages[workdir]

    async def _execute(self, step: Step) -> StepOutcome:
        from mlfleet.core.pipelines.executors import execute

        jobs_of = await self.store.read(run_reads.job_runs, self.run_id)
        outputs = await self.store.read(run_reads.stored_outputs, self.run_id)
        earlier = dict(self.outcomes)
        earlier.update({k: v for k, v in (await self.store.read(run_reads.outcomes, self.run_id)).items() if k not in earlier})
        run = StepRun(ctx=self.service.ctx, run_id=self.run_id, pipeline=self.pipeline, step=step, actor=self.actor,
                      job_run=lambda s: jobs_of.get(s), output_path=lambda s, o: outputs.get((s, o)),
                      outcome_of=lambda s: earlier.get(s))
        try:
            return await execute(run)
        except MlfleetError as exc:
            return StepOutcome("failed", str(exc))

    async def _close_ended_jobs(self) -> bool:
        """Close the job steps whose job ended: outputs collected, or the job's reason. True: one was closed."""
        ended = await self.store.read(run_reads.ended_job_steps, self.run_id)
        closed = 0
        for row in ended:
            step = self.pipeline.steps[row["step"]]
            if row["job_state"] == "succeeded":
                if not await self._collect(step, row):
                    continue  # its host is away: asked again on a later pass
            elif row["job_state"] == "cancelled":
                await self.store.run(records.set_step, self.run_id, step.name, "cancelled",
                                     reason=f"job {row['job_id']} was cancelled: {row['job_reason']}")
            else:
                await self.store.run(records.set_step, self.run_id, step.name, "failed",
                                     reason=f"job {row['job_id']} {row['job_state']}: {row['job_reason']}")
            closed += 1
            await self.service.changed()
        return bool(closed)

    async def _collect(self, step: Step, row: dict[str, Any]) -> bool:
        """Keep a succeeded job's outputs and close its step; False: its host is away now, so ask again later.

        Why not fail at once: the job ran and succeeded; an agent restarted (or
        a link that dropped) while it packed is no reason to lose its work and
        run it again. Past COLLECT_PATIENCE_S of trying, the step fails, with why.
        """
        where = f"job {row['job_id']} on {row['host']}"
        digests: dict[str, OutputDigest] = {}
        if step.outputs:
            from mlfleet.core.pipelines.transfer import collect_outputs

            link = self.service.ctx.links.get(row["host"])
            if link is None:
                await self.store.run(records.set_step, self.run_id, step.name, "failed",
                                     reason=f"{where} succeeded but host {row['host']} is no longer configured, "
                                            "so its outputs cannot be fetched")
                return True
            try:
                digests = await collect_outputs(link, row["run_id"], step.outputs, self.service.outputs, row["host"])
            except UnavailableError as exc:
                loop = asyncio.get_running_loop()
                first = self._collect_waiting.setdefault(step.name, loop.time())
                if loop.time() - first < COLLECT_PATIENCE_S:
                    log.info("pipeline run %s: step %s's outputs wait for host %s (%s)", self.run_id, step.name,
                             row["host"], exc)
                    return False
                await self.store.run(records.set_step, self.run_id, step.name, "failed",
                                     reason=f"{where} succeeded but its outputs could not be fetched for "
                                            f"{COLLECT_PATIENCE_S:.0f} s: {exc}")
                return True
            except MlfleetError as exc:
                await self.store.run(records.set_step, self.run_id, step.name, "failed",
                                     reason=f"{where} succeeded but its outputs could not be kept: {exc}")
                return True
        self._collect_waiting.pop(step.name, None)
        why = f"{row['reason']}; ran as {where}" if row.get("reason") else f"ran as {where}"
        await self.store.run(records.succeed_step, self.run_id, step.name, digests, reason=why)
        return True

    # ------------------------------------------------------------ the end
    async def _finish(self, decided: Plan) -> None:
        states = {d.step: d for d in decided.decisions.values()}
        bad = [d for d in states.values() if d.state not in _OK]
        if not bad:
            await self._end("succeeded", f"{len(states)} steps: "
                            f"{sum(d.state == 'cached' for d in states.values())} cached, "
                            f"{sum(d.state == 'succeeded' for d in states.values())} ran")
            return
        first = next((d for d in bad if d.state in ("failed", "gate-failed", "cancelled")), bad[0])
        words = {"gate-failed": "did not pass", "failed": "failed", "cancelled": "was cancelled",
                 "skipped": "was skipped"}.get(first.state, first.state)
        reason = f"step {first.step} {words}" + (f": {first.reasons[0]}" if first.reasons else "")
        await self._end("cancelled" if first.state == "cancelled" else "failed", reason)

    async def _end(self, state: str, reason: str) -> None:
        await self.store.run(run_reads.end_if_running, self.run_id, state, reason)
        await self.service.ended(self.run_id)
