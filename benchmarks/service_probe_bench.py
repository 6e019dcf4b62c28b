"""What health probing costs the agent (issue 16): ten replicas probed at 1 Hz, beside ten plain jobs.

    .venv/bin/python benchmarks/service_probe_bench.py [--replicas 10] [--seconds 30]

A real agent (``mlfleet agent serve`` on a fresh state dir) runs, in turn:

* ``jobs``: N long-running plain jobs (``sleep``): the agent's floor (telemetry at 1 Hz, housekeeping);
* ``services``: N replicas, each a stdlib ThreadingHTTPServer, with a liveness probe and a deep probe
  (POST with a JSON body) both every second: 2N probes a second.

Once all replicas are healthy, the agent's CPU time (user + system, from
/proc through psutil) is read over ``--seconds``; the figure is CPU seconds
per wall second, in percent of one core. The difference is what probing
costs. Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from mlfleet.core.base.models import HealthProbe, LaunchRequest, Seconds, ServicePlan, to_plain
from mlfleet.core.base.protocol import open_unix_peer

SERVER = r'''
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def _ok(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = _ok
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["MLFLEET_PORT"])), H).serve_forever()
'''


async def measure(root: Path, kind: str, replicas: int, seconds: float) -> float:
    state, sock = root / f"state-{kind}", root / f"{kind}.sock"
    agent = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                              "--socket", str(sock), "--name", "bench"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline, "the agent did not start"
            await asyncio.sleep(0.1)
        peer = await open_unix_peer(str(sock), "agent")
        await peer.hello("bench")
        every = HealthProbe(interval=Seconds(1.0), timeout=Seconds(1.0))
        deep = HealthProbe(path="/predict", method="POST", body='{"rows": [[5.1, 3.5, 1.4, 0.2]]}',
                           interval=Seconds(1.0), timeout=Seconds(1.0))
        ids = [f"{kind}-{i}" for i in range(replicas)]
        for run_id in ids:
            service = ServicePlan(deployment="bench", version=1, replica=run_id, health=every, deep=deep) \
                if kind == "services" else None
            argv = [sys.executable, str(root / "server.py")] if service else ["sleep", "3600"]
            request = LaunchRequest(run_id=run_id, job_id=run_id, argv=argv, workdir=str(root), env={},
                                    service=service)
            await peer.request("launch", request=to_plain(request))
        deadline = time.monotonic() + 60
        while True:
            statuses = await peer.request("status", run_ids=ids)
            if all(s["state"] == "running" and (kind == "jobs" or s["service"]["health"] == "healthy")
                   for s in statuses):
                break
            assert time.monotonic() < deadline, statuses
            await asyncio.sleep(0.5)
        await peer.close()  # no controller polling during the measurement: the agent's own work only
        proc = psutil.Process(agent.pid)
        await asyncio.sleep(2.0)
        before, began = proc.cpu_times(), time.monotonic()
        await asyncio.sleep(seconds)
        after, wall = proc.cpu_times(), time.monotonic() - began
        used = (after.user - before.user) + (after.system - before.system)
        peer = await open_unix_peer(str(sock), "agent")
        await peer.hello("bench")
        for run_id in ids:
            await peer.request("cancel", run_id=run_id)
        await peer.close()
        return 100.0 * used / wall
    finally:
        agent.terminate()
        agent.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlfsvc", dir="/tmp"))
    try:
        (root / "server.py").write_text(SERVER)
        floor = await measure(root, "jobs", args.replicas, args.seconds)
        probed = await measure(root, "services", args.replicas, args.seconds)
    finally:
        time.sleep(1)
        shutil.rmtree(root, ignore_errors=True)
    print(f"| agent CPU, {args.replicas} runs, {args.seconds:.0f} s | % of one core |")
    print("|---|---:|")
    print(f"| {args.replicas} plain jobs (the floor) | {floor:.2f} |")
    print(f"| {args.replicas} replicas, liveness + deep probe each at 1 Hz | {probed:.2f} |")
    print(f"| probing ({2 * args.replicas} probes/s) | {probed - floor:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
