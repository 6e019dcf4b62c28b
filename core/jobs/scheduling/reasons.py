"""Words for hosts that cannot take a job, grouped so a big fleet gets one line per kind of answer."""

from __future__ import annotations

from mlfleet.core.jobs.scheduling.capacity import HostCapacity
from mlfleet.core.jobs.scheduling.views import QueuedJob, Reason, gib

DETAILED_REASONS = 20  # hosts past this many get a reason from their totals, not a GPU-by-GPU look
GROUP_FROM = 4  # this many hosts failing alike are reported as one group


def reasons_by_words(by_words: dict[tuple[str, str], list[str]], at_least: int) -> list[Reason]:
    """Hosts that fail for the same words become one reason naming how many (and which)."""
    out = []
    for (check, message), hosts in by_words.items():
        if len(hosts) >= at_least and len(hosts) > 1:
            out.append(Reason(f"{len(hosts)} hosts ({hosts[0]}, ...)", check, message, tuple(hosts)))
        else:
            out.extend(Reason(h, check, message) for h in hosts)
    return out


def summaries(job: QueuedJob, caps: list[HostCapacity]) -> list[Reason]:
    """``summary_reason`` for many hosts, grouped by words (any two hosts alike make a group).

    The words depend only on a few totals of the host: hosts are first
    grouped by those totals, then each group is given its words once. No
    Reason per host, one per distinct answer.
    """
    by_totals: dict[tuple, list[HostCapacity]] = {}
    for cap in caps:
        group = by_totals.get(cap.totals)
        if group is None:
            group = by_totals[cap.totals] = []
        group.append(cap)
    by_words: dict[tuple[str, str], list[list[HostCapacity]]] = {}
    for group in by_totals.values():
        reason = summary_reason(job, group[0])
        by_words.setdefault((reason.check, reason.message), []).append(group)
    names = {words: [cap.view.name for group in groups for cap in group] for words, groups in by_words.items()}
    for words, groups in by_words.items():
        if len(groups) > 1:  # hosts of several groups: back in the order they came, by name
            names[words].sort()
    return reasons_by_words(names, at_least=1)


def summary_reason(job: QueuedJob, cap: HostCapacity) -> Reason:
    name = cap.view.name
    if not cap.view.up:
        return Reason(name, "host-down", "host is not reachable")
    if cap.view.drained:
        return Reason(name, "drained", f"host drained ({cap.view.drained})")
    if job.gpus and cap.open_gpus < job.gpus:
        return Reason(name, "gpu-count", f"{cap.open_gpus} of {len(cap.gpus)} GPUs free (need {job.gpus})")
    if job.gpus:
        return Reason(name, "gpu-memory", f"no {job.gpus} GPUs with {gib(job.gpu_memory)} free")
    if job.cpus and cap.cpus < job.cpus:
        return Reason(name, "cpus", f"{max(cap.cpus, 0):g} CPUs free (need {job.cpus:g})")
    return Reason(name, "memory", f"{gib(max(cap.memory, 0))} memory free (need {gib(job.memory)})")
