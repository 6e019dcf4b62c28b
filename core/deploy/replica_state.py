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
