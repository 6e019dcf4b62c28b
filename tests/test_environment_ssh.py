"""A job's environment on an SSH node that reaches no package index: shipped once, built once, named alike everywhere.

Real parts: an sshd on loopback whose sessions point every index (uv's and
pip's) and every proxy at a dead port, the controller resolving from a
folder of hand-made wheels (environments.no_index), SFTP into the node's
wheelhouse, and the node's agent building with uv offline.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from conftest import Fleet, SshFleet
from test_environment_jobs import offline_wheels

DEAD = "http://127.0.0.1:9"
NO_NETWORK = ("SetEnv " + " ".join(f"{k}={DEAD}/simple" for k in (
    "UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXTRA_INDEX_URL", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"))
              + f" HTTP_PROXY={DEAD} HTTPS_PROXY={DEAD} ALL_PROXY={DEAD} http_proxy={DEAD} https_proxy={DEAD}")

# The exact version of the test venv's interpreter: both hosts (one machine here) have it, so both pick the same one.
SPEC = """name: {name}
command: [python, -c, "import sys, tinypkg; print('value', tinypkg.VALUE, sys.prefix)"]
constraints: {{hosts: [{host}]}}
environment:
  python: "{python}"
  requirements: [tinypkg]
"""


def _spec(fleet: Fleet, name: str, host: str) -> Path:
    return fleet.write_spec(name, SPEC.format(name=name, host=host, python=platform.python_version()))


def _shipped(fleet: Fleet, host: str) -> list[str]:
    """The wheels the controller uploaded to ``host``, one line each in its log (every log file, rotated too)."""
    lines = []
    for path in sorted(fleet.home.log_dir.glob("controller.log*")):
        lines += re.findall(rf"shipped (\S+\.whl) to {re.escape(host)}$", path.read_text(errors="replace"), re.M)
    return lines


def offline_node(ssh_fleet: SshFleet, name: str) -> Path:
    """Host ``name`` restarted behind an sshd whose sessions reach no package index, added and up: its state dir."""
    server = ssh_fleet.servers[name]
    server.stop()
    server.extra_config = [NO_NETWORK]
    server.start()
    ssh_fleet.add(name)
    ssh_fleet.wait_up(name, timeout=60)
    return ssh_fleet.state_dir(name)


def _wheelhouse(state_dir: Path) -> dict[str, tuple[int, int]]:
    """Each blob in the node's wheelhouse with its inode and mtime: an upload (temp name, then rename) changes both."""
    house = state_dir / "wheelhouse"
    # blobs only: wheelhouse/named/ holds the links builds install from (agents/envs/build.py)
    return ({p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in house.iterdir() if p.is_file()}
            if house.is_dir() else {})


def _run(fleet: Fleet, spec: Path) -> tuple[dict, str]:
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=180)
    job = done.json() if done.out.strip() else {}
    logs = fleet.cli("jobs", "logs", job["job_id"]).out if job.get("job_id") else ""
    assert done.code == 0, done.out + done.err + logs
    return job, logs


def _env_hash(fleet: Fleet, run_id: str) -> str:
    return fleet.cli_json("db", "query", f"select env_hash from runs where run_id = '{run_id}'")["rows"][0][0]


def test_an_offline_ssh_node_gets_the_wheels_once_builds_once_and_names_the_env_as_local_does(
        ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    offline_wheels(fleet)
    state = offline_node(ssh_fleet, "node-a")
    agent = psutil.Process(ssh_fleet.agent_pid("node-a")).environ()
    assert agent["UV_INDEX_URL"] == agent["PIP_INDEX_URL"] == f"{DEAD}/simple" and agent["HTTPS_PROXY"] == DEAD

    first, logs = _run(fleet, _spec(fleet, "first", "node-a"))
    assert f"value 42 {state}/envs/" in logs, logs
    assert "[mlfleet env] building environment" in logs and "with uv" in logs
    assert sorted(_shipped(fleet, "node-a")) == ["tinydep-2.0-py3-none-any.whl", "tinypkg-1.0-py3-none-any.whl"]
    blobs = _wheelhouse(state)
    assert len(blobs) == 2 and all(re.fullmatch(r"[0-9a-f]{64}", name) for name in blobs)
    envs = sorted(p.name for p in (state / "envs").iterdir() if not p.name.startswith("."))
    assert envs == [_env_hash(fleet, first["run_id"])]

    # The same environment again: nothing crosses the link and nothing is built.
    second, logs = _run(fleet, _spec(fleet, "second", "node-a"))
    assert "value 42" in logs and "reusing it" in logs and "building" not in logs, logs
    assert len(_shipped(fleet, "node-a")) == 2 and _wheelhouse(state) == blobs

    # A new controller knows nothing of what it shipped before: it asks the agent, which has it all.
    fleet.cli("controller", "stop", check=True)
    fleet.cli("controller", "start", check=True)
    ssh_fleet.wait_up("node-a", timeout=60)
    third, logs = _run(fleet, _spec(fleet, "third", "node-a"))
    assert "reusing it" in logs, logs
    assert len(_shipped(fleet, "node-a")) == 2 and _wheelhouse(state) == blobs

    # The same spec on the local host: its own build, under the same name (same interpreter, platform and wheels).
    local, logs = _run(fleet, _spec(fleet, "here", "local"))
    assert f"value 42 {fleet.home.local_agent_dir}/envs/" in logs and "building environment" in logs, logs
    hashes = {_env_hash(fleet, job["run_id"]) for job in (first, second, third, local)}
    assert len(hashes) == 1 and len(hashes.pop()) == 64
    assert os.path.isdir(fleet.home.local_agent_dir / "envs" / _env_hash(fleet, local["run_id"]))


CROWD = """name: {name}
command: [python, -c, "import tinypkg; print('value', tinypkg.VALUE)"]
constraints: {{hosts: [{host}]}}
resources: {{cpus: 0}}
environment:
  python: "{python}"
  requirements: [tinypkg]
  setup: ["sleep 2"]
"""


def test_ten_jobs_asking_at_once_for_one_new_environment_build_it_once_per_host(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    offline_wheels(fleet)
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a", timeout=60)
    hosts = ["local", "node-a"] * 5
    specs = [fleet.write_spec(f"crowd{n}", CROWD.format(name=f"crowd{n}", host=host, python=platform.python_version()))
             for n, host in enumerate(hosts)]
    with ThreadPoolExecutor(len(specs)) as pool:  # all at once: the build's setup (2 s) outlasts the submits
        jobs = list(pool.map(lambda spec: fleet.cli("submit", str(spec), "--json", check=True).json()["job_id"], specs))
    done = [fleet.wait_state(job, {"succeeded", "failed", "cancelled"}, timeout=240) for job in jobs]
    logs = [fleet.cli("jobs", "logs", job).out for job in jobs]
    assert [j["state"] for j in done] == ["succeeded"] * 10, logs
    assert all("value 42" in text for text in logs)
    for host, state in (("local", fleet.home.local_agent_dir), ("node-a", ssh_fleet.state_dir("node-a"))):
        mine = [text for text, h in zip(logs, hosts) if h == host]
        builds = sum(text.count("[mlfleet env] building environment") for text in mine)
        assert builds == 1, mine
        assert sum("reusing it" in text for text in mine) == 4, mine
        assert len([p for p in (state / "envs").iterdir() if not p.name.startswith(".")]) == 1
    assert any("another run is building this environment: waiting for it" in text for text in logs), logs
    assert sorted(_shipped(fleet, "node-a")) == ["tinydep-2.0-py3-none-any.whl", "tinypkg-1.0-py3-none-any.whl"]
    hashes = {_env_hash(fleet, j["run_id"]) for j in done}
    assert len(hashes) == 1, hashes


NUMPY = """name: numpy
command: [python, -c, "import numpy; print('numpy', numpy.__version__, numpy.__file__, int(numpy.arange(6).sum()))"]
constraints: {{hosts: [node-a]}}
environment:
  python: "{python}"
  requirements: ["numpy=={version}"]
"""


@pytest.mark.pypi
@pytest.mark.timeout(400)
def test_numpy_resolved_and_fetched_from_pypi_is_built_on_an_offline_node(ssh_fleet: SshFleet) -> None:
    """The one real wheel in the suite: the workstation reaches PyPI (CI does), the node reaches nothing."""
    import numpy

    fleet = ssh_fleet.fleet
    state = offline_node(ssh_fleet, "node-a")
    job, logs = _run(fleet, fleet.write_spec("numpy", NUMPY.format(python=platform.python_version(),
                                                                   version=numpy.__version__)))
    assert f"numpy {numpy.__version__} {state}/envs/" in logs and logs.rstrip().endswith(" 15"), logs
    assert "[mlfleet env] building environment" in logs and "(1 wheels," in logs
    [shipped] = _shipped(fleet, "node-a")
    assert shipped.startswith(f"numpy-{numpy.__version__}-cp") and "manylinux" in shipped
    [blob] = [p for p in (state / "wheelhouse").iterdir() if p.is_file()]
    assert blob.stat().st_size > 1_000_000  # the real wheel, not a stand-in
    packages = fleet.cli_json("db", "query", f"select name, version from run_packages where run_id = '{job['run_id']}'")
    assert packages["rows"] == [["numpy", numpy.__version__]]


def test_a_node_whose_wheelhouse_was_wiped_gets_the_wheels_again_from_the_same_controller(
        ssh_fleet: SshFleet) -> None:
    """The node is the truth for what it holds: a controller that shipped there before must not assume it still does."""
    fleet = ssh_fleet.fleet
    offline_wheels(fleet)
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a", timeout=60)
    state = ssh_fleet.state_dir("node-a")
    _run(fleet, _spec(fleet, "first", "node-a"))
    assert len(_shipped(fleet, "node-a")) == 2
    for folder in ("wheelhouse", "envs"):  # cleaned by hand, or a reinstalled disk under the same name
        shutil.rmtree(state / folder)
    second, logs = _run(fleet, _spec(fleet, "second", "node-a"))
    assert "value 42" in logs and "[mlfleet env] building environment" in logs, logs
    assert len(_shipped(fleet, "node-a")) == 4 and len(_wheelhouse(state)) == 2
