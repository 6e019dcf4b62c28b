"""A team on one controller: real OS users, a policy.yaml, the real CLI run as each of them.

The controller runs as this test's user (root here), who is always an
admin. Three OS users are made for the test (unique per xdist worker,
removed afterwards): a viewer, and alice and bob, operators through their
group, bob also a maintainer in project vision. Each runs ``mlfleet`` as
themselves (subprocess user=/group=/extra_groups=, their own HOME), so the
identity the controller sees is the one SO_PEERCRED gives, as in team mode.

Until ``controller serve --team`` (the 0660 team socket) is in, two things
stand in for it, and only for it: the controller's home, run dir and
socket are opened to other users with chmod, and the client run as the
other users accepts a socket it does not own (``Home.trusted_socket``
replaced in the small launcher below), as a client of the team socket will.
Everything else is the real CLI and the real controller.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

import pytest

from conftest import CliResult, Fleet

LAUNCHER = """\
import site, sys
from pathlib import Path
site.addsitedir(sys.argv.pop(1))  # this checkout's packages (the test's venv may be under a folder they cannot enter)
from mlfleet.core.base import paths
# Stands in for the team socket's rule (a socket of the controller's user, in the team's group).
paths.Home.trusted_socket = lambda self, path: Path(path).exists()
from mlfleet.main import main
sys.exit(main(sys.argv[1:]))
"""


def interpreter_for_others() -> str:
    """A Python of this version other users may run (the test's own may live under /root, closed to them)."""
    mine = Path(sys.executable).resolve()
    if all(os.stat(p).st_mode & 0o001 for p in [*mine.parents, mine]):
        return str(mine)
    found = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}", path="/usr/bin:/usr/local/bin")
    if found is None:
        pytest.skip(f"no python{sys.version_info.major}.{sys.version_info.minor} that other users may run")
    return found


class User:
    def __init__(self, name: str, group: str | None) -> None:
        self.name = name
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", *(["-G", group] if group else []), name], check=True,
                       capture_output=True)
        entry = pwd.getpwnam(name)
        self.uid, self.gid, self.home = entry.pw_uid, entry.pw_gid, Path(entry.pw_dir)
        self.groups = [grp.getgrnam(group).gr_gid] if group else []

    def cli(self, fleet: Fleet, *args: str) -> CliResult:
        """``mlfleet ARGS`` as this user, in their home, talking to the fleet's controller."""
        env = {"HOME": str(self.home), "USER": self.name, "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "MLFLEET_HOME": str(fleet.root)}
        proc = subprocess.run([interpreter_for_others(), "-c", LAUNCHER, sysconfig.get_paths()["purelib"], *args], env=env, capture_output=True, text=True,
                              timeout=60, cwd=self.home, user=self.uid, group=self.gid, extra_groups=self.groups)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    def spec(self, name: str, project: str) -> Path:
        """A job spec in their home that can never be placed (so it stays pending), owned by them."""
        path = self.home / f"{name}.yaml"
        path.write_text(f"name: {name}\nproject: {project}\ncommand: [true]\nresources: {{gpus: 64}}\n")
        os.chown(path, self.uid, self.gid)
        return path


@pytest.fixture
def team(fleet: Fleet) -> Iterator[dict[str, User]]:
    tag = os.environ.get("PYTEST_XDIST_WORKER", "m").replace("gw", "") + secrets.token_hex(2)
    group = f"mlft{tag}g"
    subprocess.run(["groupadd", group], check=True, capture_output=True)
    users: dict[str, User] = {}
    try:
        users["viewer"] = User(f"mlft{tag}v", None)
        users["alice"] = User(f"mlft{tag}a", group)
        users["bob"] = User(f"mlft{tag}b", group)
        users["stranger"] = User(f"mlft{tag}s", None)  # in no rule
        v, b = users["viewer"].name, users["bob"].name
        (fleet.root / "policy.yaml").write_text(
            "roles:\n"
            f"  - {{user: {v}, role: viewer}}\n"
            f"  - {{group: {group}, role: operator}}\n"
            f"  - {{user: {b}, role: maintainer, projects: [vision]}}\n")
        fleet.home.config_file.write_text("query:\n  allow_file_reads: true\n")
        fleet.cli("controller", "start", check=True)
        # Stands in for the team socket (controller serve --team): let the other users reach the 0600 socket.
        for path in (fleet.root, fleet.home.run_dir):
            os.chmod(path, 0o711)
        os.chmod(fleet.home.controller_socket, 0o666)
        os.chmod(fleet.home.config_file, 0o644)  # submit reads client.submit_retry from it (their own, in team mode)
        yield users
    finally:
        fleet.cli("controller", "stop")
        for user in users.values():
            subprocess.run(["userdel", "-r", user.name], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def test_roles_decide_who_may_submit_cancel_and_read_files(fleet: Fleet, team: dict[str, User]) -> None:
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
                                                                                team: dict[str, User]) -> None:
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
    web = alice.home / "web.yaml"
    web.write_text("name: web\nmodel: m@staging\nproject: vision\ncommand: [python, -m, http.server, '{port}']\n")
    os.chown(web, alice.uid, alice.gid)
    refused = alice.cli(fleet, "deploy", "apply", str(web))
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:3 (roles[1])) may not change "
                                   "deployments (web): that needs maintainer in vision")
    assert fleet.cli_json("deploy", "list") == []
    missing = bob.cli(fleet, "deploy", "scale", "nosuch", "2")
    assert missing.code == 4, missing.err  # not there: said so, whatever the role
