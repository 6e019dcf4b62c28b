"""Real second (and third) OS users for the team stories: made with useradd, removed with userdel -r.

Team mode's identity is the OS user behind the socket (docs/team.md), so
its stories need users that really are someone else: their own uid, home,
groups, SSH key and mlfleet installation (HOME and XDG folders of their
own). Names are unique per xdist worker and run (``mlf{worker}{pid}a{n}``)
so two workers or a crashed earlier run never collide; everything made is
removed at teardown. The tests run as root (useradd needs it).

A user's commands run through ``subprocess`` with ``user=``, ``group=`` and
``extra_groups=`` (supplementary groups are not set by ``user=`` alone), with
the checkout's venv, which must be readable by them. Where the venv's base
interpreter is not (pyenv under root's 0700 home), a bridge venv in /tmp on
the system's interpreter of the same minor version reads the checkout venv's
site-packages (extension modules keep one ABI within a minor version).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from sshd import keygen


def _reachable_by_others(path: Path) -> bool:
    """Whether every folder above ``path`` (after symlinks) lets other users through."""
    real = Path(os.path.realpath(path))
    return all(os.stat(folder).st_mode & 0o001 for folder in real.parents)


def bridge_python(folder: Path) -> str:
    """An interpreter other users can run, with this checkout's packages (see the module's doc)."""
    if _reachable_by_others(Path(sys.executable)):
        return sys.executable
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = next((p for p in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}") if os.path.exists(p)), None)
    assert system is not None and _reachable_by_others(Path(system)), (
        f"no {minor} that other users may run: the team stories need one (or a venv outside a 0700 home)")
    subprocess.run([system, "-m", "venv", "--without-pip", str(folder)], check=True, capture_output=True)
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    (folder / "lib" / minor / "site-packages" / "mlfleet-checkout.pth").write_text(
        f"import site; site.addsitedir({site!r})\n")
    return str(folder / "bin" / "python")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path
    key: Path  # their ~/.ssh/id_ed25519 (the default key asyncssh and ssh use)
    python: str = sys.executable  # one they may run (bridge_python)
    extra: dict[str, str] = field(default_factory=dict)  # more environment for their commands

    @property
    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)

    @property
    def env(self) -> dict[str, str]:
        """Their own environment: HOME and XDG folders in their home, no ssh-agent, no MLFLEET_HOME of ours."""
        return {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "PATH": os.environ.get("PATH", ""),
                "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_DATA_HOME": str(self.home / ".local/share"),
                "XDG_RUNTIME_DIR": str(self.home / ".run"), "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8",
                **self.extra}

    def run(self, *argv: str, timeout: float = 60, cwd: Path | None = None, **kwargs: Any) -> Result:
        """``argv`` as this user, in their home (or ``cwd``)."""
        proc = subprocess.run(list(argv), user=self.uid, group=self.gid, extra_groups=self.groups, env=self.env,
                              cwd=cwd or self.home, capture_output=True, text=True, timeout=timeout, **kwargs)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def cli(self, *args: str, timeout: float = 60, cwd: Path | None = None, check: bool = False) -> Result:
        """``mlfleet ARGS`` as this user."""
        result = self.run(self.python, "-m", "mlfleet", *args, timeout=timeout, cwd=cwd)
        if check and result.code != 0:
            raise AssertionError(f"{self.name}: mlfleet {' '.join(args)} exited {result.code}: {result.err or result.out}")
        return result

    def cli_json(self, *args: str, timeout: float = 60) -> Any:
        return self.cli(*args, "--json", timeout=timeout, check=True).json()

    def write(self, relative: str, text: str) -> Path:
        """A file of theirs (owned by them) under their home."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        for part in [path, *path.relative_to(self.home).parents]:
            os.chown(self.home / part, self.uid, self.gid)
        return path


class TeamUsers:
    """The users and groups one test makes; :meth:`remove_all` undoes them (the fixture calls it)."""

    def __init__(self) -> None:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
        self.prefix = f"mlf{worker}{os.getpid() % 100000}"
        self.users: list[User] = []
        self.groups: list[str] = []
        self._n = 0
        self._bridge = Path(tempfile.mkdtemp(prefix="mlftpy", dir="/tmp"))
        os.chmod(self._bridge, 0o755)
        self.python = bridge_python(self._bridge / "venv")

    def group(self, label: str = "t") -> str:
        name = f"{self.prefix}{label}{len(self.groups)}"
        subprocess.run(["groupadd", name], check=True, capture_output=True)
        self.groups.append(name)
        return name

    def user(self, groups: tuple[str, ...] = ()) -> User:
        """A fresh user with a home, an SSH key and the given supplementary groups."""
        self._n += 1
        name = f"{self.prefix}a{self._n}"
        # -p '*': no password, but not "locked" (sshd without PAM refuses a locked account's key login).
        argv = ["useradd", "-m", "-p", "*", "-s", "/bin/sh", name]
        if groups:
            argv[1:1] = ["-G", ",".join(groups)]
        subprocess.run(argv, check=True, capture_output=True)
        entry = pwd.getpwnam(name)
        home = Path(entry.pw_dir)
        ssh = home / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        key = keygen(ssh / "id_ed25519")
        for path in (ssh, key, Path(f"{key}.pub")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        user = User(name, entry.pw_uid, entry.pw_gid, home, key, self.python)
        self.users.append(user)
        return user

    def remove_all(self) -> None:
        for user in self.users:
            for proc in psutil.process_iter(["uids"]):  # only what this user still runs (we started it)
                with contextlib.suppress(psutil.Error):
                    if proc.info["uids"] and proc.info["uids"].real == user.uid:
                        proc.kill()
            subprocess.run(["userdel", "-r", user.name], capture_output=True)
            shutil.rmtree(user.home, ignore_errors=True)
        for name in self.groups:
            try:
                grp.getgrnam(name)
            except KeyError:
                continue
            subprocess.run(["groupdel", name], capture_output=True)
        shutil.rmtree(self._bridge, ignore_errors=True)
