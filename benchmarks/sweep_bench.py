"""Submitting a big sweep: from ``mlfleet submit sweep.yaml`` to every child queued.

    .venv/bin/python benchmarks/sweep_bench.py [--points 100,1000,10000] [--repeat 3]

Starts a real controller (with its local host) in a temporary MLFLEET_HOME,
and for each size writes a spec whose grid has that many points
(``max_parallel: 1``, so the children wait rather than crowd the machine),
then times:

* ``expand``: the client's check of every child in this process (plan +
  the job schema per child), the part of the command before it connects;
* ``submit``: the whole ``mlfleet submit --json`` command (a new Python
  process, the check above, one RPC that snapshots the code and records
  the sweep and all its jobs in one transaction), until it returns, at
  which point every child is queued (checked with ``db query``).

Prints the minimum and median of ``--repeat`` runs as a Markdown table for
BENCHMARKS.md (goal: 1,000 points under 2 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlfleet.core.jobs.spec import load_job_spec
from mlfleet.core.sweeps.children import children

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))


def spec_text(name: str, points: int) -> str:
    """A grid of exactly ``points`` points: params.i over range(points) times nothing else."""
    return (f"name: {name}\ncommand: \"sleep 30; echo {{params.i}}\"\nparams: {{lr: 0.1}}\n"
            f"sweep:\n  grid:\n    params.i: {json.dumps(list(range(points)))}\n  max_parallel: 1\n"
            "  objective: {metric: loss, mode: min}\n")


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLFLEET, *args], env=env, capture_output=True, text=True, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="100,1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlfsb", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="mlfsb-work", dir="/tmp"))
    env = {**os.environ, "MLFLEET_HOME": str(root)}
    rows = []
    try:
        started = cli(env, "controller", "start")
        assert started.returncode == 0, started.stderr
        for points in [int(p) for p in args.points.split(",")]:
            expand, submit = [], []
            for r in range(args.repeat):
                name = f"bench-{points}-{r}"
                path = work / f"{name}.yaml"
                path.write_text(spec_text(name, points))
                t0 = time.perf_counter()
                made = children(load_job_spec(path), str(path))
                expand.append(time.perf_counter() - t0)
                assert len(made) == points
                t0 = time.perf_counter()
                done = cli(env, "submit", str(path), "--json")
                submit.append(time.perf_counter() - t0)
                assert done.returncode == 0, done.stderr
                answer = json.loads(done.stdout)
                count = json.loads(cli(env, "db", "query", "select count(*) from sweep_jobs sj join jobs j using (job_id) "
                                       f"where sj.sweep_id = '{answer['sweep_id']}'", "--json").stdout)["rows"][0][0]
                assert count == points, (count, points)
                cli(env, "sweeps", "cancel", name)
            rows.append((points, expand, submit))
    finally:
        cli(env, "controller", "stop")
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"sweep submit, {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"min / median of {args.repeat}\n")
    print("| points | client check (expand + validate) | `mlfleet submit` until all queued |")
    print("|---:|---:|---:|")
    for points, expand, submit in rows:
        print(f"| {points:,} | {min(expand) * 1000:.0f} / {statistics.median(expand) * 1000:.0f} ms "
              f"| {min(submit):.2f} / {statistics.median(submit):.2f} s |")


if __name__ == "__main__":
    main()
