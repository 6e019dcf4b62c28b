"""A team's secret reaches the job and nothing else: 0 times in both users' homes, the state dirs, every output.

The story, on a shared controller over SSH (tests/team_head.py): alice, a
maintainer, sets a canary secret from stdin on her own machine's CLI; bob,
an operator, submits from his home a job that refers to it and prints it
every way a careless job would. Then every file under both users' homes,
the controller's installation (but its secret store), the local agent's
state and the run folder, and the output of every command either of them
(and the controller's admin) ran, hold the canary 0 times.
"""

from __future__ import annotations

import hashlib
import json
import secrets as pysecrets
import string

import pytest

from conftest import Fleet
from team_head import Head
from team_users import TeamUsers
from test_secrets import JOB, occurrences


@pytest.mark.timeout(300)
def test_a_canary_secret_appears_nowhere_in_either_users_files_or_any_output(
        fleet: Fleet, team_users: TeamUsers, request: pytest.FixtureRequest) -> None:
    operators = team_users.group("o")
    alice_name = f"{team_users.prefix}a1"
    (fleet.root / "policy.yaml").write_text(f"roles:\n  - {{user: {alice_name}, role: maintainer}}\n"
                                            f"  - {{group: {operators}, role: operator}}\n")
    head: Head = request.getfixturevalue("head")
    alice = head.joined(team_users)
    bob = head.joined(team_users, groups=(operators,))
    assert alice.name == alice_name
    canary = "".join(pysecrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    outputs: list[str] = []

    refused = bob.run(bob.python, "-m", "mlfleet", "secrets", "set", "hf", input=canary + "\n", timeout=90)
    assert refused.code == 6 and "may not" in refused.err, refused  # an operator does not set the team's secrets
    outputs.append(refused.out + refused.err)
    setting = alice.run(alice.python, "-m", "mlfleet", "secrets", "set", "hf", "--json", input=canary + "\n",
                        timeout=90)
    assert setting.code == 0, setting
    assert setting.json()["set_by"] == alice.name
    outputs.append(setting.out + setting.err)

    bob.write("proj/leak.py", JOB)
    spec = bob.write("proj/leak.yaml", "name: leak\ncommand: [python3, leak.py]\nenv:\n  HF_TOKEN: {secret: hf}\n")
    done = bob.cli("submit", "leak.yaml", "--wait", "--json", cwd=spec.parent, timeout=150)
    outputs.append(done.out + done.err)
    assert done.code == 0, done
    job_id, run_id = done.json()["job_id"], done.json()["run_id"]

    stdout, stderr = bob.cli("jobs", "logs", job_id), bob.cli("jobs", "logs", job_id, "--stderr")
    outputs += [stdout.out + stdout.err, stderr.out + stderr.err]
    assert f"sha {hashlib.sha256(canary.encode()).hexdigest()}" in stdout.out  # the job saw the right value
    assert stdout.out.splitlines()[1:] == [f"head {canary[:10]}", "***", "*** ***", "split *** end", "*** raw", "done"]
    assert stderr.out == "err ***\n"

    for user in (alice, bob):
        for args in (("jobs", "show", job_id, "--json"), ("jobs", "list", "--json"), ("jobs", "show", job_id),
                     ("audit", "list", "--json"), ("runs", "show", run_id, "--json"), ("runs", "list"),
                     ("secrets", "list", "--json"), ("policy", "show", "--json"),
                     ("db", "query", "select * from jobs", "--json"), ("db", "query", "select * from audit", "--json"),
                     ("jobs", "logs", job_id), ("controller", "status", "--json")):
            result = user.cli(*args, timeout=90)
            assert result.code == 0, (user.name, args, result)
            outputs.append(result.out + result.err)
    for args in (("runs", "export", "--output", str(fleet.files / "runs.csv")),
                 ("audit", "export", "--output", str(fleet.files / "audit.jsonl"))):
        result = fleet.cli(*args)  # exports write on the controller's machine: its admin's
        assert result.code == 0, (args, result.err)
        outputs.append(result.out + result.err)
    assert json.loads(bob.cli("jobs", "show", job_id, "--json", check=True).out)["spec"]["env"] == \
        {"HF_TOKEN": {"secret": "hf"}}  # the reference, never the value

    leaks = [text for text in outputs if canary in text]
    assert leaks == []
    for user in (alice, bob):
        assert occurrences(user.home, canary.encode()) == []  # their clients' caches, configs, known_hosts
    assert occurrences(fleet.root, canary.encode()) == [str(fleet.home.secrets_file)]  # the store, and only it
    for root in (head.socket.parent, fleet.home.local_agent_dir, fleet.files):
        assert occurrences(root, canary.encode()) == []
