"""Deployments inside the controller: each tick, every deployment converges one step towards its target.

A deployment's state lives in the file (deployments, deploy_revisions,
deploy_replicas); :meth:`DeployService.start` reads it back, so a
controller killed mid-rollout carries on from the same rows: a replica's
row is written in its job's submit transaction, so a replica is never
started twice and never lost. Each tick, for each deployment: follow its
alias (a move is a rollout), see every replica through its job (queued,
in flight with its ServiceStatus, or ended), ask the pure planner
(core/deploy/rollout.py) for one step, and carry it out: submit the new
replicas' jobs (one ``submit_group`` per deployment and tick), mark the
ones to drain, cancel the ones to stop, and write the phase, the events
and the audit. The servers' newest scrapes are stored on the way
(one batched insert per tick).

The planner works on *revisions* (a model version plus the spec it was
applied with), which it calls versions: a spec change of the same model
version rolls out like a new version, and a rollback brings back the
spec too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from typing import Any

import msgspec

from mlfleet.core.base.errors import MlfleetError, NotFoundError
from mlfleet.core.base.models import TERMINAL_STATES, JobSpec, spec_from_plain, to_plain
from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.deploy import records, rollout
from mlfleet.core.deploy.replica_state import JobFacts, carried_health, health_from_file, state_of, view_of
from mlfleet.core.deploy.spec import DeploymentSpec, parse_model_ref, replica_job_spec, validate_deployment_spec
from mlfleet.core.jobs.group import cancel_jobs, submit_group
from mlfleet.core.jobs.service import JobsService
from mlfleet.core.registry.records import resolve
from mlfleet.core.store.rows import rows

log = logging.getLogger(__name__)

LOCAL_HOST = "local"  # the fleet's name for the controller's own machine (core/fleet/service.py)
# How long after a controller start a replica's health may still come from its row (replica_state.health_from_file):
# enough for the host links to connect and answer a first poll.
FILE_HEALTH_GRACE = 15.0
# A drain never shorter than this: deploy open refreshes its endpoints every 0.5 s, and must have seen a replica
# leave before it stops.
MIN_DRAIN = 1.5
ACTOR = "controller"  # who the audit names for what a tick decides on its own (alias moves, rollbacks)
DONE_PHASES = ("stable", "rolled_back")
_REVISION = re.compile(r"(?<![\w-])v(\d+)\b")  # "v3" in the planner's words, not the "v3" inside "iris-v3-1"


class DeployService(BaseService):
    name = "deploy"

    def __init__(self, ctx: ControllerContext, jobs: JobsService) -> None:
        from mlfleet.core.deploy.api import DeployApi

        self.ctx = ctx
        self.jobs = jobs
        self.deployments: dict[str, dict[str, Any]] = {}  # name -> its row, as in the file
        self.revisions: dict[tuple[str, int], dict[str, Any]] = {}  # (name, revision) -> its row
        self.replicas: dict[str, dict[str, Any]] = {}  # replica id -> its row, replicas not ended
        self.facts: dict[str, JobFacts] = {}  # replica id -> its job's facts at the last tick
        self.scraped: dict[str, float] = {}  # replica id -> ts of the newest scrape stored
        self.cancelled: set[str] = set()  # replica ids whose job's cancel was asked by this process
        self.unhealthy_since: dict[str, float] = {}  # replica id -> when this process first saw it unhealthy
        self.carried: dict[str, float | None] = {}  # replica id -> since when its health is carried (replica_state)
        self.started_at = time.time()  # a restarted controller knows its replicas' health only from the file at first
        self.lock = asyncio.Lock()  # a tick's step and a client's action never interleave on one deployment
        self.api = DeployApi(self)
        # The spec of the run each served model version came from (model, version) -> spec, and the replica jobs'
        # model versions: a replica may run only where that run's data may go (policy.yaml residency).
        self.origins: dict[tuple[str, int], JobSpec | None] = {}
        self.origin_of_job: dict[str, tuple[str, int]] = {}
        jobs.data_from = self.data_from

    async def start(self) -> None:
        store = self.ctx.store
        for row in await store.read(records.deployments):
            self.deployments[row["name"]] = row
            for rev in await store.read(records.revisions, row["name"]):
                self.revisions[(row["name"], rev["revision"])] = rev
        for row in await store.read(records.open_replicas):
            self.replicas[row["replica_id"]] = row
            d = self.deployments.get(row["deployment"])
            if d is not None:
                key = (parse_model_ref(d["model_ref"])[0], row["version"])
                await self.origin(*key)
                self.origin_of_job[row["job_id"]] = key
        self.scraped = await store.read(records.last_scrape_ts)
        self.started_at = time.time()
        await self._gather_facts()  # clients may ask for endpoints before the first tick: answer from the file then

    async def origin(self, model: str, version: int) -> JobSpec | None:
        """The spec of the job whose run made ``model`` version ``version`` (read once; None: not known here)."""
        key = (model, version)
        if key not in self.origins:
            plain = await self.ctx.store.read(records.model_origin_spec, model, version)
            try:
                self.origins[key] = spec_from_plain(plain) if plain is not None else None
            except Exception:  # a spec an older mlfleet wrote and this one cannot read: the replica's own rules hold
                log.warning("model %s v%s: the spec of the run that made it cannot be read", model, version)
                self.origins[key] = None
        return self.origins[key]

    def data_from(self, job_id: str) -> JobSpec | None:
        """For the scheduler: the spec of the run whose model a replica job serves (None: not a replica)."""
        key = self.origin_of_job.get(job_id)
        return self.origins.get(key) if key is not None else None

    def status(self) -> dict[str, Any]:
        return {"deployments": len(self.deployments), "replicas": len(self.replicas)}

    def rpcs(self) -> dict[str, Rpc]:
        return rpc_methods(self.api)

    # ------------------------------------------------------------------ the tick
    async def tick(self) -> None:
        await self._gather_facts()
        await self._store_scrapes()
        for name in list(self.deployments):
            try:
                async with self.lock:
                    await self._step(name)
            except Exception:  # one deployment's trouble never stops the others (nor the services after this)
                log.exception("deployment %s: this tick's step failed", name)

    async def _gather_facts(self) -> None:
        """Each open replica's job: queued, in flight (with its server's status), or ended."""
        by_job = {run.job_id: run for run in self.jobs.active.values()}
        now = time.time()
        facts: dict[str, JobFacts] = {}
        unknown: dict[str, str] = {}
        for replica_id, row in self.replicas.items():
            job_id = row["job_id"]
            if job_id in self.jobs.pending:
                facts[replica_id] = JobFacts("pending")
            elif job_id in by_job:
                run = by_job[job_id]
                before = self.facts.get(replica_id)
                service, self.carried[replica_id] = carried_health(
                    before.service if before is not None and before.run_id == run.run_id else None, run.service,
                    self.carried.get(replica_id), now, self._grace(row["deployment"]))
                if service is None and now - self.started_at < FILE_HEALTH_GRACE + self._grace(row["deployment"]):
                    service = health_from_file(row)  # before its agent's first answer since this controller started
                facts[replica_id] = JobFacts("active", run.run_id, run.host, service)
            else:
                unknown[job_id] = replica_id
        if unknown:  # between the queue and a run (being dispatched), or ended: the file says which
            marks = ",".join("?" for _ in unknown)
            states = {r["job_id"]: r["state"] for r in await self.ctx.store.read(
                rows, f"select job_id, state from jobs where job_id in ({marks})", list(unknown))}
            for job_id, replica_id in unknown.items():
                state = states.get(job_id)
                facts[replica_id] = JobFacts("ended") if state is None or state in TERMINAL_STATES \
                    else JobFacts("pending" if state == "pending" else "active")
        self.facts = facts
        self.carried = {k: v for k, v in self.carried.items() if v is not None and k in facts}

    def _grace(self, name: str) -> float:
        """How long a healthy replica's ``starting`` after an agent restart is still taken as healthy."""
        health = (self.deployments.get(name, {}).get("spec") or {}).get("health") or {}
        return max(2.0, float(health.get("interval", 5.0)) * float(health.get("failures", 3))
                   + float(health.get("timeout", 2.0)))

    async def _store_scrapes(self) -> None:
        samples = []
        for replica_id, fact in self.facts.items():
            scrape = fact.service.scrape if fact.service is not None else None
            if scrape is None or scrape.ts <= self.scraped.get(replica_id, float("-inf")):
                continue
            row = self.replicas[replica_id]
            samples.append({"deployment": row["deployment"], "version": row["version"], "replica_id": replica_id,
                            "run_id": fact.run_id, **msgspec.to_builtins(scrape)})
        if samples:
            await self.ctx.store.run(records.insert_scrapes, samples)
            for s in samples:
                self.scraped[s["replica_id"]] = s["ts"]

    async def _step(self, name: str) -> None:
        d = self.deployments[name]
        changes: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        audits: list[tuple[str, str, str, dict[str, Any]]] = []
        before = dict(d)
        await self._follow_alias(d, events, audits)
        now = time.time()
        mine = [r for r in self.replicas.values() if r["deployment"] == name]
        for r in mine:  # facts the rows keep: first healthy, where it runs
            fact = self.facts.get(r["replica_id"], JobFacts("ended"))
            change: dict[str, Any] = {}
            if state_of(fact) == "healthy" and r.get("healthy_since") is None:
                change["healthy_since"] = now
                events.append(_event(name, "healthy", r["version"], replica=r["replica_id"], host=fact.host))
            port = fact.service.port if fact.service is not None else None
            if fact.host and (fact.host, port) != (r.get("host"), r.get("port")):
                change.update(host=fact.host, port=port)
            if change:
                r.update(change)
                changes.append({"replica_id": r["replica_id"], **change})
        spec = _spec(d)
        view = rollout.DeploymentView(
            target_version=d["target_revision"], stable_version=d.get("stable_revision"), replicas=spec.replicas,
            max_surge=spec.rollout.max_surge, max_unavailable=spec.rollout.max_unavailable,
            ready_timeout=float(spec.rollout.ready_timeout), drain=max(float(spec.rollout.drain), MIN_DRAIN),
            rollout_started_at=d.get("rollout_started_at"), stopped=d["phase"] == "stopped")
        for r in mine:  # when each went unhealthy, by this controller's clock: the steady state's grace
            if state_of(self.facts.get(r["replica_id"], JobFacts("ended"))) == "unhealthy":
                self.unhealthy_since.setdefault(r["replica_id"], now)
            else:
                self.unhealthy_since.pop(r["replica_id"], None)
        views = [view_of(self._drain_from_start(r), self.facts.get(r["replica_id"], JobFacts("ended")), r["revision"],
                         self.unhealthy_since.get(r["replica_id"])) for r in mine]
        step = rollout.plan(view, views, now)
        step = dataclasses.replace(step, reason=self._versions_in(name, step.reason))
        if step.new_target is not None and step.new_target != d["target_revision"]:
            rev = self.revisions[(name, step.new_target)]
            events.append(_event(name, "rollback", rev["model_version"], reason=step.reason,
                                 from_version=d["target_version"], revision=step.new_target))
            audits.append((ACTOR, "deploy.rollback", name, {"from": d["target_version"], "to": rev["model_version"],
                                                            "reason": step.reason, "automatic": True}))
            d.update(target_revision=step.new_target, target_version=rev["model_version"])
        by_id = {r["replica_id"]: r for r in mine}
        for replica_id in step.drain:
            r = by_id.get(replica_id)
            if r is not None and r.get("draining_since") is None:
                r["draining_since"] = now
                changes.append({"replica_id": replica_id, "draining_since": now})
                events.append(_event(name, "drain", r["version"], replica=replica_id, reason=step.reason))
        to_cancel: list[str] = []
        ended: list[str] = []
        for replica_id in step.stop:
            r = by_id.get(replica_id)
            if r is not None and not r.get("stopping"):
                r["stopping"] = True
                changes.append({"replica_id": replica_id, "stopping": True})
                events.append(_event(name, "stop", r["version"], replica=replica_id, reason=step.reason))
        for r in mine:
            fact = self.facts.get(r["replica_id"], JobFacts("ended"))
            if r.get("stopping") and fact.where == "ended":
                ended.append(r["replica_id"])
                changes.append({"replica_id": r["replica_id"], "ended_at": now})
            elif r.get("stopping") and r["replica_id"] not in self.cancelled:
                to_cancel.append(r["replica_id"])
        if step.phase in ("rolling_back", "rolled_back") and (d.get("reason") or "").startswith("rolling back to"):
            step = dataclasses.replace(step, reason=d["reason"])  # why it rolls back, not the steps on the way
        if d["phase"] == "rolled_back" and step.phase == "stable":
            pass  # stays "rolled_back" (with the rollback's reason) until the next rollout: what show should say
        elif step.phase != d["phase"] or step.reason != d.get("reason"):
            if step.phase != d["phase"]:
                kind = {"stable": "done", "rolled_back": "done", "failed": "failed", "stopped": "stopped"}.get(step.phase)
                if kind is not None:
                    events.append(_event(name, kind, d["target_version"], phase=step.phase, reason=step.reason))
            d.update(phase=step.phase, reason=step.reason)
        if step.phase in DONE_PHASES:  # arrived: the target is what serves, and no rollout is under way
            if d.get("stable_revision") != d["target_revision"]:
                d.update(stable_revision=d["target_revision"], stable_version=d["target_version"])
            if d.get("rollout_started_at") is not None:
                d["rollout_started_at"] = None
        if d != before:
            d["updated_at"] = now
        if d != before or changes or events or audits:  # a quiet tick writes nothing
            await self.ctx.store.run(records.apply_tick, d if d != before else None, changes, events, audits)
        for replica_id in ended:
            self.replicas.pop(replica_id, None)
            self.cancelled.discard(replica_id)
            self.scraped.pop(replica_id, None)
            self.unhealthy_since.pop(replica_id, None)
        if to_cancel:
            await cancel_jobs(self.jobs, ACTOR, [by_id[i]["job_id"] for i in to_cancel])
            self.cancelled.update(to_cancel)
        if step.start > 0 and d["phase"] != "stopped":
            await self._start_replicas(d, step.start)

    async def _follow_alias(self, d: dict[str, Any], events: list[dict[str, Any]],
                            audits: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """A deployment that follows NAME@ALIAS rolls out when the alias names another version."""
        if not d.get("follows_alias") or d["phase"] == "stopped":
            return
        try:
            found = await self.ctx.store.read(resolve, d["model_ref"])
        except NotFoundError:  # the alias was removed: keep serving what is there
            return
        if found["version"] == d.get("alias_version"):
            return
        moved = f"alias {d['follows_alias']} moved {d.get('alias_version')}\u2192{found['version']}"
        d["alias_version"] = found["version"]
        if found["version"] == d["target_version"]:
            return
        rev = await self.new_revision(d, found, _spec(d), moved, *self.code_of(d))
        self.retarget(d, rev["revision"], ACTOR, "rollout", moved, events, audits)

    async def new_revision(self, d: dict[str, Any], model: dict[str, Any], spec: DeploymentSpec,
                           cause: str, code: dict[str, Any] | None = None, code_by: str | None = None
                           ) -> dict[str, Any]:
        """A revision row (written with the next deployment write): a model version and the spec it runs with.

        ``code``: the snapshot ``code_by`` sent for it (every replica of the revision runs that archive);
        None: its replicas are packed from the workdir, as the controller's own user.
        """
        rev = {"deployment": d["name"], "model_version": model["version"], "model_sha256": model["sha256"],
               "model_file": model["file_name"], "spec": to_plain(spec), "spec_hash": spec.content_hash(),
               "cause": cause, "code": code, "code_by": code_by if code is not None else None}
        rev["revision"] = await self.ctx.store.run(records.insert_revision, rev)
        self.revisions[(d["name"], rev["revision"])] = rev
        return rev

    def code_of(self, d: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """The code of the deployment's target revision and who sent it: what a revision made from it runs.

        WHY: an alias move or a rollback to a version never served keeps the spec, so it keeps the code that
        spec was applied with; the controller never falls back to reading another user's workdir.
        """
        rev = self.revisions.get((d["name"], d.get("target_revision")))
        return (rev.get("code"), rev.get("code_by")) if rev is not None else (None, None)

    def retarget(self, d: dict[str, Any], revision: int, actor: str, kind: str, cause: str,
                 events: list[dict[str, Any]], audits: list[tuple[str, str, str, dict[str, Any]]]) -> None:
        """A new target: what serves fully now becomes the stable version the planner may fall back to."""
        rev = self.revisions[(d["name"], revision)]
        if d["phase"] in DONE_PHASES and d.get("target_revision") is not None:
            d.update(stable_revision=d["target_revision"], stable_version=d["target_version"])
        elif d["phase"] in ("failed", "stopped"):  # nothing serves: a first rollout again
            d.update(stable_revision=None, stable_version=None)
        previous = d.get("target_version")
        d.update(target_revision=revision, target_version=rev["model_version"], phase="rolling",
                 reason=cause, rollout_started_at=time.time(), updated_at=time.time())
        events.append(_event(d["name"], kind, rev["model_version"], actor=actor, cause=cause,
                             from_version=previous, revision=revision))
        audits.append((actor, f"deploy.{kind}", d["name"], {"from": previous, "to": rev["model_version"],
                                                             "revision": revision, "cause": cause}))

    async def _start_replicas(self, d: dict[str, Any], count: int) -> None:
        """``count`` new replicas of the target: their jobs and rows in one transaction (never started twice)."""
        name = d["name"]
        rev = self.revisions[(name, d["target_revision"])]
        spec = validate_deployment_spec(rev["spec"])
        first = await self.ctx.store.read(records.next_replica_number, name)
        ids = [f"{name}-v{rev['model_version']}-{first + i}" for i in range(count)]
        specs = [replica_job_spec(spec, rev["model_version"], rid, rev["model_sha256"], rev["model_file"]) for rid in ids]
        origin = (parse_model_ref(spec.model)[0], rev["model_version"])
        await self.origin(*origin)
        created = time.time()
        made: list[dict[str, Any]] = []

        def record(con: Any, job_ids: list[str]) -> None:
            made.clear()
            made.extend({"replica_id": rid, "deployment": name, "version": rev["model_version"],
                         "revision": rev["revision"], "job_id": job_id, "created_at": created, "healthy_since": None,
                         "draining_since": None, "stopping": False, "ended_at": None, "host": None, "port": None}
                        for rid, job_id in zip(ids, job_ids))
            records.insert_replicas(con, made, [_event(name, "start", rev["model_version"], replica=r["replica_id"],
                                                       job_id=r["job_id"]) for r in made])

        try:
            # queue_anyway: a replica no host can take now waits, and the planner's ready_timeout rolls it back
            # code: the revision's sent snapshot (never the workdir, read as the controller's user), as its sender's
            ids_made, _, _ = await submit_group(self.jobs, ACTOR, specs, d.get("spec_path"), True, record,
                                                lambda i: f"replica {ids[i]}", check_policy=False,
                                                code=rev.get("code"), code_from=rev.get("code_by"))
            self.origin_of_job.update(dict.fromkeys(ids_made, origin))
        except MlfleetError as exc:
            log.warning("deployment %s: replicas could not be submitted: %s", name, exc)
            return
        for r in made:
            self.replicas[r["replica_id"]] = r
            self.facts[r["replica_id"]] = JobFacts("pending")

    def _versions_in(self, name: str, words: str) -> str:
        """The planner counts revisions ("v3"); users count model versions: its words say those."""
        def version(m: re.Match[str]) -> str:
            rev = self.revisions.get((name, int(m.group(1))))
            return f"v{rev['model_version']}" if rev is not None else m.group(0)

        return _REVISION.sub(version, words)

    # ------------------------------------------------------------------ for the API
    def _drain_from_start(self, row: dict[str, Any]) -> dict[str, Any]:
        """A replica drained before this controller started drains again from its start.

        WHY: while no controller ran, ``deploy open`` could not learn that the
        replica left the endpoints, and still sends it new connections; stopping
        it at once on restart would reset them.
        """
        since = row.get("draining_since")
        return row if since is None or since >= self.started_at else {**row, "draining_since": self.started_at}

    def live(self, replica_id: str) -> JobFacts:
        return self.facts.get(replica_id, JobFacts("ended"))


def _spec(d: dict[str, Any]) -> DeploymentSpec:
    return validate_deployment_spec(d["spec"])


def _event(deployment: str, kind: str, version: int | None, actor: str = ACTOR, **detail: Any) -> dict[str, Any]:
    return {"deployment": deployment, "kind": kind, "version": version, "actor": actor,
            "detail": {k: v for k, v in detail.items() if v is not None}}
