"""What each host can give in this cycle, whether a job fits there, and why not (in words).

A cycle builds one :class:`HostCapacity` per host from its :class:`HostView`
and books placements on it in place; the checks here are the only place
that decides "fits". :func:`reserve` is the backfill plan for the first job
that fits nowhere.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from dataclasses import dataclass, field

from mlfleet.core.jobs.scheduling.views import EXCLUDING_THROTTLE, GpuView, HostView, Policy, QueuedJob, Reason, gib

@dataclass(slots=True)
class GpuState:
    view: GpuView
    free: int | None  # usable memory now (measured free - reservations), None when unknown
    whole_free: bool  # no process, nothing reserved, not held
    busy: bool  # held by an mlfleet job, or utilised over the threshold (in words: busy_words, when needed)
    held: bool  # held whole by an mlfleet job
    excluded: str | None  # why it can never be used now


@dataclass(slots=True)
class HostCapacity:
    view: HostView
    gpus: dict[int, GpuState]
    cpus: float
    memory: int
    open_gpus: int = 0  # GPUs neither excluded nor busy: an upper bound on what any job can get here
    whole_gpus: int = 0  # open GPUs with nothing on them (what a whole-GPU job can take)
    open: list[tuple[int, int, GpuState]] = field(default_factory=list)  # (free memory, index, GPU), tightest first
    totals: tuple = ()  # all that summary_reason reads, so hosts alike share one summary

    def refresh(self) -> None:
        """Work out the open GPUs and the totals again (after a change to the host's GPUs).

        Best fit takes GPUs in the order of ``open``, so it is sorted here,
        once per change of the host, rather than in every look at it.
        Unknown memory counts as plenty.
        """
        usable = []
        whole = 0
        for index, g in self.gpus.items():
            if not g.excluded and not g.busy:
                usable.append((g.free if g.free is not None else 1 << 62, index, g))
                whole += g.whole_free
        usable.sort()
        self.open = usable
        self.open_gpus = len(usable)
        self.whole_gpus = whole
        self.totals = (self.view.up, self.view.drained, self.open_gpus, len(self.gpus), self.cpus, self.memory)

    def nth_free(self, n: int) -> int:
        """The free memory of the n-th roomiest open GPU (-1 when there are fewer than n)."""
        return self.open[-n][0] if len(self.open) >= n else -1


def gpu_state(gpu: GpuView, held: bool, policy: Policy) -> GpuState:
    excluded = None
    if gpu.ecc_errors:
        excluded = f"GPU {gpu.index} excluded: {gpu.ecc_errors} uncorrected ECC errors"
    elif gpu.throttle_reasons and (bad := sorted(set(gpu.throttle_reasons) & EXCLUDING_THROTTLE)):
        excluded = f"GPU {gpu.index} excluded: throttled ({', '.join(bad)})"
    busy = held or (gpu.utilization is not None and gpu.utilization > policy.busy_utilization)
    free = None if gpu.memory_free is None else gpu.memory_free - gpu.reserved_memory
    whole = not held and not gpu.processes and gpu.reserved_memory == 0
    return GpuState(gpu, free, whole, busy, held, excluded)


def busy_words(gpu: GpuState) -> str:
    """Why a busy GPU is busy (built only for reasons: most busy GPUs are never talked about)."""
    view = gpu.view
    if gpu.held:
        return f"GPU {view.index} held by an mlfleet job"
    return f"GPU {view.index} busy: {view.utilization:.0f}% util{by_whom(view)}"


def by_whom(gpu: GpuView) -> str:
    if not gpu.processes:
        return ""
    top = max(gpu.processes, key=lambda p: p.used_memory or 0)
    who = f"mlfleet run {top.run_id}" if top.run_id else "not mlfleet"
    return f" by pid {top.pid} ({who})"


def capacity(host: HostView, policy: Policy) -> HostCapacity:
    gpus = {g.index: gpu_state(g, g.index in host.gpus_in_use, policy) for g in host.gpus}
    cap = HostCapacity(host, gpus, host.cpu_count - host.cpus_in_use, host.memory_total - host.memory_in_use)
    cap.refresh()
    return cap


def cannot_fit_now(job: QueuedJob, cap: HostCapacity, policy: Policy) -> bool:
    """A cheap look at the host's totals: True means fit would say no (False decides nothing)."""
    if not cap.view.up or cap.view.drained:
        return True
    if job.gpus:
        if cap.open_gpus < job.gpus:
            return True
        if job.gpu_memory is None and cap.whole_gpus < job.gpus:
            return True
        if job.gpu_memory is not None and cap.nth_free(job.gpus) < job.gpu_memory + policy.memory_margin:
            return True
    return bool(job.cpus and cap.cpus < job.cpus) or bool(job.memory and cap.memory < job.memory)


# ------------------------------------------------------------------ checks

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def type_matches(wanted: tuple[str, ...], name: str | None) -> bool:
    """``A100`` matches "NVIDIA A100-SXM4-80GB" but ``A10`` does not; ``RTX 4090`` matches by whole words."""
    if not wanted:
        return True
    have = _words(name or "")
    for item in wanted:
        words = _words(item)
        if words and any(have[i:i + len(words)] == words for i in range(len(have) - len(words) + 1)):
            return True
    return False


def static_check(job: QueuedJob, host: HostView) -> Reason | None:
    """Checks that no amount of waiting changes: constraints, and what the host has at all."""
    if job.hosts and host.name not in job.hosts:
        return Reason(host.name, "constraint", f"not in constraints.hosts ({', '.join(job.hosts)})")
    for key, pattern in job.labels.items():
        have = host.labels.get(key)
        if have is None or not fnmatch.fnmatchcase(have, pattern):
            return Reason(host.name, "constraint", f"label {key}={have or '(none)'} (need {pattern})")
    residency = job.residency
    if residency is not None:
        region = host.labels.get(residency.label)
        if region is None or region not in residency.regions:
            allowed = ", ".join(sorted(residency.regions)) or "none"
            said = f"region {region}" if region is not None else f"no {residency.label} label"
            return Reason(host.name, "residency", f"{said}; data may go to {allowed} only ({residency.rule})")
    return None


def capacity_check(job: QueuedJob, host: HostView, policy: Policy) -> Reason | None:
    """What the host could never give this job, even idle (used at submit, and for reservations)."""
    if not host.up:
        return None  # unknown: it may come back
    if job.gpus:
        typed = [g for g in host.gpus if type_matches(job.gpu_types, g.name)] if job.gpu_types else host.gpus
        if not host.gpus:
            return Reason(host.name, "gpu-count", f"has no GPUs (need {job.gpus})")
        if job.gpu_types and not typed:
            kinds = sorted({g.name or "unknown" for g in host.gpus})
            return Reason(host.name, "gpu-type", f"GPU type {', '.join(kinds)} (need {' or '.join(job.gpu_types)})")
        if len(typed) < job.gpus:
            return Reason(host.name, "gpu-count", f"has {len(typed)} matching GPUs (need {job.gpus})")
        if job.gpu_memory is not None:
            roomy = [g for g in typed if g.memory_total is None or g.memory_total >= job.gpu_memory + policy.memory_margin]
            if len(roomy) < job.gpus:
                return Reason(host.name, "gpu-memory", f"{len(roomy)} GPUs have {gib(job.gpu_memory)} + margin in all "
                                                       f"(need {job.gpus})")
    if job.cpus and host.cpu_count and host.cpu_count < job.cpus:
        return Reason(host.name, "cpus", f"has {host.cpu_count:g} CPUs (need {job.cpus:g})")
    if job.memory and host.memory_total and host.memory_total < job.memory:
        return Reason(host.name, "memory", f"has {gib(host.memory_total)} memory (need {gib(job.memory)})")
    return None


def never_fits(hosts: list[HostView], job: QueuedJob, policy: Policy = Policy()) -> list[Reason] | None:
    """Reasons per host when no host of this fleet could ever run the job; None when one might."""
    reasons = []
    for host in hosts:
        reason = static_check(job, host) or capacity_check(job, host, policy)
        if reason is None:
            return None
        reasons.append(reason)
    return reasons if hosts else None


def fit(job: QueuedJob, cap: HostCapacity, policy: Policy, blocked: frozenset[int],
         capacity_checked: bool = False) -> tuple[list[int], Reason | None]:
    """GPUs for the job on this host now (best fit), or why not."""
    host = cap.view
    name = host.name
    if not host.up:
        return [], Reason(name, "host-down", "host is not reachable")
    if host.drained:
        return [], Reason(name, "drained", f"host drained ({host.drained})")
    static = None if capacity_checked else capacity_check(job, host, policy)
    if static is not None:
        return [], static
    chosen: list[int] = []
    if job.gpus:
        candidates = _gpu_candidates(job, cap, policy, blocked)
        if len(candidates) < job.gpus:
            return [], _gpu_reason(job, cap, policy, blocked, len(candidates))
        # Best fit: the least free memory that still fits, to keep big holes for big jobs;
        # with topology known, the closest-linked set of GPUs first.
        chosen = [index for _, index, _ in candidates[: job.gpus]]
        if host.gpu_links and 1 < job.gpus < len(candidates):
            chosen = _closest_set([gpu for _, _, gpu in candidates], job.gpus, host.gpu_links) or chosen
    if job.cpus and cap.cpus < job.cpus:
        return [], Reason(name, "cpus", f"{max(cap.cpus, 0):g} CPUs free (need {job.cpus:g})")
    if job.memory and cap.memory < job.memory:
        return [], Reason(name, "memory", f"{gib(max(cap.memory, 0))} memory free (need {gib(job.memory)})")
    return chosen, None


def _gpu_candidates(job: QueuedJob, cap: HostCapacity, policy: Policy,
                    blocked: frozenset[int]) -> list[tuple[int, int, GpuState]]:
    """The host's GPUs this job could use now, tightest first: (free memory, index, GPU).

    No words here: most calls end in a placement, so the reason text is
    only built (by _gpu_reason, which walks the same checks) when the host says no.
    """
    usable = cap.open  # neither excluded nor busy
    if job.gpu_types:
        usable = [c for c in usable if type_matches(job.gpu_types, c[2].view.name)]
    if blocked:
        usable = [c for c in usable if c[1] not in blocked]
    if job.gpu_memory is None:
        return [c for c in usable if c[2].whole_free]
    need = job.gpu_memory + policy.memory_margin
    return [c for c in usable if (c[2].whole_free if c[2].free is None else c[0] >= need)]


def _gpu_reason(job: QueuedJob, cap: HostCapacity, policy: Policy, blocked: frozenset[int], found: int) -> Reason:
    """Why the host cannot give the job enough GPUs, with the first problem in words."""
    problems = []
    unknown_memory = False
    for gpu in cap.gpus.values():
        view = gpu.view
        if job.gpu_types and not type_matches(job.gpu_types, view.name):
            continue
        if gpu.excluded:
            problems.append(gpu.excluded)
        elif view.index in blocked:
            problems.append(f"GPU {view.index} reserved for an older, bigger job")
        elif gpu.busy:
            problems.append(busy_words(gpu))
        elif job.gpu_memory is None or gpu.free is None:
            unknown_memory = unknown_memory or gpu.free is None
            if not gpu.whole_free:
                problems.append(f"GPU {view.index} in use{by_whom(view)}")
        elif gpu.free < job.gpu_memory + policy.memory_margin:
            problems.append(f"GPU {view.index} has {gib(max(gpu.free, 0))} free")
    total = sum(1 for g in cap.gpus.values() if type_matches(job.gpu_types, g.view.name)) if job.gpu_types \
        else len(cap.gpus)
    detail = f"; {problems[0]}" if problems else ""
    if len(problems) > 1:
        detail += f" (+{len(problems) - 1} more)"
    counted = " (memory n/a: counting whole GPUs)" if unknown_memory else ""
    check = "gpu-memory" if job.gpu_memory and any("free" in p for p in problems) else "gpu-count"
    have = f"have {gib(job.gpu_memory)} free" if job.gpu_memory and not unknown_memory else "free"
    return Reason(cap.view.name, check, f"{found} of {total} GPUs {have} (need {job.gpus}){counted}{detail}")


_MAX_TOPOLOGY_CANDIDATES = 12  # C(12, 6) = 924 sets at most


def _closest_set(candidates: list[GpuState], count: int, links: tuple[tuple[int, ...], ...]) -> list[int] | None:
    """The ``count`` GPUs whose worst pairwise link is best (then the tightest memory)."""
    pool = candidates[:_MAX_TOPOLOGY_CANDIDATES]
    best: tuple[tuple[int, int], list[int]] | None = None
    for combo in itertools.combinations(pool, count):
        indices = [g.view.index for g in combo]
        try:
            worst = max(links[a][b] for a, b in itertools.combinations(indices, 2))
        except IndexError:
            return None  # the matrix does not cover these GPUs: ignore topology
        memory = sum(g.free if g.free is not None else 1 << 40 for g in combo)
        key = (worst, memory)
        if best is None or key < best[0]:
            best = (key, indices)
    return best[1] if best else None


def take(job: QueuedJob, cap: HostCapacity, chosen: list[int]) -> None:
    """Book the job on the host (in place: the capacity views belong to this cycle alone)."""
    for index in chosen:
        gpu = cap.gpus[index]
        gpu.whole_free = False
        if job.gpu_memory is None or gpu.free is None:
            gpu.busy = gpu.held = True
        else:
            gpu.free -= job.gpu_memory
    cap.cpus -= job.cpus
    cap.memory -= job.memory or 0
    cap.refresh()


def reserve(job: QueuedJob, caps: dict[str, HostCapacity], policy: Policy) -> tuple[str, tuple[int, ...], float] | None:
    """EASY backfill: when and where the first blocked job will fit as running jobs reach their timeouts.

    Only runs with a timeout have a known end; without one nothing can be
    promised and smaller jobs may go ahead (aging keeps the big job moving up).
    """
    best: tuple[float, str, tuple[int, ...]] | None = None
    for cap in caps.values():
        host = cap.view
        if not host.releases or not host.up or host.drained or static_check(job, host) \
                or capacity_check(job, host, policy):
            continue
        usable = {i for i, g in cap.gpus.items()
                  if not g.excluded and type_matches(job.gpu_types, g.view.name) and g.whole_free and not g.busy}
        if len(usable) >= job.gpus:
            continue  # it would fit but for CPUs/memory: no GPU reservation helps
        for release in sorted(host.releases, key=lambda r: r.end):
            usable |= {i for i in release.gpu_indices
                       if i in cap.gpus and not cap.gpus[i].excluded and type_matches(job.gpu_types, cap.gpus[i].view.name)}
            if len(usable) >= job.gpus:
                plan = (release.end, host.name, tuple(sorted(usable)[: job.gpus]))
                if best is None or plan < best:
                    best = plan
                break
    if best is None:
        return None
    return best[1], best[2], best[0]
