"""The head node of a team: a root controller serving ``controller serve --team GROUP`` and the sshd its members use.

Shared by the team stories (tests/test_team_*.py): the fixtures ``team_users``
(real OS users, removed afterwards: tests/team_users.py) and ``head`` (the
serving controller on the test's fleet home, its socket outside pytest's
0700 tmp so the team can reach it, and a per-user-key sshd on loopback).
A policy.yaml or config.yaml written to the fleet's home before ``head`` is
asked for is in force from the controller's start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from conftest import Fleet
from sshd import SshServer, keygen
from team_users import TeamUsers, User

from mlfleet.core.base.controller_url import ENV

MLFLEET = str(Path(sys.executable).with_name("mlfleet"))


@dataclass
class Head:
    """The head node: a root controller serving a team, and the sshd its members come in by."""

    fleet: Fleet
    group: str
    socket: Path
    sshd: SshServer
    process: subprocess.Popen[bytes]

    def url(self, user: User, socket: Path | None = None) -> str:
        return f"ssh://{user.name}@127.0.0.1:{self.sshd.port}{socket or self.socket}"

    def member(self, users: TeamUsers, *, in_team: bool = True, groups: tuple[str, ...] = ()) -> User:
        """A user with their key allowed by the head's sshd, in the team's group (or not) and ``groups``."""
        user = users.user(groups=((self.group,) if in_team else ()) + groups)
        self.sshd.allow(user.name, user.key)
        return user

    def joined(self, users: TeamUsers, groups: tuple[str, ...] = ()) -> User:
        """A team member who trusted the head's key and has ``MLFLEET_CONTROLLER`` set: ready to use it."""
        user = self.member(users, groups=groups)
        user.cli("--controller", self.url(user), "controller", "trust", "--yes", check=True)
        user.extra[ENV] = self.url(user)
        return user


@pytest.fixture
def team_users() -> Iterator[TeamUsers]:
    users = TeamUsers()
    try:
        yield users
    finally:
        users.remove_all()


@pytest.fixture
def head(fleet: Fleet, team_users: TeamUsers) -> Iterator[Head]:
    group = team_users.group()
    base = Path(tempfile.mkdtemp(prefix="mlft", dir="/tmp"))  # not under pytest's 0700 tmp: the team must reach it
    os.chmod(base, 0o755)
    socket = base / "team" / "c.sock"  # team/ is made by serve: 0750, root:GROUP
    sshd = SshServer(fleet.root / "sshd", keygen(fleet.root / "user_key"), per_user=True).start()
    log = open(fleet.root / "serve.log", "ab")
    process = subprocess.Popen([MLFLEET, "controller", "serve", "--team", group, "--socket", str(socket)],
                               env=fleet.env, stdout=log, stderr=log, cwd="/")
    try:
        fleet.wait_for(lambda: socket.exists() and fleet.cli("controller", "status").code == 0, 30,
                       what="the team controller to serve")
        yield Head(fleet, group, socket, sshd, process)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        sshd.stop()
        sshd.remove_keys()
        shutil.rmtree(base, ignore_errors=True)


