"""Polling 1,000 queued and running Slurm jobs: commands per poll and CPU per poll, batched vs per-job sacct.

Starts the test cluster of tests/slurm.py (root, Debian's slurm-wlm), holds
the node with a few running jobs and queues the rest behind them (each one
a real ``mlfleet-<run_id>`` job with a run folder, as the agent makes them),
then measures one agent poll of every run through
:class:`mlfleet.agents.slurm.SlurmQueue` (the way the supervisor answers a
poll) beside the naive loop: one ``sacct -j ID`` per job (with no slurmdbd
here it answers from nothing, which is its cheapest case: the count is the
point). Usage: ``python benchmarks/slurm_poll_bench.py [JOBS]``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from slurm import start_cluster, stop_cluster  # noqa: E402

from mlfleet.agents import slurm  # noqa: E402
from mlfleet.agents.rundir import RunDir, write_json_atomic  # noqa: E402


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(count: int = 1000) -> None:
    cluster = start_cluster()
    os.environ.update(cluster.env)
    runs_dir = Path(tempfile.mkdtemp(prefix="mlfleet-slurm-bench-"))
    try:
        ids = []
        for i in range(count):
            run = RunDir(runs_dir / f"r{i}")
            run.root.mkdir()
            out = cluster.run("sbatch", "--parsable", f"--job-name={slurm.job_name(run.run_id)}",
                              "--output=/dev/null", "--cpus-per-task=1", "--wrap", "sleep 600")
            write_json_atomic(run.file(slurm.SLURM_FILE), {"job_id": out.strip()})
            ids.append(out.strip())
        time.sleep(3)
        states = cluster.run("squeue", "-h", "-o", "%T").split()
        running, pending = states.count("RUNNING"), states.count("PENDING")
        queue = slurm.SlurmQueue()
        polls, rows = 5, []
        cpu0, wall0 = _cpu(), time.perf_counter()
        for _ in range(polls):
            queue.forget()  # each poll is a new one
            for i in range(count):
                slurm.status(RunDir(runs_dir / f"r{i}"), queue)
        batched = (queue.commands / polls, (_cpu() - cpu0) / polls, (time.perf_counter() - wall0) / polls)
        rows.append(("batched squeue (mlfleet)", *batched))
        cpu0, wall0 = _cpu(), time.perf_counter()
        for job_id in ids:
            subprocess.run(["sacct", "-P", "-n", "-j", job_id, "-o", "JobID,State,ExitCode"], capture_output=True,
                           env=os.environ)
        rows.append(("per-job sacct (naive)", float(count), _cpu() - cpu0, time.perf_counter() - wall0))
        print(f"{count} jobs: {running} running, {pending} pending; load {os.getloadavg()[0]:.2f}; "
              f"{os.cpu_count()} CPUs")
        print(f"{'method':28} {'commands/poll':>14} {'CPU s/poll':>11} {'wall s/poll':>12}")
        for name, commands, cpu, wall in rows:
            print(f"{name:28} {commands:14.0f} {cpu:11.3f} {wall:12.3f}")
    finally:
        stop_cluster(cluster)
        subprocess.run(["rm", "-rf", str(runs_dir)])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
