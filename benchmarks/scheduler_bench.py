"""Scheduling cycle cost: mlfleet's scheduler on synthetic fleets and queues.

    .venv/bin/python benchmarks/scheduler_bench.py [--quick]

One cycle = one call of ``schedule()`` with the whole fleet and queue, as the
controller makes every tick. Each figure is the best of several runs (other
work on the machine only ever adds time), and the load average is printed
with the table. Fleets are H100 hosts with 8 GPUs, a third of
them partly loaded (foreign processes, busy GPUs); queues mix 1/2/4/8-GPU
jobs, whole-GPU and memory-sized, with labels and priorities. Beside it, in
the same run, a count-only first-fit loop (what a scheduler that counts
GRES does, with no measured memory, no reasons, no fairness) as the floor.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

from mlfleet.core.jobs.scheduler import GiB, GpuProcessView, GpuView, HostView, Policy, QueuedJob, schedule


def fleet(hosts: int, rng: random.Random) -> list[HostView]:
    out = []
    for h in range(hosts):
        gpus = []
        for g in range(8):
            loaded = rng.random() < 0.3
            used = rng.randint(10, 70) * GiB if loaded else 0
            gpus.append(GpuView(index=g, name="NVIDIA H100 80GB HBM3", memory_total=80 * GiB,
                                memory_free=80 * GiB - used, utilization=rng.uniform(50, 99) if loaded else 0.0,
                                processes=(GpuProcessView(pid=1000 + g, used_memory=used),) if loaded else ()))
        out.append(HostView(name=f"gpu-{h:04d}", up=True, labels={"region": rng.choice(["eu-west", "us-east"])},
                            cpu_count=128, memory_total=1024 * GiB, gpus=tuple(gpus)))
    return out


def queue(jobs: int, rng: random.Random) -> list[QueuedJob]:
    out = []
    for j in range(jobs):
        count = rng.choice([1, 1, 1, 2, 2, 4, 8])
        out.append(QueuedJob(job_id=f"j{j:05d}", priority=rng.randint(0, 3), submitted=float(j), gpus=count,
                             gpu_memory=rng.choice([None, 20 * GiB, 40 * GiB]), cpus=4, memory=32 * GiB,
                             labels=rng.choice([{}, {}, {"region": "eu-*"}]), project=rng.choice(["a", "b", "c"])))
    return out


def first_fit_by_count(hosts: list[HostView], jobs: list[QueuedJob]) -> int:
    """The floor: free GPU counts per host, first host with enough, nothing else."""
    free = {h.name: sum(1 for g in h.gpus if not g.processes) for h in hosts}
    placed = 0
    for job in sorted(jobs, key=lambda j: (-j.priority, j.submitted)):
        for name, count in free.items():
            if count >= job.gpus:
                free[name] = count - job.gpus
                placed += 1
                break
    return placed


def timed(fn, repeats: int) -> tuple[float, object]:
    """The best of ``repeats`` runs: noise from other processes only ever adds time."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller grid (a smoke run)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure; the best is shown")
    args = parser.parse_args()
    sizes = [(100, 1000), (1000, 1000)] if args.quick else \
        [(100, 1000), (300, 1000), (1000, 1000), (1000, 3000), (1000, 10000)]
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print()
    print("| hosts × GPUs | pending jobs | mlfleet cycle (ms) | placed | placements/s | first-fit by count (ms) |")
    print("|---|---|---|---|---|---|")
    for hosts_n, jobs_n in sizes:
        rng = random.Random(hosts_n * 7 + jobs_n)
        hosts, jobs = fleet(hosts_n, rng), queue(jobs_n, rng)
        seconds, decision = timed(lambda: schedule(hosts, jobs, Policy(), now=jobs_n + 10.0), args.repeat)
        baseline, _ = timed(lambda: first_fit_by_count(hosts, jobs), args.repeat)
        placed = len(decision.placements)
        print(f"| {hosts_n} × 8 | {jobs_n} | {seconds * 1000:.0f} | {placed} | {placed / seconds:,.0f} | "
              f"{baseline * 1000:.0f} |")
    print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
