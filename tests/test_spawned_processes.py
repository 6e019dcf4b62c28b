"""A new user clones mlfleet into ~/mlfleet, installs it (editable, as the README says) and works from ~.

Every process mlfleet starts (controller, local agent, the runner of a job)
must import the installed mlfleet, not the folder named ``mlfleet`` that sits
in the current one; and a start that fails must say its own reason, never
an old line of the log.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from conftest import REPO, Fleet


def _a_folder_holding_a_clone(fleet: Fleet) -> Path:
    """``~`` after ``git clone .../mlfleet``: a folder with a directory named mlfleet (no __init__.py at its top)."""
    home = fleet.root / "user-home"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(home / "mlfleet")], check=True,
                   capture_output=True)
    assert not (home / "mlfleet" / "__init__.py").exists()
    return home


def test_the_controller_agent_and_a_job_start_from_a_folder_holding_a_clone(fleet: Fleet) -> None:
    here = _a_folder_holding_a_clone(fleet)
    # A lost race to start (two terminals at once) left this line in the log earlier.
    race = subprocess.run([sys.executable, "-m", "mlfleet", "controller", "start"], env=fleet.env, cwd=REPO,
                          capture_output=True, text=True, check=True)
    assert "controller started" in race.stdout
    with open(fleet.home.log_dir / "controller.log", "ab") as log:
        subprocess.run([sys.executable, "-m", "mlfleet", "controller", "run"], env=fleet.env, cwd=REPO,
                       stdout=log, stderr=log, timeout=60)
    assert "another controller is already running" in (fleet.home.log_dir / "controller.log").read_text()
    fleet.cli("controller", "stop", check=True)

    listed = fleet.cli("hosts", "list", cwd=here)
    assert listed.code == 0, listed.err
    assert "another controller" not in listed.err
    spec = fleet.write_spec("hello", "name: hello\n"
                                     "command: [python, -c, \"import mlfleet, sys; print('mlfleet from', mlfleet.__file__)\"]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", cwd=here, timeout=120)
    assert done.code == 0, done.err
    out = fleet.cli("jobs", "logs", done.json()["job_id"], cwd=here).out
    assert f"mlfleet from {REPO / 'package' / '__init__.py'}" in out

    # None of mlfleet's own processes sits in the user's folder (it could not be unmounted or removed).
    for pid in (fleet.controller_pid, fleet.agent_pid):
        assert pid is not None
        assert psutil.Process(pid).cwd() == "/"
        assert "-P" in psutil.Process(pid).cmdline()


def test_an_agent_started_over_ssh_on_a_node_whose_home_holds_a_clone_comes_up(ssh_fleet) -> None:
    """The remote agent is started by ``agent connect`` in the node's login folder: a clone there is harmless."""
    fleet = ssh_fleet.fleet
    node_home = _a_folder_holding_a_clone(fleet)
    server = ssh_fleet.servers["node-a"]
    # The node's mlfleet is the console script of the same install; its login folder holds the clone.
    fleet.cli("hosts", "add", "node-a", "--address", "127.0.0.1", "--port", str(server.port), "--user", server.user,
              "--identity", str(ssh_fleet.user_key),
              "--agent-command", f"sh -c 'cd {node_home} && exec {Path(sys.executable).with_name('mlfleet')} \"$@\"' sh",
              "--state-dir", str(ssh_fleet.state_dir("node-a")), check=True)
    fleet.cli("hosts", "trust", "node-a", "--yes", check=True)
    up = ssh_fleet.wait_up("node-a")
    assert up["agent_version"]
    pid = ssh_fleet.agent_pid("node-a")
    assert pid is not None and psutil.Process(pid).cwd() == "/"


def test_a_local_job_gets_a_login_environment_not_the_shell_that_started_the_controller(fleet: Fleet) -> None:
    """The first command a user ran (from an activated env, with a token exported) must not shape every job."""
    odd = fleet.root / "odd-bin"
    odd.mkdir()
    fleet.env.update(PATH=f"{odd}:{fleet.env['PATH']}", EXPORTED_BY_HAND="secret-token", LC_ALL="C.UTF-8")
    spec = fleet.write_spec("env", "name: env\nenv: {FROM_SPEC: yes-it-is}\n"
                                   "command: [python, -c, \"import json, os; print(json.dumps(dict(os.environ)))\"]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.err
    import json

    env = json.loads(fleet.cli("jobs", "logs", done.json()["job_id"]).out)
    assert "EXPORTED_BY_HAND" not in env and "MLFLEET_HOME" not in env
    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["FROM_SPEC"] == "yes-it-is" and env["LC_ALL"] == "C.UTF-8" and env["HOME"]
    assert env["MLFLEET_RUN_ID"] == fleet.job(done.json()["job_id"])["run_id"]


def test_agent_connect_bridges_frames_when_the_login_shell_makes_python_unbuffered(tmp_path: Path) -> None:
    """A node whose profile exports PYTHONUNBUFFERED=1 (common in ML images): stdout is then a bare FileIO.

    ``agent connect`` used ``sys.stdout.buffer.raw``, which a FileIO lacks: the bridge died with a traceback
    and left the agent it had started behind. The controller must get its hello answered as on any node.
    """
    import os
    import struct

    from mlfleet.core.base.frames import Frame, decode, encode
    from mlfleet.core.base.hello import PROTOCOL_VERSION

    state = tmp_path / "state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bridge = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "connect", "--state-dir", str(state)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert bridge.stdin is not None and bridge.stdout is not None
        bridge.stdin.write(encode(Frame(id=1, method="hello", params={"protocol": PROTOCOL_VERSION})))
        bridge.stdin.flush()
        header = bridge.stdout.read(4)
        assert len(header) == 4, bridge.stderr.read().decode() if bridge.poll() is not None else "no answer"
        answer = decode(bridge.stdout.read(struct.unpack(">I", header)[0]))
        assert answer.id == 1 and answer.error is None and answer.result["protocol"] == PROTOCOL_VERSION
    finally:
        bridge.kill()
        bridge.wait(timeout=10)
        subprocess.run([sys.executable, "-m", "mlfleet", "agent", "stop", "--state-dir", str(state)],
                       capture_output=True, timeout=60)
