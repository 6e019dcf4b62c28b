"""The rollout planner driven by a small simulator of replicas: rollouts, rollbacks, scaling, stops, and its invariants.

The simulator plays the service's part (carry out each step as
core/deploy/service.py does: submit, mark draining, cancel; keep the stable
version when the planner says ``stable``) and the fleet's (a replica of a
"good" version is pending one tick, starting one tick, then healthy; a
"broken" one starts forever; an "unplaceable" one stays pending). Every
step is checked against the promises: healthy endpoints never drop below
``replicas - max_unavailable`` while there are enough, never more than
``replicas + max_surge`` replicas besides the draining ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.deploy.rollout import DeploymentView, ReplicaView, RolloutStep, endpoints, plan

TICK = 5.0


@dataclass
class SimReplica:
    replica_id: str
    version: int
    state: str
    created_at: float
    age: int = 0  # ticks since created
    healthy_since: float | None = None
    draining_since: float | None = None
    stopping: bool = False
    unhealthy_since: float | None = None

    def view(self) -> ReplicaView:
        return ReplicaView(self.replica_id, self.version, self.state, self.created_at,  # type: ignore[arg-type]
                           self.healthy_since, self.draining_since, self.stopping, self.unhealthy_since)


@dataclass
class Sim:
    view: DeploymentView
    behaviour: dict[int, str] = field(default_factory=dict)  # version -> good | broken | unplaceable
    replicas: list[SimReplica] = field(default_factory=list)
    now: float = 1000.0
    counter: int = 0
    steps: list[RolloutStep] = field(default_factory=list)
    min_healthy: int | None = None  # the fewest healthy endpoints seen after a step while rolling

    def views(self) -> list[ReplicaView]:
        return [r.view() for r in self.replicas]

    def endpoint_versions(self) -> list[int]:
        ids = set(endpoints(self.views()))
        return sorted(r.version for r in self.replicas if r.replica_id in ids)

    def start_replica(self, version: int) -> None:
        self.counter += 1
        self.replicas.append(SimReplica(f"r{self.counter}", version, "pending", self.now))

    def tick(self) -> RolloutStep:
        """Plan, check the promises, carry the step out, let time pass."""
        before = self.views()
        step = plan(self.view, before, self.now)
        assert plan(self.view, before, self.now) == step  # pure: the same input, the same step
        self.check(step, before)
        self.apply(step)
        self.steps.append(step)
        self.advance()
        return step

    def check(self, step: RolloutStep, before: list[ReplicaView]) -> None:
        v = self.view
        ids = {r.replica_id for r in before}
        assert set(step.drain) <= ids and set(step.stop) <= ids and not set(step.drain) & set(step.stop)
        assert step.start >= 0
        if v.stopped or step.phase == "failed":
            return
        healthy_before = len(endpoints(before))
        after = [replace(r, draining_since=self.now) if r.replica_id in step.drain else
                 replace(r, stopping=True) if r.replica_id in step.stop else r for r in before]
        healthy_after = len(endpoints(after))
        assert healthy_after >= min(v.replicas - v.max_unavailable, healthy_before), (step, before)
        existing = [r for r in after if not r.stopping and r.state != "gone" and r.draining_since is None]
        existing_before = [r for r in before if not r.stopping and r.state != "gone" and r.draining_since is None]
        if step.start:
            assert len(existing) + step.start <= v.replicas + v.max_surge, (step, before)
        assert len(existing) + step.start <= max(v.replicas + v.max_surge, len(existing_before))

    def apply(self, step: RolloutStep) -> None:
        for r in self.replicas:
            if r.replica_id in step.drain:
                r.draining_since = self.now
            if r.replica_id in step.stop:
                r.stopping = True
        if step.new_target is not None:
            self.view = replace(self.view, target_version=step.new_target)
        for _ in range(step.start):
            self.start_replica(self.view.target_version)
        if step.phase == "stable":  # what the service does: this version is now what serves
            self.view = replace(self.view, stable_version=self.view.target_version, rollout_started_at=None)
        elif step.phase == "rolled_back":
            self.view = replace(self.view, rollout_started_at=None)
        if not self.view.stopped and step.phase not in ("failed",):
            healthy = len(endpoints(self.views()))
            self.min_healthy = healthy if self.min_healthy is None else min(self.min_healthy, healthy)

    def advance(self) -> None:
        self.now += TICK
        kept = []
        for r in self.replicas:
            if r.stopping and r.state == "gone":
                continue  # the service recorded its end: no longer a replica
            if r.stopping:
                r.state = "gone"
            else:
                r.age += 1
                kind = self.behaviour.get(r.version, "good")
                if r.state == "pending" and kind != "unplaceable":
                    r.state = "starting"
                elif r.state == "starting" and kind == "good" and r.age >= 2:
                    r.state, r.healthy_since = "healthy", self.now
            kept.append(r)
        self.replicas = kept

    def roll_to(self, version: int) -> None:
        self.view = replace(self.view, target_version=version, rollout_started_at=self.now)

    def run(self, ticks: int = 60) -> None:
        for _ in range(ticks):
            self.tick()

    def settle(self, ticks: int = 60) -> None:
        """Run until nothing is left to do."""
        for _ in range(ticks):
            step = self.tick()
            if step.empty and step.phase in ("stable", "rolled_back", "failed", "stopped"):
                if all(r.state in ("healthy",) and r.draining_since is None for r in self.replicas) or \
                        step.phase in ("failed", "stopped"):
                    return
        raise AssertionError(f"did not settle: {self.steps[-3:]}")


def deployment(replicas: int = 2, surge: int = 1, unavailable: int = 0, timeout: float = 60.0,
               drain: float = 3.0) -> DeploymentView:
    return DeploymentView(target_version=1, stable_version=None, replicas=replicas, max_surge=surge,
                          max_unavailable=unavailable, ready_timeout=timeout, drain=drain,
                          rollout_started_at=1000.0, stopped=False)


def serving_v1(replicas: int = 2, **kw: float) -> Sim:
    sim = Sim(deployment(replicas, **kw))  # type: ignore[arg-type]
    sim.settle()
    assert sim.view.stable_version == 1 and sim.endpoint_versions() == [1] * replicas
    sim.min_healthy = None
    return sim


def test_first_apply_starts_all_replicas_and_becomes_stable() -> None:
    sim = Sim(deployment(3))
    first = sim.tick()
    assert first.start == 3 and first.phase == "rolling"
    sim.settle()
    assert sim.steps[-1].phase == "stable" and sim.endpoint_versions() == [1, 1, 1]


def test_v1_to_v2_with_surge_never_drops_an_endpoint() -> None:
    sim = serving_v1(2, surge=1, unavailable=0)
    sim.roll_to(2)
    sim.settle()
    assert sim.min_healthy == 2
    assert sim.endpoint_versions() == [2, 2] and {r.version for r in sim.replicas} == {2}
    assert sim.view.stable_version == 2
    assert "rolling" in [s.phase for s in sim.steps]


def test_without_surge_one_unavailable_works() -> None:
    sim = serving_v1(2, surge=0, unavailable=1)
    sim.roll_to(2)
    sim.settle()
    assert sim.min_healthy == 1
    assert sim.endpoint_versions() == [2, 2] and {r.version for r in sim.replicas} == {2}


def test_a_broken_version_rolls_back_after_the_ready_timeout_and_v1_keeps_serving() -> None:
    sim = serving_v1(2)
    sim.behaviour[2] = "broken"
    sim.roll_to(2)
    started = sim.now
    sim.settle()
    back = next(s for s in sim.steps if s.new_target is not None)
    assert back.new_target == 1 and back.phase == "rolling_back" and "not healthy in 1m" in back.reason
    assert sim.min_healthy == 2 and sim.endpoint_versions() == [1, 1]
    assert {r.version for r in sim.replicas} == {1} and sim.view.target_version == 1
    assert sim.steps[-1].phase in ("rolled_back", "stable")
    assert "rolled_back" in [s.phase for s in sim.steps]
    assert sim.now - started >= 60


def test_an_unplaceable_version_rolls_back_and_v1_is_untouched() -> None:
    sim = serving_v1(2)
    v1_ids = {r.replica_id for r in sim.replicas}
    sim.behaviour[2] = "unplaceable"
    sim.roll_to(2)
    sim.settle()
    assert any(s.new_target == 1 and "pending" in s.reason for s in sim.steps)
    assert {r.replica_id for r in sim.replicas} == v1_ids  # not one v1 replica was drained or replaced
    assert sim.min_healthy == 2


def test_a_new_replica_failing_mid_rollout_rolls_back_to_full_v1() -> None:
    sim = serving_v1(4, surge=1, unavailable=1)
    sim.roll_to(2)
    for _ in range(30):  # until some old ones were replaced by healthy new ones
        sim.tick()
        if sum(r.version == 1 for r in sim.replicas if r.draining_since is None) <= 2 and \
                sum(r.version == 2 and r.state == "healthy" for r in sim.replicas) >= 2:
            break
    # a v2 replica still starting fails its probes (the agent's starting -> unhealthy): the endpoints are untouched
    bad = next(r for r in sim.replicas if r.version == 2 and r.state == "starting")
    bad.state, bad.unhealthy_since = "unhealthy", sim.now
    assert len(endpoints(sim.views())) == 3
    sim.behaviour[2] = "broken"  # and it stays so
    step = sim.tick()
    assert step.new_target == 1 and step.phase == "rolling_back" and f"{bad.replica_id} became unhealthy" in step.reason
    sim.settle()
    assert sim.min_healthy is not None and sim.min_healthy >= 4 - 1
    assert sim.endpoint_versions() == [1, 1, 1, 1] and {r.version for r in sim.replicas} == {1}


def test_a_replica_exiting_mid_rollout_rolls_back() -> None:
    sim = serving_v1(2)
    sim.roll_to(2)
    sim.tick()
    new = next(r for r in sim.replicas if r.version == 2)
    new.state = "gone"
    step = sim.tick()
    assert step.new_target == 1 and "exited" in step.reason and new.replica_id in step.stop
    sim.settle()
    assert sim.endpoint_versions() == [1, 1]


def test_scale_up_and_down_in_stable() -> None:
    sim = serving_v1(2)
    sim.view = replace(sim.view, replicas=4)
    step = sim.tick()
    assert step.start == 2 and step.phase == "stable"  # 2 serving + 2 new <= 4 + max_surge
    sim.settle()
    assert sim.endpoint_versions() == [1, 1, 1, 1] and sim.min_healthy == 2
    sim.min_healthy = None
    sim.view = replace(sim.view, replicas=1)
    step = sim.tick()
    assert len(step.drain) == 3 and step.phase == "stable" and step.start == 0
    sim.settle()
    assert sim.endpoint_versions() == [1] and len(sim.replicas) == 1


def test_steady_state_replaces_a_replica_that_went_away_or_stayed_unhealthy() -> None:
    sim = serving_v1(2)
    gone = sim.replicas[0]
    gone.state = "gone"
    step = sim.tick()
    assert gone.replica_id in step.stop and step.start == 1 and step.phase == "stable"
    sim.settle()
    assert sim.endpoint_versions() == [1, 1]
    sick = sim.replicas[0]
    sick.state, sick.unhealthy_since = "unhealthy", sim.now
    assert sim.tick().start == 0  # within its grace: the agent may see it pass again
    sim.now += 60
    step = sim.tick()
    assert sick.replica_id in step.stop and step.start == 1 and "replacing" in step.reason


def test_stop_drains_everything_then_stops_it() -> None:
    sim = serving_v1(3)
    sim.view = replace(sim.view, stopped=True)
    step = sim.tick()
    assert len(step.drain) == 3 and step.phase == "stopped" and not step.stop
    assert endpoints(sim.views()) == []
    sim.settle()
    assert sim.replicas == [] and sim.steps[-1].reason == "stopped"
    stop_step = next(s for s in sim.steps if s.stop)
    assert stop_step is not sim.steps[0]  # drained first, stopped a tick later (drain: 3s)


def test_a_first_apply_that_never_gets_healthy_fails_and_stays_failed() -> None:
    sim = Sim(deployment(2), behaviour={1: "broken"})
    sim.settle()
    failed = [s for s in sim.steps if s.phase == "failed"]
    assert failed and "no v1 replica became healthy in 1m" in failed[0].reason
    sim.run(5)
    assert sim.replicas == [] and all(s.start == 0 for s in sim.steps[-5:])


def test_endpoints_are_healthy_not_draining_not_stopping() -> None:
    views = [ReplicaView("a", 1, "healthy", 0, 1, None, False), ReplicaView("b", 1, "healthy", 0, 1, 5, False),
             ReplicaView("c", 1, "healthy", 0, 1, None, True), ReplicaView("d", 1, "starting", 0, None, None, False),
             ReplicaView("e", 1, "unhealthy", 0, None, None, False)]
    assert endpoints(views) == ["a"]


# The property: whatever happens to replicas, in any order, the promises hold at every step.
EVENTS = st.lists(st.tuples(st.sampled_from(["tick", "sick", "recover", "die", "roll", "scale", "stop"]),
                            st.integers(0, 10)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(replicas=st.integers(0, 5), surge=st.integers(0, 2), unavailable=st.integers(0, 2), events=EVENTS,
       broken=st.sampled_from(["good", "broken", "unplaceable"]))
def test_invariants_hold_for_any_sequence_of_events(replicas: int, surge: int, unavailable: int,
                                                    events: list[tuple[str, int]], broken: str) -> None:
    if surge == 0 and unavailable == 0:
        surge = 1  # refused by the spec
    sim = Sim(deployment(replicas, surge, unavailable))
    version = 1
    for kind, n in events:
        live = [r for r in sim.replicas if not r.stopping and r.state != "gone"]
        if kind == "sick" and live:
            r = live[n % len(live)]
            r.state, r.unhealthy_since = "unhealthy", sim.now
        elif kind == "recover":
            for r in sim.replicas:
                if r.state == "unhealthy":
                    r.state, r.unhealthy_since = "healthy", None
        elif kind == "die" and live:
            live[n % len(live)].state = "gone"
        elif kind == "roll" and not sim.view.stopped:
            version += 1
            sim.behaviour[version] = broken if n % 2 else "good"
            sim.roll_to(version)
        elif kind == "scale":
            sim.view = replace(sim.view, replicas=n % 6)
        elif kind == "stop" and n == 0:
            sim.view = replace(sim.view, stopped=True)
        step = sim.tick()  # checks the promises before carrying the step out
        assert step.empty == (step == RolloutStep(0, (), (), step.phase, None, step.reason))
    for _ in range(40):
        sim.tick()
    live = [r for r in sim.replicas if not r.stopping]
    if sim.view.stopped or sim.steps[-1].phase == "failed":
        assert not endpoints(sim.views())
    else:
        assert len(live) <= sim.view.replicas + sim.view.max_surge
        if sim.behaviour.get(sim.view.target_version, "good") == "good":  # left alone, it gets where it was told
            assert sim.endpoint_versions() == [sim.view.target_version] * sim.view.replicas
            assert sim.steps[-1].phase in ("stable", "rolled_back")
