"""A user who installed mlfleet from a wheel (no clone) bootstraps a node that reaches no package index.

Then they run ``hosts bootstrap`` again into a new folder (an upgrade): the
agent that ran from the old venv is stopped and the new one serves, while a
job started before it goes on to the end.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import psutil

from conftest import REPO, CliResult, Fleet, SshFleet, builds_checkout_wheel

# On the node, every index pip might use points at nothing: only what bootstrap ships can be installed.
NO_INDEX = "SetEnv PIP_INDEX_URL=http://127.0.0.1:9/simple PIP_EXTRA_INDEX_URL=http://127.0.0.1:9/simple PIP_NO_CACHE_DIR=1"


def _wheel_install(root: Path) -> Path:
    """A venv whose mlfleet is ``pip install mlfleet-*.whl`` (its dependencies borrowed from the test venv)."""
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    venv = root / "user-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    *map(str, dist.glob("mlfleet-*.whl"))], check=True, capture_output=True, timeout=300)
    site = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # Only the dependencies come from here: it is a plain path entry, so the test venv's editable finder stays off.
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _cli(fleet: Fleet, venv: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900) -> CliResult:
    proc = subprocess.run([str(venv / "bin" / "mlfleet"), *args], env=env or fleet.env, capture_output=True, text=True,
                          timeout=timeout, cwd=fleet.root)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@builds_checkout_wheel
def test_a_wheel_install_bootstraps_a_node_without_an_index_and_an_upgrade_restarts_its_agent(
        ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    venv = _wheel_install(fleet.root)
    where = subprocess.run([str(venv / "bin" / "python"), "-P", "-c", "import mlfleet; print(mlfleet.__file__)"],
                           capture_output=True, text=True, check=True, cwd="/").stdout
    assert where.startswith(str(venv)), where  # the user's mlfleet is the wheel's, not the checkout
    server = ssh_fleet.servers["node-a"]
    server.stop()
    server.extra_config = [NO_INDEX]
    server.start()

    add = _cli(fleet, venv, "hosts", "add", "node-a", "--address", "127.0.0.1", "--port", str(server.port),
               "--user", server.user, "--identity", str(ssh_fleet.user_key),
               "--state-dir", str(ssh_fleet.state_dir("node-a")))
    assert add.code == 0, add.err
    assert _cli(fleet, venv, "hosts", "trust", "node-a", "--yes").code == 0
    first = fleet.root / "node-home" / "v1"
    done = _cli(fleet, venv, "hosts", "bootstrap", "node-a", "--prefix", str(first), "--python", "/usr/bin/python3",
                "--json")
    assert done.code == 0, done.err
    answer = done.json()
    assert answer["agent_command"] == f"{first}/venv/bin/mlfleet" and answer["restarted"] is False
    assert answer["node"].startswith("Python 3.11 (cp311) on manylinux_2_")
    node_mlfleet = subprocess.run([f"{first}/venv/bin/python", "-P", "-c", "import mlfleet; print(mlfleet.__file__)"],
                                  capture_output=True, text=True, check=True, cwd="/").stdout
    assert node_mlfleet.startswith(f"{first}/venv/lib/"), node_mlfleet
    cached = sorted(p.name.split("-")[0] for p in (fleet.root / "wheelhouse").glob("*/*.whl"))
    assert cached == ["msgspec", "nvidia_ml_py", "prometheus_client", "psutil", "pyyaml", "uv"]  # uv: job environments; prometheus_client: scrapes
    up = ssh_fleet.wait_up("node-a", timeout=60)
    old_agent = ssh_fleet.agent_pid("node-a")
    assert old_agent is not None and psutil.Process(old_agent).cmdline()[0].startswith(f"{first}/venv/")
    assert up["agent_version"]

    spec = fleet.write_spec("long", "name: long\nconstraints: {hosts: [node-a]}\n"
                                    "command: [python, -c, \"import time, sys; time.sleep(12); print('done in', sys.prefix)\"]\n")
    submitted = _cli(fleet, venv, "submit", str(spec), "--json")
    assert submitted.code == 0, submitted.err
    job_id = submitted.json()["job_id"]
    fleet.wait_state(job_id, {"running"})

    # The upgrade, with the controller's own machine now cut off from any index too: the cache serves.
    assert _cli(fleet, venv, "controller", "stop").code == 0
    offline = {**fleet.env, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "",
               "PIP_FIND_LINKS": ""}
    for hostile in (f"{fleet.root}/sp ace/$(touch {fleet.root}/PWNED)", "-x", f"{fleet.root}/a\nb", "`id`"):
        refused = _cli(fleet, venv, "hosts", "bootstrap", "node-a", "--prefix", hostile, env=offline)
        assert refused.code == 2 and "is not a plain path" in refused.err, refused.err  # before connecting
    assert not (fleet.root / "PWNED").exists()
    second = fleet.root / "node-home" / "v2+upgrade"
    again = _cli(fleet, venv, "hosts", "bootstrap", "node-a", "--prefix", str(second), "--python", "/usr/bin/python3",
                 "--json", env=offline)
    assert again.code == 0, again.err
    assert again.json()["agent_command"] == shlex.quote(f"{second}/venv/bin/mlfleet")
    assert again.json()["restarted"] is True and again.json()["previous_agent_pid"] == old_agent
    assert not psutil.pid_exists(old_agent) or psutil.Process(old_agent).status() == psutil.STATUS_ZOMBIE
    fleet.wait_for(lambda: (pid := ssh_fleet.agent_pid("node-a")) and pid != old_agent
                   and psutil.Process(pid).cmdline()[0].startswith(f"{second}/venv/"), timeout=60,
                   what="the agent to run from the new venv")
    job = fleet.wait_state(job_id, {"succeeded", "failed"}, timeout=90)
    assert job["state"] == "succeeded", job
    assert f"done in {first}/venv" in fleet.cli("jobs", "logs", job_id).out  # it ran on, in the venv it began in
    actions = [e["action"] for e in fleet.cli_json("audit", "list")]
    assert actions.count("host.bootstrap") == 2


def test_a_first_bootstrap_with_no_index_anywhere_says_where_the_wheels_go(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    venv = _wheel_install(fleet.root)
    fleet.env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_FIND_LINKS=" ",
                     PIP_RETRIES="0", PIP_TIMEOUT="2")
    server = ssh_fleet.servers["node-a"]
    assert _cli(fleet, venv, "hosts", "add", "node-a", "--address", "127.0.0.1", "--port", str(server.port),
                "--user", server.user, "--identity", str(ssh_fleet.user_key), "--agent-command", f"{sys.executable} -m mlfleet",
                "--state-dir", str(ssh_fleet.state_dir("node-a"))).code == 0
    assert _cli(fleet, venv, "hosts", "trust", "node-a", "--yes").code == 0
    ssh_fleet.wait_up("node-a")
    agent = ssh_fleet.agent_pid("node-a")
    before = fleet.home.hosts_file.read_text()
    prefix = fleet.root / "node-home" / ".mlfleet"
    failed = _cli(fleet, venv, "hosts", "bootstrap", "node-a", "--prefix", str(prefix), "--python", "/usr/bin/python3",
                  timeout=300)
    assert failed.code == 5, failed.err
    line = failed.err.strip().splitlines()[-1]
    assert "Traceback" not in failed.err and line.startswith("mlfleet: could not get the agent's dependency wheels")
    assert str(fleet.root / "wheelhouse" / "cp311-cp311-manylinux_2_") in line and "package index" in line
    assert "msgspec" in line and len(line) < 600
    assert ssh_fleet.host("node-a")["state"] == "up" and ssh_fleet.agent_pid("node-a") == agent  # nothing changed
    assert fleet.home.hosts_file.read_text() == before
