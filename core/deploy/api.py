"""Client RPCs for deployments: apply (declarative), list, show, history, scale, stop, rollback, endpoints, metrics.

``deploy_apply`` is idempotent: the same spec again is "unchanged". A new
model version, spec or sent code is a new revision and a rollout; a change of
``replicas`` (or of the ``rollout:`` block) alone is a scale. Every action
takes the service's lock, so it never interleaves with a tick's step on
the same deployment, and writes its rows, event and audit in one
transaction before the next tick acts on it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from mlfleet.core.base.bounds import Ident
from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.base.models import JobSpec, to_plain
from mlfleet.core.base.protocol import Peer
from mlfleet.core.deploy import records
from mlfleet.core.deploy.progress import progress_words, replica_stats
from mlfleet.core.deploy.replica_state import state_of
from mlfleet.core.deploy.rollout import endpoints as healthy_endpoints
from mlfleet.core.deploy.spec import DeploymentSpec, parse_model_ref, replica_job_spec, validate_deployment_spec
from mlfleet.core.jobs.group import never_fits_words
from mlfleet.core.jobs.code_upload import must_be_controller_user
from mlfleet.core.jobs.policy_limits import refuse_contradictions
from mlfleet.core.registry.records import resolve
from mlfleet.core.team.roles import Permission

if TYPE_CHECKING:
    from mlfleet.core.deploy.service import DeployService

Replicas = Annotated[int, Meta(ge=0, le=1000)]
SinceSeconds = Annotated[float, Meta(gt=0, le=400 * 86400)]
# Fields whose change needs no new replicas (the model reference counts by the version it names, not its words)
SCALE_ONLY = ("replicas", "rollout", "model")
STATS_WINDOW = 60.0  # deploy show's RPS, p95 and errors: over the last minute


class DeployApi:
    def __init__(self, service: "DeployService") -> None:
        self.s = service

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.s.ctx.store

    async def _may_change(self, peer: Peer, method: str, name: str, project: str | None = None) -> None:
        """Refused unless the caller is a maintainer in the deployment's project (and in a new spec's project)."""
        d = self.s.deployments.get(name)
        if d is None and project is None:
            self._get(name)  # no such deployment: say so, not that the caller lacks a role somewhere
        projects = {p for p in ((d["spec"].get("project") or "default") if d is not None else None, project) if p}
        for each in sorted(projects) or [None]:
            await self.s.ctx.require(peer.info["actor"], Permission.DEPLOY, method=method, project=each,
                                     target=name)

    def _get(self, name: str) -> dict[str, Any]:
        d = self.s.deployments.get(name)
        if d is None:
            raise NotFoundError(f"no deployment {name!r}; list them with 'mlfleet deploy list'")
        return d

    # ------------------------------------------------------------------ actions
    async def rpc_deploy_apply(self, peer: Peer, spec: dict[str, Any], spec_path: str | None = None,
                               code: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create or update a deployment from its spec; the same spec (and code) again changes nothing.

        ``code`` names a snapshot of the workdir the caller sent (core/jobs/code_send.py): the new
        revision records it, and every replica of that revision runs it, so the workdir is only a label
        here. Without it the replicas are packed from the workdir by the controller, which only its
        own OS user may ask for.
        """
        actor = peer.info["actor"]
        new = validate_deployment_spec(spec)
        await self._may_change(peer, "deploy_apply", new.name, new.project)
        if code is None:
            must_be_controller_user(actor, "apply a deployment")  # its replicas' code would be packed here
        else:
            code = await self._sent_code(code, actor)
        if not Path(new.workdir).is_absolute():
            raise UsageError("workdir must be an absolute path when applying through the API")
        _, alias, _ = parse_model_ref(new.model)
        model = await self.store.read(resolve, new.model)  # a NotFoundError says which model or alias is missing
        # The model's files never go where the data of the run that made it may not: pinned hosts outside are refused.
        origin = await self.s.origin(model["name"], model["version"])
        await refuse_contradictions(self.s.jobs, actor, [replica_job_spec(new, model["version"], new.name, None, None)],
                                    origin=origin)
        warning = self._never_fits(new, origin)
        async with self.s.lock:
            d = self.s.deployments.get(new.name)
            events: list[dict[str, Any]] = []
            audits: list[tuple[str, str, str, dict[str, Any]]] = []
            plain = to_plain(new)
            if d is None:
                d = {"name": new.name, "spec": plain, "spec_path": spec_path, "spec_hash": new.content_hash(),
                     "model_ref": new.model, "follows_alias": alias, "alias_version": model["version"] if alias else None,
                     "target_version": None, "stable_version": None, "target_revision": None, "stable_revision": None,
                     "phase": "rolling", "reason": None, "rollout_started_at": None, "created_by": actor,
                     "created_at": time.time(), "updated_at": time.time()}
                rev = await self.s.new_revision(d, model, new, "first apply", code, actor)
                self.s.retarget(d, rev["revision"], actor, "rollout", f"first apply of v{model['version']}", events, audits)
                change = "created"
            elif d["spec_hash"] == new.content_hash() and d["phase"] != "stopped" and self._same_code(d, code):
                return self._answer(d, "unchanged", f"{new.name}: unchanged", warning)
            else:
                before = d["spec"]
                d.update(spec=plain, spec_path=spec_path, spec_hash=new.content_hash(), model_ref=new.model,
                         follows_alias=alias, alias_version=model["version"] if alias else None)
                same_shape = {k: v for k, v in before.items() if k not in SCALE_ONLY} == \
                    {k: v for k, v in plain.items() if k not in SCALE_ONLY}
                if d["phase"] == "stopped":
                    rev = await self.s.new_revision(d, model, new, "applied after a stop", code, actor)
                    self.s.retarget(d, rev["revision"], actor, "rollout", f"started again with v{model['version']}",
                                    events, audits)
                    change = "started"
                elif same_shape and model["version"] == d["target_version"] and self._same_code(d, code):
                    if before.get("replicas") != new.replicas:
                        events.append(_event(new.name, "scale", d["target_version"], actor, replicas=new.replicas,
                                             before=before.get("replicas")))
                        audits.append((actor, "deploy.scale", new.name,
                                       {"from": before.get("replicas"), "to": new.replicas}))
                    change = "scaled" if before.get("replicas") != new.replicas else "updated"
                else:
                    cause = (f"apply: model v{d['target_version']}\u2192v{model['version']}"
                             if model["version"] != d["target_version"]
                             else "apply: spec changed" if not same_shape else "apply: code changed")
                    rev = await self.s.new_revision(d, model, new, cause, code, actor)
                    self.s.retarget(d, rev["revision"], actor, "rollout", cause, events, audits)
                    change = "rolling"
            d["updated_at"] = time.time()
            audits.append((actor, "deploy.apply", new.name, {"change": change, "spec_hash": d["spec_hash"],
                                                               "model": new.model, "version": model["version"],
                                                               "spec_path": spec_path}))
            events.insert(0, _event(new.name, "apply", model["version"], actor, change=change, spec_path=spec_path))
            await self.store.run(records.apply_tick, d, [], events, audits)
            self.s.deployments[new.name] = d
        words = {"created": f"{new.name}: created; rolling out v{model['version']} ({new.replicas} replicas)",
                 "started": f"{new.name}: started again; rolling out v{model['version']}",
                 "scaled": f"{new.name}: scaled to {new.replicas} replicas",
                 "updated": f"{new.name}: updated (v{d['target_version']} serves on; nothing to roll out)",
                 "rolling": f"{new.name}: rolling out v{d['target_version']} ({d['reason']})"}[change]
        return self._answer(d, change, words, warning)

    async def _sent_code(self, code: Any, actor: str) -> dict[str, Any]:
        """What a revision records of the code ``actor`` sent: refused now (not at a later tick) unless it is theirs."""
        snap, lineage = await self.s.jobs.code_uploads.uploaded(code, actor)
        return {"sha256": snap.sha256, "files": snap.files, "skipped": snap.skipped, "lineage": lineage}

    def _same_code(self, d: dict[str, Any], code: dict[str, Any] | None) -> bool:
        """Whether ``code`` is what the target revision runs (None and None: both packed from the workdir here)."""
        had, _ = self.s.code_of(d)
        return (had or {}).get("sha256") == (code or {}).get("sha256")

    def _never_fits(self, spec: DeploymentSpec, origin: JobSpec | None = None) -> str | None:
        """A spec no host can ever take is applied all the same (the rollout rolls back), with a warning."""
        where = never_fits_words(self.s.jobs, replica_job_spec(spec, 1, f"{spec.name}-check", None, None), "check",
                                 origin=origin)
        if not where:
            return None
        return (f"no host of this fleet can run a replica of {spec.name} ({where}); its new replicas will wait and the "
                f"rollout will roll back after ready_timeout")

    def _answer(self, d: dict[str, Any], change: str, message: str, warning: str | None) -> dict[str, Any]:
        return {"name": d["name"], "change": change, "phase": d["phase"], "target_version": d["target_version"],
                "stable_version": d.get("stable_version"), "replicas": d["spec"].get("replicas"), "message": message,
                "warnings": [warning] if warning else []}

    async def rpc_deploy_scale(self, peer: Peer, name: Ident, replicas: Replicas) -> dict[str, Any]:
        actor = peer.info["actor"]
        await self._may_change(peer, "deploy_scale", name)
        async with self.s.lock:
            d = self._get(name)
            before = d["spec"].get("replicas")
            if before == replicas:
                return {"name": name, "replicas": replicas, "changed": False,
                        "message": f"{name} already has {replicas} replicas"}
            spec = validate_deployment_spec({**d["spec"], "replicas": replicas})
            d.update(spec=to_plain(spec), spec_hash=spec.content_hash(), updated_at=time.time())
            await self.store.run(records.apply_tick, d, [], [_event(name, "scale", d["target_version"], actor,
                                                                    replicas=replicas, before=before)],
                                 [(actor, "deploy.scale", name, {"from": before, "to": replicas})])
        return {"name": name, "replicas": replicas, "changed": True, "message": f"{name}: {before} -> {replicas} replicas"}

    async def rpc_deploy_stop(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Take every replica out of the endpoints and stop it; ``deploy apply`` starts it again."""
        actor = peer.info["actor"]
        await self._may_change(peer, "deploy_stop", name)
        async with self.s.lock:
            d = self._get(name)
            if d["phase"] == "stopped":
                return {"name": name, "changed": False, "message": f"{name} is already stopped"}
            d.update(phase="stopped", reason=f"stopped by {actor}", updated_at=time.time())
            await self.store.run(records.apply_tick, d, [], [_event(name, "stopped", d["target_version"], actor)],
                                 [(actor, "deploy.stop", name, {"version": d["target_version"]})])
        return {"name": name, "changed": True,
                "message": f"{name}: stopping its replicas (drained, then cancelled); 'mlfleet deploy apply' starts it again"}

    async def rpc_deploy_rollback(self, peer: Peer, name: Ident, to: Annotated[int, Meta(ge=1)] | None = None
                                  ) -> dict[str, Any]:
        """A new target: model version ``to`` (with the spec it last ran with), or by default what served before."""
        actor = peer.info["actor"]
        await self._may_change(peer, "deploy_rollback", name)
        async with self.s.lock:
            d = self._get(name)
            if d["phase"] == "stopped":
                raise UsageError(f"{name} is stopped; start it with 'mlfleet deploy apply FILE' first")
            revs = sorted((r for (n, _), r in self.s.revisions.items() if n == name), key=lambda r: r["revision"])
            if to is None:
                if d.get("stable_revision") is not None and d["stable_revision"] != d["target_revision"]:
                    target = self.s.revisions[(name, d["stable_revision"])]
                else:
                    earlier = [r for r in revs if r["revision"] < d["target_revision"]
                               and r["model_version"] != d["target_version"]]
                    if not earlier:
                        raise UsageError(f"{name} has no earlier version to roll back to; give one with --to VERSION")
                    target = earlier[-1]
            else:
                same = [r for r in revs if r["model_version"] == to]
                if same:
                    target = same[-1]
                else:  # never served here: the current spec with that version of the model
                    model_name, _, _ = parse_model_ref(d["model_ref"])
                    model = await self.store.read(resolve, f"{model_name}:{to}")
                    target = await self.s.new_revision(d, model, validate_deployment_spec(d["spec"]),
                                                       f"rollback to v{to}", *self.s.code_of(d))
            if target["revision"] == d["target_revision"]:
                return {"name": name, "changed": False, "target_version": d["target_version"],
                        "message": f"{name} is already at v{d['target_version']}"}
            events: list[dict[str, Any]] = []
            audits: list[tuple[str, str, str, dict[str, Any]]] = []
            cause = f"rollback by {actor} v{d['target_version']}\u2192v{target['model_version']}"
            self.s.retarget(d, target["revision"], actor, "rollback", cause, events, audits)
            await self.store.run(records.apply_tick, d, [], events, audits)
        return {"name": name, "changed": True, "target_version": d["target_version"],
                "message": f"{name}: rolling back to v{d['target_version']}"}

    # ------------------------------------------------------------------ reads
    async def rpc_deploy_list(self, peer: Peer) -> list[dict[str, Any]]:
        out = []
        for d in sorted(self.s.deployments.values(), key=lambda d: d["name"]):
            reps = self._replicas(d["name"])
            out.append({"name": d["name"], "model": d["model_ref"], "phase": d["phase"],
                        "target_version": d["target_version"], "stable_version": d.get("stable_version"),
                        "replicas": d["spec"].get("replicas"),
                        "healthy": sum(1 for r in reps if r["health"] == "healthy" and not r["draining"]),
                        "progress": progress_words(d, reps), "reason": d.get("reason"),
                        "updated_at": d.get("updated_at")})
        return out

    async def rpc_deploy_show(self, peer: Peer, name: Ident) -> dict[str, Any]:
        d = self._get(name)
        reps = self._replicas(name)
        now = time.time()
        scrapes = await self.store.read(records.scrapes_since, name, now - STATS_WINDOW)
        for r in reps:
            r.update(replica_stats([s for s in scrapes if s["replica_id"] == r["replica_id"]], now - STATS_WINDOW, now))
        revs = sorted((r for (n, _), r in self.s.revisions.items() if n == name), key=lambda r: r["revision"])
        return {**{k: v for k, v in d.items()}, "progress": progress_words(d, reps), "replicas": reps,
                "revisions": [{k: v for k, v in r.items() if k != "spec"} for r in revs],
                "endpoints": self._endpoints(name)}

    async def rpc_deploy_history(self, peer: Peer, name: Ident) -> list[dict[str, Any]]:
        self._get(name)
        return await self.store.read(records.history, name)

    async def rpc_deploy_endpoints(self, peer: Peer, name: Ident) -> dict[str, Any]:
        d = self._get(name)
        return {"deployment": name, "version": d["target_version"], "endpoints": self._endpoints(name)}

    async def rpc_deploy_metrics(self, peer: Peer, name: Ident, since: SinceSeconds = 3600.0) -> dict[str, Any]:
        """Each version's request rate, errors and latency side by side, over the last ``since`` seconds."""
        from mlfleet.core.deploy import serving_stats

        d = self._get(name)
        now = time.time()
        scrapes = await self.store.read(records.scrapes_since, name, now - since)
        return {"deployment": name, "since": now - since, "until": now, "target_version": d["target_version"],
                "stable_version": d.get("stable_version"),
                "versions": serving_stats.compare_versions(scrapes, now - since, now)}

    async def rpc_deploy_replica(self, peer: Peer, name: Ident, replica: Ident | None = None,
                                 include_ended: bool = True) -> list[dict[str, Any]]:
        """The replicas' jobs (newest last), for ``deploy logs``: which job's output to read."""
        self._get(name)
        found = await self.store.read(records.replicas_of, name, include_ended)
        if replica is not None:
            found = [r for r in found if r["replica_id"] == replica or r["replica_id"].endswith(f"-{replica}")]
            if not found:
                raise NotFoundError(f"{name} has no replica {replica!r}; 'mlfleet deploy show {name}' lists them")
        return found

    # ------------------------------------------------------------------ helpers
    def _replicas(self, name: str) -> list[dict[str, Any]]:
        """The open replicas with what their jobs say now (host, port, health, restarts)."""
        out = []
        for r in sorted((r for r in self.s.replicas.values() if r["deployment"] == name), key=lambda r: r["created_at"]):
            fact = self.s.live(r["replica_id"])
            svc = fact.service
            out.append({"replica_id": r["replica_id"], "version": r["version"], "revision": r["revision"],
                        "job_id": r["job_id"], "run_id": fact.run_id, "host": fact.host or r.get("host"),
                        "port": (svc.port if svc else None) or r.get("port"), "health": state_of(fact),
                        "restarts": svc.restarts if svc else 0, "last_error": svc.last_error if svc else "",
                        "draining": r.get("draining_since") is not None, "stopping": bool(r.get("stopping")),
                        "created_at": r["created_at"], "healthy_since": r.get("healthy_since")})
        return out

    def _endpoints(self, name: str) -> list[dict[str, Any]]:
        from mlfleet.core.deploy.replica_state import view_of
        from mlfleet.core.deploy.service import LOCAL_HOST

        mine = [r for r in self.s.replicas.values() if r["deployment"] == name]
        views = [view_of(r, self.s.live(r["replica_id"]), r["revision"]) for r in mine]
        ok = set(healthy_endpoints(views))
        out = []
        for r in mine:
            fact = self.s.live(r["replica_id"])
            port = fact.service.port if fact.service else r.get("port")
            host = fact.host or r.get("host")
            if r["replica_id"] in ok and host and port:
                out.append({"replica_id": r["replica_id"], "host": host, "port": port, "version": r["version"],
                            "local": host == LOCAL_HOST})
        return out


def _event(deployment: str, kind: str, version: int | None, actor: str, **detail: Any) -> dict[str, Any]:
    return {"deployment": deployment, "kind": kind, "version": version, "actor": actor,
            "detail": {k: v for k, v in detail.items() if v is not None}}
