"""``max_parallel``: which waiting children of a sweep must stay queued this cycle, and the words for why.

Pure: membership, limits and the jobs waiting and in flight in, the held
jobs out. A sweep with ``max_parallel: 2`` and one child in flight lets
one more waiting child (the lowest-numbered) be considered by the
scheduler; the rest are held, so however many hosts are free no cycle
places more than the limit.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Member:
    sweep: str  # the sweep's name, as the reason says it
    index: int
    max_parallel: int | None


def held(members: dict[str, Member], waiting: list[str], in_flight: list[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (where, why)}`` for each waiting child past its sweep's free slots."""
    busy: dict[str, int] = {}
    for job_id in in_flight:
        member = members.get(job_id)
        if member is not None:
            busy[member.sweep] = busy.get(member.sweep, 0) + 1
    queued: dict[str, list[tuple[int, str]]] = {}
    for job_id in waiting:
        member = members.get(job_id)
        if member is not None and member.max_parallel is not None:
            queued.setdefault(member.sweep, []).append((member.index, job_id))
    out: dict[str, tuple[str, str]] = {}
    for sweep, children in queued.items():
        limit = members[children[0][1]].max_parallel or 0
        running = busy.get(sweep, 0)
        free = max(0, limit - running)
        for _, job_id in sorted(children)[free:]:
            out[job_id] = (f"sweep {sweep}", f"max_parallel {limit} reached ({running} of its children running); "
                           "waits for one to end" if running >= limit else
                           f"max_parallel {limit}: waits behind its sweep's earlier children ({running} running)")
    return out
