"""What the scheduler is given and what it answers: plain, frozen data (no behaviour but wording)."""

from __future__ import annotations

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
    # A cluster engine's queue (Slurm): a placement takes nothing from it, so every job of a tick that could
    # ever fit goes there at once (a sweep's children in one job array), and its own queue holds the rest.
    queues: bool = False


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
    warm_hosts: frozenset[str] = frozenset()  # where the job's environment is built already: wins best-fit ties
    residency: Residency | None = None  # the regions its data may go to (policy.yaml), None: anywhere


@dataclass(frozen=True)
class Residency:
    """Where a job's data may go: hosts whose ``label`` label is one of ``regions`` (``rule`` says which rules)."""

    regions: frozenset[str]
    rule: str  # "policy.yaml:12 (residency[0])": named in every reason
    label: str = "region"


@dataclass(frozen=True)
class Quotas:
    """GPUs each user and project may hold at once (policy.yaml), and what running jobs hold now.

    A cap is (GPUs, the rule in words); a user or project without one has
    no cap. ``held_*`` count the GPUs of jobs already placed, before this
    cycle: the scheduler adds what it places as it goes.
    """

    users: dict[str, tuple[int, str]] = field(default_factory=dict)
    projects: dict[str, tuple[int, str]] = field(default_factory=dict)
    held_by_user: dict[str, int] = field(default_factory=dict)
    held_by_project: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.users or self.projects)

    def blocks(self, job: QueuedJob, by_user: dict[str, int], by_project: dict[str, int]) -> Reason | None:
        """Why placing ``job`` would take its owner or project past a cap (None: it would not)."""
        if not job.gpus:
            return None
        cap = self.users.get(job.owner)
        if cap is not None:
            held = by_user.get(job.owner, 0)
            if held + job.gpus > cap[0]:
                return Reason("quota", "quota", f"{job.owner} holds {held} of {cap[0]} GPUs{_needs(job, held, cap[0])} "
                                                f"({cap[1]})")
        cap = self.projects.get(job.project)
        if cap is not None:
            held = by_project.get(job.project, 0)
            if held + job.gpus > cap[0]:
                return Reason("quota", "quota", f"project {job.project} holds {held} of {cap[0]} GPUs"
                                                f"{_needs(job, held, cap[0])} ({cap[1]})")
        return None


def _needs(job: QueuedJob, held: int, cap: int) -> str:
    """Nothing when the cap is reached; else how many the job wants (more than is left)."""
    return "" if held >= cap else f" and the job needs {job.gpus}"


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
    note: str = ""  # why this host, when more than best fit decided it ("environment already built on gpu-a")


@dataclass(frozen=True)
class Reason:
    host: str  # a host, or "N hosts" for a group that failed alike (see ``hosts``)
    check: str  # constraint | residency | quota | host-down | drained | gpu-count | gpu-type | gpu-memory | cpus | memory
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


def gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / GiB:.1f} GiB"
