"""A team on one shared controller: real OS users, a policy.yaml, the real CLI run as each of them over SSH.

The controller runs as this test's user (root here), who is always an
admin, with ``controller serve --team GROUP`` (tests/team_head.py). Four
OS users are made for the test (unique per xdist worker, removed
afterwards), all in the team's group so they reach the 0660 socket: a
viewer, alice and bob (operators through a second group, bob also a
maintainer in project vision) and a stranger whom no rule names. Each runs
``mlfleet`` as themselves with ``MLFLEET_CONTROLLER=ssh://THEM@127.0.0.1:PORT/SOCKET``,
so the identity the controller sees is what sshd's process is
(SO_PEERCRED), as in a real team.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CliResult, Fleet
from team_head import Head
from team_users import TeamUsers


class Member:
    """A team member as the stories use them: their CLI against the shared controller, their files."""

    def __init__(self, user, fleet: Fleet) -> None:  # noqa: ANN001 - team_users.User
        self.user, self.fleet = user, fleet
        self.name, self.uid, self.gid, self.home = user.name, user.uid, user.gid, user.home

    def cli(self, fleet: Fleet, *args: str) -> CliResult:
        """``mlfleet ARGS`` as this user, in their home, on the shared controller (``fleet`` is the head's)."""
        result = self.user.cli(*args, timeout=90)
        return CliResult(result.code, result.out, result.err)

    def spec(self, name: str, project: str) -> Path:
        """A job spec in their home that can never be placed (so it stays pending), owned by them."""
        return self.user.write(f"{name}.yaml", f"name: {name}\nproject: {project}\ncommand: [true]\n"
                                               "resources: {gpus: 64}\n")


@pytest.fixture
def team(request: pytest.FixtureRequest, fleet: Fleet, team_users: TeamUsers) -> Iterator[dict[str, Member]]:
    operators = team_users.group("o")
    viewer, bob = f"{team_users.prefix}a1", f"{team_users.prefix}a3"  # the names the users below get, in order
    (fleet.root / "policy.yaml").write_text(
        "roles:\n"
        f"  - {{user: {viewer}, role: viewer}}\n"
        f"  - {{group: {operators}, role: operator}}\n"
        f"  - {{user: {bob}, role: maintainer, projects: [vision]}}\n")
    fleet.home.config_file.write_text("query:\n  allow_file_reads: true\n")
    head: Head = request.getfixturevalue("head")
    users = {"viewer": head.joined(team_users), "alice": head.joined(team_users, groups=(operators,)),
             "bob": head.joined(team_users, groups=(operators,)), "stranger": head.joined(team_users)}
    assert (users["viewer"].name, users["bob"].name) == (viewer, bob)
    yield {role: Member(user, fleet) for role, user in users.items()}


def test_roles_decide_who_may_submit_cancel_and_read_files(fleet: Fleet, team: dict[str, Member]) -> None:
    viewer, alice, bob = team["viewer"], team["alice"], team["bob"]

    # A viewer reads but cannot submit: exit 6, the sentence names the permission and the rule.
    assert viewer.cli(fleet, "jobs", "list", "--json").code == 0
    refused = viewer.cli(fleet, "submit", str(viewer.spec("v1", "vision")), "--queue-anyway")
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {viewer.name} (viewer, policy.yaml:2 (roles[0])) may not submit jobs "
                                   "in vision: that needs operator in vision")

    a_job = alice.cli(fleet, "submit", str(alice.spec("a1", "vision")), "--queue-anyway")
    assert a_job.code == 0, a_job.err
    b_job = bob.cli(fleet, "submit", str(bob.spec("b1", "vision")), "--queue-anyway")
    assert b_job.code == 0, b_job.err
    a_id, b_id = a_job.out.strip(), b_job.out.strip()
    assert fleet.job(a_id)["owner"] == alice.name and fleet.job(b_id)["owner"] == bob.name

    # An operator cannot cancel another's job; a maintainer in the job's project can; the controller's user too.
    refused = alice.cli(fleet, "jobs", "cancel", b_id)
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:3 (roles[1])) may not cancel "
                                   f"{bob.name}'s job {b_id}: that needs maintainer in vision")
    assert fleet.job(b_id)["state"] == "pending"
    done = bob.cli(fleet, "jobs", "cancel", a_id)
    assert done.code == 0, done.err
    assert fleet.job(a_id)["state"] == "cancelled"
    assert alice.cli(fleet, "jobs", "retry", a_id).code == 0  # her own job, again
    assert fleet.cli("jobs", "cancel", b_id).code == 0
    assert fleet.job(b_id)["state"] == "cancelled"

    # Someone in no rule is refused everything but hello, before any job is looked up.
    stranger = team["stranger"]
    refused = stranger.cli(fleet, "jobs", "list")
    assert refused.code == 6 and refused.err.strip() == (
        f"mlfleet: {stranger.name} (no role) may not read: that needs viewer in at least one project")
    refused = stranger.cli(fleet, "jobs", "cancel", "no-such-job")
    assert refused.code == 6 and refused.err.strip() == (
        f"mlfleet: {stranger.name} (no role) may not cancel jobs or sweeps: that needs operator in at least one project")

    # Hosts and the controller itself are admins' only.
    refused = bob.cli(fleet, "controller", "stop")
    assert refused.code == 6 and "may not stop the controller: that needs admin" in refused.err, refused.err

    # db query: the store for a viewer, a file on the controller's machine only for an admin.
    data = fleet.files / "d.csv"
    data.write_text("a,b\n1,2\n")
    assert viewer.cli(fleet, "db", "query", "select count(*) as n from jobs", "--json").code == 0
    refused = alice.cli(fleet, "db", "query", f"select * from read_csv('{data}')")
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:3 (roles[1])) may not read or "
                                   "write files on the controller's machine: that needs admin")
    assert fleet.cli("db", "query", f"select * from read_csv('{data}')", check=True)

    # Each refusal is on the audit trail, with the permission and the rule.
    denied = fleet.cli_json("audit", "list", "--action", "policy.denied")
    by_actor = {(e["actor"], json.loads(e["detail"])["method"] if isinstance(e["detail"], str)
                 else e["detail"]["method"]) for e in denied}
    assert {(viewer.name, "submit"), (alice.name, "job_cancel"), (bob.name, "shutdown"),
            (alice.name, "db_query")} <= by_actor

    # policy show: who the controller takes you for.
    me = bob.cli(fleet, "policy", "show", "--json")
    assert me.code == 0, me.err
    shown = json.loads(me.out)
    assert shown["user"] == bob.name and shown["role"] == "operator" and shown["policy"] is True
    assert shown["projects"] == [{"project": "vision", "role": "maintainer", "rule": "policy.yaml:4 (roles[2])"}]
    assert shown["owner"] == pwd.getpwuid(os.getuid()).pw_name


TRAIN = """\
import os
from mlfleet import track
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(b"weights")
track.log_artifact("out/model.bin")
"""


def test_models_maintainers_register_and_move_aliases_admins_move_production(fleet: Fleet,
                                                                                team: dict[str, Member]) -> None:
    alice, bob = team["alice"], team["bob"]
    specs = fleet.root / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "train.py").write_text(TRAIN)
    spec = fleet.write_spec("train", "name: train\nproject: vision\ncommand: [python, train.py]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    run_id = done.json()["run_id"]

    refused = alice.cli(fleet, "models", "register", "m", "--run", run_id, "--artifact", "model.bin")
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:3 (roles[1])) may not register "
                                   "models in vision: that needs maintainer in vision")
    made = bob.cli(fleet, "models", "register", "m", "--run", run_id, "--artifact", "model.bin")
    assert made.code == 0, made.err

    assert bob.cli(fleet, "models", "alias", "m", "staging", "1").code == 0
    refused = bob.cli(fleet, "models", "alias", "m", "production", "1")
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {bob.name} (maintainer in vision, policy.yaml:4 (roles[2])) may not "
                                   "move protected aliases (m@production): that needs admin in vision")
    assert fleet.cli("models", "alias", "m", "production", "1").code == 0  # the controller's user is an admin
    assert "production" in fleet.cli_json("models", "show", "m@production")["version"]["aliases"]

    # Deployments: a maintainer in the deployment's project; an operator is refused before anything starts.
    web = alice.user.write("web.yaml", "name: web\nmodel: m@staging\nproject: vision\n"
                                       "command: [python, -m, http.server, '{port}']\n")
    refused = alice.cli(fleet, "deploy", "apply", str(web))
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:3 (roles[1])) may not change "
                                   "deployments (web): that needs maintainer in vision")
    assert fleet.cli_json("deploy", "list") == []
    missing = bob.cli(fleet, "deploy", "scale", "nosuch", "2")
    assert missing.code == 4, missing.err  # not there: said so, whatever the role
