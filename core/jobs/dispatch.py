"""Placing waiting jobs: what the scheduler sees of the fleet, its decision, and the dispatches that follow.

The scheduler itself (core/jobs/scheduler.py) is pure; this part builds its
view of every host (live telemetry plus what mlfleet has placed there),
runs it off the event loop, records why jobs wait, audits the hosts a job's
hard constraints kept it off, and dispatches the placements: written to
the file first, then launched.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from mlfleet.core.audit import records as audit_records
from mlfleet.core.environments.warm import env_key
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.jobs import records, scheduler
from mlfleet.core.jobs.params import render_argv
from mlfleet.core.jobs.policy_limits import ResidencyCache, quotas_of
from mlfleet.core.jobs.runs import ActiveRun, PendingJob, queued

if TYPE_CHECKING:
    from mlfleet.core.jobs.service import JobsService
    from mlfleet.core.team.policy import LoadedPolicy


REFUSED_HOLD_S = 10.0  # a few of the node's 1 Hz samples: by then its telemetry shows the claim that refused us


class Dispatcher:
    def __init__(self, jobs: "JobsService") -> None:
        self.jobs = jobs
        settings = jobs.ctx.settings
        self.policy = scheduler.Policy(
            memory_margin=int(settings.scheduler.memory_margin),
            busy_utilization=settings.scheduler.busy_utilization,
            aging_per_hour=settings.scheduler.aging_per_hour,
            fair_share_weight=settings.scheduler.fair_share_weight,
            backfill=settings.scheduler.backfill)
        self._refusals_audited: set[tuple[str, str]] = set()
        self._stored_reasons: dict[str, str] = {}  # the short reasons last written, by waiting job
        # GPUs a node refused a launch onto (another controller's claim), by host: counted in use until then
        # (monotonic), so the next tick does not place there again before the node's telemetry shows the claim
        self._refused: dict[str, dict[int, float]] = {}
        self._residency = ResidencyCache()

    def note_refusal(self, host: str, gpus: list[int]) -> None:
        """The node said another run holds (some of) ``gpus``: keep off them for a few telemetry samples."""
        until = time.monotonic() + REFUSED_HOLD_S
        self._refused.setdefault(host, {}).update(dict.fromkeys(gpus, until))

    def _foreign_claims(self, link: HostLink) -> tuple[set[int], dict[int, int]]:
        """GPUs the node says runs this controller does not know hold: whole ones, and memory reserved per GPU."""
        whole: set[int] = set()
        reserved: dict[int, int] = {}
        sample = link.latest
        for claim in sample.gpu_claims if sample else []:
            if claim.run_id in self.jobs.active:
                continue  # ours: counted from what we placed
            if claim.gpu_memory is None:
                whole.add(claim.index)
            else:
                reserved[claim.index] = reserved.get(claim.index, 0) + claim.gpu_memory
        now = time.monotonic()
        refused = self._refused.get(link.name, {})
        for index, until in list(refused.items()):
            if until < now:
                del refused[index]
            else:
                whole.add(index)
        return whole, reserved

    async def schedule(self) -> None:
        if not self.jobs.pending:
            return
        views = self.host_views()
        held = self._held()
        warm = self.jobs.environments.warm
        loaded = self.jobs.ctx.access.loaded  # the policy as it is now: residency and quotas follow its changes
        queue = [queued(job, warm.warm_hosts(env_key(job.spec.environment, job.code_hash))
                        if job.spec.builds_environment and job.spec.environment else frozenset(),
                        self.residency(loaded, job))
                 for job in self.jobs.pending.values() if job.job_id not in held]
        usage: dict[str, int] = {}
        for run in self.jobs.active.values():
            usage[run.spec.project] = usage.get(run.spec.project, 0) + len(run.gpus)
        quotas = quotas_of(loaded, self.jobs.ctx.access.groups_of, [job.owner for job in queue],
                           ((run.owner, run.spec.project, len(run.gpus) or run.spec.resources.gpus)
                            for run in self.jobs.active.values()))
        # Pure and CPU-bound: off the event loop, so a big queue never stalls polling or clients.
        decision = await asyncio.to_thread(scheduler.schedule, views, queue, self.policy, time.time(), usage, quotas)
        for job_id, (where, why) in held.items():  # kept back by a limit, not by the hosts: that is the reason
            decision.waiting[job_id] = [scheduler.Reason(where, "limit", why)]
        self.jobs.waiting_reasons = decision.waiting
        reasons = {job_id: decision.short_reason(job_id) for job_id in decision.waiting}
        changed = {job_id: r for job_id, r in reasons.items() if self._stored_reasons.get(job_id) != r}
        if changed:  # a big queue waiting for the same reasons costs no writes tick after tick
            await self.jobs.ctx.store.run(records.set_pending_reason, changed)
        self._stored_reasons = reasons
        await self._audit_refusals(decision)
        with self.jobs.launcher.together():  # a sweep's runs placed on one Slurm host in this tick: one job array
            for placement in decision.placements:
                job = self.jobs.pending.pop(placement.job_id, None)
                if job is None or placement.host not in self.jobs.ctx.links:
                    continue  # cancelled, or its host removed, while the scheduler was thinking
                await self._dispatch(job, placement)

    def residency(self, loaded: LoadedPolicy, job: PendingJob) -> scheduler.Residency | None:
        """Where the job's data may go: its own rules, and those of the run its data came from (a replica's model)."""
        own = self._residency.get(loaded, job.spec)
        origin = self.jobs.data_from(job.job_id)
        if origin is None:
            return own
        theirs = self._residency.get(loaded, origin)
        if theirs is None or own is None:
            return own or theirs
        return scheduler.Residency(own.regions & theirs.regions, f"{own.rule}, {theirs.rule}", own.label)

    def _held(self) -> dict[str, tuple[str, str]]:
        """Waiting jobs a hold keeps out of this cycle (a sweep at its max_parallel), with why."""
        if not self.jobs.holds:
            return {}
        waiting = list(self.jobs.pending)
        in_flight = [run.job_id for run in self.jobs.active.values()]
        held: dict[str, tuple[str, str]] = {}
        for hold in self.jobs.holds:
            held.update(hold(waiting, in_flight))
        return held

    async def _audit_refusals(self, decision: scheduler.Decision) -> None:
        """Data residency: every host a job's hard constraints or the policy's residency kept it off is audited, once.

        One event per job and tick at most, naming the hosts newly refused
        (a fleet of hundreds must not write hundreds of rows per job).
        """
        events = []
        for job_id, reasons in decision.waiting.items():
            new: dict[str, str] = {}
            for reason in reasons:
                if reason.check in ("constraint", "residency"):
                    for host in reason.hosts or (reason.host,):
                        if (job_id, host) not in self._refusals_audited:
                            new[host] = reason.message
            if new:
                self._refusals_audited.update((job_id, host) for host in new)
                events.append((job_id, {"hosts": sorted(new)[:100], "count": len(new),
                                        "reasons": sorted(set(new.values()))[:10]}))
        for job_id, detail in events:
            await self.jobs.ctx.store.run(audit_records.audit, "scheduler", "scheduler.refuse", job_id, detail)

    async def _dispatch(self, job: PendingJob, placement: scheduler.Placement) -> None:
        attempt = job.attempt + 1
        run_id = f"{job.job_id}-{attempt}"
        await self.jobs.ctx.store.run(records.dispatch, job.job_id, {
            "run_id": run_id, "attempt": attempt, "project": job.spec.project, "name": job.spec.name,
            "owner": job.owner, "host": placement.host, "gpus": list(placement.gpu_indices),
            "spec_hash": job.spec.content_hash(), "workdir": job.spec.workdir, "command": render_argv(job.spec),
            "code_hash": job.code_hash, "params": job.spec.params, "tags": job.spec.tags, "note": placement.note})
        run = ActiveRun(job_id=job.job_id, run_id=run_id, host=placement.host, state="dispatched", offset=0, lines=0,
                        attempt=attempt, max_attempts=job.max_attempts, spec=job.spec,
                        gpus=list(placement.gpu_indices), owner=job.owner, code_hash=job.code_hash,
                        failed_hosts=job.failed_hosts, cancel_requested_by=self.jobs.cancels.pop(job.job_id, None))
        self.jobs.active[run_id] = run
        link = self.jobs.ctx.links.get(placement.host)
        if link is not None and link.up and not run.cancel_requested_by:
            self.jobs.launcher.launch_soon(link, run)
        await self.jobs.notify_jobs()

    def host_views(self) -> list[scheduler.HostView]:
        return [self._host_view(link) for link in self.jobs.ctx.links.values()]

    def _host_view(self, link: HostLink) -> scheduler.HostView:
        """What the scheduler sees of a host: live telemetry plus what mlfleet has placed there."""
        cluster = link.info.get("slurm")
        config = self.jobs.fleet.inventory.get(link.name)
        if config is not None and config.slurm is not None:
            return slurm_view(link.name, link.up and link.state == "up" and isinstance(cluster, dict), link.labels,
                              cluster or {}, config.slurm.partition, self.jobs.fleet.drained.get(link.name),
                              config.slurm.gpu_partitions)
        latest = link.latest
        in_use = [r for r in self.jobs.active.values() if r.host == link.name]
        since = time.time() - float(self.jobs.ctx.settings.scheduler.utilization_window)
        window = [s for s in link.history if s.ts >= since] or ([latest] if latest else [])
        foreign, foreign_memory = self._foreign_claims(link)  # other controllers' runs, by the node's claims
        gpus = []
        for g in latest.gpus if latest else []:
            peaks = [x.utilization for s in window for x in s.gpus if x.index == g.index and x.utilization is not None]
            visible = {p.run_id for p in g.processes if p.run_id}
            reserved = sum(int(r.spec.resources.gpu_memory or 0) for r in in_use
                           if r.spec.resources.gpu_memory and g.index in r.gpus and r.run_id not in visible)
            reserved += foreign_memory.get(g.index, 0)  # a share NVML shows is counted there too: the safe side
            gpus.append(scheduler.GpuView(
                index=g.index, name=g.name, memory_total=g.memory_total, memory_free=g.memory_free,
                utilization=max(peaks) if peaks else None,
                processes=tuple(scheduler.GpuProcessView(p.pid, p.used_memory, p.run_id, p.name) for p in g.processes),
                ecc_errors=g.ecc_errors, throttle_reasons=tuple(g.throttle_reasons), reserved_memory=reserved))
        return scheduler.HostView(
            name=link.name, up=link.up and link.state == "up" and latest is not None, labels=link.labels,
            cpu_count=latest.cpu_count if latest else 0, memory_total=latest.memory_total if latest else 0,
            gpus=tuple(gpus),
            gpus_in_use=frozenset(i for r in in_use if r.spec.resources.gpu_memory is None for i in r.gpus) | foreign,
            cpus_in_use=sum(r.spec.resources.cpus for r in in_use),
            memory_in_use=sum(r.spec.resources.memory or 0 for r in in_use),
            drained=self.jobs.fleet.drained.get(link.name),
            gpu_links=tuple(tuple(row) for row in latest.gpu_links) if latest and latest.gpu_links else None,
            releases=tuple(scheduler.Release(r.started_at + float(r.spec.timeout), tuple(r.gpus))
                           for r in in_use if r.spec.timeout and r.started_at and r.gpus))


def slurm_view(name: str, up: bool, labels: dict[str, str], cluster: dict, partition: str | None,
               drained: str | None, gpu_partitions: dict[str, str] | None = None) -> scheduler.HostView:
    """A Slurm cluster as one host the size of its partition's biggest node (pure).

    Slurm queues what does not fit now, so nothing is counted as in use and
    no GPU is "really free" by NVML: a job is placed here when it could ever
    fit one node of the partition, and Slurm's queue does the rest. With a
    ``gpu_partitions`` map (for a cluster whose GRES has no types), each
    mapped partition's biggest node adds its GPUs under the mapped type's
    name, so a job naming that type is placed (and sent there:
    core/jobs/slurm_plan.py).
    """
    partitions = list(cluster.get("partitions", []))
    parts = [p for p in partitions if (p["name"] == partition if partition else p.get("default"))]
    parts = parts or partitions[:1]
    best = max(parts, key=lambda p: (sum(p["gpus_per_node"].values()), p["cpus_per_node"]), default=None)
    type_of = {}  # partition -> the GPU type the map gives its typeless GPUs (the first type named for it)
    for gtype, part_name in (gpu_partitions or {}).items():
        type_of.setdefault(part_name, gtype)
    shown = ([best] if best is not None else []) + [
        p for p in partitions if p["name"] in type_of and (best is None or p["name"] != best["name"])]
    gpus: list[scheduler.GpuView] = []
    for part in shown:
        biggest = max((p for p in partitions if p["name"] == part["name"]),
                      key=lambda p: sum(p["gpus_per_node"].values()))  # an old agent's sinfo may list it twice
        for gtype, count in sorted(biggest["gpus_per_node"].items()):
            label = type_of.get(part["name"], gtype)  # the map names a partition's GPUs, typed in GRES or not
            for _ in range(count):
                gpus.append(scheduler.GpuView(index=len(gpus), name=label))
    return scheduler.HostView(name=name, up=up and best is not None, labels=labels,
                              cpu_count=best["cpus_per_node"] if best else 0,
                              memory_total=best["memory_mb_per_node"] * 2**20 if best else 0, gpus=tuple(gpus),
                              drained=drained, queues=True)
