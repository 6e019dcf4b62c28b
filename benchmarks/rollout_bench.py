"""Rolling updates under load: the shipped sentiment deployment, 2 replicas, 200 requests/s through `deploy open`.

    .venv/bin/python benchmarks/rollout_bench.py [--rate 200] [--keep]

A fresh installation (its own MLFLEET_HOME under /tmp), the local host only,
the shipped configs/deploy/sentiment.yaml with its default probe settings
(health every 2 s, 3 failures, deep probe a real prediction). Three versions
are trained by the shipped job: v1, v2, and a v3 trained with
`--set params.broken=true` (its /health answers 200, its /predict 500).
Measured, with benchmarks/loadgen.py sending a constant rate, a new
connection per request, through `mlfleet deploy open`:

1. the alias moved v1 -> v2: failed requests (goal 0) and seconds until only
   v2 serves and the rollout is over;
2. the alias moved v2 -> v3: failed requests (goal 0), seconds from the v3
   server's first failed deep probe (the moment its port is known and it is
   probed) to the rollback being complete (goal at most 30 s), and from the
   alias move.

Prints one JSON object and a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from loadgen import run_load  # noqa: E402

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))
BODY = '{"texts": ["what a superb film"]}'


class Install:
    def __init__(self, root: Path) -> None:
        self.env = {**os.environ, "MLFLEET_HOME": str(root)}

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([MLFLEET, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SystemExit(f"mlfleet {' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")
        return done.stdout

    def json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json"))

    def show(self) -> dict:
        return self.json("deploy", "show", "sentiment")  # type: ignore[return-value]

    def wait(self, predicate, timeout: float, what: str) -> float:
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if predicate(self.show()):
                return time.monotonic()
            time.sleep(0.2)
        raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def serving_only(version: int, count: int = 2):
    def check(d: dict) -> bool:
        eps = d["endpoints"]
        return len(eps) == count and {e["version"] for e in eps} == {version} and d["phase"] in ("stable", "rolled_back") \
            and len(d["replicas"]) == count
    return check


def train(install: Install, *extra: str) -> str:
    done = install.json("submit", str(REPO / "configs/deploy/sentiment-train.yaml"), "--wait", *extra)
    return done["run_id"]  # type: ignore[index]


def load_in_background(port: int, rate: float, duration: float) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def go() -> None:
        result.update(asyncio.run(run_load("127.0.0.1", port, rate=rate, duration=duration, body=BODY)))

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, result


def _stop_leftovers(root: Path) -> None:
    import psutil

    mine = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + " ".join((proc.info["environ"] or {}).values())
        except (psutil.Error, OSError):
            continue
        if str(root) in text and proc.pid != os.getpid():
            mine.append(proc)
    for proc in mine:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(mine, timeout=5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--keep", action="store_true", help="leave the installation for a look afterwards")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mlfbench", dir="/tmp"))
    install = Install(root)
    opened = None
    try:
        runs = [train(install), train(install, "--set", "params.seed=7"), train(install, "--set", "params.broken=true")]
        install.cli("models", "register", "sentiment", "--run", runs[0], "--artifact", "model.json", "--alias", "production")
        for run in runs[1:]:
            install.cli("models", "register", "sentiment", "--run", run, "--artifact", "model.json")
        install.cli("deploy", "apply", str(REPO / "configs/deploy/sentiment.yaml"))
        install.wait(serving_only(1), 180, "v1 to serve")

        opened = subprocess.Popen([MLFLEET, "deploy", "open", "sentiment", "--port", "0"], env=install.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert opened.stdout is not None
        port = next(int(line.split()[1].rsplit(":", 1)[1]) for line in opened.stdout if line.startswith("forwarding"))
        threading.Thread(target=lambda: [None for _ in opened.stdout], daemon=True).start()

        # 1. v1 -> v2
        thread, rolling = load_in_background(port, args.rate, 90.0)
        time.sleep(3)
        moved = time.monotonic()
        install.cli("models", "alias", "sentiment", "production", "2", "--reason", "benchmark")
        done = install.wait(serving_only(2), 120, "v2 to serve")
        rollout_s = done - moved
        thread.join()

        # 2. v2 -> broken v3
        thread, broken = load_in_background(port, args.rate, 90.0)
        time.sleep(3)
        moved = time.monotonic()
        install.cli("models", "alias", "sentiment", "production", "3", "--reason", "benchmark: broken")
        probed = install.wait(lambda d: any(r["version"] == 3 and r.get("port") for r in d["replicas"]), 60,
                              "the v3 server to be up and probed")
        rolled = install.wait(lambda d: d["phase"] == "rolled_back" and serving_only(2)(d), 120, "v3 to be rolled back")
        thread.join()
    finally:
        if opened is not None:
            opened.terminate()
            opened.wait(10)
        subprocess.run([MLFLEET, "deploy", "stop", "sentiment"], env=install.env, capture_output=True, timeout=60)
        subprocess.run([MLFLEET, "controller", "stop"], env=install.env, capture_output=True, timeout=60)
        _stop_leftovers(root)  # replicas outlive a controller by design: end what this run started
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    figures = {
        "rate": args.rate,
        "rollout": {"requests": rolling["sent"], "failed": rolling["failed"], "seconds": round(rollout_s, 1),
                    "p99_ms": rolling.get("latency_ms", {}).get("p99")},
        "broken": {"requests": broken["sent"], "failed": broken["failed"],
                   "first_failed_probe_to_rolled_back_s": round(rolled - probed, 1),
                   "alias_move_to_rolled_back_s": round(rolled - moved, 1)},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"), "load": os.getloadavg()[0],
    }
    print(json.dumps(figures, indent=1))
    r, b = figures["rollout"], figures["broken"]
    print(f"| {args.rate:g} req/s | {r['requests']} | {r['failed']} | {r['seconds']} s | {b['requests']} | {b['failed']} "
          f"| {b['first_failed_probe_to_rolled_back_s']} s | {b['alias_move_to_rolled_back_s']} s |")
    return 0 if r["failed"] == 0 and b["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
