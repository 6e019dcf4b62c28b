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
    """Refuse a folder others may write to (anyone could replace the socket there with their own)."""
    try:
        st = folder.stat()
    except FileNotFoundError:
        return  # made by prepare_folder, 0750
    except OSError as exc:
        raise UsageError(f"--socket: cannot read the folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"--socket: {folder} is not a folder")
    if st.st_mode & stat.S_IWOTH:  # sticky (/tmp) too: anyone could take the name while no controller holds it
        raise UsageError(f"--socket: the folder {folder} is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}),"
                         f" so anyone could replace the team socket there; use a folder only its owner may write "
                         f"(the default {DEFAULT_TEAM_SOCKET.parent} is made 0750)")


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
