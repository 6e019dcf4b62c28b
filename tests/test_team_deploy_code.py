"""A maintainer deploys her own code to the team's controller: packed and sent by her client, never read by it.

The controller runs as this test's user (root) with ``controller serve
--team`` (tests/team_head.py); bob is a maintainer in project vision and
alice an operator, each a real OS user reaching it over SSH. Bob's
workdir is in his 0700 home: a tiny HTTP server that answers the health
probe and says which code it is (``/whose``). His ``deploy apply`` packs
that folder on his side and uploads it; the revision records the code, and
its replica serves bob's words. Bob then changes the file and scales to 2:
the new replica runs the recorded code (the old words, the same archive,
no second upload), which it could not if the controller read the workdir
at scale-up. Alice is refused before any of her code is sent.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import Fleet
from team_head import Head
from team_users import TeamUsers, User

SERVER = '''\
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port = int(sys.argv[sys.argv.index("--port") + 1])
words = open("whose.txt").read().strip()  # read once at start: the code this replica was given


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = (words if self.path == "/whose" else "ok").encode()
        self.send_response(200 if self.path in ("/health", "/whose") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''

TRAIN = """\
import os
from mlfleet import track
os.makedirs("out", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(b"weights")
track.log_artifact("out/model.bin")
"""


def web_spec(user: User, name: str, replicas: int = 1) -> Path:
    """A deployment of the tiny server in ``user``'s home (workdir: the spec's folder), with fast probes."""
    user.write(f"{name}/server.py", SERVER)
    user.write(f"{name}/whose.txt", f"{user.name}'s first code\n")
    return user.write(f"{name}/{name}.yaml", f"""\
name: {name}
model: m@staging
project: vision
command: [python, server.py, --port, "{{port}}"]
replicas: {replicas}
health: {{path: /health, interval: 0.3s, timeout: 0.25s, failures: 2}}
rollout: {{max_surge: 1, max_unavailable: 0, ready_timeout: 30s, drain: 0.3s}}
""")


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.read().decode()


def serving(fleet: Fleet, name: str, count: int) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        d = fleet.cli_json("deploy", "show", name)
        return d if len(d["endpoints"]) == count and d["phase"] == "stable" else None
    return fleet.wait_for(done, timeout=60, interval=0.3, what=f"{count} healthy replicas of {name}")


def archives(fleet: Fleet) -> dict[str, int]:
    """The code cache's archives and their inodes (a second upload of the same code would rename a new file in)."""
    return {p.name: p.stat().st_ino for p in fleet.home.code_cache_dir.glob("*.tar.gz")}


@pytest.fixture
def team(request: pytest.FixtureRequest, fleet: Fleet, team_users: TeamUsers) -> dict[str, User]:
    operators = team_users.group("o")
    bob = f"{team_users.prefix}a2"  # the second user made below
    (fleet.root / "policy.yaml").write_text(
        "roles:\n"
        f"  - {{group: {operators}, role: operator}}\n"
        f"  - {{user: {bob}, role: maintainer, projects: [vision]}}\n")
    head: Head = request.getfixturevalue("head")
    users = {"alice": head.joined(team_users, groups=(operators,)), "bob": head.joined(team_users, groups=(operators,))}
    assert users["bob"].name == bob
    return users


def test_a_maintainer_deploys_her_own_code_and_scaling_reuses_it(fleet: Fleet, team: dict[str, User]) -> None:
    alice, bob = team["alice"], team["bob"]
    specs = fleet.root / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "train.py").write_text(TRAIN)
    done = fleet.cli("submit", str(fleet.write_spec("train", "name: train\nproject: vision\n"
                                                    "command: [python, train.py]\n")), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err
    fleet.cli_json("models", "register", "m", "--run", done.json()["run_id"], "--artifact", "model.bin",
                   "--alias", "staging")

    os.chmod(bob.home, 0o700)
    web = web_spec(bob, "web")
    before = archives(fleet)
    applied = bob.cli("deploy", "apply", str(web), "--json", timeout=90)
    assert applied.code == 0, applied.err
    assert json.loads(applied.out)["change"] == "created"

    d = serving(fleet, "web", 1)
    (rev,) = d["revisions"]
    sent = rev["code"]["sha256"]
    assert rev["code_by"] == bob.name and rev["code"]["files"] == 3
    assert set(archives(fleet)) - set(before) == {f"{sent}.tar.gz"}
    assert get(d["endpoints"][0]["port"], "/whose") == f"{bob.name}'s first code"
    jobs = [fleet.job(r["job_id"]) for r in d["replicas"]]
    assert [j["code_hash"] for j in jobs] == [sent]

    # His file changes after the apply; a scale-up runs the revision's recorded code, not the workdir of now.
    bob.write("web/whose.txt", "changed after the apply\n")
    sent_files = archives(fleet)
    scaled = bob.cli("deploy", "scale", "web", "2")
    assert scaled.code == 0, scaled.err
    d = serving(fleet, "web", 2)
    assert len(d["revisions"]) == 1
    assert {get(e["port"], "/whose") for e in d["endpoints"]} == {f"{bob.name}'s first code"}
    assert {fleet.job(r["job_id"])["code_hash"] for r in d["replicas"]} == {sent}
    assert archives(fleet) == sent_files  # the same archive, sent once

    # The first file again (it is in the workdir: the same code, so it is sent no more) only scales back to 1.
    again = bob.cli("deploy", "apply", str(web_spec(bob, "web")), "--json", timeout=90)
    assert again.code == 0 and json.loads(again.out)["change"] == "scaled", again.out + again.err
    assert archives(fleet) == sent_files and len(fleet.cli_json("deploy", "show", "web")["revisions"]) == 1

    # An operator may submit, but not apply a deployment: refused before any of her code is sent.
    refused = alice.cli("deploy", "apply", str(web_spec(alice, "web2")), timeout=90)
    assert refused.code == 6, refused.err
    assert refused.err.strip() == (f"mlfleet: {alice.name} (operator, policy.yaml:2 (roles[0])) may not change "
                                   "deployments (web2): that needs maintainer in vision")
    assert archives(fleet) == sent_files
    assert [x["name"] for x in fleet.cli_json("deploy", "list")] == ["web"]


def test_with_a_shared_controller_deploy_open_and_hosts_add_identity_say_where_to_run_them(fleet: Fleet) -> None:
    """Both act on this machine's files (its loopback and hosts.yaml; a key path here): one sentence each, exit 2."""
    url = "ssh://carol@127.0.0.1:1/srv/team.sock"  # nothing listens there: the refusal comes before any connection
    key = fleet.files / "id_test"
    key.write_text("not a key")
    opened = fleet.cli("--controller", url, "deploy", "open", "web", "--port", "9000")
    assert opened.code == 2 and opened.err.strip() == (
        f"mlfleet: deploy open reaches the replicas from the controller's machine (its loopback and hosts.yaml), and "
        f"the controller is shared ({url}): run 'mlfleet deploy open web --port 9000' on 127.0.0.1 and reach it from "
        "here with 'ssh -L 9000:127.0.0.1:9000 carol@127.0.0.1:1'"), opened.err
    for command in (["hosts", "add", "gpu1", "--address", "10.0.0.9", "--identity", str(key)],
                    ["hosts", "add-slurm", "hpc", "--login", "ml@login1", "--identity", str(key)]):
        added = fleet.cli("--controller", url, *command)
        assert added.code == 2 and added.err.strip() == (
            f"mlfleet: {' '.join(command[:2])} --identity names a key file on this machine, but the controller is "
            f"shared ({url}) and opens hosts' keys on 127.0.0.1 as its own user: run 'mlfleet {' '.join(command[:2])}' "
            "on 127.0.0.1, with a key file there"), added.err
    assert "gpu1" not in fleet.home.hosts_file.read_text() if fleet.home.hosts_file.exists() else True
