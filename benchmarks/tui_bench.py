"""The TUI under a big fleet: CPU of the TUI process and key-press latency.

    .venv/bin/python benchmarks/tui_bench.py [--hosts 100] [--gpus 8] [--seconds 60] [--presses 100]

The controller cannot present 100 hosts on one workstation without 100
agents, so this benchmark starts a stand-in controller (``serve``, in a
process of its own) that speaks the real protocol (``core.protocol`` Peer
and ``method_dispatcher`` on the installation's Unix socket, ``hello``
first) and answers ``hosts_list`` with ``--hosts`` hosts of ``--gpus``
simulated GPUs whose telemetry changes every second (a new sample per host
each second, every GPU's utilisation, memory, temperature and power moving),
plus a queue of jobs for the jobs view.

The TUI itself is the real one: ``python -m mlfleet`` in a tmux terminal of
200x50 with ``MLFLEET_HOME`` pointing at the stand-in, polling it once a
second as it would poll the controller. Measured:

* CPU: ``psutil`` ``cpu_times()`` (user+system) of the TUI process over
  ``--seconds`` of live updates on the fleet view, in % of one core.
* key latency: ``tmux send-keys j`` (or ``k``) and then ``capture-pane``
  every 5 ms until the screen shows the effect (the host card below the
  table changes to the next host); the time from send to the first capture
  that shows it. It includes tmux's own round trip and the polling, so it
  is an upper bound; on a busy machine it also includes waiting for a core.
  Beside it, the TUI process's own CPU time over the same interval (the
  work it did to answer, which does not depend on the load).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

GIB = 1024**3
SESSION = "bench"


# ------------------------------------------------------------------ the stand-in controller

class FakeFleet:
    """``rpc_*`` methods in the controller's shapes, for a fleet that exists only here."""

    def __init__(self, hosts: int, gpus: int) -> None:
        self.hosts, self.gpus = hosts, gpus
        self.started = time.time()
        self.jobs = [self._job(i) for i in range(60)]

    async def rpc_hello(self, peer: Any, protocol: int, role: str = "") -> dict[str, Any]:
        from mlfleet import __version__
        from mlfleet.core.base.hello import PROTOCOL_VERSION

        return {"protocol": PROTOCOL_VERSION, "role": "controller", "version": __version__}

    async def rpc_hosts_list(self, peer: Any, history: int = 0) -> list[dict[str, Any]]:
        now = int(time.time())
        return [self._host(i, now, history) for i in range(self.hosts)]

    async def rpc_jobs_list(self, peer: Any, limit: int = 200, states: list[str] | None = None) -> list[dict[str, Any]]:
        return self.jobs[:limit]

    async def rpc_job_logs(self, peer: Any, job: str, stream: str = "stdout", offset: int = 0,
                           max_bytes: int = 262144, run: str | None = None) -> dict[str, Any]:
        return {"job_id": job, "run_id": f"{job}-1", "state": "running", "offset": offset, "end": offset,
                "data": "", "eof": False}

    async def rpc_runs_list(self, peer: Any, limit: int = 200, where: str | None = None,
                            sort: str | None = None) -> list[dict[str, Any]]:
        return []

    async def rpc_drift_list(self, peer: Any, limit: int = 200, run: str | None = None) -> list[dict[str, Any]]:
        return []

    async def rpc_audit_list(self, peer: Any, limit: int = 200, action: str | None = None) -> list[dict[str, Any]]:
        return []

    def _host(self, i: int, now: int, history: int) -> dict[str, Any]:
        def wave(period: float, phase: float, t: float = now) -> float:
            return 0.5 + 0.5 * math.sin(2 * math.pi * t / period + phase)

        gpus = []
        for g in range(self.gpus):
            busy = (i + g) % 3 != 0
            util = 100 * wave(37, i * 0.7 + g) if busy else 0.0
            gpus.append({"index": g, "uuid": f"GPU-{i}-{g}", "name": "NVIDIA H100 80GB HBM3 (simulated)",
                         "utilization": round(util), "memory_total": 80 * GIB,
                         "memory_used": int((5 + 70 * wave(53, i + g)) * GIB) if busy else 0,
                         "memory_free": 0, "temperature": round(35 + 40 * wave(41, g)),
                         "power_draw": round(70 + 600 * util / 100), "power_limit": 700.0,
                         "processes": [{"pid": 4000 + g, "used_memory": 20 * GIB, "name": "python",
                                        "run_id": f"j{i:03d}{g}-1"}] if busy else []})
        cpu = 100 * wave(29, i)
        telemetry = {"seq": now, "ts": float(now), "cpu_percent": round(cpu, 1), "cpu_count": 128,
                     "load1": round(cpu * 1.28, 2), "memory_total": 1024 * GIB,
                     "memory_used": int((200 + 500 * wave(61, i)) * GIB), "swap_used": 0, "disk_total": 8000 * GIB,
                     "disk_used": 3000 * GIB, "net_rx_bps": 1e8 * wave(13, i), "net_tx_bps": 1e7,
                     "gpu_state": "ok", "gpu_message": "", "gpus": gpus}
        host = {"name": f"host-{i:03d}", "kind": "ssh", "address": f"10.0.{i // 250}.{i % 250}",
                "labels": {"region": ("eu-west", "us-east")[i % 2], "rack": f"r{i // 10}"}, "state": "up",
                "message": "", "agent_version": "0.1.0", "simulated": True, "last_seen": float(now), "info": {},
                "telemetry": telemetry, "running_jobs": sum(1 for g in gpus if g["processes"]), "drained": None}
        if history:
            points = range(now - min(history, 120) + 1, now + 1)
            host["history"] = {"cpu_percent": [round(100 * wave(29, i, t), 1) for t in points],
                               "memory_percent": [round(100 * (200 + 500 * wave(61, i, t)) / 1024, 1) for t in points]}
        return host

    def _job(self, i: int) -> dict[str, Any]:
        state = ("running", "pending", "succeeded", "failed")[i % 4]
        return {"job_id": f"j{i:05d}", "name": f"train-{i}", "project": "bench", "owner": "bench", "state": state,
                "reason": "waiting for 8 GPUs" if state == "pending" else None, "priority": 0, "attempt": 1,
                "max_attempts": 1, "host": f"host-{i % self.hosts:03d}", "gpus": [0, 1], "run_id": f"j{i:05d}-1",
                "submitted_at": "2026-11-29T03:00:00+00:00", "started_at": "2026-11-29T03:00:05+00:00",
                "finished_at": None if state in ("running", "pending") else "2026-11-29T03:10:00+00:00",
                "exit_code": None}


async def serve(home_dir: str, hosts: int, gpus: int) -> None:
    from mlfleet.core.base.paths import Home
    from mlfleet.core.base.frames import MAX_FRAME
    from mlfleet.core.base.protocol import Peer
    from mlfleet.core.base.rpc import method_dispatcher

    home = Home(config_dir=Path(home_dir), data_dir=Path(home_dir))
    home.ensure()
    fleet = FakeFleet(hosts, gpus)
    dispatch = method_dispatcher(fleet)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, dispatch, name="client")
        peer.start()
        await peer.wait_closed()

    path = home.controller_socket
    path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(on_connect, path=str(path), limit=MAX_FRAME)
    os.chmod(path, 0o600)
    async with server:
        await server.serve_forever()


# ------------------------------------------------------------------ the measurement

class Tmux:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", str(self.socket), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def screen(self, target: str = SESSION) -> str:
        return self("capture-pane", "-p", "-t", target)

    def wait_for(self, predicate: Any, timeout: float = 60.0, interval: float = 0.005, target: str = SESSION) -> float:
        """Seconds until ``predicate(screen)`` holds (polling capture-pane)."""
        started = time.perf_counter()
        while True:
            if predicate(self.screen(target)):
                return time.perf_counter() - started
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"the screen never showed it; it shows:\n{self.screen()}")
            time.sleep(interval)


def card_title(screen: str) -> str | None:
    """The host named in the card's top border (``╭─ host-007 ──``)."""
    for line in screen.splitlines():
        if line.startswith("╭─ host-"):
            return line[3:].split()[0]
    return None


def measure(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="mlfb", dir="/tmp"))
    env = {**os.environ, "MLFLEET_HOME": str(root)}
    fake = subprocess.Popen([sys.executable, __file__, "serve", "--home", str(root), "--hosts", str(args.hosts),
                             "--gpus", str(args.gpus)], env=env)
    tmux = Tmux(root / "tmux.sock")
    try:
        deadline = time.time() + 20
        while not (root / "run").exists() or not any((root / "run").glob("*.sock")):
            if time.time() > deadline or fake.poll() is not None:
                raise RuntimeError("the stand-in controller did not start")
            time.sleep(0.05)
        command = f"exec {shlex.quote(sys.executable)} -m mlfleet"
        tmux("new-session", "-d", "-s", SESSION, "-x", "200", "-y", "50", f"MLFLEET_HOME={shlex.quote(str(root))} {command}")
        tui = psutil.Process(int(tmux("display-message", "-p", "-t", SESSION, "#{pane_pid}").strip()))
        tmux.wait_for(lambda s: "host-000" in s and card_title(s) == "host-000", timeout=60)
        time.sleep(args.warmup)

        # CPU of the TUI process while the fleet view updates at 1 Hz.
        fake_proc = psutil.Process(fake.pid)
        cpu0, fake0, wall0 = tui.cpu_times(), fake_proc.cpu_times(), time.perf_counter()
        load0 = psutil.cpu_times()
        time.sleep(args.seconds)
        cpu1, fake1, wall1 = tui.cpu_times(), fake_proc.cpu_times(), time.perf_counter()
        load1 = psutil.cpu_times()
        wall = wall1 - wall0
        tui_cpu = 100 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall
        fake_cpu = 100 * ((fake1.user - fake0.user) + (fake1.system - fake0.system)) / wall
        busy = sum(getattr(load1, f) - getattr(load0, f) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        total = busy + (load1.idle - load0.idle) + (getattr(load1, "iowait", 0) - getattr(load0, "iowait", 0))
        machine_busy = 100 * busy / total if total else 0.0

        # Key latency: j moves the cursor down, the card below follows; k moves it back.
        latencies, work = [], []
        for n in range(args.presses):
            key, expect = ("j", "host-001") if n % 2 == 0 else ("k", "host-000")
            before = tui.cpu_times()
            started = time.perf_counter()
            tmux("send-keys", "-t", SESSION, key)
            tmux.wait_for(lambda s: card_title(s) == expect, timeout=10)
            latencies.append(time.perf_counter() - started)
            after = tui.cpu_times()
            work.append((after.user - before.user) + (after.system - before.system))
            time.sleep(0.25 + (n % 5) * 0.07)  # presses land at different points of the 1 s refresh cycle
        # The ':' command line, a view switch to jobs and back.
        started = time.perf_counter()
        tmux("send-keys", "-t", SESSION, ":")
        tmux.wait_for(lambda s: ":hosts :jobs" in s, timeout=10)
        colon = time.perf_counter() - started
        tmux("send-keys", "-t", SESSION, "Escape")
        time.sleep(0.5)
        started = time.perf_counter()
        tmux("send-keys", "-t", SESSION, "2")
        tmux.wait_for(lambda s: "mlfleet · jobs" in s and "REASON" in s, timeout=10)
        to_jobs = time.perf_counter() - started
        # Later switches find the view mounted (the app keeps one screen per view): 1 and 2 in turn.
        switches = []
        for n in range(10):
            time.sleep(0.3)
            key, shows = ("1", lambda s: "mlfleet · fleet" in s and card_title(s) is not None) if n % 2 == 0 else \
                ("2", lambda s: "mlfleet · jobs" in s and "REASON" in s)
            started = time.perf_counter()
            tmux("send-keys", "-t", SESSION, key)
            tmux.wait_for(shows, timeout=10)
            switches.append(time.perf_counter() - started)
        tmux("send-keys", "-t", SESSION, "q")

        # The floor: the same send-keys/capture-pane loop against `cat` in a second window, which
        # echoes a key with no work at all. What tmux, the polling and the machine's load cost.
        tmux("new-window", "-d", "-t", SESSION, "-n", "floor", "exec cat")
        floor = []
        for n in range(args.presses):
            mark = f"k{n}x"
            started = time.perf_counter()
            tmux("send-keys", "-t", f"{SESSION}:floor", "-l", mark)
            tmux.wait_for(lambda s, m=mark: m in s.replace("\n", ""), timeout=10, target=f"{SESSION}:floor")  # the marks wrap
            floor.append(time.perf_counter() - started)
            time.sleep(0.25)
    finally:
        subprocess.run(["tmux", "-S", str(tmux.socket), "kill-server"], capture_output=True, timeout=10)
        fake.terminate()
        fake.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    ms = sorted(1000 * x for x in latencies)
    cpu_ms = sorted(1000 * x for x in work)
    floor_ms = sorted(1000 * x for x in floor)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB",
        "python": platform.python_version(), "hosts": args.hosts, "gpus_per_host": args.gpus,
        "seconds": round(wall, 1), "tui_cpu_percent_of_one_core": round(tui_cpu, 2),
        "stand_in_controller_cpu_percent": round(fake_cpu, 2), "machine_busy_percent_all_cores": round(machine_busy, 1),
        "key_presses": len(ms), "key_latency_ms": {"median": round(statistics.median(ms), 1),
                                                   "p95": round(ms[max(0, math.ceil(0.95 * len(ms)) - 1)], 1),
                                                   "max": round(ms[-1], 1), "min": round(ms[0], 1)},
        "floor_send_keys_to_cat_ms": {"median": round(statistics.median(floor_ms), 1),
                                      "p95": round(floor_ms[max(0, math.ceil(0.95 * len(floor_ms)) - 1)], 1)},
        "tui_cpu_ms_per_key_press": {"median": round(statistics.median(cpu_ms), 1), "max": round(cpu_ms[-1], 1)},
        "colon_command_line_ms": round(1000 * colon, 1), "first_switch_to_jobs_view_ms": round(1000 * to_jobs, 1),
        "later_view_switches_ms": {"median": round(1000 * statistics.median(switches), 1),
                                   "max": round(1000 * max(switches), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what")
    s = sub.add_parser("serve", help="(internal) the stand-in controller")
    s.add_argument("--home", required=True)
    s.add_argument("--hosts", type=int, default=100)
    s.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="CPU measurement window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--presses", type=int, default=100)
    args = parser.parse_args()
    if args.what == "serve":
        asyncio.run(serve(args.home, args.hosts, args.gpus))
        return
    if shutil.which("tmux") is None:
        sys.exit("tmux is needed: the TUI is measured in a real terminal")
    print(json.dumps(measure(args), indent=2))


if __name__ == "__main__":
    main()
