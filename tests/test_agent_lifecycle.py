"""Stopping things on purpose: a host's agent by hand, and the controller, as the audit chain tells it."""

from __future__ import annotations

import getpass
import json
import os
import signal
import time

import psutil

from conftest import Fleet, SshFleet
from test_bounded_daemons import call, greeted_client


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_stop_agent_stops_a_hosts_agent_and_it_stays_stopped_until_started(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    first = ssh_fleet.agent_pid("node-a")
    assert first is not None

    spec = fleet.write_spec("nap", "name: nap\nconstraints: {hosts: [node-a]}\ncommand: [sleep, '4']\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    fleet.wait_state(job_id, {"running"})
    refused = fleet.cli("hosts", "stop-agent", "node-a")
    assert refused.code == 2 and "in flight" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert _alive(first)
    assert fleet.wait_state(job_id, {"succeeded", "failed"})["state"] == "succeeded"

    stopped = fleet.cli_json("hosts", "stop-agent", "node-a")
    assert stopped["was_running"] is True and stopped["pid"] == first
    assert not _alive(first)
    host = fleet.wait_for(lambda: (h := ssh_fleet.host("node-a"))["state"] == "stopped" and h, what="node-a stopped")
    assert "hosts start-agent node-a" in host["message"]
    time.sleep(3)  # several ticks, each of which would have reconnected (and so started the agent) before
    assert ssh_fleet.agent_pid("node-a") is None and ssh_fleet.host("node-a")["state"] == "stopped"
    held = fleet.cli("submit", str(spec), "--json")
    assert fleet.job(held.json()["job_id"])["state"] == "pending"  # nothing is placed on a stopped host

    started = fleet.cli_json("hosts", "start-agent", "node-a")
    assert started["state"] == "up" and started["was_stopped"] is True
    assert ssh_fleet.agent_pid("node-a") not in (None, first)
    assert fleet.wait_state(held.json()["job_id"], {"succeeded", "failed"})["state"] == "succeeded"
    actions = [e["action"] for e in fleet.cli_json("audit", "list")]
    assert "host.stop_agent" in actions and "host.start_agent" in actions


def test_the_local_agent_stops_by_hand_too(fleet: Fleet) -> None:
    fleet.cli("hosts", "list", check=True)
    fleet.wait_for(lambda: fleet.agent_pid, what="the local agent")
    pid = fleet.agent_pid
    assert fleet.cli_json("hosts", "stop-agent", "local")["pid"] == pid
    assert not _alive(pid) and fleet.agent_pid is None
    assert fleet.cli_json("hosts", "start-agent", "local")["state"] == "up"
    assert fleet.agent_pid not in (None, pid)


def _stops(fleet: Fleet) -> list[dict]:
    return [{**e, "detail": json.loads(e["detail"])} for e in fleet.cli_json("audit", "list")
            if e["action"] == "controller.stop"]


def test_controller_stop_is_on_the_chain_only_once_the_controller_stopped(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    pid = fleet.controller_pid
    assert pid is not None
    # Asked to stop, and killed before it could: it never stopped cleanly, so the chain must not say so.
    sock = greeted_client(fleet.home.controller_socket)
    answer = call(sock, 2, "shutdown")
    os.kill(pid, signal.SIGKILL)
    sock.close()
    assert answer["result"]["stopping"] is True
    fleet.wait_for(lambda: not _alive(pid), what="the controller to die")
    assert _stops(fleet) == []  # (this starts a fresh controller)

    second = fleet.controller_pid
    os.kill(second, signal.SIGTERM)  # an admin's stop is a stop too
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to stop")
    by_signal = _stops(fleet)
    assert [s["detail"] for s in by_signal] == [{"pid": second, "how": "signal"}]

    third = fleet.controller_pid
    assert fleet.cli("controller", "stop", check=True).out.strip() == "controller stopped"
    assert fleet.controller_pid is None
    stops = _stops(fleet)
    assert len(stops) == 2 and stops[0]["detail"] == {"pid": third, "how": "request"}
    assert stops[0]["actor"] == getpass.getuser()
