"""The rollout planner: what a deployment's replicas are, in; the one next step toward what they should be, out.

Pure (no I/O, no clock, no globals) so that every rule can be proven with
a simulator (tests/test_rollout_plan.py) and a deployment resumes after a
controller crash by planning again from what the database and the jobs say.
The service (core/deploy/service.py) calls :func:`plan` each tick and carries
out the step: submits ``start`` replica jobs of ``target_version``, writes
``draining_since`` for ``drain``, cancels the jobs of ``stop``.

The goal is always the same: ``replicas`` healthy replicas of the target
version and none of any other. The rules on the way:

* A healthy replica that serves (in :func:`endpoints`) is drained only when
  the healthy endpoints left are at least ``replicas - max_unavailable``
  (old ones) or ``replicas`` (surplus target ones); so with
  ``max_unavailable: 0`` an old replica goes only once a new one is healthy.
* Replicas not serving (pending, starting, unhealthy) of another version,
  or surplus ones, are stopped at once: that takes nothing from the endpoints.
* At most ``replicas + max_surge`` replicas exist besides the draining ones.
* During a rollout (target differs from stable), a target replica pending or
  starting longer than ``ready_timeout``, unhealthy, or gone on its own rolls
  the deployment back: ``new_target`` is the stable version and the same
  convergence brings it back to full count, then removes the target's.
* A first apply (no stable version) with no healthy target replica
  ``ready_timeout`` after it started has ``failed``: everything is stopped.
* In steady state a replica gone, pending/starting past ``ready_timeout`` or
  unhealthy past ``ready_timeout`` (``unhealthy_since``; at once when unknown)
  is stopped and one started in its place.

Phases: ``rolling`` (toward a new target; ``stable`` once there),
``rolling_back`` / ``rolled_back`` (target is the stable version again while
``rollout_started_at`` is set: the service clears it after ``rolled_back`` or
``stable``), ``failed``, ``stopped``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Literal

from mlfleet.core.base.units import format_duration

State = Literal["pending", "starting", "healthy", "unhealthy", "gone"]
Phase = Literal["rolling", "stable", "rolling_back", "rolled_back", "failed", "stopped"]


@dataclass(frozen=True)
class ReplicaView:
    """One replica as the service sees it: its job's state and its server's ServiceStatus, made one word.

    ``gone``: its job ended (cancelled by us when ``stopping``, else on its
    own). ``draining_since``: out of the endpoints since then. ``stopping``:
    its cancel was asked for. ``unhealthy_since`` (optional, added to the
    contract): when it last stopped being healthy, the steady state's grace
    before it is replaced (None: replaced at once).
    """

    replica_id: str
    version: int
    state: State
    created_at: float
    healthy_since: float | None
    draining_since: float | None
    stopping: bool
    unhealthy_since: float | None = None


@dataclass(frozen=True)
class DeploymentView:
    """The deployment's wanted state; ``stable_version`` is what served before this rollout (None: a first apply)."""

    target_version: int
    stable_version: int | None
    replicas: int
    max_surge: int
    max_unavailable: int
    ready_timeout: float
    drain: float
    rollout_started_at: float | None
    stopped: bool


@dataclass(frozen=True)
class RolloutStep:
    """What to do now: create ``start`` target replicas, take ``drain`` out of the endpoints, cancel ``stop``."""

    start: int
    drain: tuple[str, ...]
    stop: tuple[str, ...]
    phase: Phase
    new_target: int | None
    reason: str

    @property
    def empty(self) -> bool:
        """Nothing to carry out (the phase and reason may still be news)."""
        return not self.start and not self.drain and not self.stop and self.new_target is None


def endpoints(replicas: Iterable[ReplicaView]) -> list[str]:
    """The replicas new connections may go to: healthy, not draining, not being stopped."""
    return [r.replica_id for r in replicas if r.state == "healthy" and r.draining_since is None and not r.stopping]


def plan(view: DeploymentView, replicas: list[ReplicaView], now: float) -> RolloutStep:
    """The next step from ``replicas`` toward ``view`` (see the module's rules)."""
    live = [r for r in replicas if not r.stopping]
    gone = [r for r in live if r.state == "gone"]
    serving = sorted((r for r in live if r.state != "gone" and r.draining_since is None), key=_order)
    stop = [r.replica_id for r in gone]  # ended on their own: the cancel records the end (a no-op for the job)
    stop += [r.replica_id for r in live if r.state != "gone" and r.draining_since is not None
             and now - r.draining_since >= view.drain]
    waiting = [r for r in live if r.state != "gone" and r.draining_since is not None and r.replica_id not in stop]

    if view.stopped:
        drain = [r.replica_id for r in serving if r.state == "healthy"]
        stop += [r.replica_id for r in serving if r.state != "healthy"]
        left = len(drain) + len(waiting)
        return RolloutStep(0, tuple(drain), tuple(stop), "stopped", None,
                           f"stopping: {left} replica(s) draining" if left else "stopped")

    target = view.target_version
    rolling = view.stable_version is not None and view.stable_version != target
    if rolling:
        bad = _first_bad_target(view, serving + gone, now)
        if bad is not None:
            assert view.stable_version is not None
            back = plan(replace(view, target_version=view.stable_version,
                                rollout_started_at=view.rollout_started_at if view.rollout_started_at is not None else now),
                        replicas, now)
            return replace(back, phase="rolling_back", new_target=view.stable_version,
                           reason=f"rolling back to v{view.stable_version}: {bad}")

    mine = [r for r in serving if r.version == target]
    if view.stable_version is None and view.replicas > 0 and not any(r.state == "healthy" for r in mine):
        began = view.rollout_started_at
        if began is None:
            began = min((r.created_at for r in mine), default=None)
        if began is not None and now - began >= view.ready_timeout:
            drain = [r.replica_id for r in serving if r.state == "healthy"]
            stop += [r.replica_id for r in serving if r.state != "healthy"]
            return RolloutStep(0, tuple(drain), tuple(stop), "failed", None,
                               f"no v{target} replica became healthy in {format_duration(view.ready_timeout)}")

    return _converge(view, serving, stop, now)


def _order(r: ReplicaView) -> tuple[float, str]:
    return (r.created_at, r.replica_id)


def _overdue(view: DeploymentView, r: ReplicaView, now: float) -> bool:
    return r.state in ("pending", "starting") and now - r.created_at >= view.ready_timeout


def _first_bad_target(view: DeploymentView, candidates: list[ReplicaView], now: float) -> str | None:
    """Why the rollout must be abandoned (a target replica that will not serve), or None."""
    for r in sorted(candidates, key=_order):
        if r.version != view.target_version or r.draining_since is not None:
            continue
        who = f"v{r.version} replica {r.replica_id}"
        if r.state == "gone":
            return f"{who} exited"
        if r.state == "unhealthy":
            return f"{who} became unhealthy"
        if _overdue(view, r, now):
            return f"{who} not healthy in {format_duration(view.ready_timeout)} ({r.state})"
    return None


def _converge(view: DeploymentView, serving: list[ReplicaView], stop: list[str], now: float) -> RolloutStep:
    """One step toward ``replicas`` healthy target replicas and no others, within surge and unavailability."""
    target, want = view.target_version, view.replicas
    notes: list[str] = []
    drain: list[str] = []
    mine = [r for r in serving if r.version == target]
    others = [r for r in serving if r.version != target]

    # Target replicas that will not serve: out (steady state replaces them; a rollout has rolled back before this).
    good: list[ReplicaView] = []
    for r in mine:
        if r.state == "unhealthy" and (r.unhealthy_since is None or now - r.unhealthy_since >= view.ready_timeout):
            stop.append(r.replica_id)
            notes.append(f"replacing {r.replica_id} (unhealthy)")
        elif _overdue(view, r, now):
            stop.append(r.replica_id)
            notes.append(f"replacing {r.replica_id} ({r.state} for {format_duration(now - r.created_at)})")
        else:
            good.append(r)

    # Other versions: those not serving go at once; healthy ones as the healthy count allows.
    old_healthy = [r for r in others if r.state == "healthy"]
    stop += [r.replica_id for r in others if r.state != "healthy"]
    healthy_count = sum(r.state == "healthy" for r in good) + len(old_healthy)
    floor = max(want - view.max_unavailable, 0)
    n = min(len(old_healthy), max(0, healthy_count - floor))
    drain += [r.replica_id for r in old_healthy[:n]]  # the oldest first
    healthy_count -= n
    old_left = len(old_healthy) - n

    # Surplus target replicas (a scale down, one that recovered): not-yet-healthy first, newest first.
    surplus = len(good) - want
    if surplus > 0:
        for r in sorted((r for r in good if r.state != "healthy"), key=_order, reverse=True)[:surplus]:
            stop.append(r.replica_id)
            good.remove(r)
            surplus -= 1
        mine_healthy = sorted((r for r in good if r.state == "healthy"), key=_order, reverse=True)
        k = min(surplus, max(0, len(mine_healthy) - want))
        for r in mine_healthy[:k]:
            drain.append(r.replica_id)
            good.remove(r)

    existing = len(good) + old_left
    start = max(0, min(want - len(good), want + view.max_surge - existing))
    mine_healthy_n = sum(r.state == "healthy" for r in good)
    converged = old_left == 0 and len(good) == want and mine_healthy_n == want and not start
    phase = _phase(view, converged)
    if start:
        notes.append(f"starting {start} v{target} replica(s)")
    if drain:
        notes.append(f"draining {', '.join(drain)}")
    if not notes:
        notes.append(f"{mine_healthy_n}/{want} v{target} replicas healthy"
                     + (f", {old_left} of other versions serving" if old_left else ""))
    return RolloutStep(start, tuple(drain), tuple(dict.fromkeys(stop)), phase, None, "; ".join(notes))


def _phase(view: DeploymentView, converged: bool) -> Phase:
    back = view.stable_version == view.target_version and view.rollout_started_at is not None
    if back:
        return "rolled_back" if converged else "rolling_back"
    if view.stable_version == view.target_version:
        return "stable"
    return "stable" if converged else "rolling"
