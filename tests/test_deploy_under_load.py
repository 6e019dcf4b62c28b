"""A user keeps a constant load on ``mlfleet deploy open iris`` while everything that can go wrong with a rollout does.

One story, in the order a team meets them: v1 rolls to v2; a broken v3 (its deep probe, a real prediction,
fails while /health says 200) is rolled back by itself; a spec no host can place leaves v2 serving; the agent
is SIGKILLed mid-rollout; the controller is SIGKILLed mid-rollout. Requests go through the real forwarder,
each on a new connection, from several threads, and not one may fail. At the end exactly the deployment's
replicas are serving processes: nothing started twice.

Real parts throughout: the controller, the local agent, the tiny model server of tests/test_deploy_service.py
(prometheus_client metrics included) and the `mlfleet deploy open` command.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

from conftest import Fleet, under_full_load
from test_deploy_service import deploy_spec, kinds, register_versions, show, wait_serving


class Load:
    """Constant requests through the forwarder from a few threads, a new connection each, every answer kept."""

    def __init__(self, port: int, threads: int = 4, pause: float = 0.02) -> None:
        self.port = port
        self.answers: Counter[tuple[int, str]] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(pause,), daemon=True) for _ in range(threads)]

    def _one(self) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request("POST", "/predict", body=b'{"rows": [[1, 2]]}')
            answer = conn.getresponse()
            body = answer.read()
            return answer.status, json.loads(body)["version"] if answer.status == 200 else body.decode()[:80]
        finally:
            conn.close()

    def _run(self, pause: float) -> None:
        while not self._stop.is_set():
            try:
                got = self._one()
            except Exception as exc:  # noqa: BLE001 - every failure is what the story counts
                with self._lock:
                    self.failures.append(f"{time.strftime('%X')} {type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    self.answers[got] += 1
            time.sleep(pause)

    def served(self, version: int) -> int:
        with self._lock:
            return self.answers[(200, str(version))]

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def _serving_processes(fleet: Fleet) -> list[psutil.Process]:
    """The model servers of this installation that are alive (not the runners that supervise them)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and "server.py" in " ".join(cmd) \
                    and str(fleet.root) in (proc.info["cwd"] or ""):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def _wait_replica_of(fleet: Fleet, version: int) -> None:
    fleet.wait_for(lambda: any(r["version"] == version for r in show(fleet)["replicas"]), timeout=30, interval=0.1,
                   what=f"a v{version} replica to be started")


@under_full_load
def test_requests_never_fail_through_rollouts_a_rollback_an_unplaceable_spec_and_killed_agent_and_controller(
        fleet: Fleet) -> None:
    register_versions(fleet, 3)
    spec = deploy_spec(fleet, extra="env: {BROKEN_VERSIONS: '3'}\n")  # v3 answers /health, fails every prediction
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)

    opened = subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "deploy", "open", "iris", "--port", "0"],
                              env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    load = None
    steps: list[str] = []
    said: list[str] = []
    try:
        assert opened.stdout is not None
        port = next(int(line.split()[1].rsplit(":", 1)[1]) for line in opened.stdout if line.startswith("forwarding"))
        said: list[str] = []  # what the forwarder printed, timed: endpoint changes
        threading.Thread(target=lambda: said.extend(f"{time.strftime('%X')} {line.rstrip()}" for line in opened.stdout),
                         daemon=True).start()
        load = Load(port).start()
        fleet.wait_for(lambda: load.served(1) >= 30, what="v1 answering through deploy open")

        mark = lambda what: steps.append(f"{time.strftime('%X')} {what}")  # noqa: E731
        mark("alias to v2")
        # 1. v1 -> v2 by moving the alias the deployment follows
        fleet.cli("models", "alias", "iris", "production", "2", "--reason", "better on holdout", check=True)
        wait_serving(fleet, 2, 2)
        fleet.wait_for(lambda: load.served(2) >= 30, what="v2 answering")

        mark("alias to broken v3")
        # 2. a broken v3: never healthy, rolled back by the controller alone; v2 serves throughout
        fleet.cli("models", "alias", "iris", "production", "3", "--reason", "try the new one", check=True)
        fleet.wait_for(lambda: show(fleet)["phase"] == "rolled_back", timeout=60, what="v3 to be rolled back")
        wait_serving(fleet, 2, 2)
        assert load.served(3) == 0

        mark("unplaceable spec")
        # 3. a spec no host can place (8 GPUs on a machine with none): v2 is never touched
        greedy = deploy_spec(fleet, model="iris:2", extra="resources: {gpus: 8}\nenv: {BROKEN_VERSIONS: '3'}\n")
        placed = fleet.cli("deploy", "apply", str(greedy))  # applied with a warning: it can never fit
        assert placed.code == 0, placed.out + placed.err
        fleet.wait_for(lambda: kinds(fleet).count("rollback") >= 2, timeout=60,
                       what="the unplaceable spec to be rolled back")
        wait_serving(fleet, 2, 2)

        mark("back to v1")
        # 4. the agent SIGKILLed mid-rollout (back to the plain spec, v1 pinned)
        back = deploy_spec(fleet, model="iris:1", extra="env: {BROKEN_VERSIONS: '3'}\n")
        fleet.cli_json("deploy", "apply", str(back))
        _wait_replica_of(fleet, 1)
        agent = fleet.agent_pid
        assert agent is not None
        mark("agent killed")
        os.kill(agent, signal.SIGKILL)
        wait_serving(fleet, 1, 2, timeout=90)

        mark("v2 again")
        # 5. the controller SIGKILLed mid-rollout; the forwarder keeps its last list meanwhile
        fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, model="iris:2", extra="env: {BROKEN_VERSIONS: '3'}\n")))
        _wait_replica_of(fleet, 2)
        controller = fleet.controller_pid
        assert controller is not None
        mark("controller killed")
        os.kill(controller, signal.SIGKILL)
        time.sleep(1.0)
        wait_serving(fleet, 2, 2, timeout=90)  # the CLI starts a new controller, which resumes the rollout
        seen = load.served(2)
        fleet.wait_for(lambda: load.served(2) >= seen + 30, what="v2 answering after the restart")
    finally:
        if load is not None:
            load.stop()
        opened.send_signal(signal.SIGINT)
        opened.wait(20)

    if load.failures and os.environ.get('MLFLEET_DEBUG_LOAD'):
        Path(os.environ['MLFLEET_DEBUG_LOAD']).write_text(json.dumps({'failures': load.failures, 'steps': steps, 'said': said}, indent=1))
    assert load.failures == [], (len(load.failures), load.failures[:3], load.failures[-3:], steps, said, load.answers)
    assert {code for code, _ in load.answers} == {200}, load.answers
    assert sum(load.answers.values()) > 300

    # Nothing twice: once drained, exactly the two replicas' servers are alive.
    fleet.wait_for(lambda: len(_serving_processes(fleet)) == 2, timeout=30,
                   what="exactly the deployment's two servers to be running")
    ids = [r["replica_id"] for r in show(fleet)["replicas"]]
    assert len(ids) == len(set(ids)) == 2
