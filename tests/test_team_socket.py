"""A team shares one controller on a head node, reached over SSH (docs/team.md, issue "Team mode").

Real parts only: the controller runs as root with ``controller serve --team
GROUP`` (a second socket, 0660, group GROUP), a real sshd on loopback takes
each user's own key, and real OS users (tests/team_users.py) run the real
CLI as themselves with ``--controller ssh://USER@127.0.0.1:PORT/SOCKET``.
Who they are to the controller is what sshd's process is (SO_PEERCRED),
never what their CLI says.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conftest import Fleet
from team_head import Head
from team_users import TeamUsers

from mlfleet.core.base.controller_url import ENV
from mlfleet.core.base.paths import Home

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))


def test_a_team_member_reaches_the_shared_controller_over_ssh_and_her_jobs_are_hers(
        head: Head, team_users: TeamUsers) -> None:
    socket_mode = head.socket.stat()
    assert stat.S_IMODE(socket_mode.st_mode) == 0o660 and socket_mode.st_gid == team_users_gid(head.group)
    folder = head.socket.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o750 and folder.st_gid == team_users_gid(head.group)

    alice = head.member(team_users)
    url = head.url(alice)
    trusted = alice.cli("--controller", url, "controller", "trust", "--yes", "--json", check=True).json()
    assert trusted["recorded"] is True and trusted["fingerprint"].startswith("SHA256:")
    again = alice.cli("--controller", url, "controller", "trust", "--yes", check=True)
    assert "already trusted" in again.out

    alice.extra[ENV] = url  # from here on, the variable (the flag's twin)
    status = alice.cli_json("controller", "status")
    assert status["team"] == head.group and status["team_socket"] == str(head.socket)
    hello = status["hello"]
    assert (hello["user"], hello["owner"], hello["team"], hello["policy"]) == (alice.name, "root", head.group, False)
    assert hello["user_role"] == "operator"  # serve --team, no policy file: members are operators (docs/team.md)
    text = alice.cli("controller", "status", check=True).out
    assert f"root's controller on 127.0.0.1 · team {head.group} · you: {alice.name} ({hello['user_role']})" in text

    # She submits from her own folder, and claims to be root in her environment: the job is still hers.
    spec = alice.write("proj/job.yaml", 'name: hello-team\ncommand: "echo hi"\n')
    alice.extra.update(USER="root", LOGNAME="root")
    job = alice.cli("submit", "job.yaml", "--json", cwd=spec.parent, check=True).json()
    jobs = {j["job_id"]: j for j in alice.cli_json("jobs", "list")}
    assert jobs[job["job_id"]]["owner"] == alice.name
    # The controller's own user sees the same job, owned by alice, on the local socket.
    mine = {j["job_id"]: j for j in head.fleet.cli_json("jobs", "list")}
    assert mine[job["job_id"]]["owner"] == alice.name

    # A shared controller is not started (nor run) from a client; it is stopped over SSH only by who may.
    start = alice.cli("controller", "start")
    assert start.code == 2 and "started on its head node with 'mlfleet controller serve --team GROUP'" in start.err


def team_users_gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


def test_outsiders_unknown_keys_and_wrong_sockets_are_refused_in_one_sentence(
        head: Head, team_users: TeamUsers) -> None:
    carol = head.member(team_users)
    unknown = carol.cli("--controller", head.url(carol), "controller", "status")
    assert unknown.code == 5, unknown
    assert "presented a host key mlfleet does not know" in unknown.err
    assert f"'mlfleet controller trust {head.url(carol)}'" in unknown.err
    assert unknown.err.count("\n") == 1 and "Traceback" not in unknown.err

    bob = head.member(team_users, in_team=False)
    bob.cli("--controller", head.url(bob), "controller", "trust", "--yes", check=True)
    refused = bob.cli("--controller", head.url(bob), "jobs", "list")
    assert refused.code == 5, refused
    assert f"{bob.name} is not in the controller's team group" in refused.err, refused.err
    assert refused.err.count("\n") == 1

    carol.cli("--controller", head.url(carol), "controller", "trust", "--yes", check=True)
    nowhere = carol.cli("--controller", head.url(carol, Path("/tmp/no-such-team.sock")), "controller", "status")
    assert nowhere.code == 5 and "nothing is listening at /tmp/no-such-team.sock on 127.0.0.1" in nowhere.err

    stranger = team_users.user(groups=(head.group,))  # in the group, but the head's sshd does not know their key
    stranger.cli("--controller", head.url(stranger), "controller", "trust", "--yes", check=True)
    no_key = stranger.cli("--controller", head.url(stranger), "controller", "status")
    assert no_key.code == 5 and f"refused our keys (ssh-agent, ~/.ssh/id_*) for user {stranger.name}" in no_key.err


def test_serve_refuses_an_unknown_group_an_open_folder_and_a_long_path(fleet: Fleet, team_users: TeamUsers) -> None:
    group = team_users.group()
    unknown = fleet.cli("controller", "serve", "--team", "no-such-group-here")
    assert unknown.code == 2 and "there is no OS group 'no-such-group-here'" in unknown.err
    open_folder = Path(tempfile.mkdtemp(prefix="mlft", dir="/tmp"))
    try:
        os.chmod(open_folder, 0o777)
        refused = fleet.cli("controller", "serve", "--team", group, "--socket", str(open_folder / "c.sock"))
        assert refused.code == 2 and "is writable by every user" in refused.err
    finally:
        open_folder.rmdir()
    long_path = "/tmp/" + "x" * 120 + "/c.sock"
    too_long = fleet.cli("controller", "serve", "--team", group, "--socket", long_path)
    assert too_long.code == 2 and "more than a Unix socket path may be" in too_long.err
    assert fleet.controller_pid is None  # nothing was started


def test_a_bad_controller_url_is_one_sentence_at_its_line(fleet: Fleet) -> None:
    (fleet.root / "config.yaml").write_text("controller:\n  tick: 1s\n  url: http://head/\n")
    bad = fleet.cli("jobs", "list")
    assert bad.code == 2 and f"{fleet.root / 'config.yaml'}:3: controller.url: 'http://head/' must start with ssh://" \
        in bad.err, bad.err
    flag = fleet.cli("--controller", "ssh://", "jobs", "list")
    assert flag.code == 2 and "--controller (or MLFLEET_CONTROLLER): 'ssh://' names no host" in flag.err


async def test_the_tui_says_whose_controller_it_is_and_who_you_are(head: Head, team_users: TeamUsers) -> None:
    from mlfleet.tui.app import FleetApp

    alice = head.member(team_users)
    # Root's own TUI, pointed at the shared controller with alice's key: to the controller it is alice.
    tui_home = head.fleet.root / "tui-home"
    tui_home.mkdir(mode=0o700)
    (tui_home / "config.yaml").write_text(f"controller:\n  url: {head.url(alice)}\n  identity: {alice.key}\n")
    env = {**os.environ, "MLFLEET_HOME": str(tui_home)}
    subprocess.run([MLFLEET, "controller", "trust", "--yes"], env=env, check=True, capture_output=True, timeout=30)
    app = FleetApp(Home(tui_home, tui_home))
    async with app.run_test(size=(140, 40)) as pilot:
        deadline = time.monotonic() + 20
        while "you:" not in app.sub_title and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert app.sub_title.startswith(f"root's controller on 127.0.0.1 · team {head.group} · you: {alice.name} ("), \
            app.sub_title
    assert not (tui_home / "controller.lock").exists() and not list(tui_home.glob("*.duckdb"))  # nothing local


def test_the_controllers_own_user_stops_it_over_ssh(head: Head) -> None:
    # Root's key is the head sshd's own user's (per_user servers allow it): to the controller, its own user.
    client = head.fleet.root / "client-home"
    client.mkdir(mode=0o700)
    (client / "config.yaml").write_text(f"controller:\n  identity: {head.sshd.user_key}\n")
    env = {**os.environ, "MLFLEET_HOME": str(client),
           ENV: f"ssh://root@127.0.0.1:{head.sshd.port}{head.socket}"}

    def mlfleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MLFLEET, *args], env=env, capture_output=True, text=True, timeout=60)

    assert mlfleet("controller", "trust", "--yes").returncode == 0
    status = json_of(mlfleet("controller", "status", "--json"))
    assert status["hello"]["user"] == "root" and status["pid"] == head.process.pid
    stopped = mlfleet("controller", "stop", "--json")
    assert stopped.returncode == 0 and json_of(stopped)["stopped"] is True, stopped.stderr
    assert head.process.wait(30) == 0
    assert not head.socket.exists()  # its team socket went with it
    gone = mlfleet("controller", "status")
    assert gone.returncode == 5 and "nothing is listening at" in gone.stderr, gone.stderr
    assert not (client / "controller.lock").exists()  # and nothing was started here


def json_of(result: subprocess.CompletedProcess[str]) -> dict:
    import json

    return json.loads(result.stdout)
