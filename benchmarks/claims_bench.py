"""What the node's GPU claims cost (agents/claims.py): the scan every telemetry sample makes, and a refused launch.

A node keeps every run folder it ever had; each sample reads the claims of
the live ones. Ended runs are remembered after the first scan, so a sample
costs one directory listing plus the live runs. Prints a table.

    python benchmarks/claims_bench.py [--ended 1000 5000 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mlfleet.agents.supervisor import Supervisor
from mlfleet.core.base.errors import GpuClaimedError
from mlfleet.core.base.models import LaunchRequest


def _node(root: Path, ended: int, live: int) -> Supervisor:
    node = Supervisor(root)
    for i in range(ended + live):
        run = root / "runs" / f"j{i:08x}-1"
        run.mkdir()
        (run / "claim.json").write_text(json.dumps({"gpu_indices": [i % 8], "controller": "c"}))
        if i < ended:
            (run / "exit.json").write_text(json.dumps({"exit_code": 0}))
        else:  # a live run: a runner record that is this process (alive by pid and start time)
            import psutil
            me = psutil.Process()
            (run / "runner.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))
            (run / "started.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time(),
                                                          "started_at": time.time()}))
    return node


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ended", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--live", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print("| ended runs | live runs | first scan (ms) | scan per sample (ms) | refused launch (ms) |")
    print("|---|---|---|---|---|")
    for ended in args.ended:
        root = Path(tempfile.mkdtemp(prefix="claims-bench-"))
        try:
            node = _node(root, ended, args.live)
            t = time.perf_counter()
            held = node.gpu_claims()
            first = (time.perf_counter() - t) * 1000
            assert len(held) == args.live, held
            per_sample = _best(node.gpu_claims, args.repeat)
            request = LaunchRequest(run_id="jffffffff-1", job_id="jffffffff", argv=["true"], workdir="/tmp", env={},
                                    gpu_indices=[ended % 8], controller="other")

            def refused() -> None:
                try:
                    node.launch(request)
                except GpuClaimedError:
                    return
                raise AssertionError("the launch was not refused")

            print(f"| {ended:,} | {args.live} | {first:.0f} | {per_sample:.1f} | {_best(refused, args.repeat):.1f} |")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
