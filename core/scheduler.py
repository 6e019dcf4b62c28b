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
"""

from __future__ import annotations

import bisect
import fnmatch
import heapq
import itertools
import re
from dataclasses import dataclass, field

GiB = 1024**3
EXCLUDING_THROTTLE = frozenset({"hw_thermal", "sw_thermal", "hw_power_brake", "hw_slowdown"})


@dataclass(frozen=True)
class GpuProcessView:
    pid: int
    used_memory: int | None = None
    run_id: str | None = None  # None: not an mlfleet job (foreign)
    name: str | None = None


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    utilization: float | None = None  # peak over the recent window
    processes: tuple[GpuProcessView, ...] = ()
    ecc_errors: int | None = None
    throttle_reasons: tuple[str, ...] = ()
    reserved_memory: int = 0  # by mlfleet runs placed here whose processes are not visible yet


@dataclass(frozen=True)
class Release:
    """A running mlfleet run's resources, free again by ``end`` at the latest (its timeout)."""

    end: float
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class HostView:
    name: str
    up: bool
    labels: dict[str, str] = field(default_factory=dict)
    cpu_count: float = 0
    memory_total: int = 0
    gpus: tuple[GpuView, ...] = ()
    gpus_in_use: frozenset[int] = frozenset()  # held whole by mlfleet runs
    cpus_in_use: float = 0
    memory_in_use: int = 0
    drained: str | None = None  # why, when drained
    releases: tuple[Release, ...] = ()
    gpu_links: tuple[tuple[int, ...], ...] | None = None  # pairwise link level by GPU index (0 = NVLink)


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    priority: int = 0
    submitted: float = 0.0
    gpus: int = 0
    gpu_memory: int | None = None
    gpu_types: tuple[str, ...] = ()
    cpus: float = 0
    memory: int | None = None
    labels: dict[str, str] = field(default_factory=dict)  # values may be globs: region: eu-*
    hosts: tuple[str, ...] = ()
    project: str = "default"
    owner: str = ""
    timeout: float | None = None
    avoid_hosts: tuple[str, ...] = ()  # where earlier attempts failed: used only when nothing else fits


@dataclass(frozen=True)
class Policy:
    memory_margin: int = 1 * GiB
    busy_utilization: float = 10.0  # percent; above this over the window a GPU is busy
    aging_per_hour: float = 1.0  # priority points a waiting job gains per hour
    fair_share_weight: float = 10.0  # priority points lost at 100 % of the fleet's GPUs held by one project
    backfill: bool = True


@dataclass(frozen=True)
class Placement:
    job_id: str
    host: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Reason:
    host: str  # a host, or "N hosts" for a group that failed alike (see ``hosts``)
    check: str  # constraint | host-down | drained | gpu-count | gpu-type | gpu-memory | cpus | memory
    message: str
    hosts: tuple[str, ...] = ()  # for a group: its hosts (big fleets get one reason per kind, not per host)

    @property
    def count(self) -> int:
        return len(self.hosts) or 1


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[str, list[Reason]] = field(default_factory=dict)
    reservation: tuple[str, str, tuple[int, ...], float] | None = None  # (job, host, GPUs, from) kept for a big job

    def short_reason(self, job_id: str) -> str:
        """One line for ``jobs list``: the most common failed check."""
        reasons = self.waiting.get(job_id, [])
        if not reasons:
            return "no hosts"
        total = sum(r.count for r in reasons)
        if total == 1:
            return f"{reasons[0].host}: {reasons[0].message}"
        checks: dict[str, int] = {}
        for r in reasons:
            checks[r.check] = checks.get(r.check, 0) + r.count
        top = max(checks, key=lambda c: checks[c])
        example = next(r for r in reasons if r.check == top)
        return f"{checks[top]} of {total} hosts: {example.message}"


# ---------------------------------------------------------------- capacity

@dataclass
class _Gpu:
    view: GpuView
    free: int | None  # usable memory now (measured free - reservations), None when unknown
    whole_free: bool  # no process, nothing reserved, not held
    busy: str | None  # why it is busy right now, in words
    excluded: str | None  # why it can never be used now


@dataclass
class _Host:
    view: HostView
    gpus: dict[int, _Gpu]
    cpus: float
    memory: int
    open_gpus: int = 0  # GPUs neither excluded nor busy: an upper bound on what any job can get here
    most_free: int = 0  # the most free memory on one of them (unknown memory counts as plenty)
    whole_gpus: int = 0  # open GPUs with nothing on them (what a whole-GPU job can take)
    frees: tuple[int, ...] = ()  # free memory of the open GPUs, largest first

    def refresh(self) -> None:
        usable = [g for g in self.gpus.values() if not g.excluded and not g.busy]
        self.open_gpus = len(usable)
        self.frees = tuple(sorted((g.free if g.free is not None else 1 << 62 for g in usable), reverse=True))
        self.most_free = self.frees[0] if self.frees else 0
        self.whole_gpus = sum(1 for g in usable if g.whole_free)


def _gpu_state(gpu: GpuView, held: bool, policy: Policy) -> _Gpu:
    excluded = None
    if gpu.ecc_errors:
        excluded = f"GPU {gpu.index} excluded: {gpu.ecc_errors} uncorrected ECC errors"
    elif bad := sorted(set(gpu.throttle_reasons) & EXCLUDING_THROTTLE):
        excluded = f"GPU {gpu.index} excluded: throttled ({', '.join(bad)})"
    busy = None
    if held:
        busy = f"GPU {gpu.index} held by an mlfleet job"
    elif gpu.utilization is not None and gpu.utilization > policy.busy_utilization:
        busy = f"GPU {gpu.index} busy: {gpu.utilization:.0f}% util{_by_whom(gpu)}"
    free = None if gpu.memory_free is None else gpu.memory_free - gpu.reserved_memory
    whole = not held and not gpu.processes and gpu.reserved_memory == 0
    return _Gpu(gpu, free, whole, busy, excluded)


def _by_whom(gpu: GpuView) -> str:
    if not gpu.processes:
        return ""
    top = max(gpu.processes, key=lambda p: p.used_memory or 0)
    who = f"mlfleet run {top.run_id}" if top.run_id else "not mlfleet"
    return f" by pid {top.pid} ({who})"


def _capacity(host: HostView, policy: Policy) -> _Host:
    gpus = {g.index: _gpu_state(g, g.index in host.gpus_in_use, policy) for g in host.gpus}
    cap = _Host(host, gpus, host.cpu_count - host.cpus_in_use, host.memory_total - host.memory_in_use)
    cap.refresh()
    return cap


def _cannot_fit_now(job: QueuedJob, cap: _Host, policy: Policy) -> bool:
    """A cheap look at the host's totals: True means _fit would say no (False decides nothing)."""
    if not cap.view.up or cap.view.drained:
        return True
    if job.gpus:
        if cap.open_gpus < job.gpus:
            return True
        if job.gpu_memory is None and cap.whole_gpus < job.gpus:
            return True
        if job.gpu_memory is not None and cap.frees[job.gpus - 1] < job.gpu_memory + policy.memory_margin:
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


def _static_check(job: QueuedJob, host: HostView) -> Reason | None:
    """Checks that no amount of waiting changes: constraints, and what the host has at all."""
    if job.hosts and host.name not in job.hosts:
        return Reason(host.name, "constraint", f"not in constraints.hosts ({', '.join(job.hosts)})")
    for key, pattern in job.labels.items():
        have = host.labels.get(key)
        if have is None or not fnmatch.fnmatchcase(have, pattern):
            return Reason(host.name, "constraint", f"label {key}={have or '(none)'} (need {pattern})")
    return None


def _capacity_check(job: QueuedJob, host: HostView, policy: Policy) -> Reason | None:
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
                return Reason(host.name, "gpu-memory", f"{len(roomy)} GPUs have {_gib(job.gpu_memory)} + margin in all "
                                                       f"(need {job.gpus})")
    if job.cpus and host.cpu_count and host.cpu_count < job.cpus:
        return Reason(host.name, "cpus", f"has {host.cpu_count:g} CPUs (need {job.cpus:g})")
    if job.memory and host.memory_total and host.memory_total < job.memory:
        return Reason(host.name, "memory", f"has {_gib(host.memory_total)} memory (need {_gib(job.memory)})")
    return None


def never_fits(hosts: list[HostView], job: QueuedJob, policy: Policy = Policy()) -> list[Reason] | None:
    """Reasons per host when no host of this fleet could ever run the job; None when one might."""
    reasons = []
    for host in hosts:
        reason = _static_check(job, host) or _capacity_check(job, host, policy)
        if reason is None:
            return None
        reasons.append(reason)
    return reasons if hosts else None


def _fit(job: QueuedJob, cap: _Host, policy: Policy, blocked: frozenset[int],
         capacity_checked: bool = False) -> tuple[list[int], Reason | None]:
    """GPUs for the job on this host now (best fit), or why not."""
    host = cap.view
    name = host.name
    if not host.up:
        return [], Reason(name, "host-down", "host is not reachable")
    if host.drained:
        return [], Reason(name, "drained", f"host drained ({host.drained})")
    static = None if capacity_checked else _capacity_check(job, host, policy)
    if static is not None:
        return [], static
    chosen: list[int] = []
    if job.gpus:
        candidates, problems = [], []
        unknown_memory = False
        for gpu in cap.gpus.values():
            view = gpu.view
            if not type_matches(job.gpu_types, view.name):
                continue
            if gpu.excluded:
                problems.append(gpu.excluded)
                continue
            if view.index in blocked:
                problems.append(f"GPU {view.index} reserved for an older, bigger job")
                continue
            if gpu.busy:
                problems.append(gpu.busy)
                continue
            if job.gpu_memory is None or gpu.free is None:
                unknown_memory = unknown_memory or gpu.free is None
                if not gpu.whole_free:
                    problems.append(f"GPU {view.index} in use{_by_whom(view)}")
                    continue
            elif gpu.free < job.gpu_memory + policy.memory_margin:
                problems.append(f"GPU {view.index} has {_gib(max(gpu.free, 0))} free")
                continue
            candidates.append(gpu)
        if len(candidates) < job.gpus:
            total = sum(1 for g in cap.gpus.values() if type_matches(job.gpu_types, g.view.name))
            detail = f"; {problems[0]}" if problems else ""
            if len(problems) > 1:
                detail += f" (+{len(problems) - 1} more)"
            counted = " (memory n/a: counting whole GPUs)" if unknown_memory else ""
            check = "gpu-memory" if job.gpu_memory and any("free" in p for p in problems) else "gpu-count"
            have = f"have {_gib(job.gpu_memory)} free" if job.gpu_memory and not unknown_memory else "free"
            return [], Reason(name, check, f"{len(candidates)} of {total} GPUs {have} (need {job.gpus}){counted}{detail}")
        # Best fit: the least free memory that still fits, to keep big holes for big jobs;
        # with topology known, the closest-linked set of GPUs first.
        candidates.sort(key=lambda g: (g.free if g.free is not None else 1 << 62, g.view.index))
        chosen = [g.view.index for g in candidates[: job.gpus]]
        if host.gpu_links and 1 < job.gpus < len(candidates):
            chosen = _closest_set(candidates, job.gpus, host.gpu_links) or chosen
    if job.cpus and cap.cpus < job.cpus:
        return [], Reason(name, "cpus", f"{max(cap.cpus, 0):g} CPUs free (need {job.cpus:g})")
    if job.memory and cap.memory < job.memory:
        return [], Reason(name, "memory", f"{_gib(max(cap.memory, 0))} memory free (need {_gib(job.memory)})")
    return chosen, None


_MAX_TOPOLOGY_CANDIDATES = 12  # C(12, 6) = 924 sets at most


def _closest_set(candidates: list[_Gpu], count: int, links: tuple[tuple[int, ...], ...]) -> list[int] | None:
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


def _take(job: QueuedJob, cap: _Host, chosen: list[int]) -> None:
    for index in chosen:
        gpu = cap.gpus[index]
        if job.gpu_memory is None or gpu.free is None:
            cap.gpus[index] = _Gpu(gpu.view, gpu.free, False, f"GPU {index} held by an mlfleet job", gpu.excluded)
        else:
            cap.gpus[index] = _Gpu(gpu.view, gpu.free - job.gpu_memory, False, gpu.busy, gpu.excluded)
    cap.cpus -= job.cpus
    cap.memory -= job.memory or 0
    cap.refresh()


# ---------------------------------------------------------------- ordering

def _aged_priority(job: QueuedJob, now: float, policy: Policy) -> float:
    """Priority plus what waiting earned; the fair-share penalty is applied per project in schedule()."""
    waited_h = max(now - job.submitted, 0.0) / 3600.0
    return job.priority + policy.aging_per_hour * waited_h


def schedule(hosts: list[HostView], queue: list[QueuedJob], policy: Policy = Policy(), now: float = 0.0,
             usage: dict[str, int] | None = None) -> Decision:
    """Place what fits, in order of effective priority; say why the rest wait.

    ``usage`` is GPUs held per project by running jobs (for fair share);
    ``now`` only ages waiting jobs. The fair-share penalty is the same for
    every job of a project, so each project keeps its own heap, and each
    step takes the best head among the projects: O(n log n + n·projects).
    """
    decision = Decision()
    caps = {h.name: _capacity(h, policy) for h in sorted(hosts, key=lambda h: h.name)}
    total_gpus = max(sum(len(h.gpus) for h in hosts), 1)
    held = dict(usage or {})

    heaps: dict[str, list[tuple[tuple[float, float, str], QueuedJob]]] = {}
    for job in queue:
        base = _aged_priority(job, now, policy)
        heaps.setdefault(job.project, []).append(((-base, job.submitted, job.job_id), job))
    for items in heaps.values():
        heapq.heapify(items)

    def next_job() -> QueuedJob | None:
        best_project, best_key = None, None
        for project, items in heaps.items():
            if not items:
                continue
            (neg_base, submitted, job_id), _ = items[0]
            penalty = policy.fair_share_weight * held.get(project, 0) / total_gpus
            candidate = (neg_base + penalty, submitted, job_id)
            if best_key is None or candidate < best_key:
                best_project, best_key = project, candidate
        return heapq.heappop(heaps[best_project])[1] if best_project is not None else None

    reserved: dict[str, frozenset[int]] = {}
    shadow = float("inf")
    # Capacity only shrinks during a cycle, so a job shape that fitted nowhere fits nowhere later
    # either: its reasons are reused, which keeps long queues of look-alike jobs cheap.
    hopeless: dict[tuple, list[Reason]] = {}
    allowed_by_shape: dict[tuple, tuple[set[str], list[Reason]]] = {}  # per shape: allowed hosts, refusals
    index = _BestFitIndex(list(caps.values()))
    look_alikes: dict[tuple, list[_Host]] = {}
    for cap in caps.values():
        v = cap.view
        signature = (v.up, tuple(sorted(v.labels.items())), v.cpu_count, v.memory_total,
                     tuple((g.name, g.memory_total) for g in v.gpus))
        look_alikes.setdefault(signature, []).append(cap)
    while (job := next_job()) is not None:
        finishes_before_shadow = job.timeout is not None and now + job.timeout <= shadow
        shape = _shape(job, finishes_before_shadow)
        if shape in hopeless:
            decision.waiting[job.job_id] = hopeless[shape]
            continue
        reasons: list[Reason] = []
        best: tuple[_Host, list[int]] | None = None
        fallback: tuple[_Host, list[int]] | None = None
        constraints = shape[:-1]
        if constraints not in allowed_by_shape:
            names, refusals = set(), []
            for group in look_alikes.values():  # hosts that answer every static question alike
                static = None if job.hosts else \
                    _static_check(job, group[0].view) or _capacity_check(job, group[0].view, policy)
                refused_here = []
                for cap in group:
                    if job.hosts:
                        static = _static_check(job, cap.view) or _capacity_check(job, cap.view, policy)
                    if static is None:
                        names.add(cap.view.name)
                    else:
                        refused_here.append(Reason(cap.view.name, static.check, static.message))
                refusals.extend(_grouped(refused_here))
            allowed_by_shape[constraints] = (names, refusals)
        allowed, refusals = allowed_by_shape[constraints]
        tried: set[str] = set()
        # Best fit, cheaply: hosts in order of fewest open GPUs (then least free memory) that could
        # hold the job; the first that fits wins; _fit then picks the tightest GPUs on it.
        for cap in index.walk(job, policy):
            name = cap.view.name
            if name not in allowed or _cannot_fit_now(job, cap, policy):
                continue
            tried.add(name)
            blocked = frozenset() if finishes_before_shadow else reserved.get(name, frozenset())
            chosen, reason = _fit(job, cap, policy, blocked, capacity_checked=True)
            if reason is not None:
                reasons.append(reason)
            elif name in job.avoid_hosts:
                fallback = fallback or (cap, chosen)  # it failed there before: only if nothing else fits
            else:
                best = (cap, chosen)
                break
        best = best or fallback
        if best is None:
            # Words for every other allowed host (in detail for the first few), and for the refusals.
            rest = sorted(allowed - tried)
            for name in rest[:_DETAILED_REASONS]:
                reasons.append(_fit(job, caps[name], policy, reserved.get(name, frozenset()), capacity_checked=True)[1]
                               or _summary_reason(job, caps[name]))
            reasons.extend(_grouped([_summary_reason(job, caps[name]) for name in rest[_DETAILED_REASONS:]],
                                    at_least=1))
            reasons.extend(refusals)
            reasons.sort(key=lambda r: r.host)
            decision.waiting[job.job_id] = reasons
            if not job.avoid_hosts:
                hopeless[shape] = reasons
            if policy.backfill and decision.reservation is None and job.gpus:
                plan = _reserve(job, caps, policy)
                if plan is not None:
                    host, gpus, start = plan
                    decision.reservation = (job.job_id, host, gpus, start)
                    reserved[host] = frozenset(gpus)
                    shadow = start
            continue
        cap, chosen = best
        before = index.keys_of(cap)
        _take(job, cap, chosen)
        index.moved(cap, before)
        held[job.project] = held.get(job.project, 0) + job.gpus
        decision.placements.append(Placement(job.job_id, cap.view.name, tuple(sorted(chosen))))
    return decision


_DETAILED_REASONS = 20  # hosts past this many get a reason from their totals, not a GPU-by-GPU look
_GROUP_FROM = 4  # this many hosts failing alike are reported as one group


def _grouped(reasons: list[Reason], at_least: int = _GROUP_FROM) -> list[Reason]:
    """Hosts that fail for the same words become one reason naming how many (and which)."""
    by_words: dict[tuple[str, str], list[str]] = {}
    for r in reasons:
        by_words.setdefault((r.check, r.message), []).append(r.host)
    out = []
    for (check, message), hosts in by_words.items():
        if len(hosts) >= at_least and len(hosts) > 1:
            out.append(Reason(f"{len(hosts)} hosts ({hosts[0]}, ...)", check, message, tuple(hosts)))
        else:
            out.extend(Reason(h, check, message) for h in hosts)
    return out


def _summary_reason(job: QueuedJob, cap: _Host) -> Reason:
    name = cap.view.name
    if not cap.view.up:
        return Reason(name, "host-down", "host is not reachable")
    if cap.view.drained:
        return Reason(name, "drained", f"host drained ({cap.view.drained})")
    if job.gpus and cap.open_gpus < job.gpus:
        return Reason(name, "gpu-count", f"{cap.open_gpus} of {len(cap.gpus)} GPUs free (need {job.gpus})")
    if job.gpus:
        return Reason(name, "gpu-memory", f"no {job.gpus} GPUs with {_gib(job.gpu_memory)} free")
    if job.cpus and cap.cpus < job.cpus:
        return Reason(name, "cpus", f"{max(cap.cpus, 0):g} CPUs free (need {job.cpus:g})")
    return Reason(name, "memory", f"{_gib(max(cap.memory, 0))} memory free (need {_gib(job.memory)})")


class _BestFitIndex:
    """Hosts kept sorted by what they have left, so a job looks only at hosts big enough for it.

    Orders: whole free GPUs (for whole-GPU jobs); free CPUs (for jobs without
    GPUs); and for jobs that share GPUs by memory, one order per GPU count n
    on the n-th largest free memory (so a job starts at the tightest host with
    n roomy GPUs), built the first time a job of that size asks. A placement
    moves one host in each order that exists.
    """

    def __init__(self, caps: list[_Host]) -> None:
        self.by_name = {c.view.name: c for c in caps}
        self.width = max((len(c.gpus) for c in caps), default=0)
        self.whole = sorted((c.whole_gpus, c.view.name) for c in caps)
        self.cpus = sorted((c.cpus, c.view.name) for c in caps)
        self.memory: dict[int, list[tuple[int, str]]] = {}

    @staticmethod
    def _nth_free(cap: _Host, n: int) -> tuple[int, str]:
        return (cap.frees[n - 1] if len(cap.frees) >= n else -1, cap.view.name)

    def _memory_order(self, n: int) -> list[tuple[int, str]]:
        if n not in self.memory:
            self.memory[n] = sorted(self._nth_free(c, n) for c in self.by_name.values())
        return self.memory[n]

    def keys_of(self, cap: _Host) -> tuple[tuple, tuple, dict[int, tuple]]:
        return ((cap.whole_gpus, cap.view.name), (cap.cpus, cap.view.name),
                {n: self._nth_free(cap, n) for n in self.memory})

    def moved(self, cap: _Host, before: tuple[tuple, tuple, dict[int, tuple]]) -> None:
        after = self.keys_of(cap)
        pairs = [(self.whole, before[0], after[0]), (self.cpus, before[1], after[1])]
        pairs += [(self.memory[n], before[2][n], after[2][n]) for n in before[2]]
        for keys, old, new in pairs:
            if old != new:
                del keys[bisect.bisect_left(keys, old)]
                bisect.insort(keys, new)

    def walk(self, job: QueuedJob, policy: Policy):  # noqa: ANN201 - an iterator of _Host
        if job.gpus and job.gpus > self.width:
            return
        if not job.gpus:
            keys, start = self.cpus, bisect.bisect_left(self.cpus, (job.cpus,))
        elif job.gpu_memory is None:
            keys, start = self.whole, bisect.bisect_left(self.whole, (job.gpus,))
        else:
            keys = self._memory_order(job.gpus)
            start = bisect.bisect_left(keys, (job.gpu_memory + policy.memory_margin,))
        for n in range(start, len(keys)):
            yield self.by_name[keys[n][-1]]


def _shape(job: QueuedJob, finishes_before_shadow: bool) -> tuple:
    """Everything about a job that decides where it can go (not who or when)."""
    return (job.gpus, job.gpu_memory, job.gpu_types, job.cpus, job.memory, tuple(sorted(job.labels.items())),
            job.hosts, finishes_before_shadow)


def _reserve(job: QueuedJob, caps: dict[str, _Host], policy: Policy) -> tuple[str, tuple[int, ...], float] | None:
    """EASY backfill: when and where the first blocked job will fit as running jobs reach their timeouts.

    Only runs with a timeout have a known end; without one nothing can be
    promised and smaller jobs may go ahead (aging keeps the big job moving up).
    """
    best: tuple[float, str, tuple[int, ...]] | None = None
    for cap in caps.values():
        host = cap.view
        if not host.releases or not host.up or host.drained or _static_check(job, host) \
                or _capacity_check(job, host, policy):
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


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.1f} GiB"
