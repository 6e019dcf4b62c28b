"""A run with a million distinct metric keys: how long its ingestion and the runs commands take, and the memory.

    .venv/bin/python benchmarks/many_keys_bench.py [--blocks 1000] [--width 1000]

An isolated installation (as benchmarks/ingest_bench.py makes one) runs a
job that writes ``blocks`` lines of ``width`` new keys each straight into
``$MLFLEET_METRICS_FILE``, then 300 steps of ``loss``; a second job logs
three keys for 50 steps. Then each command below runs once through the real
CLI (so each time includes starting Python and the CLI, ~0.2 s), while the
controller's RSS is sampled every 20 ms. A command the controller does not
answer within the CLI's request timeout (60 s; 300 s for compare) exits
non-zero; the table says so. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import threading
import time

import psutil

from ingest_bench import Installation  # benchmarks/ is on sys.path when this file is run
from mlfleet.core.base.paths import Home

WIDE = """\
import json, os, sys
blocks, width = int(sys.argv[1]), int(sys.argv[2])
with open(os.environ["MLFLEET_METRICS_FILE"], "a") as out:
    for b in range(blocks):
        out.write(json.dumps({"step": b, "metrics": {f"layer{b:04d}/w{i:04d}": b + i / width
                                                    for i in range(width)}}) + "\\n")
    for step in range(300):
        out.write(json.dumps({"step": blocks + step, "metrics": {"loss": 1.0 / (1 + step)}}) + "\\n")
"""
SMALL = """\
from mlfleet import track
for step in range(50):
    track.log({"loss": 2.0 / (1 + step), "layer0000/w0000": step, "z_last": 1.0}, step=step)
track.flush()
"""


def submit(fleet: Installation, name: str, script: str, *args: str) -> str:
    folder = fleet.root / "specs"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(script)
    argv = ", ".join(f"'{a}'" for a in ("python", f"{name}.py", *args))
    (folder / f"{name}.yaml").write_text(f"name: {name}\ncommand: [{argv}]\n")
    job_id = fleet.cli("submit", str(folder / f"{name}.yaml")).strip()
    while '"state": "succeeded"' not in (shown := fleet.cli("jobs", "show", job_id, "--json")):
        if '"state": "failed"' in shown:
            raise SystemExit(f"job {name} failed: {shown}")
        time.sleep(0.2)
    return f"{job_id}-1"


def peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    process = psutil.Process(pid)
    while not stop.wait(0.02):
        try:
            out[0] = max(out[0], process.memory_info().rss)
        except psutil.Error:
            return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1000, help="lines of new keys")
    parser.add_argument("--width", type=int, default=1000, help="new keys per line")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, load average at start {os.getloadavg()[0]:.1f}")
    fleet = Installation()
    try:
        fleet.cli("controller", "start")
        started = time.monotonic()
        wide = submit(fleet, "wide", WIDE, str(args.blocks), str(args.width))
        ingested = time.monotonic() - started
        small = submit(fleet, "small", SMALL)
        pid = int(Home.from_env(fleet.env).controller_lock.read_text().strip())
        resting = psutil.Process(pid).memory_info().rss
        print(f"\n{args.blocks * args.width:,} keys: job and ingestion {ingested:.1f} s; controller RSS at rest "
              f"{resting / 2**20:.0f} MiB\n")
        print("| command | exit | seconds | output bytes | controller peak RSS (MiB) |")
        print("|---|---|---|---|---|")
        for label, argv in (("runs list --json", ["runs", "list", "--json"]),
                            ("runs list --where on one key", ["runs", "list", "--where",
                                                              'metrics."layer0007/w0003".max > 7']),
                            ("runs show --json", ["runs", "show", wide, "--json"]),
                            ("runs show --keys 'layer0007/*' --max-keys 1000",
                             ["runs", "show", wide, "--keys", "layer0007/*", "--max-keys", "1000"]),
                            ("runs compare --json (2 runs)", ["runs", "compare", wide, small, "--json"]),
                            ("runs show --all-keys", ["runs", "show", wide, "--all-keys"])):
            stop, peak = threading.Event(), [resting]
            sampler = threading.Thread(target=peak_rss, args=(pid, stop, peak), daemon=True)
            sampler.start()
            began = time.monotonic()
            done = subprocess.run([sys.executable, "-m", "mlfleet", *argv], env=fleet.env, capture_output=True,
                                  timeout=1800)
            seconds = time.monotonic() - began
            stop.set()
            sampler.join()
            print(f"| {label} | {done.returncode} | {seconds:.1f} | {len(done.stdout):,} | {peak[0] / 2**20:.0f} |",
                  flush=True)
    finally:
        fleet.close()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
