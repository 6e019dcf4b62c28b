"""The README's Quickstart, followed literally, with a remote host in the fleet (real CLI, real sshd on loopback).

The commands are read from README.md itself, so the test and the page
cannot drift apart: each runs as written (``<RUN>`` and ``<JOB>`` filled in
with what the commands before it printed) and must do what its comment says.
Only the last line, the TUI, is left to the TUI stories (tests/tui/).

The demo declares its environment (numpy), so it runs on any host, one
without numpy included: the workstation resolves it against PyPI (CI
reaches it: the ``pypi`` mark) and the node builds it offline.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conftest import CONFIGS, REPO, Fleet, SshFleet
from test_environment_ssh import _shipped, offline_node


def quickstart_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"^## Quickstart\n+```sh\n(.*?)^```", text, re.S | re.M)
    assert block, "README.md has no Quickstart sh block"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "mlfleet":
            commands.append(words[1:])
    return commands


def _environment(fleet: Fleet, run_id: str) -> tuple[str | None, dict[str, str]]:
    """The run's env_hash and the packages recorded for it (name -> version)."""
    [[env_hash]] = fleet.cli_json("db", "query", f"select env_hash from runs where run_id = '{run_id}'")["rows"]
    rows = fleet.cli_json("db", "query", f"select name, version from run_packages where run_id = '{run_id}'")["rows"]
    return env_hash, dict(rows)


@pytest.mark.pypi
@pytest.mark.timeout(300)
def test_the_readme_quickstart_works_as_written_with_a_remote_host_added(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    commands = quickstart_commands()
    assert commands[0][:2] == ["submit", "configs/demo-train.yaml"] and commands[-1] == [], commands
    filled: dict[str, str] = {}
    for words in commands[:-1]:  # the last one opens the TUI
        args = [filled.get(w, w) for w in words]
        if args[:2] == ["jobs", "logs"]:
            args = [a for a in args if a != "-f"] + ["-f"]  # follows until the job ends: it has ended
        result = fleet.cli(*args, timeout=180)
        said = f"mlfleet {' '.join(args)} exited {result.code}: {result.err or result.out}"
        assert result.code == 0 and "Traceback" not in result.err, said
        if args[:2] == ["jobs", "cancel"]:  # the demo has finished by now: cancelling it changes nothing
            assert "already succeeded" in result.out, said
        if args[0] == "submit":
            job = fleet.cli_json("jobs", "list")[0]
            assert job["name"] == "demo-train" and job["state"] == "succeeded", job
            filled["<JOB>"], filled["<RUN>"] = job["job_id"], job["run_id"]
            env_hash, packages = _environment(fleet, job["run_id"])  # it ran in the environment the spec declares
            assert env_hash and len(env_hash) == 64 and "numpy" in packages, (env_hash, packages)
        elif args[:2] == ["runs", "show"]:
            assert "purpose" in result.out and "quickstart" in result.out and "loss" in result.out, result.out
        elif args[:2] == ["db", "query"]:
            assert "loss" in result.out and "accuracy" in result.out, result.out
        elif args[:2] == ["jobs", "logs"]:
            assert "[mlfleet env]" in result.out and "done" in result.out, result.out
        elif args[:2] == ["audit", "list"]:
            assert "job.submit" in result.out, result.out
    assert set(filled) == {"<JOB>", "<RUN>"}


@pytest.mark.pypi
@pytest.mark.timeout(300)
def test_the_demo_as_shipped_succeeds_on_a_host_that_has_no_numpy_and_reaches_no_index(ssh_fleet: SshFleet) -> None:
    """"Succeeds on whichever host it lands": here a node whose sessions point every index and proxy at a dead port.

    The node's own Python is never asked for numpy: the workstation resolves
    the demo's ``environment:`` against PyPI, ships the wheel by SFTP, and the
    node builds the environment offline; the next run reuses it.
    """
    fleet = ssh_fleet.fleet
    state = offline_node(ssh_fleet, "node-a")
    demo = str(CONFIGS / "demo-train.yaml")

    first = fleet.cli("submit", demo, "--set", "constraints.hosts=[node-a]", "--wait", "--json", timeout=180)
    job = first.json() if first.out.strip() else {}
    logs = fleet.cli("jobs", "logs", job["job_id"]).out if job.get("job_id") else ""
    assert first.code == 0 and job["state"] == "succeeded", first.out + first.err + logs
    assert "[mlfleet env] building environment" in logs and "step 100:" in logs and "done" in logs, logs
    [wheel] = _shipped(fleet, "node-a")
    assert wheel.startswith("numpy-") and "manylinux" in wheel
    env_hash, packages = _environment(fleet, job["run_id"])
    assert "numpy" in packages and (state / "envs" / str(env_hash)).is_dir(), (env_hash, packages)
    run = fleet.cli_json("runs", "show", job["run_id"])
    assert {m["key"] for m in run["metrics"]} >= {"loss", "accuracy", "val_accuracy"}

    # The next run of the demo there starts in the same environment: nothing resolved, shipped or built.
    again = fleet.cli("submit", demo, "--set", "constraints.hosts=[node-a]", "--set", "command[7]=1",  # --seconds 1
                      "--wait", "--json", timeout=120)
    logs = fleet.cli("jobs", "logs", again.json()["job_id"]).out if again.out.strip() else ""
    assert again.code == 0, again.out + again.err + logs
    assert "reusing it" in logs and "building" not in logs, logs
    assert _shipped(fleet, "node-a") == [wheel] and _environment(fleet, again.json()["run_id"])[0] == env_hash
