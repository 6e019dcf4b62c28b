"""Which waiting job lands on which host and GPUs, and why the others wait.

``schedule`` is a pure function over a fleet snapshot and a queue; every
story here is one snapshot and one answer.
"""

from __future__ import annotations

from mlfleet.core.jobs.scheduler import GpuView, HostView, Placement, QueuedJob, Release, schedule

GiB = 1024**3
A100 = "NVIDIA A100-SXM4-80GB"
H100 = "NVIDIA H100 80GB HBM3"


def gpu(index: int, free_gib: float | None = 80, name: str = A100, total_gib: float = 80) -> GpuView:
    free = None if free_gib is None else int(free_gib * GiB)
    return GpuView(index=index, name=name, memory_total=int(total_gib * GiB), memory_free=free, utilization=0.0)


def host(name: str, *gpus: GpuView, up: bool = True, labels: dict[str, str] | None = None, cpus: float = 32,
         memory_gib: float = 256, gpus_in_use: set[int] = frozenset()) -> HostView:
    return HostView(name=name, up=up, labels=labels or {}, cpu_count=cpus, memory_total=int(memory_gib * GiB),
                    gpus=tuple(gpus), gpus_in_use=frozenset(gpus_in_use))


def job(job_id: str, **kw) -> QueuedJob:
    return QueuedJob(job_id=job_id, **kw)


def test_a_cpu_job_runs_on_the_first_host_that_is_up() -> None:
    decision = schedule([host("laptop")], [job("j1", cpus=2, memory=4 * GiB)])
    assert decision.placements == [Placement("j1", "laptop", ())]
    assert decision.waiting == {}


def test_a_gpu_job_waits_on_a_host_without_gpus_and_says_so() -> None:
    decision = schedule([host("laptop")], [job("j1", gpus=1)])
    assert decision.placements == []
    [reason] = decision.waiting["j1"]
    assert (reason.host, reason.check) == ("laptop", "gpu-count")
    assert reason.message == "has no GPUs (need 1)"
    assert decision.short_reason("j1") == "laptop: has no GPUs (need 1)"


def test_a_gpu_job_skips_the_cpu_box_and_lands_on_the_gpu_box() -> None:
    decision = schedule([host("a-cpu-box"), host("b-gpu-box", gpu(0), gpu(1))], [job("j1", gpus=2)])
    assert decision.placements == [Placement("j1", "b-gpu-box", (0, 1))]


def test_gpu_memory_decides_which_gpu_a_job_can_use() -> None:
    box = host("gpu1", gpu(0, free_gib=8), gpu(1, free_gib=40))
    decision = schedule([box], [job("fits", gpus=1, gpu_memory=20 * GiB)])
    assert decision.placements == [Placement("fits", "gpu1", (1,))]

    decision = schedule([box], [job("too-big", gpus=1, gpu_memory=60 * GiB)])
    [reason] = decision.waiting["too-big"]
    assert reason.check == "gpu-memory"
    assert reason.message == "0 of 2 GPUs have 60.0 GiB free (need 1); GPU 0 has 8.0 GiB free (+1 more)"


def test_a_gpu_whose_free_memory_is_unknown_is_not_ruled_out() -> None:
    decision = schedule([host("gpu1", gpu(0, free_gib=None))], [job("j1", gpus=1, gpu_memory=20 * GiB)])
    assert decision.placements == [Placement("j1", "gpu1", (0,))]


def test_gpu_type_picks_the_host_with_that_gpu() -> None:
    hosts = [host("a100-box", gpu(0, name=A100)), host("h100-box", gpu(0, name=H100))]
    decision = schedule(hosts, [job("j1", gpus=1, gpu_types=("h100",))])
    assert decision.placements == [Placement("j1", "h100-box", (0,))]

    decision = schedule(hosts, [job("j2", gpus=1, gpu_types=("L4",))])
    assert [r.check for r in decision.waiting["j2"]] == ["gpu-type", "gpu-type"]
    assert decision.waiting["j2"][0].message == f"GPU type {A100} (need L4)"
    assert decision.short_reason("j2") == f"2 of 2 hosts: GPU type {A100} (need L4)"


def test_gpu_type_a10_does_not_take_an_a100() -> None:
    # A10 and A100 are different cards (24 GB vs 80 GB, and priced apart): asking for
    # one must not land on the other because its name happens to contain the text.
    hosts = [host("a100-box", gpu(0, name=A100)), host("l40s-box", gpu(0, name="NVIDIA L40S"))]
    decision = schedule(hosts, [job("a10", gpus=1, gpu_types=("A10",)), job("l4", gpus=1, gpu_types=("L4",))])
    assert decision.placements == []
    assert {r.check for r in decision.waiting["a10"] + decision.waiting["l4"]} == {"gpu-type"}


def test_labels_keep_a_job_on_the_hosts_that_carry_them() -> None:
    hosts = [host("us-1", gpu(0), labels={"zone": "us"}), host("eu-1", gpu(0), labels={"zone": "eu"})]
    decision = schedule(hosts, [job("j1", gpus=1, labels={"zone": "eu"})])
    assert decision.placements == [Placement("j1", "eu-1", (0,))]

    decision = schedule(hosts, [job("j2", labels={"zone": "ap"})])
    reasons = {r.host: r for r in decision.waiting["j2"]}
    assert reasons["us-1"].check == reasons["eu-1"].check == "constraint"
    assert reasons["us-1"].message == "label zone=us (need ap)"

    decision = schedule([host("bare")], [job("j3", labels={"zone": "eu"})])
    assert decision.waiting["j3"][0].message == "label zone=(none) (need eu)"


def test_constraints_hosts_names_the_only_hosts_a_job_may_use() -> None:
    decision = schedule([host("a"), host("b")], [job("j1", hosts=("b",))])
    assert decision.placements == [Placement("j1", "b", ())]


def test_a_host_that_is_down_gets_nothing() -> None:
    decision = schedule([host("gpu1", gpu(0), up=False)], [job("j1", gpus=1), job("j2")])
    assert decision.placements == []
    for job_id in ("j1", "j2"):
        [reason] = decision.waiting[job_id]
        assert (reason.check, reason.message) == ("host-down", "host is not reachable")

    decision = schedule([host("a-down", gpu(0), up=False), host("b-up", gpu(0))], [job("j1", gpus=1)])
    assert decision.placements == [Placement("j1", "b-up", (0,))]


def test_the_higher_priority_job_gets_the_last_gpu_even_if_it_came_later() -> None:
    queue = [job("early-low", priority=0, submitted=100.0, gpus=1),
             job("late-high", priority=10, submitted=200.0, gpus=1)]
    decision = schedule([host("gpu1", gpu(0))], queue)
    assert decision.placements == [Placement("late-high", "gpu1", (0,))]
    [reason] = decision.waiting["early-low"]
    assert (reason.check, reason.message) == ("gpu-count", "0 of 1 GPUs free (need 1); GPU 0 held by an mlfleet job")


def test_with_equal_priority_the_older_job_goes_first() -> None:
    queue = [job("newer", submitted=200.0, gpus=1), job("older", submitted=100.0, gpus=1)]
    decision = schedule([host("gpu1", gpu(0))], queue)
    assert [p.job_id for p in decision.placements] == ["older"]
    assert list(decision.waiting) == ["newer"]


def test_two_jobs_never_get_the_same_gpu() -> None:
    queue = [job(f"j{i}", submitted=float(i), gpus=1) for i in range(3)]
    decision = schedule([host("gpu1", gpu(0), gpu(1))], queue)
    taken = [i for p in decision.placements for i in p.gpu_indices]
    assert len(decision.placements) == 2 and sorted(taken) == [0, 1]
    assert list(decision.waiting) == ["j2"]


def test_gpus_already_held_by_running_jobs_are_not_handed_out() -> None:
    box = host("gpu1", gpu(0), gpu(1), gpu(2), gpus_in_use={0, 2})
    decision = schedule([box], [job("j1", gpus=1), job("j2", gpus=1)])
    assert decision.placements == [Placement("j1", "gpu1", (1,))]
    assert decision.waiting["j2"][0].message.startswith("0 of 3 GPUs free (need 1)")  # j1 took the last one


def test_best_fit_takes_the_gpu_with_the_least_free_memory_that_fits() -> None:
    box = host("gpu1", gpu(0, free_gib=80), gpu(1, free_gib=24), gpu(2, free_gib=16), gpu(3, free_gib=40))
    decision = schedule([box], [job("small", submitted=1.0, gpus=1, gpu_memory=20 * GiB),
                                   job("pair", submitted=2.0, gpus=2, gpu_memory=30 * GiB)])
    # small takes the 24 GiB GPU, leaving 40 and 80 for the pair
    assert decision.placements == [Placement("small", "gpu1", (1,)), Placement("pair", "gpu1", (0, 3))]


def test_a_small_job_leaves_the_big_gpu_for_the_big_job_behind_it() -> None:
    # Best fit across the fleet, not only inside one host: placing the small job on the
    # 80 GiB card of the first host by name would leave the big job waiting for no reason.
    hosts = [host("a-big", gpu(0, free_gib=80)), host("b-small", gpu(0, free_gib=24))]
    queue = [job("small", priority=1, gpus=1, gpu_memory=20 * GiB), job("big", gpus=1, gpu_memory=60 * GiB)]
    decision = schedule(hosts, queue)
    assert sorted(decision.placements, key=lambda p: p.job_id) == [
        Placement("big", "a-big", (0,)), Placement("small", "b-small", (0,))]
    assert decision.waiting == {}


def test_cpus_and_memory_run_out_too() -> None:
    box = host("cpu1", cpus=8, memory_gib=32)
    decision = schedule([box], [job("a", cpus=6, memory=8 * GiB), job("b", cpus=4), job("c", memory=30 * GiB)])
    assert [p.job_id for p in decision.placements] == ["a"]
    assert decision.waiting["b"][0].check == "cpus" and decision.waiting["b"][0].message == "2 CPUs free (need 4)"
    assert decision.waiting["c"][0].check == "memory"
    assert decision.waiting["c"][0].message == "24.0 GiB memory free (need 30.0 GiB)"


def test_short_reason_names_the_most_common_check_across_hosts() -> None:
    hosts = [host("a", gpu(0, free_gib=4)), host("b", gpu(0, free_gib=4)), host("c", up=False)]
    decision = schedule(hosts, [job("j1", gpus=1, gpu_memory=20 * GiB)])
    assert decision.short_reason("j1") == "2 of 3 hosts: 0 of 1 GPUs have 20.0 GiB free (need 1); GPU 0 has 4.0 GiB free"

    decision = schedule([], [job("j2")])
    assert decision.short_reason("j2") == "no hosts"


def test_the_same_snapshot_always_gets_the_same_answer() -> None:
    hosts = [host("b", gpu(0), gpu(1)), host("a", gpu(0))]
    queue = [job(f"j{i}", priority=i % 3, submitted=float(i), gpus=1) for i in range(5)]
    first = schedule(hosts, queue)
    again = schedule(list(reversed(hosts)), list(reversed(queue)))
    assert first.placements == again.placements
    assert first.waiting == again.waiting


def test_with_topology_known_a_two_gpu_job_gets_gpus_that_share_nvlink() -> None:
    # Two NVLink islands (0-3, 4-7). Memory alone would pick GPUs 3 and 4 (the tightest), across islands.
    islands = tuple(tuple(0 if (a < 4) == (b < 4) else 50 for b in range(8)) for a in range(8))
    gpus = [gpu(i, free_gib=30 if i in (3, 4) else 80) for i in range(8)]
    box = HostView(name="dgx", up=True, cpu_count=64, memory_total=1024 * GiB, gpus=tuple(gpus), gpu_links=islands)
    [placement] = schedule([box], [job("pair", gpus=2, gpu_memory=20 * GiB)]).placements
    a, b = placement.gpu_indices
    assert (a < 4) == (b < 4), placement
    assert 3 in placement.gpu_indices or 4 in placement.gpu_indices  # still the tightest within an island

    without = HostView(name="dgx", up=True, cpu_count=64, memory_total=1024 * GiB, gpus=tuple(gpus))
    assert schedule([without], [job("pair", gpus=2, gpu_memory=20 * GiB)]).placements[0].gpu_indices == (3, 4)


def test_a_long_queue_of_look_alike_jobs_that_fit_nowhere_gets_the_same_answer_as_one_of_them() -> None:
    # Look-alike jobs are answered together once their shape is known not to fit: each of them
    # must still get the reasons a lone job of that shape would get, and jobs behind them still run.
    hosts = [host("a", gpu(0), gpu(1)), host("b", gpu(0, free_gib=30), gpu(1, free_gib=10))]
    alone = schedule(hosts, [job("wide", gpus=4)])
    queue = [job(f"wide-{i:03d}", priority=5, submitted=float(i), gpus=4, project=("vision", "nlp")[i % 2])
             for i in range(200)]
    decision = schedule(hosts, queue + [job("small", submitted=1000.0, gpus=1, gpu_memory=20 * GiB)])
    assert decision.placements == [Placement("small", "b", (0,))]
    assert len(decision.waiting) == 200
    assert all(reasons == alone.waiting["wide"] for reasons in decision.waiting.values())


def test_short_jobs_backfill_ahead_of_a_reserved_big_job_and_long_ones_wait() -> None:
    # GPUs 2 and 3 run a job until t=1000; the big job reserves all four from then. Jobs that
    # end before t=1000 may use GPUs 0 and 1 meanwhile; longer or open-ended ones may not.
    box = HostView(name="dgx", up=True, cpu_count=64, memory_total=1024 * GiB,
                   gpus=tuple(gpu(i) for i in range(4)), gpus_in_use=frozenset({2, 3}),
                   releases=(Release(end=1000.0, gpu_indices=(2, 3)),))
    queue = [job("big", priority=10, gpus=4),
             *(job(f"long-{i}", submitted=float(i), gpus=1, timeout=5000.0) for i in range(3)),
             job("untimed", submitted=5.0, gpus=1),
             *(job(f"short-{i}", submitted=10.0 + i, gpus=1, timeout=600.0) for i in range(3))]
    decision = schedule([box], queue)
    assert decision.reservation == ("big", "dgx", (0, 1, 2, 3), 1000.0)
    assert sorted(p.job_id for p in decision.placements) == ["short-0", "short-1"]
    assert sorted({i for p in decision.placements for i in p.gpu_indices}) == [0, 1]
    assert set(decision.waiting) == {"big", "long-0", "long-1", "long-2", "untimed", "short-2"}
    for job_id in ("long-0", "long-1", "long-2", "untimed"):
        [reason] = decision.waiting[job_id]
        assert "reserved for an older, bigger job" in reason.message
