"""``controller serve --team GROUP``: the team's door, a second socket (0660, group GROUP) beside the 0600 one.

Why a second socket and not a looser first one: the controller's own 0600
socket stays what every single-user tool expects, and the team socket is a
separate, visible decision (its group, its folder). Members reach it on the
head node directly, or over SSH (core/controller/remote.py): sshd opens the
socket as the authenticated user, so ``SO_PEERCRED`` names them either way
(docs/team.md, identity).

The checks here are pure reads of the OS (the group, the folder's mode, the
path's length) made before anything is created, so a mistake is one
sentence and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from mlfleet.core.base.errors import UsageError

DEFAULT_TEAM_SOCKET = Path("/run/mlfleet/controller.sock")
SOCKET_MODE = 0o660
FOLDER_MODE = 0o750
_SUN_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one of them the NUL


@dataclass(frozen=True)
class TeamSocket:
    """Where the team connects, and which OS group may."""

    group: str
    gid: int
    path: Path


def team_socket(group: str, path: Path | None = None) -> TeamSocket:
    """The team socket for ``group`` at ``path`` (default /run/mlfleet/controller.sock), or one sentence why not."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise UsageError(f"--team {group}: there is no OS group {group!r} on this machine; create it "
                         f"('groupadd {group}') and add the team's users to it") from None
    path = Path(path or DEFAULT_TEAM_SOCKET).expanduser().absolute()
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        raise UsageError(f"--socket {path} is {len(os.fsencode(path))} bytes long, more than a Unix socket path "
                         f"may be ({_SUN_PATH_MAX}); choose a shorter path")
    folder_problem(path.parent)
    return TeamSocket(group=group, gid=gid, path=path)


def folder_problem(folder: Path) -> None:
    """Refuse a folder others may write to, or that another user owns (they could replace the socket with their own).

    The folders above it too: whoever may rename one of them may put a folder
    of their own in its place. A folder above that every user may write is
    fine when it is sticky (/tmp): there no one but its owner renames the
    folder below.
    """
    try:
        st = folder.stat()
    except FileNotFoundError:
        _owners_problem(folder.parent, checked=False)  # the folder is made by prepare_folder, 0750
        return
    except OSError as exc:
        raise UsageError(f"--socket: cannot read the folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--socket: {folder} is not a folder")
    if st.st_mode & stat.S_IWOTH:  # sticky (/tmp) too: anyone could take the name while no controller holds it
        raise UsageError(f"--socket: the folder {folder} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}),"
                         f" so anyone could replace the team socket there; use a folder only its owner may write "
                         f"(the default {DEFAULT_TEAM_SOCKET.parent} is made 0750)")
    if st.st_mode & stat.S_IWGRP:
        raise UsageError(f"--socket: the folder {folder} is writable by its group (mode {stat.S_IMODE(st.st_mode):04o}),"
                         f" so its members could replace the team socket there; chmod g-w {folder}, or remove it "
                         f"and let serve make it (0750)")
    _owners_problem(folder, checked=True)


def _owners_problem(start: Path, checked: bool) -> None:
    """Refuse ``start`` or a folder above it that another user owns, or that others may write (``checked``:
    ``start``'s own mode was looked at already; sticky folders such as /tmp are fine above)."""
    real = Path(os.path.realpath(start))
    for above in [real, *real.parents]:
        try:
            st = above.stat()
        except OSError:
            continue  # a part that is missing: prepare_folder says so
        if st.st_uid not in (0, os.getuid()):
            raise UsageError(f"--socket: the folder {above} belongs to {_user(st.st_uid)}, who could replace the "
                             f"team socket there; use a folder of root's or {_user(os.getuid())}'s (or remove it "
                             "and let serve make it)")
        if (above != real or not checked) and st.st_mode & (stat.S_IWOTH | stat.S_IWGRP) and not st.st_mode & stat.S_ISVTX:
            raise UsageError(f"--socket: the folder {above} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}),"
                             f" so they could replace the folders below it; choose a --socket under folders only "
                             "their owners may write")


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def prepare_folder(team: TeamSocket) -> None:
    """Make the socket's folder when missing: 0750, owned by this user (root or the controller's), group GROUP.

    Also refuses a path another controller is serving: unlinking its socket would cut its team off.
    """
    folder = team.path.parent
    if not folder.exists():
        try:
            folder.mkdir(mode=FOLDER_MODE)  # one level only: folders above made 0700 here would shut the team out
            os.chown(folder, os.getuid(), team.gid)
            os.chmod(folder, FOLDER_MODE)  # mkdir's mode is cut by the umask
        except OSError as exc:
            raise UsageError(f"--socket: cannot make the folder {folder} ({exc.strerror}); make it by hand "
                             f"(0750, group {team.group}) or choose another --socket") from None
    if team.path.exists() and _answers(team.path):
        raise UsageError(f"--socket {team.path}: another controller is serving its team there; stop it or choose "
                         "another --socket")


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        with contextlib.suppress(OSError):
            probe.connect(str(path))
            return True
    return False


def facts(team: TeamSocket | None) -> dict[str, object]:
    """What ``controller status`` shows of the team socket."""
    if team is None:
        return {"team": None, "team_socket": None}
    return {"team": team.group, "team_socket": str(team.path)}
