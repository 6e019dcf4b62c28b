"""A job waiting in the controller's queue and a run in flight: the jobs service's state, in memory.

Both are rebuilt from the DuckDB file at start (core/jobs/service.py); the
file is written first, so losing this state to a crash loses nothing.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from mlfleet.core.base.models import JobSpec, RunStatus, ServiceStatus
from mlfleet.core.jobs import scheduler


@dataclass
class PendingJob:
    job_id: str
    spec: JobSpec
    priority: int
    submitted: float
    attempt: int
    max_attempts: int
    owner: str
    code_hash: str | None = None
    failed_hosts: tuple[str, ...] = ()


@dataclass
class ActiveRun:
    job_id: str
    run_id: str
    host: str
    state: str  # dispatched | preparing | running
    offset: int
    lines: int
    attempt: int
    max_attempts: int
    spec: JobSpec
    gpus: list[int]
    owner: str
    cancel_requested_by: str | None = None
    code_hash: str | None = None
    started_at: float | None = None
    failed_hosts: tuple[str, ...] = ()
    launched: bool = False
    finished_status: RunStatus | None = field(default=None)
    node_lineage: bool = False  # the agent's lineage.json is merged into the run's lineage
    lineage_asked: float = 0.0
    service: ServiceStatus | None = None  # a supervised server's latest state from its agent (deployments)
    waiting: str = ""  # why a launched run has not started, in its agent's words (Slurm's pending reason)


def queued(job: PendingJob, warm_hosts: frozenset[str] = frozenset(),
           residency: scheduler.Residency | None = None) -> scheduler.QueuedJob:
    return queued_job(job.job_id, job.spec, job.submitted, job.owner, job.failed_hosts, warm_hosts, residency,
                      priority=job.priority)  # the job's priority now: 'jobs priority' may have changed the spec's


def queued_job(job_id: str, spec: JobSpec, submitted: float, owner: str,
               failed_hosts: tuple[str, ...] = (), warm_hosts: frozenset[str] = frozenset(),
               residency: scheduler.Residency | None = None, priority: int | None = None) -> scheduler.QueuedJob:
    """The scheduler's view of a job; ``residency`` is the policy's, asked again each cycle (policy_limits.py)."""
    r = spec.resources
    return scheduler.QueuedJob(
        job_id=job_id, priority=spec.priority if priority is None else priority, submitted=submitted, gpus=r.gpus,
        gpu_memory=int(r.gpu_memory) if r.gpu_memory is not None else None,
        gpu_types=tuple(r.gpu_types), cpus=r.cpus, memory=int(r.memory) if r.memory is not None else None,
        labels=dict(spec.constraints.labels), hosts=tuple(spec.constraints.hosts), project=spec.project,
        owner=owner, timeout=float(spec.timeout) if spec.timeout else None, avoid_hosts=failed_hosts,
        warm_hosts=warm_hosts, residency=residency)


def failure_words(status: RunStatus) -> str:
    if status.reason == "timeout":
        return "hit its timeout"
    if status.reason == "failed-to-start":
        return f"failed to start: {status.message}"
    if status.reason == "lost":
        return f"was lost: {status.message}"
    if status.signal:
        try:
            name = signal.Signals(status.signal).name
        except ValueError:
            name = f"signal {status.signal}"
        return f"was killed by {name}" + (f": {status.message}" if status.message else "")
    return f"exited {status.exit_code}" + (f": {status.message}" if status.message else "")  # the agent's why
