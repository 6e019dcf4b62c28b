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
over the queue to sort it into runs of look-alike jobs (:class:`_Queue`),
then work per placement and per job shape, not per waiting job: once a
shape is known to fit nowhere, every later job of it gets the same reasons
(:class:`_Shape`). Hosts wait in best-fit orders (:class:`_BestFitIndex`),
so a job looks only at hosts big enough for it.
"""

from __future__ import annotations

import bisect
import fnmatch
import heapq
import itertools
import math
import re
from collections.abc import Iterator
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

@dataclass(slots=True)
class _Gpu:
    view: GpuView
    free: int | None  # usable memory now (measured free - reservations), None when unknown
    whole_free: bool  # no process, nothing reserved, not held
    busy: bool  # held by an mlfleet job, or utilised over the threshold (in words: _busy_words, when needed)
    held: bool  # held whole by an mlfleet job
    excluded: str | None  # why it can never be used now


@dataclass(slots=True)
class _Host:
    view: HostView
    gpus: dict[int, _Gpu]
    cpus: float
    memory: int
    open_gpus: int = 0  # GPUs neither excluded nor busy: an upper bound on what any job can get here
    whole_gpus: int = 0  # open GPUs with nothing on them (what a whole-GPU job can take)
    open: list[tuple[int, int, _Gpu]] = field(default_factory=list)  # (free memory, index, GPU), tightest first
    totals: tuple = ()  # all that _summary_reason reads, so hosts alike share one summary

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


def _gpu_state(gpu: GpuView, held: bool, policy: Policy) -> _Gpu:
    excluded = None
    if gpu.ecc_errors:
        excluded = f"GPU {gpu.index} excluded: {gpu.ecc_errors} uncorrected ECC errors"
    elif gpu.throttle_reasons and (bad := sorted(set(gpu.throttle_reasons) & EXCLUDING_THROTTLE)):
        excluded = f"GPU {gpu.index} excluded: throttled ({', '.join(bad)})"
    busy = held or (gpu.utilization is not None and gpu.utilization > policy.busy_utilization)
    free = None if gpu.memory_free is None else gpu.memory_free - gpu.reserved_memory
    whole = not held and not gpu.processes and gpu.reserved_memory == 0
    return _Gpu(gpu, free, whole, busy, held, excluded)


def _busy_words(gpu: _Gpu) -> str:
    """Why a busy GPU is busy (built only for reasons: most busy GPUs are never talked about)."""
    view = gpu.view
    if gpu.held:
        return f"GPU {view.index} held by an mlfleet job"
    return f"GPU {view.index} busy: {view.utilization:.0f}% util{_by_whom(view)}"


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
        return [], Reason(name, "memory", f"{_gib(max(cap.memory, 0))} memory free (need {_gib(job.memory)})")
    return chosen, None


def _gpu_candidates(job: QueuedJob, cap: _Host, policy: Policy,
                    blocked: frozenset[int]) -> list[tuple[int, int, _Gpu]]:
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


def _gpu_reason(job: QueuedJob, cap: _Host, policy: Policy, blocked: frozenset[int], found: int) -> Reason:
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
            problems.append(_busy_words(gpu))
        elif job.gpu_memory is None or gpu.free is None:
            unknown_memory = unknown_memory or gpu.free is None
            if not gpu.whole_free:
                problems.append(f"GPU {view.index} in use{_by_whom(view)}")
        elif gpu.free < job.gpu_memory + policy.memory_margin:
            problems.append(f"GPU {view.index} has {_gib(max(gpu.free, 0))} free")
    total = sum(1 for g in cap.gpus.values() if type_matches(job.gpu_types, g.view.name)) if job.gpu_types \
        else len(cap.gpus)
    detail = f"; {problems[0]}" if problems else ""
    if len(problems) > 1:
        detail += f" (+{len(problems) - 1} more)"
    counted = " (memory n/a: counting whole GPUs)" if unknown_memory else ""
    check = "gpu-memory" if job.gpu_memory and any("free" in p for p in problems) else "gpu-count"
    have = f"have {_gib(job.gpu_memory)} free" if job.gpu_memory and not unknown_memory else "free"
    return Reason(cap.view.name, check, f"{found} of {total} GPUs {have} (need {job.gpus}){counted}{detail}")


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


# ---------------------------------------------------------------- ordering

def _aged_priority(job: QueuedJob, now: float, policy: Policy) -> float:
    """Priority plus what waiting earned; the fair-share penalty is applied per project in schedule()."""
    waited = now - job.submitted
    waited_h = (0.0 if waited < 0.0 else waited) / 3600.0  # max(waited, 0.0), without a call per job
    return job.priority + policy.aging_per_hour * waited_h


class _Shape:
    """A job shape (everything that decides where a job can go) and what the cycle learned about it.

    Capacity only shrinks during a cycle, so a shape that fitted nowhere fits
    nowhere later either: its reasons are kept and given to every later job
    of the shape, which keeps long queues of look-alike jobs cheap.
    """

    __slots__ = ("allowed", "hopeless")

    def __init__(self) -> None:
        self.allowed: _Allowed | None = None  # the static checks, made when a job of the shape first asks
        self.hopeless: dict[bool, list[Reason]] = {}  # by "finishes before the shadow": why it fits nowhere


class _Run:
    """A project's waiting jobs of one shape and one timeout, best last (so taking one is a pop)."""

    __slots__ = ("project", "timeout", "shape", "jobs")

    def __init__(self, project: str, timeout: float | None, shape: _Shape) -> None:
        self.project, self.timeout, self.shape = project, timeout, shape
        self.jobs: list[tuple[float, float, str, QueuedJob]] = []  # (-priority, submitted, job id, job)


class _Queue:
    """Waiting jobs in the order the cycle takes them, with look-alike jobs kept together.

    Effective priority is the aged priority less the project's fair-share
    penalty, and the penalty is the same for all of a project's jobs: each
    project is ordered on its own and each step takes the best project head.
    Inside a project, jobs of one shape and timeout form a run; the project's
    head is the best run head (a heap of runs). Jobs of a shape that fits
    nowhere leave nothing behind, so a whole run of them can be answered in
    one step instead of job by job: that is what keeps a 10,000-job queue cheap.
    """

    def __init__(self, queue: list[QueuedJob], now: float, policy: Policy) -> None:
        runs: dict[tuple, _Run] = {}
        shapes: dict[tuple, _Shape] = {}
        for job in queue:  # runs for every waiting job: flat tuples, nothing more
            key = _run_key(job)
            run = runs.get(key)
            if run is None:
                run = runs[key] = _Run(job.project, job.timeout, shapes.setdefault(key[2:], _Shape()))
            run.jobs.append((-_aged_priority(job, now, policy), job.submitted, job.job_id, job))
        self._runs = list(runs.values())
        self._heads: dict[str, list[tuple[float, float, str, int]]] = {}  # per project: run heads, and the run
        for number, run in enumerate(self._runs):
            run.jobs.sort(reverse=True)
            self._heads.setdefault(run.project, []).append(run.jobs[-1][:3] + (number,))
        for heads in self._heads.values():
            heapq.heapify(heads)

    def next_run(self, penalty: dict[str, float]) -> _Run | None:
        """The run holding the best waiting job, fair-share penalty included (None: queue empty)."""
        best, best_key = None, None
        for project, heads in self._heads.items():
            neg_base, submitted, job_id, number = heads[0]
            candidate = (neg_base + penalty[project], submitted, job_id)
            if best_key is None or candidate < best_key:
                best, best_key = number, candidate
        return None if best is None else self._runs[best]

    def pop(self, run: _Run) -> QueuedJob:
        """Take the head job of the run next_run() just gave."""
        job = run.jobs.pop()[3]
        heads = self._heads[run.project]
        if run.jobs:
            neg_base, submitted, job_id, _ = run.jobs[-1]
            heapq.heapreplace(heads, (neg_base, submitted, job_id, heads[0][3]))
        else:
            self._close(run.project, heads)
        return job

    def drop(self, run: _Run) -> list[str]:
        """Take every job left in the run next_run() just gave; their ids."""
        ids = [entry[2] for entry in run.jobs]
        run.jobs = []
        self._close(run.project, self._heads[run.project])
        return ids

    def _close(self, project: str, heads: list) -> None:
        heapq.heappop(heads)
        if not heads:
            del self._heads[project]


# ---------------------------------------------------------------- the cycle

def schedule(hosts: list[HostView], queue: list[QueuedJob], policy: Policy = Policy(), now: float = 0.0,
             usage: dict[str, int] | None = None) -> Decision:
    """Place what fits, in order of effective priority; say why the rest wait.

    ``usage`` is GPUs held per project by running jobs (for fair share);
    ``now`` only ages waiting jobs. See :class:`_Queue` for the order
    (O(n log n)) and why look-alike jobs are kept together.
    """
    decision = Decision()
    caps = {h.name: _capacity(h, policy) for h in sorted(hosts, key=lambda h: h.name)}
    total_gpus = max(sum(len(h.gpus) for h in hosts), 1)
    held = dict(usage or {})
    line = _Queue(queue, now, policy)
    penalty = {job.project: policy.fair_share_weight * held.get(job.project, 0) / total_gpus for job in queue}

    reserved: dict[str, frozenset[int]] = {}
    shadow = float("inf")
    index = _BestFitIndex(list(caps.values()))
    host_groups = _look_alike_hosts(caps)
    while (run := line.next_run(penalty)) is not None:
        finishes_before_shadow = run.timeout is not None and now + run.timeout <= shadow
        shape = run.shape
        reasons = shape.hopeless.get(finishes_before_shadow)
        if reasons is not None:
            # The rest of the run gets the same answer, unless a reservation still to come may
            # move the shadow and with it which side of it these jobs' timeouts fall on.
            settled = run.timeout is None or shadow != float("inf")
            decision.waiting.update(dict.fromkeys(line.drop(run) if settled else [line.pop(run).job_id], reasons))
            continue
        job = line.pop(run)
        if shape.allowed is None:
            shape.allowed = _allowed_hosts(job, host_groups, index.caps, policy)
        blocked = {} if finishes_before_shadow else reserved
        best, tried, reasons = _best_host(job, index, shape.allowed.names, blocked, policy)
        if best is None:
            reasons = _waiting_reasons(job, policy, shape.allowed, tried, reasons, reserved)
            decision.waiting[job.job_id] = reasons
            if not job.avoid_hosts:
                shape.hopeless[finishes_before_shadow] = reasons
            if policy.backfill and decision.reservation is None and job.gpus:
                plan = _reserve(job, caps, policy)
                if plan is not None:
                    host, gpus, start = plan
                    decision.reservation = (job.job_id, host, gpus, start)
                    reserved[host] = frozenset(gpus)
                    shadow = start
            continue
        cap, chosen = best
        _take(job, cap, chosen)
        index.moved(cap)
        held[job.project] = held.get(job.project, 0) + job.gpus
        penalty[job.project] = policy.fair_share_weight * held[job.project] / total_gpus
        decision.placements.append(Placement(job.job_id, cap.view.name, tuple(sorted(chosen))))
    return decision


def _look_alike_hosts(caps: dict[str, _Host]) -> list[list[_Host]]:
    """Hosts that answer every static question alike (same labels, sizes and GPU models), by name."""
    groups: dict[tuple, list[_Host]] = {}
    for cap in caps.values():
        v = cap.view
        signature = (v.up, tuple(sorted(v.labels.items())), v.cpu_count, v.memory_total,
                     tuple((g.name, g.memory_total) for g in v.gpus))
        groups.setdefault(signature, []).append(cap)
    return list(groups.values())


@dataclass
class _Allowed:
    """Where a job shape may go at all: the hosts (their names, and the hosts by name), and why not elsewhere."""

    names: set[str]
    hosts: list[_Host]
    refusals: list[Reason]


def _allowed_hosts(job: QueuedJob, look_alikes: list[list[_Host]], caps: list[_Host], policy: Policy) -> _Allowed:
    """The static checks, once per job shape and (without constraints.hosts) once per look-alike group."""
    names: set[str] = set()
    refusals: list[Reason] = []
    for group in look_alikes:
        refused_here: dict[tuple[str, str], list[str]] = {}
        for cap in group if job.hosts else group[:1]:
            static = _static_check(job, cap.view) or _capacity_check(job, cap.view, policy)
            hosts = [cap.view.name] if job.hosts else [c.view.name for c in group]
            if static is None:
                names.update(hosts)
            else:
                refused_here.setdefault((static.check, static.message), []).extend(hosts)
        refusals.extend(_reasons_by_words(refused_here, _GROUP_FROM))
    return _Allowed(names, [cap for cap in caps if cap.view.name in names], refusals)


def _best_host(job: QueuedJob, index: _BestFitIndex, allowed: set[str], reserved: dict[str, frozenset[int]],
               policy: Policy) -> tuple[tuple[_Host, list[int]] | None, set[str], list[Reason]]:
    """Best fit, cheaply: the first host that fits in the index's order (fewest GPUs left first).

    Returns the host and GPUs (or None), the hosts looked at in detail and
    why each of them said no. Hosts where the job failed before are kept
    as a fallback, used only when nothing else fits.
    """
    tried: set[str] = set()
    reasons: list[Reason] = []
    fallback = None
    for cap in index.walk(job, policy):
        name = cap.view.name
        if name not in allowed or _cannot_fit_now(job, cap, policy):
            continue
        tried.add(name)
        chosen, reason = _fit(job, cap, policy, reserved.get(name, _NOTHING), capacity_checked=True)
        if reason is not None:
            reasons.append(reason)
        elif name in job.avoid_hosts:
            fallback = fallback or (cap, chosen)
        else:
            return (cap, chosen), tried, reasons
    return fallback, tried, reasons


_NOTHING: frozenset[int] = frozenset()


def _waiting_reasons(job: QueuedJob, policy: Policy, allowed: _Allowed, tried: set[str], found: list[Reason],
                     reserved: dict[str, frozenset[int]]) -> list[Reason]:
    """Why nothing could take the job: what the hosts looked at said, then words for every other host.

    The first few other hosts get a GPU-by-GPU look; the rest are told from
    their totals and grouped by words, which matters on a big fleet: each
    shape that fits nowhere is answered for every host once per cycle.
    """
    reasons = list(found)
    rest = [cap for cap in allowed.hosts if cap.view.name not in tried] if tried else allowed.hosts
    for cap in rest[:_DETAILED_REASONS]:
        reasons.append(_fit(job, cap, policy, reserved.get(cap.view.name, _NOTHING), capacity_checked=True)[1]
                       or _summary_reason(job, cap))
    reasons.extend(_summaries(job, rest[_DETAILED_REASONS:]))
    reasons.extend(allowed.refusals)
    reasons.sort(key=lambda r: r.host)
    return reasons


# ----------------------------------------------------------------- reasons

_DETAILED_REASONS = 20  # hosts past this many get a reason from their totals, not a GPU-by-GPU look
_GROUP_FROM = 4  # this many hosts failing alike are reported as one group


def _reasons_by_words(by_words: dict[tuple[str, str], list[str]], at_least: int) -> list[Reason]:
    """Hosts that fail for the same words become one reason naming how many (and which)."""
    out = []
    for (check, message), hosts in by_words.items():
        if len(hosts) >= at_least and len(hosts) > 1:
            out.append(Reason(f"{len(hosts)} hosts ({hosts[0]}, ...)", check, message, tuple(hosts)))
        else:
            out.extend(Reason(h, check, message) for h in hosts)
    return out


def _summaries(job: QueuedJob, caps: list[_Host]) -> list[Reason]:
    """``_summary_reason`` for many hosts, grouped by words (any two hosts alike make a group).

    The words depend only on a few totals of the host: hosts are first
    grouped by those totals, then each group is given its words once. No
    Reason per host, one per distinct answer.
    """
    by_totals: dict[tuple, list[_Host]] = {}
    for cap in caps:
        group = by_totals.get(cap.totals)
        if group is None:
            group = by_totals[cap.totals] = []
        group.append(cap)
    by_words: dict[tuple[str, str], list[list[_Host]]] = {}
    for group in by_totals.values():
        reason = _summary_reason(job, group[0])
        by_words.setdefault((reason.check, reason.message), []).append(group)
    names = {words: [cap.view.name for group in groups for cap in group] for words, groups in by_words.items()}
    for words, groups in by_words.items():
        if len(groups) > 1:  # hosts of several groups: back in the order they came, by name
            names[words].sort()
    return _reasons_by_words(names, at_least=1)


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


# ------------------------------------------------------- best-fit index

class _BestFitIndex:
    """Hosts kept sorted by what they have left, so a job looks only at hosts big enough for it.

    Orders: whole free GPUs (for whole-GPU jobs); free CPUs (for jobs without
    GPUs); and for jobs that share GPUs by memory, one order per GPU count n
    on the n-th largest free memory (so a job starts at the tightest host with
    n roomy GPUs). Each is built the first time a job needs it, so a cycle
    keeps up to date only the orders its queue uses; a placement then moves
    the host in each of them.
    """

    def __init__(self, caps: list[_Host]) -> None:
        self.caps = caps  # by name: ties in every order go to the first name
        self.position = {cap.view.name: position for position, cap in enumerate(caps)}
        self.width = max((len(c.gpus) for c in caps), default=0)
        self.whole: _Order | None = None
        self.cpus: _Order | None = None
        self.memory: dict[int, _Order] = {}  # by GPU count n

    def walk(self, job: QueuedJob, policy: Policy) -> Iterator[_Host]:
        """Hosts that may hold the job, tightest first."""
        if job.gpus and job.gpus > self.width:
            return iter(())
        if not job.gpus:
            if self.cpus is None:
                self.cpus = _Order(self.caps, [cap.cpus for cap in self.caps], whole_numbers=False)  # fractions
            return self.cpus.from_least(job.cpus)
        if job.gpu_memory is None:
            if self.whole is None:
                self.whole = _Order(self.caps, [cap.whole_gpus for cap in self.caps], whole_numbers=True)
            return self.whole.from_least(job.gpus)
        order = self.memory.get(job.gpus)
        if order is None:
            order = self.memory[job.gpus] = _Order(self.caps, [cap.nth_free(job.gpus) for cap in self.caps],
                                                   whole_numbers=True)
        return order.from_least(job.gpu_memory + policy.memory_margin)

    def moved(self, cap: _Host) -> None:
        """The host's capacity changed: move it in every order there is."""
        position = self.position[cap.view.name]
        if self.whole is not None:
            self.whole.move(position, cap.whole_gpus)
        if self.cpus is not None:
            self.cpus.move(position, cap.cpus)
        for n, order in self.memory.items():
            order.move(position, cap.nth_free(n))


class _Order:
    """Hosts sorted by one measure of what they have left, then by name; and each host's measure.

    A key is ``measure * hosts + position by name`` when the measure is a
    whole number: one int compares several times faster than a tuple, and a
    cycle moves hosts thousands of times. Otherwise it is the tuple
    ``(measure, position)``.
    """

    def __init__(self, caps: list[_Host], values: list[float], whole_numbers: bool) -> None:
        self.caps = caps
        self.scale = len(caps) if whole_numbers else 0
        self.values = values  # each host's measure, by position
        self.keys = sorted(self._key(value, position) for position, value in enumerate(values))

    def _key(self, value: float, position: int) -> object:
        return value * self.scale + position if self.scale else (value, position)

    def from_least(self, least: float) -> Iterator[_Host]:
        """Hosts whose measure is at least ``least``, smallest first."""
        keys, caps, scale = self.keys, self.caps, self.scale
        if scale:
            whole = least if isinstance(least, int) else math.ceil(least)  # ceil() of an int costs a method lookup
            start = bisect.bisect_left(keys, whole * scale)
        else:
            start = bisect.bisect_left(keys, (least,))
        for n in range(start, len(keys)):
            yield caps[keys[n] % scale if scale else keys[n][1]]

    def move(self, position: int, value: float) -> None:
        """The host at ``position`` (by name) now measures ``value``."""
        old = self.values[position]
        if value != old:
            del self.keys[bisect.bisect_left(self.keys, self._key(old, position))]
            bisect.insort(self.keys, self._key(value, position))
            self.values[position] = value


def _run_key(job: QueuedJob) -> tuple:
    """The job's project and timeout, then its shape: everything that decides where it can go.

    Jobs with the same key get the same answer in a cycle (see _Queue); one
    flat tuple, because it is built for every waiting job.
    """
    labels = tuple(sorted(job.labels.items())) if job.labels else ()
    return (job.project, job.timeout, job.gpus, job.gpu_memory, job.gpu_types, job.cpus, job.memory, labels,
            job.hosts)


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
