"""What one replica is right now, from its row and its job's facts: the planner's ReplicaView, and what show prints.

Pure: the service gathers the facts (the jobs queue, the runs in flight
with their ServiceStatus, the job's state in the file) and this decides
the state. A job that is queued is ``pending``; one in flight is
``starting`` until its agent reports the server's health, then whatever
the agent says; a job that has ended (or is gone from the file) is
``gone``, whatever its server last said.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from mlfleet.core.base.models import ServiceStatus
from mlfleet.core.deploy.rollout import ReplicaView


@dataclass(frozen=True)
class JobFacts:
    """Where a replica's job is: queued, in flight (with its run, host and server status), or ended."""

    where: str  # "pending" | "active" | "ended"
    run_id: str | None = None
    host: str | None = None
    service: ServiceStatus | None = None


def state_of(facts: JobFacts) -> str:
    if facts.where == "pending":
        return "pending"
    if facts.where == "active":
        return facts.service.health if facts.service is not None else "starting"
    return "gone"


def view_of(row: dict[str, Any], facts: JobFacts, revision_of_row: int,
            unhealthy_since: float | None = None) -> ReplicaView:
    """The planner sees revisions as versions: a spec change of the same model version is a rollout too."""
    return ReplicaView(replica_id=row["replica_id"], version=revision_of_row, state=state_of(facts),  # type: ignore[arg-type]
                       created_at=row["created_at"], healthy_since=row.get("healthy_since"),
                       draining_since=row.get("draining_since"), stopping=bool(row.get("stopping")),
                       unhealthy_since=unhealthy_since)


def carried_health(previous: ServiceStatus | None, current: ServiceStatus | None, carried_since: float | None,
                   now: float, grace: float) -> tuple[ServiceStatus | None, float | None]:
    """A healthy server whose agent restarted says ``starting`` until its first probe: keep it healthy meanwhile.

    Only when the server itself did not restart (same restart count) and for
    at most ``grace`` seconds (a few probe intervals): otherwise the planner
    would take a serving replica for one that never became healthy, and stop
    it (an old version's mid-rollout) or replace it. Returns the status to use
    and since when it is carried (None: not carried).
    """
    if current is None or previous is None or current.health != "starting" or previous.health != "healthy" \
            or current.restarts != previous.restarts:
        return current, None
    since = now if carried_since is None else carried_since
    if now - since >= grace:
        return current, None
    return msgspec.structs.replace(current, health="healthy", port=current.port or previous.port), since


def health_from_file(row: dict[str, Any]) -> ServiceStatus | None:
    """A replica as its row last knew it, for the moments after a controller restart before its agent answers.

    WHY: until the first poll the runs in flight carry no server status, and
    "starting" would make the planner stop an old version's serving replica
    mid-rollout (or replace one past its ready timeout), and the endpoints
    empty, failing every new connection through ``deploy open``. A replica
    that was healthy, is not being drained or stopped, and has a known port is
    taken as healthy for a few probe intervals; its agent's answer replaces
    this as soon as it comes.
    """
    if row.get("healthy_since") is None or row.get("draining_since") is not None or row.get("stopping") \
            or not row.get("port"):
        return None
    return ServiceStatus(port=int(row["port"]), health="healthy")
