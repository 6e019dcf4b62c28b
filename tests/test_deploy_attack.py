"""Adversary's stories for deployments (issue 16): full-speed load through ``deploy open`` during rollouts,
hostile CLI input, and serving numbers checked against what the load generator measured.

Every story runs the real CLI against a real controller, the local agent and real model servers on loopback.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import Fleet, under_full_load
from test_deploy_service import deploy_spec, one_sentence, register_versions, show, wait_serving

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from loadgen import run_load  # noqa: E402


def _open(fleet: Fleet, name: str = "iris") -> tuple[subprocess.Popen[str], int]:
    opened = subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "deploy", "open", name, "--port", "0"],
                              env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert opened.stdout is not None
    while True:
        line = opened.stdout.readline()
        assert line, opened.stderr.read() if opened.stderr else "deploy open ended"
        if line.startswith("forwarding 127.0.0.1:"):
            return opened, int(line.split()[1].rsplit(":", 1)[1])


def _rolling_under_load(fleet: Fleet, surge: int, unavailable: int) -> dict[str, Any]:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2)
    spec.write_text(spec.read_text().replace("max_surge: 1, max_unavailable: 0",
                                             f"max_surge: {surge}, max_unavailable: {unavailable}"))
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)
    opened, port = _open(fleet)
    try:
        async def story() -> dict[str, Any]:
            load = asyncio.create_task(run_load("127.0.0.1", port, rate=200, duration=20, body=b"{}"))
            await asyncio.sleep(2)
            await asyncio.to_thread(fleet.cli, "models", "alias", "iris", "production", "2", "--reason", "roll",
                                    check=True)
            await asyncio.to_thread(wait_serving, fleet, 2, 2, "iris", 60)
            return await load
        return asyncio.run(story())
    finally:
        opened.terminate()
        opened.wait(20)


@under_full_load
def test_200_rps_through_deploy_open_loses_nothing_while_rolling_with_surge(fleet: Fleet) -> None:
    summary = _rolling_under_load(fleet, surge=1, unavailable=0)
    assert summary["failed"] == 0, summary


@under_full_load
def test_200_rps_through_deploy_open_loses_nothing_while_rolling_without_surge(fleet: Fleet) -> None:
    summary = _rolling_under_load(fleet, surge=0, unavailable=1)
    assert summary["failed"] == 0, summary


def test_hostile_scale_and_rollback_input_is_one_sentence_and_changes_nothing(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=1)))
    wait_serving(fleet, 1, 1)
    one_sentence(fleet.cli("deploy", "scale", "iris", "-1"), 2)
    one_sentence(fleet.cli("deploy", "scale", "iris", "99999999999999999999"), 2)
    one_sentence(fleet.cli("deploy", "scale", "iris", "two"), 2)
    one_sentence(fleet.cli("deploy", "rollback", "iris", "--to", "-3"), 2)
    huge = fleet.cli("deploy", "rollback", "iris", "--to", "99999999999999999999")
    one_sentence(huge, huge.code if huge.code in (2, 4) else -1)  # a usage error or "no such version", one sentence
    assert show(fleet)["target_version"] == 1 and len(show(fleet)["replicas"]) == 1
    one_sentence(fleet.cli("models", "alias", "iris", "../../etc", "1", "--reason", "x"), 2)
    one_sentence(fleet.cli("deploy", "show", "x" * 5000), 2, "256")  # a usage error naming the limit


def test_scale_to_zero_and_back_serves_again(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=2)))
    wait_serving(fleet, 1, 2)
    fleet.cli_json("deploy", "scale", "iris", "0")
    fleet.wait_for(lambda: show(fleet)["replicas"] == [], timeout=60, what="no replica")
    fleet.cli_json("deploy", "scale", "iris", "2")
    wait_serving(fleet, 1, 2)


def test_rollback_to_the_current_version_changes_nothing(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=1)))
    d = wait_serving(fleet, 1, 1)
    result = fleet.cli("deploy", "rollback", "iris", "--to", "1", "--json")
    assert result.code in (0, 4) and "Traceback" not in result.err, result.err
    after = wait_serving(fleet, 1, 1)
    assert [r["replica_id"] for r in after["replicas"]] == [r["replica_id"] for r in d["replicas"]]


@under_full_load
def test_deploy_metrics_match_what_the_load_generator_measured(fleet: Fleet) -> None:
    register_versions(fleet, 1)
    spec = deploy_spec(fleet, replicas=2, model="iris:1", extra="env: {BROKEN_VERSIONS: ''}\n")
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)
    opened, port = _open(fleet)
    try:
        before = fleet.cli_json("deploy", "metrics", "iris", "--since", "10m")["versions"]
        summary = asyncio.run(run_load("127.0.0.1", port, rate=100, duration=10, body=b"{}"))
    finally:
        opened.terminate()
        opened.wait(20)
    assert summary["failed"] == 0, summary
    import time
    time.sleep(2)  # a few scrapes after the load
    versions = fleet.cli_json("deploy", "metrics", "iris", "--since", "10m")["versions"]
    got = versions[0]
    had = before[0]["requests"] if before else 0
    # the deep probe adds ~3.3 requests/s per replica; the load's 1000 must be counted, errors exactly 0
    assert got["errors"] == 0, got
    assert got["requests"] - had >= summary["ok"], (got, had, summary)
    assert got["requests"] - had <= summary["ok"] * 1.2 + 200, (got, had, summary)


@under_full_load
def test_a_broken_v2_under_200_rps_is_rolled_back_and_no_request_fails(fleet: Fleet) -> None:
    register_versions(fleet, 2)
    spec = deploy_spec(fleet, replicas=2, model="iris:1", extra="env: {BROKEN_VERSIONS: '2'}\n")
    fleet.cli_json("deploy", "apply", str(spec))
    wait_serving(fleet, 1, 2)
    opened, port = _open(fleet)
    try:
        async def story() -> dict[str, Any]:
            load = asyncio.create_task(run_load("127.0.0.1", port, rate=200, duration=15, body=b"{}"))
            await asyncio.sleep(1)
            spec.write_text(spec.read_text().replace("model: iris:1", "model: iris:2"))
            await asyncio.to_thread(fleet.cli, "deploy", "apply", str(spec), check=True)
            await asyncio.to_thread(fleet.wait_for, lambda: show(fleet)["phase"] == "rolled_back", 40)
            return await load
        summary = asyncio.run(story())
    finally:
        opened.terminate()
        opened.wait(20)
    assert summary["failed"] == 0, summary
    wait_serving(fleet, 1, 2)


@under_full_load
def test_the_agent_sigkilled_under_200_rps_mid_rollout_loses_nothing_and_starts_nothing_twice(fleet: Fleet) -> None:
    import os
    import signal
    from test_deploy_service import replica_jobs
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=2)))
    wait_serving(fleet, 1, 2)
    opened, port = _open(fleet)
    try:
        async def story() -> dict[str, Any]:
            load = asyncio.create_task(run_load("127.0.0.1", port, rate=200, duration=25, body=b"{}"))
            await asyncio.sleep(1)
            await asyncio.to_thread(fleet.cli, "models", "alias", "iris", "production", "2", "--reason", "roll",
                                    check=True)
            await asyncio.to_thread(fleet.wait_for,
                                    lambda: any(r["version"] == 2 for r in show(fleet)["replicas"]), 30)
            os.kill(fleet.agent_pid or 0, signal.SIGKILL)
            await asyncio.to_thread(wait_serving, fleet, 2, 2, "iris", 90)
            return await load
        summary = asyncio.run(story())
    finally:
        opened.terminate()
        opened.wait(20)
    assert summary["failed"] == 0, summary
    names = [j["name"] for j in replica_jobs(fleet)]
    assert len(names) == len(set(names)) == 4, names
    assert not any(e["kind"] == "rollback" for e in fleet.cli_json("deploy", "history", "iris"))


@under_full_load
def test_the_controller_sigkilled_under_200_rps_mid_rollout_loses_nothing(fleet: Fleet) -> None:
    import os
    import signal
    from test_deploy_service import replica_jobs
    register_versions(fleet, 2)
    fleet.cli_json("deploy", "apply", str(deploy_spec(fleet, replicas=2)))
    wait_serving(fleet, 1, 2)
    opened, port = _open(fleet)
    try:
        async def story() -> dict[str, Any]:
            load = asyncio.create_task(run_load("127.0.0.1", port, rate=200, duration=25, body=b"{}"))
            await asyncio.sleep(1)
            await asyncio.to_thread(fleet.cli, "models", "alias", "iris", "production", "2", "--reason", "roll",
                                    check=True)
            await asyncio.to_thread(fleet.wait_for,
                                    lambda: any(r["version"] == 2 for r in show(fleet)["replicas"]), 30)
            os.kill(fleet.controller_pid or 0, signal.SIGKILL)
            await asyncio.to_thread(wait_serving, fleet, 2, 2, "iris", 90)
            return await load
        summary = asyncio.run(story())
    finally:
        opened.terminate()
        opened.wait(20)
    assert summary["failed"] == 0, summary
    names = [j["name"] for j in replica_jobs(fleet)]
    assert len(names) == len(set(names)) == 4, names


def test_a_server_that_exits_at_once_forever_fails_the_first_apply_and_leaves_nothing_running(fleet: Fleet) -> None:
    from test_deploy_service import replica_jobs
    register_versions(fleet, 1)
    spec = deploy_spec(fleet, replicas=1, ready_timeout="4s")
    spec.write_text(spec.read_text().replace('command: [python, server.py, --port, "{port}"]',
                                             'command: [python, -c, "raise SystemExit(3)", "{port}"]'))
    fleet.cli_json("deploy", "apply", str(spec))
    fleet.wait_for(lambda: show(fleet)["phase"] == "failed", timeout=40, what="the apply to fail")
    fleet.wait_for(lambda: all(j["state"] in ("cancelled", "failed") for j in replica_jobs(fleet)), timeout=30,
                   what="its replica job ended")
