"""Metric ingestion end to end: a job's track.log -> agent -> controller -> DuckDB, beside MLflow.

    .venv/bin/python benchmarks/ingest_bench.py [--steps 200000] [--width 10] [--distinct] [--repeat 3]
        [--hosts local,ssh] [--mlflow-python /tmp/mlflowvenv/bin/python] [--mlflow-steps N] [--mlflow-uri URI]

mlfleet: an isolated installation (its own MLFLEET_HOME in /tmp, a real
controller and local agent started by the CLI) runs one job that logs
``steps`` x ``width`` points with ``track.log`` (``width`` keys logged at
every step, or with ``--distinct`` a new key for every point: a run with
``steps`` x ``width`` keys), on ``local`` (the agent's socket) and on an SSH
host (a real OpenSSH sshd on loopback, the agent reached through an SSH
channel exactly as a remote GPU box is), one after the other in each
repeat. The clock starts when the
job's script starts and stops when the last point is committed in DuckDB
(polled with ``select count(*)`` through the controller every 0.2 s), so
the rate includes writing the file, the agent's reads, the polls, parsing
and the inserts.

MLflow, in the same run: the interpreter given by ``--mlflow-python`` (a
venv of its own; MLflow is no dependency of mlfleet) logs the same points
with ``MlflowClient.log_batch`` in batches of 1,000 metrics (MLflow's limit
per call) to its default local store, in a fresh folder. Its clock covers
the ``log_batch`` calls only (not creating the store or the run). It logs
as many points as mlfleet unless ``--mlflow-steps`` asks for a fraction;
the rates are compared as points/s. Prints a Markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

EMIT = textwrap.dedent("""\
    import sys, time
    from mlfleet import track
    steps, width, distinct = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "distinct"
    names = ["loss", "accuracy", "lr", "grad_norm", "val_loss", "val_accuracy", "throughput",
             "gpu_mem", "tokens", "perplexity"][:width] + [f"extra_{i}" for i in range(max(0, width - 10))]
    print(f"start={time.time():.6f}", flush=True)
    for step in range(steps):
        base = 1.0 / (step + 1)
        if distinct:  # every point a key of its own: steps x width keys in the run
            names = [f"s{step}/k{i}" for i in range(width)]
        track.log({name: base * (i + 1) for i, name in enumerate(names)}, step=step)
    track.flush()
    print(f"logged={time.time():.6f}", flush=True)
    """)

MLFLOW = textwrap.dedent("""\
    import json, os, sys, time
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    steps, width, uri = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if uri:
        mlflow.set_tracking_uri(uri)
    names = ["loss", "accuracy", "lr", "grad_norm", "val_loss", "val_accuracy", "throughput",
             "gpu_mem", "tokens", "perplexity"][:width] + [f"extra_{i}" for i in range(max(0, width - 10))]
    started = time.perf_counter()
    client = MlflowClient()
    run_id = client.create_run(experiment_id="0").info.run_id
    setup = time.perf_counter() - started
    ts = int(time.time() * 1000)
    started = time.perf_counter()
    pending = []
    for step in range(steps):
        base = 1.0 / (step + 1)
        for i, name in enumerate(names):
            pending.append(Metric(name, base * (i + 1), ts, step))
            if len(pending) == 1000:  # MLflow takes at most 1,000 metrics per log_batch
                client.log_batch(run_id, metrics=pending)
                pending = []
    if pending:
        client.log_batch(run_id, metrics=pending)
    seconds = time.perf_counter() - started
    stored = sum(len(client.get_metric_history(run_id, name)) for name in names)
    client.set_terminated(run_id)
    print(json.dumps({"version": mlflow.__version__, "uri": mlflow.get_tracking_uri(), "points": steps * width,
                      "stored": stored, "seconds": seconds, "setup_s": setup}))
    """)


class Installation:
    """One throwaway mlfleet home, driven through the real CLI like the test fixture does."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlfb", dir="/tmp"))  # short: Unix socket paths must fit
        self.env = {**os.environ, "MLFLEET_HOME": str(self.root)}

    def cli(self, *args: str, timeout: float = 600) -> str:
        proc = subprocess.run([sys.executable, "-m", "mlfleet", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"mlfleet {' '.join(args)} exited {proc.returncode}: {proc.stderr or proc.stdout}")
        return proc.stdout

    async def count(self, run_id: str) -> int:
        from mlfleet.core.controller.client import connect
        from mlfleet.core.base.paths import Home

        async with await connect(Home.from_env(self.env), autostart=False) as client:
            answer = await client.call("db_query", sql=f"select count(*) from metrics where run_id = '{run_id}'")
        return int(answer["rows"][0][0])

    def close(self) -> None:
        """Stop the controller, agent, runner and job of this home (found by its path), then delete it."""
        mine = []
        for proc in psutil.process_iter(["pid", "environ", "cmdline"]):
            try:
                env = proc.info.get("environ") or {}
                cmd = " ".join(proc.info.get("cmdline") or [])
            except (psutil.Error, OSError):
                continue
            if proc.pid != os.getpid() and (any(str(self.root) in str(v) for v in env.values())
                                            or str(self.root) in cmd):
                mine.append(proc)
        for proc in mine:
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(mine, timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def add_ssh_host(fleet: Installation) -> Any:
    """A loopback sshd as host ``bench`` (the test suite's SshServer), trusted and up."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from sshd import SshServer, keygen

    key = keygen(fleet.root / "user_key")
    server = SshServer(fleet.root / "sshd", key).start()
    fleet.cli("hosts", "add", "bench", "--address", "127.0.0.1", "--port", str(server.port), "--user", server.user,
              "--identity", str(key), "--agent-command", f"{sys.executable} -m mlfleet",
              "--state-dir", str(fleet.root / "state-bench"))
    fleet.cli("hosts", "trust", "bench", "--yes")
    deadline = time.time() + 60
    while time.time() < deadline:
        hosts = json.loads(fleet.cli("hosts", "list", "--json"))
        if any(h["name"] == "bench" and h["state"] == "up" and h["telemetry"] for h in hosts):
            return server
        time.sleep(0.3)
    raise SystemExit("the SSH host did not come up within 60 s")


def run_mlfleet(steps: int, width: int, host: str, distinct: bool = False) -> dict[str, Any]:
    fleet = Installation()
    server = None
    try:
        specs = fleet.root / "specs"
        specs.mkdir()
        (specs / "emit.py").write_text(EMIT)
        spec = specs / "emit.yaml"
        pin = "constraints: {hosts: [bench]}\n" if host == "ssh" else ""
        mode = "distinct" if distinct else "same"
        spec.write_text(f"name: ingest-bench\ncommand: [python, emit.py, '{steps}', '{width}', {mode}]\n{pin}")
        fleet.cli("controller", "start")
        if host == "ssh":
            server = add_ssh_host(fleet)
        job_id = fleet.cli("submit", str(spec)).strip()
        run_id = f"{job_id}-1"
        expected = steps * width
        committed_at, counted = None, 0
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                counted = asyncio.run(fleet.count(run_id))
            except Exception:  # the run row may not exist yet; the controller may be busy starting
                counted = 0
            if counted >= expected:
                committed_at = time.time()
                break
            time.sleep(0.2)
        if committed_at is None:
            raise SystemExit(f"only {counted:,} of {expected:,} points were committed in 15 minutes")
        logs = fleet.cli("jobs", "logs", job_id)
        marks = dict(line.split("=", 1) for line in logs.splitlines() if "=" in line)
        start, logged = float(marks["start"]), float(marks["logged"])
        size = sum(p.stat().st_size for p in fleet.root.rglob("metrics.jsonl"))
        return {"points": expected, "seconds": committed_at - start, "logging_s": logged - start,
                "behind_s": committed_at - logged, "bytes": size}
    finally:
        fleet.close()
        if server is not None:
            server.stop()


def run_mlflow(python: str, steps: int, width: int, uri: str) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="mlflowbench", dir="/tmp"))
    try:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # its default store, unless --mlflow-uri
        proc = subprocess.run([python, "-c", MLFLOW, str(steps), str(width), uri], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"the MLflow run failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=10, help="metrics per step")
    parser.add_argument("--distinct", action="store_true",
                        help="every point a metric key of its own (steps x width keys: the many-keys case)")
    parser.add_argument("--repeat", type=int, default=3, help="mlfleet runs (each in a fresh installation)")
    parser.add_argument("--hosts", default="local,ssh", help="where the job runs, in each repeat: local, ssh or both")
    parser.add_argument("--mlflow-python", help="an interpreter with mlflow installed (skipped without one)")
    parser.add_argument("--mlflow-steps", type=int, help="steps MLflow logs, when it should log a fraction "
                                                          "(default: as many as mlfleet)")
    parser.add_argument("--mlflow-uri", default="", help="a tracking URI instead of MLflow's default local store")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, load average at start {os.getloadavg()[0]:.1f}")
    print()
    print("| system | points | seconds | points/s | notes |")
    print("|---|---|---|---|---|")
    rates: dict[str, list[float]] = {}
    where = {"local": "local agent socket", "ssh": "agent over SSH to loopback sshd"}
    for i in range(args.repeat):
        for host in args.hosts.split(","):
            ours = run_mlfleet(args.steps, args.width, host, args.distinct)
            rates.setdefault(host, []).append(ours["points"] / ours["seconds"])
            print(f"| mlfleet on {host}, run {i + 1} (track.log -> {where[host]} -> controller -> DuckDB) | {ours['points']:,} | "
                  f"{ours['seconds']:.1f} | {rates[host][-1]:,.0f} | the job logged for {ours['logging_s']:.1f} s; the last "
                  f"point was committed {ours['behind_s']:.1f} s after; {ours['bytes'] / 1e6:.0f} MB of lines |",
                  flush=True)
    if args.mlflow_python:
        theirs = run_mlflow(args.mlflow_python, args.mlflow_steps or args.steps, args.width, args.mlflow_uri)
        their_rate = theirs["points"] / theirs["seconds"]
        assert theirs["stored"] == theirs["points"], theirs
        scaled = "" if theirs["points"] >= args.steps * args.width else \
            f"; {args.steps * args.width:,} points at this rate: ~{args.steps * args.width / their_rate:,.0f} s"
        print(f"| MLflow {theirs['version']} log_batch x 1000 ({theirs['uri']}) | {theirs['points']:,} | "
              f"{theirs['seconds']:.1f} | {their_rate:,.0f} | store and run set up in {theirs['setup_s']:.1f} s "
              f"(not counted){scaled} |")
        for host, host_rates in rates.items():
            print(f"\nmlfleet on {host} (median of {len(host_rates)}) / MLflow: "
                  f"{statistics.median(host_rates) / their_rate:,.1f}x")
    if "local" in rates and "ssh" in rates:
        print(f"\nSSH / local (medians): {statistics.median(rates['ssh']) / statistics.median(rates['local']):.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
