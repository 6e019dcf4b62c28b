"""A team's TUIs on one shared controller: 20 clients over SSH, each refreshing at 1 Hz, beside the local floor.

    .venv/bin/python benchmarks/team_clients_bench.py [--clients 20] [--seconds 30] [--jobs 100]

Run as root (it starts a real sshd on loopback, tests/sshd.py). One real
controller (``mlfleet controller serve --team root``, its own process) holds
``--jobs`` finished jobs. Then ``--clients`` clients, each with its own SSH
connection (``--controller ssh://root@127.0.0.1:PORT/SOCKET``: strict host
key, a direct-streamlocal channel to the team socket, exactly the remote
client's code, core/controller/remote.py) ask what a TUI refresh asks,
``status`` and ``jobs_list`` (limit 200, the jobs view's), once a second
each, their starts spread over the second. Latency is one refresh: both
answers, from before the first request to after the second answer.

The same clients on the controller's local socket are the floor (no SSH:
what a user on the head node gets). The clients run in this process, the
controller in its own; on a small machine they share cores, so the load
average is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sshd import SshServer, keygen  # noqa: E402

from mlfleet.core.base.controller_url import parse_url  # noqa: E402
from mlfleet.core.base.paths import Home  # noqa: E402
from mlfleet.core.controller.client import ControllerClient, connect_remote, try_connect  # noqa: E402
from mlfleet.core.controller.remote import presented_key, record  # noqa: E402

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))


async def refresh(client: ControllerClient) -> float:
    started = time.perf_counter()
    await client.call("status")
    await client.call("jobs_list", limit=200)
    return time.perf_counter() - started


async def one_client(client: ControllerClient, offset: float, seconds: float, out: list[float]) -> None:
    await asyncio.sleep(offset)
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    end = next_at + seconds
    while loop.time() < end:
        out.append(await refresh(client))
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def measure(clients: list[ControllerClient], seconds: float) -> list[float]:
    latencies: list[float] = []
    n = len(clients)
    await asyncio.gather(*(one_client(c, i / n, seconds, latencies) for i, c in enumerate(clients)))
    return latencies


def figures(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"refreshes": len(ordered), "p50": statistics.median(ordered) * 1000, "p95": pick(0.95) * 1000,
            "max": ordered[-1] * 1000}


async def seed(home: Home, jobs: int, folder: Path) -> None:
    """``jobs`` tiny jobs, so jobs_list answers a real list (they run and end on the local host)."""
    spec_path = folder / "job.yaml"
    spec_path.write_text('name: bench\ncommand: "true"\n')
    client = await try_connect(home)
    assert client is not None
    async with client:
        for i in range(jobs):
            await client.call("submit", spec={"name": f"bench-{i}", "command": "true", "workdir": str(folder)}, spec_path=str(spec_path),
                              key=f"bench-{i:06d}-{'x' * 16}")
        while True:  # measured once they all ended: a refresh, not a launch storm, is what is timed
            jobs_now = await client.call("jobs_list", limit=200)
            if all(j["state"] in ("succeeded", "failed", "cancelled") for j in jobs_now):
                return
            await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlfbench", dir="/tmp"))
    base = Path(tempfile.mkdtemp(prefix="mlfbsock", dir="/tmp"))
    os.chmod(base, 0o755)
    socket_path = base / "team" / "c.sock"
    env = {**os.environ, "MLFLEET_HOME": str(root / "head")}
    home = Home(root / "head", root / "head")
    client_home = Home(root / "client", root / "client")
    key = keygen(root / "user_key")
    sshd = SshServer(root / "sshd", key).start()
    log = open(root / "serve.log", "ab")
    controller = subprocess.Popen([MLFLEET, "controller", "serve", "--team", "root", "--socket", str(socket_path)],
                                  env=env, stdout=log, stderr=log, cwd="/")
    try:
        for _ in range(300):
            probe = await try_connect(home) if socket_path.exists() else None
            if probe is not None:
                await probe.close()
                break
            await asyncio.sleep(0.1)
        await seed(home, args.jobs, root)
        (root / "client").mkdir(mode=0o700)
        (root / "client" / "config.yaml").write_text(f"controller:\n  identity: {key}\n")
        target = parse_url(f"ssh://root@127.0.0.1:{sshd.port}{socket_path}")
        record(client_home, target, await presented_key(target))
        load_before = os.getloadavg()
        results = {}
        for name, opener in (("local socket", lambda: try_connect(home)),
                             ("SSH", lambda: connect_remote(client_home, target))):
            opened = time.perf_counter()
            clients = [await opener() for _ in range(args.clients)]
            connect_s = (time.perf_counter() - opened) / args.clients
            assert all(c is not None for c in clients)
            cpu_before = psutil.Process(controller.pid).cpu_times()
            results[name] = figures(await measure(clients, args.seconds))  # type: ignore[arg-type]
            cpu_after = psutil.Process(controller.pid).cpu_times()
            busy = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
            results[name]["controller_cpu"] = 100 * busy / args.seconds
            results[name]["connect_ms"] = connect_s * 1000
            for client in clients:
                await client.close()  # type: ignore[union-attr]
        load_after = os.getloadavg()
    finally:
        controller.terminate()
        controller.wait(30)
        log.close()
        sshd.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    cores = os.cpu_count()
    memory = psutil.virtual_memory().total / 1024**3
    print(f"machine: {platform.machine()}, {cores} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
          f"{dt.date.today()}, load average {load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end")
    print(f"{args.clients} clients, status + jobs_list (limit 200, {args.jobs} jobs) once a second each, "
          f"{args.seconds:.0f} s")
    print("| path | refreshes | p50 (ms) | p95 (ms) | max (ms) | connect (ms, each) | controller CPU (% of a core) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['refreshes']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | "
              f"{r['connect_ms']:.0f} | {r['controller_cpu']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--jobs", type=int, default=100)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
