"""The order a cycle takes waiting jobs in: aged priority, fair share, look-alike jobs together."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from mlfleet.core.jobs.scheduling.views import Policy, QueuedJob, Reason

if TYPE_CHECKING:
    from mlfleet.core.jobs.scheduler import Allowed

def _aged_priority(job: QueuedJob, now: float, policy: Policy) -> float:
    """Priority plus what waiting earned; the fair-share penalty is applied per project in schedule()."""
    waited = now - job.submitted
    waited_h = (0.0 if waited < 0.0 else waited) / 3600.0  # max(waited, 0.0), without a call per job
    return job.priority + policy.aging_per_hour * waited_h


class Shape:
    """A job shape (everything that decides where a job can go) and what the cycle learned about it.

    Capacity only shrinks during a cycle, so a shape that fitted nowhere fits
    nowhere later either: its reasons are kept and given to every later job
    of the shape, which keeps long queues of look-alike jobs cheap.
    """

    __slots__ = ("allowed", "hopeless")

    def __init__(self) -> None:
        self.allowed: Allowed | None = None  # the static checks, made when a job of the shape first asks
        self.hopeless: dict[bool, list[Reason]] = {}  # by "finishes before the shadow": why it fits nowhere


class _Run:
    """A project's waiting jobs of one shape and one timeout, best last (so taking one is a pop)."""

    __slots__ = ("project", "timeout", "shape", "jobs")

    def __init__(self, project: str, timeout: float | None, shape: Shape) -> None:
        self.project, self.timeout, self.shape = project, timeout, shape
        self.jobs: list[tuple[float, float, str, QueuedJob]] = []  # (-priority, submitted, job id, job)


class JobQueue:
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
        shapes: dict[tuple, Shape] = {}
        for job in queue:  # runs for every waiting job: flat tuples, nothing more
            key = _run_key(job)
            run = runs.get(key)
            if run is None:
                run = runs[key] = _Run(job.project, job.timeout, shapes.setdefault(key[2:], Shape()))
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

    def drop_jobs(self, run: _Run) -> list[QueuedJob]:
        """As :meth:`drop`, the jobs themselves (when each needs a look of its own: quotas)."""
        jobs = [entry[3] for entry in run.jobs]
        self.drop(run)
        return jobs

    def _close(self, project: str, heads: list) -> None:
        heapq.heappop(heads)
        if not heads:
            del self._heads[project]


def _run_key(job: QueuedJob) -> tuple:
    """The job's project and timeout, then its shape: everything that decides where it can go.

    The owner is not part of it: a quota is checked per job (schedule()),
    never cached for a shape, so one user's cap never answers for another's job.

    Jobs with the same key get the same answer in a cycle (see JobQueue); one
    flat tuple, because it is built for every waiting job.
    """
    labels = tuple(sorted(job.labels.items())) if job.labels else ()
    return (job.project, job.timeout, job.gpus, job.gpu_memory, job.gpu_types, job.cpus, job.memory, labels,
            job.hosts, job.residency)
