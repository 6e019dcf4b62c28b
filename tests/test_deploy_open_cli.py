"""A user runs ``mlfleet deploy open iris`` and keeps sending requests while the model rolls from v1 to v2.

A real controller, the local agent and real model servers (tests/test_deploy_service.py's tiny server and
registered versions); the forwarder is the command itself, its endpoints the controller's
``deploy_endpoints``. The forwarder's own stories (round robin, dead replicas, backpressure, half-close,
SSH) are tests/test_deploy_open.py.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from conftest import Fleet
from test_deploy_service import deploy_spec, one_sentence, register_versions, wait_serving


def _predict(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", "/predict", body=b"{}")
        answer = conn.getresponse()
        body = answer.read()
        return answer.status, json.loads(body)["version"] if answer.status == 200 else ""
    finally:
        conn.close()


def _open(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "deploy", "open", *args],
                            env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ctrl_c(opened: subprocess.Popen[str]) -> None:
    opened.send_signal(signal.SIGINT)
    code = opened.wait(20)
    assert opened.stderr is not None
    err = opened.stderr.read()
    assert code == 0 and "Traceback" not in err, err


def test_mistakes_are_one_sentence_and_no_replica_is_said_once(fleet: Fleet) -> None:
    one_sentence(fleet.cli("deploy", "open", "nosuch"), 4, "nosuch")
    one_sentence(fleet.cli("deploy", "open", "iris", "--port", "70000"), 2, "--port")
    register_versions(fleet, 1)
    broken = deploy_spec(fleet, extra="env: {BROKEN_VERSIONS: '1'}\n")  # its deep probe fails: never healthy
    fleet.cli_json("deploy", "apply", str(broken))

    with socket.create_server(("127.0.0.1", 0)) as busy:
        taken = busy.getsockname()[1]
        one_sentence(fleet.cli("deploy", "open", "iris", "--port", str(taken)), 2, f"127.0.0.1:{taken}", "--port")

    opened = _open(fleet, "iris", "--port", "0")
    assert opened.stdout is not None
    assert opened.stdout.readline() == "no healthy replica of iris; waiting\n"
    ready = opened.stdout.readline()
    port = int(ready.split()[1].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert sock.recv(100) == b""  # closed at once: nothing to forward to
    _ctrl_c(opened)


def test_requests_through_deploy_open_never_fail_while_v1_rolls_to_v2(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet)))
    wait_serving(fleet, 1, 2)

    opened = _open(fleet, "iris", "--port", "0")
    try:
        assert opened.stdout is not None
        lines = [opened.stdout.readline().rstrip("\n") for _ in range(2)]
        assert lines[0].startswith("→ 2 replicas: local:") and lines[0].count("(v1)") == 2, lines
        assert lines[1].startswith("forwarding 127.0.0.1:") and lines[1].endswith(" to iris (Ctrl-C to stop)"), lines
        port = int(lines[1].split()[1].rsplit(":", 1)[1])
        said: list[str] = []
        threading.Thread(target=lambda: said.extend(line.rstrip("\n") for line in opened.stdout), daemon=True).start()

        answers: Counter[tuple[int, str]] = Counter()
        failures: list[str] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                try:
                    answers[_predict(port)] += 1
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            fleet.wait_for(lambda: answers[(200, "1")] >= 20, what="v1 answering through the forwarder")
            fleet.cli("models", "alias", "iris", "production", "2", "--reason", "better on holdout", check=True)
            wait_serving(fleet, 2, 2)
            fleet.wait_for(lambda: any(line.startswith("→ 2 replicas") and line.count("(v2)") == 2 for line in said),
                           what="the forwarder to follow the rollout")
            seen = answers[(200, "2")]
            fleet.wait_for(lambda: answers[(200, "2")] >= seen + 20, what="v2 answering through the forwarder")
        finally:
            stop.set()
            worker.join(30)
        assert failures == [] and set(answers) <= {(200, "1"), (200, "2")}, (failures, answers)
    finally:
        _ctrl_c(opened)
