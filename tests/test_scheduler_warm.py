"""Warm hosts first: among hosts that fit alike, the one where the job's environment is built already.

Warmth breaks best-fit ties and nothing more: it never takes a job onto a
host that does not fit, past a tighter host, onto a host the job failed
on while another fits, or ahead of a job with a higher priority.
"""

from __future__ import annotations

from mlfleet.core.jobs.scheduler import GpuView, HostView, Placement, QueuedJob, schedule

GiB = 1024**3


def gpu(index: int, free_gib: float = 80) -> GpuView:
    return GpuView(index=index, name="NVIDIA A100-SXM4-80GB", memory_total=80 * GiB, memory_free=int(free_gib * GiB),
                   utilization=0.0)


def host(name: str, n: int = 2, in_use: frozenset[int] = frozenset(), labels: dict[str, str] | None = None) -> HostView:
    return HostView(name=name, up=True, labels=labels or {}, cpu_count=32, memory_total=256 * GiB,
                    gpus=tuple(gpu(i) for i in range(n)), gpus_in_use=in_use)


def test_of_two_hosts_that_fit_alike_the_warm_one_is_chosen_and_the_placement_says_why() -> None:
    decision = schedule([host("a"), host("b")], [QueuedJob("j", gpus=1, warm_hosts=frozenset({"b"}))])
    assert decision.placements == [Placement("j", "b", (0,), "environment already built on b")]


def test_without_a_warm_host_best_fit_decides_by_name_as_before() -> None:
    decision = schedule([host("a"), host("b")], [QueuedJob("j", gpus=1)])
    assert decision.placements == [Placement("j", "a", (0,))]


def test_a_warm_host_that_does_not_fit_is_not_chosen() -> None:
    decision = schedule([host("a"), host("b", in_use=frozenset({0, 1}))],
                        [QueuedJob("j", gpus=1, warm_hosts=frozenset({"b"}))])
    assert decision.placements == [Placement("j", "a", (0,))]


def test_warmth_never_beats_a_tighter_fit() -> None:
    # a has 1 GPU left, b has 2: best fit keeps b's pair for a 2-GPU job, even though b is warm
    decision = schedule([host("a", in_use=frozenset({0})), host("b")],
                        [QueuedJob("j", gpus=1, warm_hosts=frozenset({"b"}))])
    assert decision.placements == [Placement("j", "a", (1,))]


def test_warmth_never_beats_hard_constraints() -> None:
    decision = schedule([host("a", labels={"region": "eu"}), host("b", labels={"region": "us"})],
                        [QueuedJob("j", gpus=1, labels={"region": "eu"}, warm_hosts=frozenset({"b"}))])
    assert decision.placements == [Placement("j", "a", (0,))]


def test_a_host_the_job_failed_on_stays_last_even_if_warm() -> None:
    decision = schedule([host("a"), host("b")],
                        [QueuedJob("j", gpus=1, avoid_hosts=("b",), warm_hosts=frozenset({"b"}))])
    assert decision.placements == [Placement("j", "a", (0,))]


def test_warmth_does_not_reorder_the_queue() -> None:
    decision = schedule([host("a", n=1), host("b", n=1, in_use=frozenset({0}))],
                        [QueuedJob("low", gpus=1, priority=0, submitted=0, warm_hosts=frozenset({"a"})),
                         QueuedJob("high", gpus=1, priority=5, submitted=1)])
    assert decision.placements == [Placement("high", "a", (0,))]
    assert "low" in decision.waiting


def test_memory_sized_and_cpu_jobs_prefer_warm_ties_too() -> None:
    decision = schedule([host("a"), host("b")],
                        [QueuedJob("m", gpus=1, gpu_memory=10 * GiB, warm_hosts=frozenset({"b"})),
                         QueuedJob("c", cpus=1, warm_hosts=frozenset({"b"}))])
    assert {p.job_id: p.host for p in decision.placements} == {"m": "b", "c": "b"}


def test_the_controller_knows_a_host_is_warm_from_a_plan_and_a_build_and_forgets_a_removed_env() -> None:
    from mlfleet.core.base.models import Environment
    from mlfleet.core.environments.warm import REFRESH_S, WarmEnvironments, env_key

    key = env_key(Environment(requirements=["numpy"]), "code-1")
    assert key == env_key(Environment(requirements=["numpy"]), "code-2")  # a list does not depend on the code
    assert env_key(Environment(requirements="req.txt"), "code-1") != env_key(Environment(requirements="req.txt"), "c2")
    warm = WarmEnvironments()
    warm.planned("a", key, "h-a")
    warm.planned("b", key, "h-b")
    assert warm.warm_hosts(key) == frozenset()
    warm.built("b", "h-b")
    assert warm.warm_hosts(key) == {"b"}
    assert warm.to_ask("b", [key], now=100.0) == ["h-b"]
    assert warm.to_ask("b", [key], now=100.0 + REFRESH_S / 2) == []  # at most once a minute per host
    warm.answered("b", {"h-b": False})  # garbage-collected on the node
    assert warm.warm_hosts(key) == frozenset()
