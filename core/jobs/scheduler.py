"""Placement: which waiting job goes to which host and GPUs, and why the rest wait.

A pure function over plain data: no I/O, no clock, no globals. The
controller builds a :class:`HostView` per host from live telemetry and the
runs it knows, hands them with the queue, a :class:`Policy` and the time to
:func:`schedule`, and acts on the answer. Every job left waiting gets one
:class:`Reason` per host, in words a user can act on, with the live numbers.

What "free" means (docs/scheduler.md has the whole story):

* A job that names ``gpu_memory`` may share a GPU: the GPU's measured free
  memory, less what mlfleet has reserved on it for runs whose processes have
  not shown up yet, must cover the request plus a margin, and the GPU's
  utilisation must have stayed under a threshold over the recent window.
* A job without ``gpu_memory`` takes whole GPUs: no process on them (ours or
  anyone's), nothing reserved, and idle over the window.
* A GPU with uncorrected ECC errors or hardware/thermal throttling, and every
  GPU of a drained host, is excluded. A GPU whose memory NVML cannot read is
  counted whole (and the reason says so).

What a cycle costs: one pass over the hosts to build their capacity, one
over the queue to sort it into runs of look-alike jobs (:class:`JobQueue`),
then work per placement and per job shape, not per waiting job: once a
shape is known to fit nowhere, every later job of it gets the same reasons
(:class:`Shape`). Hosts wait in best-fit orders (:class:`BestFitIndex`),
so a job looks only at hosts big enough for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlfleet.core.jobs.scheduling.best_fit import BestFitIndex
from mlfleet.core.jobs.scheduling.capacity import (HostCapacity, cannot_fit_now, capacity, capacity_check, fit, never_fits,
                                              reserve, static_check, take, type_matches)
from mlfleet.core.jobs.scheduling.ordering import JobQueue
from mlfleet.core.jobs.scheduling.reasons import DETAILED_REASONS, GROUP_FROM, reasons_by_words, summaries, summary_reason
from mlfleet.core.jobs.scheduling.views import (EXCLUDING_THROTTLE, GiB, Decision, GpuProcessView, GpuView, HostView, Placement,
                                           Policy, QueuedJob, Quotas, Reason, Release, Residency)

__all__ = ["EXCLUDING_THROTTLE", "Decision", "GiB", "GpuProcessView", "GpuView", "HostView", "Placement", "Policy",
           "QueuedJob", "Quotas", "Reason", "Release", "Residency", "never_fits", "schedule", "type_matches"]

NO_QUOTAS = Quotas()


def schedule(hosts: list[HostView], queue: list[QueuedJob], policy: Policy = Policy(), now: float = 0.0,
             usage: dict[str, int] | None = None, quotas: Quotas = NO_QUOTAS) -> Decision:
    """Place what fits, in order of effective priority; say why the rest wait.

    ``usage`` is GPUs held per project by running jobs (for fair share);
    ``now`` only ages waiting jobs. See :class:`JobQueue` for the order
    (O(n log n)) and why look-alike jobs are kept together.

    ``quotas`` caps the GPUs a user or project holds at once. A job that
    would pass a cap waits with the quota's words and is passed over: it
    takes no host, makes no backfill reservation and tells nothing about
    its shape, so the jobs behind it (other users' look-alikes too) are
    placed as if it were not there.
    """
    decision = Decision()
    capped = bool(quotas)
    by_user, by_project = dict(quotas.held_by_user), dict(quotas.held_by_project)
    caps = {h.name: capacity(h, policy) for h in sorted(hosts, key=lambda h: h.name)}
    total_gpus = max(sum(len(h.gpus) for h in hosts), 1)
    held = dict(usage or {})
    line = JobQueue(queue, now, policy)
    penalty = {job.project: policy.fair_share_weight * held.get(job.project, 0) / total_gpus for job in queue}

    reserved: dict[str, frozenset[int]] = {}
    shadow = float("inf")
    index = BestFitIndex(list(caps.values()))
    host_groups = look_alike_hosts(caps)
    while (run := line.next_run(penalty)) is not None:
        finishes_before_shadow = run.timeout is not None and now + run.timeout <= shadow
        shape = run.shape
        reasons = shape.hopeless.get(finishes_before_shadow)
        if reasons is not None:
            # The rest of the run gets the same answer, unless a reservation still to come may
            # move the shadow and with it which side of it these jobs' timeouts fall on.
            settled = run.timeout is None or shadow != float("inf")
            if not capped:
                decision.waiting.update(dict.fromkeys(line.drop(run) if settled else [line.pop(run).job_id], reasons))
                continue
            for job in line.drop_jobs(run) if settled else [line.pop(run)]:  # a job past its cap says so first
                over = quotas.blocks(job, by_user, by_project)
                decision.waiting[job.job_id] = reasons if over is None else [over]
            continue
        job = line.pop(run)
        if capped and (over := quotas.blocks(job, by_user, by_project)) is not None:
            decision.waiting[job.job_id] = [over]  # before any host is looked at: nothing learned for the shape
            continue
        if shape.allowed is None:
            shape.allowed = allowed_hosts(job, host_groups, index.caps, policy)
        blocked = {} if finishes_before_shadow else reserved
        best, tried, reasons = best_host(job, index, shape.allowed.names, blocked, policy)
        if best is None:
            reasons = waiting_reasons(job, policy, shape.allowed, tried, reasons, reserved)
            decision.waiting[job.job_id] = reasons
            if not job.avoid_hosts:
                shape.hopeless[finishes_before_shadow] = reasons
            if policy.backfill and decision.reservation is None and job.gpus:
                plan = reserve(job, caps, policy)
                if plan is not None:
                    host, gpus, start = plan
                    decision.reservation = (job.job_id, host, gpus, start)
                    reserved[host] = frozenset(gpus)
                    shadow = start
            continue
        cap, chosen = best
        if not cap.view.queues:
            take(job, cap, chosen)
            index.moved(cap)
        held[job.project] = held.get(job.project, 0) + job.gpus
        penalty[job.project] = policy.fair_share_weight * held[job.project] / total_gpus
        if capped and job.gpus:
            by_user[job.owner] = by_user.get(job.owner, 0) + job.gpus
            by_project[job.project] = by_project.get(job.project, 0) + job.gpus
        note = f"environment already built on {cap.view.name}" if cap.view.name in job.warm_hosts else ""
        decision.placements.append(Placement(job.job_id, cap.view.name, tuple(sorted(chosen)), note))
    return decision


def look_alike_hosts(caps: dict[str, HostCapacity]) -> list[list[HostCapacity]]:
    """Hosts that answer every static question alike (same labels, sizes and GPU models), by name."""
    groups: dict[tuple, list[HostCapacity]] = {}
    for cap in caps.values():
        v = cap.view
        signature = (v.up, tuple(sorted(v.labels.items())), v.cpu_count, v.memory_total,
                     tuple((g.name, g.memory_total) for g in v.gpus))
        groups.setdefault(signature, []).append(cap)
    return list(groups.values())


@dataclass
class Allowed:
    """Where a job shape may go at all: the hosts (their names, and the hosts by name), and why not elsewhere."""

    names: set[str]
    hosts: list[HostCapacity]
    refusals: list[Reason]


def allowed_hosts(job: QueuedJob, look_alikes: list[list[HostCapacity]], caps: list[HostCapacity], policy: Policy) -> Allowed:
    """The static checks, once per job shape and (without constraints.hosts) once per look-alike group."""
    names: set[str] = set()
    refusals: list[Reason] = []
    for group in look_alikes:
        refused_here: dict[tuple[str, str], list[str]] = {}
        for cap in group if job.hosts else group[:1]:
            static = static_check(job, cap.view) or capacity_check(job, cap.view, policy)
            hosts = [cap.view.name] if job.hosts else [c.view.name for c in group]
            if static is None:
                names.update(hosts)
            else:
                refused_here.setdefault((static.check, static.message), []).extend(hosts)
        refusals.extend(reasons_by_words(refused_here, GROUP_FROM))
    return Allowed(names, [cap for cap in caps if cap.view.name in names], refusals)


def best_host(job: QueuedJob, index: BestFitIndex, allowed: set[str], reserved: dict[str, frozenset[int]],
               policy: Policy) -> tuple[tuple[HostCapacity, list[int]] | None, set[str], list[Reason]]:
    """Best fit, cheaply: the first host that fits in the index's order (fewest GPUs left first).

    Returns the host and GPUs (or None), the hosts looked at in detail and
    why each of them said no. Hosts where the job failed before are kept
    as a fallback, used only when nothing else fits. Among the hosts that
    fit exactly as tightly as the best (the same measure in the index's
    order), one where the job's environment is built already wins: warmth
    breaks best-fit ties and nothing more, so it never costs a big hole.
    """
    tried: set[str] = set()
    reasons: list[Reason] = []
    fallback = None
    best: tuple[HostCapacity, list[int]] | None = None
    for cap in index.walk(job, policy):
        name = cap.view.name
        if best is not None and index.measure(job, cap) != index.measure(job, best[0]):
            break  # past the ties of the best fit: no warm host among them
        if name not in allowed or cannot_fit_now(job, cap, policy):
            continue
        tried.add(name)
        chosen, reason = fit(job, cap, policy, reserved.get(name, _NOTHING), capacity_checked=True)
        if reason is not None:
            reasons.append(reason)
        elif name in job.avoid_hosts:
            fallback = fallback or (cap, chosen)
        elif name in job.warm_hosts:
            return (cap, chosen), tried, reasons
        elif best is None:
            if not job.warm_hosts:
                return (cap, chosen), tried, reasons
            best = (cap, chosen)  # look on among the hosts that fit as tightly, for one with the environment
    return best or fallback, tried, reasons


_NOTHING: frozenset[int] = frozenset()


def waiting_reasons(job: QueuedJob, policy: Policy, allowed: Allowed, tried: set[str], found: list[Reason],
                     reserved: dict[str, frozenset[int]]) -> list[Reason]:
    """Why nothing could take the job: what the hosts looked at said, then words for every other host.

    The first few other hosts get a GPU-by-GPU look; the rest are told from
    their totals and grouped by words, which matters on a big fleet: each
    shape that fits nowhere is answered for every host once per cycle.
    """
    reasons = list(found)
    rest = [cap for cap in allowed.hosts if cap.view.name not in tried] if tried else allowed.hosts
    for cap in rest[:DETAILED_REASONS]:
        reasons.append(fit(job, cap, policy, reserved.get(cap.view.name, _NOTHING), capacity_checked=True)[1]
                       or summary_reason(job, cap))
    reasons.extend(summaries(job, rest[DETAILED_REASONS:]))
    reasons.extend(allowed.refusals)
    reasons.sort(key=lambda r: r.host)
    return reasons
