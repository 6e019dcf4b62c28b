"""The README's Quickstart, followed literally, with a remote host in the fleet (real CLI, real sshd on loopback).

The commands are read from README.md itself, so the test and the page
cannot drift apart: each runs as written (``<RUN>`` and ``<JOB>`` filled in
with what the commands before it printed) and must do what its comment says.
Only the last line, the TUI, is left to the TUI stories (tests/tui/).
"""

from __future__ import annotations

import re
import shlex

from conftest import REPO, SshFleet


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
        elif args[:2] == ["runs", "show"]:
            assert "purpose" in result.out and "quickstart" in result.out and "loss" in result.out, result.out
        elif args[:2] == ["db", "query"]:
            assert "loss" in result.out and "accuracy" in result.out, result.out
        elif args[:2] == ["audit", "list"]:
            assert "job.submit" in result.out, result.out
    assert set(filled) == {"<JOB>", "<RUN>"}
