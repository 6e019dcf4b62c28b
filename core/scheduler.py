"""Placement: which waiting job goes to which host and GPUs, and why the rest wait.

A pure function over plain data: no I/O, no clock, no globals. The
controller builds a :class:`HostView` per host from live telemetry and the
runs it knows, hands them with the queue to :func:`schedule`, and acts on
the answer. Every job left waiting gets one :class:`Reason` per host, in
words a user can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GpuView:
    index: int
    name: str | None = None
    memory_total: int | None = None
    memory_free: int | None = None
    utilization: float | None = None


@dataclass(frozen=True)
class HostView:
    name: str
    up: bool
    labels: dict[str, str] = field(default_factory=dict)
    cpu_count: float = 0
    memory_total: int = 0
    gpus: tuple[GpuView, ...] = ()
    gpus_in_use: frozenset[int] = frozenset()  # held by mlfleet runs (reserved from dispatch on)
    cpus_in_use: float = 0
    memory_in_use: int = 0


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
    labels: dict[str, str] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Placement:
    job_id: str
    host: str
    gpu_indices: tuple[int, ...]


@dataclass(frozen=True)
class Reason:
    host: str
    check: str  # host-down | constraint | gpu-count | gpu-type | gpu-memory | cpus | memory
    message: str


@dataclass
class Decision:
    placements: list[Placement] = field(default_factory=list)
    waiting: dict[str, list[Reason]] = field(default_factory=dict)

    def short_reason(self, job_id: str) -> str:
        """One line for ``jobs list``: the most common failed check."""
        reasons = self.waiting.get(job_id, [])
        if not reasons:
            return "no hosts"
        if len(reasons) == 1:
            return f"{reasons[0].host}: {reasons[0].message}"
        checks: dict[str, int] = {}
        for r in reasons:
            checks[r.check] = checks.get(r.check, 0) + 1
        top = max(checks, key=lambda c: checks[c])
        example = next(r for r in reasons if r.check == top)
        return f"{checks[top]} of {len(reasons)} hosts: {example.message}"


@dataclass
class _Capacity:
    free_gpus: list[GpuView]
    cpus: float
    memory: int


def schedule(hosts: list[HostView], queue: list[QueuedJob]) -> Decision:
    """Place jobs by priority (then age); later jobs see what earlier ones took."""
    decision = Decision()
    capacity = {
        h.name: _Capacity(
            free_gpus=[g for g in h.gpus if g.index not in h.gpus_in_use],
            cpus=h.cpu_count - h.cpus_in_use,
            memory=h.memory_total - h.memory_in_use,
        )
        for h in hosts
    }
    for job in sorted(queue, key=lambda j: (-j.priority, j.submitted, j.job_id)):
        reasons: list[Reason] = []
        best: tuple[tuple[float, ...], HostView, list[int]] | None = None
        for host in sorted(hosts, key=lambda h: h.name):
            cap = capacity[host.name]
            reason = _check(job, host, cap)
            if reason is not None:
                reasons.append(reason)
                continue
            chosen = _pick_gpus(job, cap.free_gpus)
            score = _fit_score(job, cap, chosen)
            if best is None or score < best[0]:
                best = (score, host, chosen)
        if best is None:
            decision.waiting[job.job_id] = reasons
            continue
        _, host, chosen = best
        cap = capacity[host.name]
        cap.free_gpus = [g for g in cap.free_gpus if g.index not in chosen]
        cap.cpus -= job.cpus
        cap.memory -= job.memory or 0
        decision.placements.append(Placement(job.job_id, host.name, tuple(sorted(chosen))))
    return decision


def _fit_score(job: QueuedJob, cap: _Capacity, chosen: list[int]) -> tuple[float, ...]:
    """Smaller is a tighter fit: leave big GPUs and big hosts for the jobs that need them.

    GPU jobs go where the chosen GPUs have the least free memory, then where
    the fewest GPUs stay free; others where the fewest CPUs stay free.
    Ties keep host-name order (the sort is stable on the caller's side).
    """
    if job.gpus:
        memory = sum(g.memory_free or 0 for g in cap.free_gpus if g.index in chosen)
        return (float(memory), float(len(cap.free_gpus) - len(chosen)))
    return (0.0, cap.cpus - job.cpus)


def _check(job: QueuedJob, host: HostView, cap: _Capacity) -> Reason | None:
    if job.hosts and host.name not in job.hosts:
        return Reason(host.name, "constraint", f"not in constraints.hosts ({', '.join(job.hosts)})")
    for key, wanted in job.labels.items():
        have = host.labels.get(key)
        if have != wanted:
            return Reason(host.name, "constraint", f"label {key}={have or '(none)'} (need {wanted})")
    if not host.up:
        return Reason(host.name, "host-down", "host is not reachable")
    if job.gpus:
        if not host.gpus:
            return Reason(host.name, "gpu-count", f"has no GPUs (need {job.gpus})")
        typed = [g for g in cap.free_gpus if _type_ok(job, g)]
        if job.gpu_types and not any(_type_ok(job, g) for g in host.gpus):
            kinds = sorted({g.name or "unknown" for g in host.gpus})
            return Reason(host.name, "gpu-type", f"GPU type {', '.join(kinds)} (need {' or '.join(job.gpu_types)})")
        roomy = [g for g in typed if _memory_ok(job, g)]
        if len(roomy) < job.gpus:
            if len(typed) >= job.gpus:
                return Reason(host.name, "gpu-memory",
                              f"{len(roomy)} of {len(host.gpus)} GPUs have {_gib(job.gpu_memory)} free (need {job.gpus})")
            return Reason(host.name, "gpu-count", f"{len(typed)} of {len(host.gpus)} GPUs free (need {job.gpus})")
    if job.cpus and cap.cpus < job.cpus:
        return Reason(host.name, "cpus", f"{max(cap.cpus, 0):g} CPUs free (need {job.cpus:g})")
    if job.memory and cap.memory < job.memory:
        return Reason(host.name, "memory", f"{_gib(max(cap.memory, 0))} memory free (need {_gib(job.memory)})")
    return None


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _type_ok(job: QueuedJob, gpu: GpuView) -> bool:
    """``A100`` matches "NVIDIA A100-SXM4-80GB" but ``A10`` does not; ``RTX 4090`` matches by whole words."""
    if not job.gpu_types:
        return True
    name = _words(gpu.name or "")
    for wanted in job.gpu_types:
        words = _words(wanted)
        if words and any(name[i:i + len(words)] == words for i in range(len(name) - len(words) + 1)):
            return True
    return False


def _memory_ok(job: QueuedJob, gpu: GpuView) -> bool:
    if job.gpu_memory is None or gpu.memory_free is None:
        return True
    return gpu.memory_free >= job.gpu_memory


def _pick_gpus(job: QueuedJob, free: list[GpuView]) -> list[int]:
    """Best fit: the GPUs with the least free memory that still fit, to keep big holes for big jobs."""
    fitting = [g for g in free if _type_ok(job, g) and _memory_ok(job, g)]
    fitting.sort(key=lambda g: (g.memory_free if g.memory_free is not None else 1 << 62, g.index))
    return [g.index for g in fitting[: job.gpus]]


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1024**3:.1f} GiB"
