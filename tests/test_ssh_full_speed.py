"""Nothing lost, nothing twice, at full speed over SSH.

A training loop on a remote GPU box logs as fast as Python can write, and
the link under it breaks in every way a real one does: the SSH connection
drops, the agent is SIGKILLed, the controller is SIGKILLed, the channel
stalls without closing. Every point arrives exactly once, the job starts
once, and a run the controller gave up on is stopped on its node the moment
the node can be reached again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import duckdb
import psutil
import pytest

from conftest import Fleet, SshFleet, cpu_heavy

BURSTS, LINES_PER_BURST = 5, 100_000  # two points a line: 1,000,000 points, written unthrottled in bursts
WRITER = f"""\
import os, time
from mlfleet import track
with open(os.environ["STARTS"], "a") as f:
    f.write(os.environ["MLFLEET_RUN_ID"] + "\\n")
for burst in range({BURSTS}):
    for i in range(burst * {LINES_PER_BURST}, (burst + 1) * {LINES_PER_BURST}):
        track.log({{"loss": (i * 7919 % 10007) / 10007.0, "i": i}}, step=i)
    track.flush()
    time.sleep(0.5)
"""


def bridges(state_dir: Path) -> list[psutil.Process]:
    """The ``agent connect`` processes (one per SSH link) of the node with this state dir."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if "connect" in cmd and "agent" in cmd and str(state_dir) in cmd:
            found.append(proc)
    return found


def submit_writer(fleet: Fleet, host: str) -> tuple[str, Path]:
    work = fleet.root / "specs" / "writer"
    work.mkdir(parents=True, exist_ok=True)
    (work / "write.py").write_text(WRITER)
    starts = fleet.root / "starts.txt"
    spec = fleet.write_spec("writer", f"name: writer\nworkdir: writer\ncommand: [python, write.py]\n"
                                      f"env: {{STARTS: {starts}}}\nconstraints: {{hosts: [{host}]}}\n")
    return fleet.cli("submit", str(spec), check=True).out.strip(), starts


def assert_every_point_once(fleet: Fleet, state_dir: Path, run_id: str) -> None:
    stream = state_dir / "runs" / run_id / "metrics.jsonl"
    lines = stream.read_text().split("\n")[:-1]
    expected = sorted((seq, key, json.loads(line)["step"], float(value))
                      for seq, line in enumerate(lines) for key, value in json.loads(line)["metrics"].items())
    with duckdb.connect(str(fleet.home.db_path), read_only=True) as con:
        actual = con.execute("select seq, key, step, value from metrics where run_id = ? order by seq, key",
                             [run_id]).fetchall()
        offset = con.execute("select byte_offset, lines, bad_lines, complete from ingest_offsets where run_id = ?",
                             [run_id]).fetchall()
    assert len(expected) == BURSTS * LINES_PER_BURST * 2
    assert len(actual) == len(expected), f"{len(actual)} points in the store, {len(expected)} in the file"
    assert actual == expected
    assert offset == [(stream.stat().st_size, len(lines), 0, True)]


@cpu_heavy
@pytest.mark.parametrize("where", ["ssh", "local"])
def test_a_full_speed_writer_survives_link_agent_and_controller_kills(ssh_fleet: SshFleet, where: str) -> None:
    fleet = ssh_fleet.fleet
    fleet.home.config_file.write_text("controller: {answer_timeout: 5s}\n")
    if where == "ssh":
        ssh_fleet.add("node-a")
        ssh_fleet.wait_up("node-a")
    host = "node-a" if where == "ssh" else "local"
    state = ssh_fleet.state_dir("node-a") if where == "ssh" else fleet.home.local_agent_dir
    job_id, starts = submit_writer(fleet, host)
    run_id = fleet.wait_state(job_id, {"running", "succeeded"})["run_id"]

    seed = int(os.environ.get("MLFLEET_FAULT_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    faults = ["link", "agent", "controller"] * 2 if where == "ssh" else ["agent", "controller"] * 3
    rng.shuffle(faults)
    for fault in faults:
        time.sleep(rng.uniform(0.2, 1.5))
        if fault == "link":
            ssh_fleet.servers["node-a"].drop_connections()
        elif fault == "agent" and (pid := fleet.pid_in(state / "agent.lock")):
            os.kill(pid, signal.SIGKILL)
        elif fault == "controller" and (pid := fleet.controller_pid):
            os.kill(pid, signal.SIGKILL)
            fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
            fleet.cli("jobs", "list", check=True)  # a client starts it again
    print(f"fault trial on {where}: seed {seed}, faults {faults}")

    final = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=240)
    assert final["state"] == "succeeded" and len(final["runs"]) == 1, f"seed {seed}: {final}"
    assert starts.read_text().split() == [run_id], f"seed {seed}: the job started more than once"
    fleet.cli("controller", "stop", check=True)
    assert_every_point_once(fleet, state, run_id)


def test_a_link_that_stalls_without_closing_is_torn_down_and_reconnected(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    fleet.home.config_file.write_text("controller: {answer_timeout: 2s}\n")
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    state = ssh_fleet.state_dir("node-a")
    job_id, _starts = submit_writer(fleet, "node-a")
    run_id = fleet.wait_state(job_id, {"running"})["run_id"]

    (stalled,) = bridges(state)
    stalled.send_signal(signal.SIGSTOP)  # the SSH connection stays open; nothing comes through it
    try:
        fresh = fleet.wait_for(lambda: [b for b in bridges(state) if b.pid != stalled.pid], timeout=30,
                               what="a new link to replace the stalled one")
        assert fresh
        final = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=180)
        assert final["state"] == "succeeded" and len(final["runs"]) == 1
        assert ssh_fleet.host("node-a")["state"] == "up"
    finally:
        stalled.send_signal(signal.SIGCONT)
    fleet.cli("controller", "stop", check=True)
    assert_every_point_once(fleet, state, run_id)


def test_a_lost_run_is_stopped_as_soon_as_its_stalled_node_answers_again(ssh_fleet: SshFleet) -> None:
    """The link stalls, and new connections hang too (sshd frozen): the run is declared lost and retried
    on the other host; when the node answers again, the old copy is stopped before the host is up."""
    fleet = ssh_fleet.fleet
    fleet.home.config_file.write_text("controller: {answer_timeout: 2s}\nscheduler: {lost_after: 4s}\n")
    for name in ("node-a", "node-b"):
        ssh_fleet.add(name, "--label", "pool=train")
        ssh_fleet.wait_up(name)
    spec = fleet.write_spec("long", "name: long\nretries: 1\nconstraints: {labels: {pool: train}}\n"
                                    "command: \"case $MLFLEET_RUN_ID in *-1) sleep 300;; *) sleep 1;; esac\"\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    first = fleet.wait_state(job_id, {"running"})
    lost_host = first["host"]
    other = "node-b" if lost_host == "node-a" else "node-a"
    state = ssh_fleet.state_dir(lost_host)
    listener = psutil.Process(ssh_fleet.servers[lost_host].process.pid)

    frozen = [listener, *bridges(state)]
    for proc in frozen:
        proc.send_signal(signal.SIGSTOP)
    try:
        done = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=120)
        assert done["state"] == "succeeded" and done["host"] == other
        assert [r["state"] for r in done["runs"]] == ["failed", "succeeded"]
        cancel_file = state / "runs" / first["run_id"] / "cancel.json"
        assert not cancel_file.exists()  # partitioned: nothing could reach the old copy yet
    finally:
        for proc in frozen:
            proc.send_signal(signal.SIGCONT)
    # The moment the node is reachable again it is fenced, before the host counts as up.
    up = fleet.wait_for(lambda: ssh_fleet.host(lost_host)["state"] == "up", timeout=60, what="the node to be up")
    assert up and cancel_file.exists()
    exit_file = state / "runs" / first["run_id"] / "exit.json"
    stopped = fleet.wait_for(lambda: exit_file.exists() and json.loads(exit_file.read_text()), timeout=30,
                             what="the stray run to be stopped")
    assert stopped["reason"] == "cancelled"
    assert any(e["action"] == "run.stop-stray" and e["target"] == first["run_id"]
               for e in fleet.cli_json("audit", "list"))


def test_one_frozen_host_never_holds_up_the_rest_of_the_fleet(ssh_fleet: SshFleet) -> None:
    """node-a's link hangs (its poll waits out a 60 s answer_timeout); node-b is polled and runs jobs meanwhile."""
    fleet = ssh_fleet.fleet
    fleet.home.config_file.write_text("controller: {answer_timeout: 60s}\n")
    for name in ("node-a", "node-b"):
        ssh_fleet.add(name)
        ssh_fleet.wait_up(name)
    (frozen,) = bridges(ssh_fleet.state_dir("node-a"))
    frozen.send_signal(signal.SIGSTOP)
    try:
        fleet.wait_for(lambda: ssh_fleet.host("node-a").get("stale"), timeout=30, what="node-a to go stale")
        frozen_at = time.monotonic()
        spec = fleet.write_spec("on-b", "name: on-b\ncommand: [python, -c, 'print(42)']\n"
                                        "constraints: {hosts: [node-b]}\n")
        done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
        # Well inside node-a's 60 s: a tick that waited for every host would not have placed it yet.
        assert done.code == 0 and done.json()["state"] == "succeeded", done.err
        assert time.monotonic() - frozen_at < 45
        b = ssh_fleet.host("node-b")
        assert b["state"] == "up" and not b.get("stale") and b["seen_ago"] < 5, b
    finally:
        frozen.send_signal(signal.SIGCONT)
