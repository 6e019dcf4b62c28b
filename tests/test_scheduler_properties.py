"""Properties of the scheduler over random fleets and queues (hypothesis).

Whatever the fleet and the queue: no GPU's memory or whole-GPU holding is
over-committed, no constraint is broken, no reserved or excluded GPU is
handed out, and a job that fits an idle fleet is placed.
"""

from __future__ import annotations

import fnmatch

from hypothesis import given, settings
from hypothesis import strategies as st

from mlfleet.core.jobs.scheduler import GiB, GpuProcessView, GpuView, HostView, Policy, QueuedJob, schedule, type_matches

NAMES = ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB", "NVIDIA L4", None]
POLICY = Policy()


@st.composite
def gpus(draw, index: int) -> GpuView:
    total = draw(st.sampled_from([16, 24, 40, 80])) * GiB
    known = draw(st.booleans()) or draw(st.booleans())
    free = draw(st.integers(0, total)) if known else None
    foreign = draw(st.lists(st.builds(GpuProcessView, pid=st.integers(100, 99999),
                                      used_memory=st.integers(0, 8 * GiB)), max_size=2))
    return GpuView(index=index, name=draw(st.sampled_from(NAMES)), memory_total=total, memory_free=free,
                   utilization=draw(st.one_of(st.none(), st.floats(0, 100))), processes=tuple(foreign),
                   ecc_errors=draw(st.sampled_from([None, 0, 0, 3])),
                   throttle_reasons=tuple(draw(st.lists(st.sampled_from(["hw_thermal", "sw_power_cap"]), max_size=1))),
                   reserved_memory=draw(st.sampled_from([0, 0, 4 * GiB])))


@st.composite
def hosts(draw, name: str) -> HostView:
    count = draw(st.integers(0, 8))
    return HostView(
        name=name, up=draw(st.booleans()) or draw(st.booleans()),
        labels={"region": draw(st.sampled_from(["eu-west", "eu-north", "us-east"]))},
        cpu_count=draw(st.sampled_from([8, 32, 128])), memory_total=draw(st.sampled_from([64, 512])) * GiB,
        gpus=tuple(draw(gpus(i)) for i in range(count)),
        gpus_in_use=frozenset(draw(st.sets(st.integers(0, max(count - 1, 0)), max_size=count)) if count else ()),
        drained="maintenance" if draw(st.integers(0, 9)) == 0 else None)


@st.composite
def fleets(draw) -> list[HostView]:
    return [draw(hosts(f"h{i}")) for i in range(draw(st.integers(1, 6)))]


@st.composite
def jobs(draw, i: int) -> QueuedJob:
    return QueuedJob(
        job_id=f"j{i}", priority=draw(st.integers(-5, 5)), submitted=float(draw(st.integers(0, 1000))),
        gpus=draw(st.integers(0, 4)), gpu_memory=draw(st.sampled_from([None, 8 * GiB, 30 * GiB])),
        gpu_types=tuple(draw(st.lists(st.sampled_from(["H100", "A100", "L4"]), max_size=1))),
        cpus=draw(st.sampled_from([0, 1, 8])), memory=draw(st.sampled_from([None, 16 * GiB])),
        labels=draw(st.sampled_from([{}, {"region": "eu-*"}, {"region": "us-east"}])),
        project=draw(st.sampled_from(["vision", "nlp"])))


@st.composite
def queues(draw) -> list[QueuedJob]:
    return [draw(jobs(i)) for i in range(draw(st.integers(0, 12)))]


def _usable(gpu: GpuView, host: HostView) -> bool:
    return (not gpu.ecc_errors and "hw_thermal" not in gpu.throttle_reasons
            and gpu.index not in host.gpus_in_use and not host.drained and host.up)


@settings(max_examples=300, deadline=None)
@given(fleets(), queues())
def test_no_gpu_is_overcommitted_and_no_rule_is_broken(fleet: list[HostView], queue: list[QueuedJob]) -> None:
    decision = schedule(fleet, queue, POLICY, now=2000.0)
    by_host = {h.name: h for h in fleet}
    by_job = {j.job_id: j for j in queue}
    placed = {p.job_id for p in decision.placements}
    assert placed.isdisjoint(decision.waiting) and placed | set(decision.waiting) == set(by_job)
    memory_taken: dict[tuple[str, int], int] = {}
    whole_taken: dict[tuple[str, int], int] = {}
    for p in decision.placements:
        job, host = by_job[p.job_id], by_host[p.host]
        assert len(p.gpu_indices) == job.gpus == len(set(p.gpu_indices))  # gang: all on one host
        assert not host.drained and host.up
        if job.hosts:
            assert host.name in job.hosts
        for key, pattern in job.labels.items():
            assert fnmatch.fnmatchcase(host.labels.get(key, ""), pattern)
        for index in p.gpu_indices:
            gpu = host.gpus[index]
            assert _usable(gpu, host), "handed out a reserved or excluded GPU"
            assert type_matches(job.gpu_types, gpu.name)
            assert gpu.utilization is None or gpu.utilization <= POLICY.busy_utilization
            if job.gpu_memory is None or gpu.memory_free is None:
                whole_taken[(host.name, index)] = whole_taken.get((host.name, index), 0) + 1
                assert not gpu.processes and gpu.reserved_memory == 0
            else:
                memory_taken[(host.name, index)] = memory_taken.get((host.name, index), 0) + job.gpu_memory
    for (host_name, index), count in whole_taken.items():
        assert count == 1 and (host_name, index) not in memory_taken, "a whole GPU was shared"
    for (host_name, index), taken in memory_taken.items():
        gpu = by_host[host_name].gpus[index]
        assert gpu.memory_free is not None
        assert taken + POLICY.memory_margin <= gpu.memory_free - gpu.reserved_memory, "GPU memory over-committed"


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.sampled_from([None, 8 * GiB]), st.integers(1, 4))
def test_a_feasible_job_on_an_idle_fleet_is_always_placed(count: int, gpu_memory: int | None, hosts_n: int) -> None:
    idle = [HostView(name=f"h{i}", up=True, cpu_count=32, memory_total=256 * GiB,
                     gpus=tuple(GpuView(index=g, name="NVIDIA H100 80GB HBM3", memory_total=80 * GiB,
                                        memory_free=80 * GiB, utilization=0.0) for g in range(8)))
            for i in range(hosts_n)]
    job = QueuedJob(job_id="j", gpus=count, gpu_memory=gpu_memory, cpus=4, memory=16 * GiB)
    decision = schedule(idle, [job], POLICY)
    assert [p.job_id for p in decision.placements] == ["j"] and decision.waiting == {}
