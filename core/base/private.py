"""Private by default: mlfleet's folders are 0700 and its files 0600, whoever made them first.

WHY: the DuckDB file holds jobs' ``env`` (secrets), snapshots hold code, logs
and run folders hold what jobs print. Another local user must be able to read
none of it, and must not be able to plant a folder or a socket where mlfleet
looks (docs/configuration.md, "Where files live").

Two halves:

* :func:`use_private_umask`, called first by the controller and agent entry
  points: everything they create is *born* private, so there is no moment
  between create and chmod where another user could open it. The user's own
  umask is kept in ``MLFLEET_USER_UMASK`` for what is theirs: a job's own
  files, the file of ``runs export --output``.
* :func:`private_dir`, :func:`tighten_tree`, :func:`open_private` and
  :func:`trusted_socket` deal with what already exists: ours and too open is
  tightened; another user's, or something another user could swap, is
  refused with one sentence (:class:`UnsafePathError`).

A folder *above* ours (``/``, ``/tmp``, ``~``) is trusted when it belongs to
root or to us and nobody else may write in it, or it is sticky like
``/tmp`` (where only an entry's owner may rename it). A symbolic link on the
way is followed only when it belongs to root or to us.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections import deque
from pathlib import Path

from mlfleet.core.base.errors import UnsafePathError

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
USER_UMASK_ENV = "MLFLEET_USER_UMASK"
_MAX_LINKS = 40  # like the kernel's ELOOP limit
OWN_FOLDER_HINT = "set MLFLEET_HOME to a folder of your own"


def use_private_umask() -> None:
    """Make everything this process creates private (umask 077); remember the user's umask for its children.

    The first mlfleet process of a chain (a controller started from a shell)
    records the shell's umask; the processes it starts (the local agent, its
    runners) inherit the record, so a job still gets the user's umask.
    """
    old = os.umask(PRIVATE_UMASK)
    if parse_umask(os.environ.get(USER_UMASK_ENV)) is None:
        os.environ[USER_UMASK_ENV] = f"{old:04o}"


def parse_umask(text: str | None) -> int | None:
    """An octal umask such as ``0022``, or None when ``text`` is not one."""
    try:
        value = int(text or "", 8)
    except ValueError:
        return None
    return value if 0 <= value <= 0o777 else None


def user_umask() -> int:
    """The user's umask: the one recorded by :func:`use_private_umask`, else this process's own.

    Read from /proc rather than by setting and restoring ``os.umask``: that
    would leave umask 0 for a moment to any other thread creating a file.
    """
    recorded = parse_umask(os.environ.get(USER_UMASK_ENV))
    if recorded is not None:
        return recorded
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:") and (found := parse_umask(line.split()[1])) is not None:
                    return found
    except (OSError, IndexError):
        pass
    return 0o022


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _follow(path: Path) -> tuple[list[tuple[Path, os.stat_result]], list[str]]:
    """Walk ``path`` from ``/`` one component at a time, as the kernel would.

    Returns the real folders passed through, each with its lstat, and the
    names still missing below the last one. A link that does not belong to
    root or to us is refused here: whoever owns it decides where it points.
    """
    parts = deque(Path(os.path.abspath(path)).parts[1:])
    real = Path("/")
    passed = [(real, os.lstat(real))]
    links = 0
    while parts:
        name = parts.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            real = real.parent
            passed.append((real, os.lstat(real)))
            continue
        candidate = real / name
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return passed, [name, *parts]
        except PermissionError:
            raise UnsafePathError(str(candidate), "cannot be looked at (permission denied)", OWN_FOLDER_HINT) from None
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, os.getuid()):
                raise UnsafePathError(str(candidate), f"is a symbolic link that belongs to {user_name(st.st_uid)}, "
                                      "so they decide where it points", "remove it, or " + OWN_FOLDER_HINT)
            links += 1
            if links > _MAX_LINKS:
                raise UnsafePathError(str(path), "has too many symbolic links on its way", OWN_FOLDER_HINT)
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                real = Path("/")
            parts.extendleft(reversed(target.parts[1:] if target.is_absolute() else target.parts))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePathError(str(candidate), "is not a folder", "move it away, or " + OWN_FOLDER_HINT)
        real = candidate
        passed.append((real, st))
    return passed, []


def _check_above(folder: Path, st: os.stat_result, hint: str) -> None:
    """A folder above ours must not let anyone else rename what is in it."""
    if st.st_uid not in (0, os.getuid()):
        raise UnsafePathError(str(folder), f"belongs to {user_name(st.st_uid)}, who could replace the folders "
                              "mlfleet keeps in it", hint)
    if st.st_mode & stat.S_ISVTX:  # sticky (/tmp): only an entry's owner may rename or remove it
        return
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePathError(str(folder), "is writable by every user, who could replace the folders mlfleet "
                              "keeps in it", f"run 'chmod o-w {folder}', or {hint}")
    if st.st_mode & stat.S_IWGRP and st.st_gid != os.getgid():
        raise UnsafePathError(str(folder), "is writable by a group, whose members could replace the folders "
                              "mlfleet keeps in it", f"run 'chmod g-w {folder}', or {hint}")


def _check_ours(folder: Path, st: os.stat_result, hint: str) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(str(folder), "is not a folder", hint)
    if st.st_uid != os.getuid():
        raise UnsafePathError(str(folder), f"belongs to {user_name(st.st_uid)}, not to you "
                              f"({user_name(os.getuid())}), so mlfleet will not keep its files there", hint)


def private_dir(path: Path, *, strict: bool = False, hint: str = OWN_FOLDER_HINT) -> Path:
    """Make ``path`` a folder only we can enter: create what is missing 0700, tighten ours, refuse the rest.

    ``strict``: ``path`` itself must be a real folder, not a link (for a
    folder in a place everyone writes to, such as ``/tmp/mlfleet-UID``).
    """
    if strict:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                raise UnsafePathError(str(path), "is a symbolic link, not a folder (someone may have planted it)",
                                      f"remove it, or {hint}")
        except FileNotFoundError:
            pass
    passed, missing = _follow(path)
    if ".." in missing:
        raise UnsafePathError(str(path), "cannot be created (a missing folder followed by '..')", hint)
    above = passed if missing else passed[:-1]
    for folder, st in above:
        _check_above(folder, st, hint)
    real = passed[-1][0]
    for name in missing:
        real = real / name
        try:
            os.mkdir(real, 0o700)
        except FileExistsError:
            pass  # made meanwhile by someone: checked below like any folder we reuse
        st = os.lstat(real)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(str(real), "appeared as a symbolic link while mlfleet created it", hint)
        _check_ours(real, st, hint)
    st = os.lstat(real)
    _check_ours(real, st, hint)
    if real == Path("/") or st.st_mode & stat.S_ISVTX:  # never chmod /tmp or / (as root): others live there
        raise UnsafePathError(str(real), "is a folder other users share", hint)
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(real, 0o700)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open (creating it 0600) a file of ours, such as a log; one that is another user's is refused."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if st.st_uid != os.getuid() or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(str(path), f"belongs to {user_name(st.st_uid)}, not to you", "remove it")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & 0o700)
    return fd


def tighten_tree(root: Path, skip: tuple[Path, ...] = ()) -> list[Path]:
    """Take group and other bits off everything of ours below ``root``; return root's entries left as they are.

    For an installation made before this rule, or files a user copied in.
    An entry of another user (not root) is refused: its owner can read it
    whatever its mode, and keep a hard link to it after the folder is
    closed. Root's entries (a container's output in a job's folder) are
    left alone. Links are never followed or changed; a folder in ``skip``
    is left to whoever owns it (an agent tightens its own state dir).
    """
    me = os.getuid()
    skipped = {os.fspath(p) for p in skip}
    foreign: list[Path] = []
    stack = [os.fspath(root)]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            foreign.append(Path(folder))
            continue
        with entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(st.st_mode):
                    continue
                if st.st_uid != me:
                    if st.st_uid != 0:
                        raise UnsafePathError(entry.path, f"belongs to {user_name(st.st_uid)}, not to you "
                                              f"({user_name(me)}), who can read it whatever its mode",
                                              "remove it (another user may have planted it) and start again")
                    foreign.append(Path(entry.path))
                    continue
                mode = stat.S_IMODE(st.st_mode)
                is_dir = stat.S_ISDIR(st.st_mode)
                if mode & 0o077 or (is_dir and mode != 0o700):
                    try:
                        os.chmod(entry.path, 0o700 if is_dir else mode & 0o700)
                    except FileNotFoundError:
                        continue
                if is_dir and entry.path not in skipped:
                    stack.append(entry.path)
    return foreign


def trusted_socket(path: Path, strict: tuple[Path, ...] = (), hint: str = OWN_FOLDER_HINT) -> bool:
    """Whether a client may talk to the socket at ``path``: False when there is none yet.

    It must be a socket of ours (lstat: no link) in a folder of ours that
    nobody else can write to, under folders nobody else can swap; folders
    in ``strict`` must also be real folders, not links. Anything else is
    refused (:class:`UnsafePathError`), never treated as "no controller":
    a planted socket would otherwise receive the whole request.
    """
    for folder in strict:
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePathError(str(folder), "is a symbolic link, not a folder (someone may have planted it), "
                                  "so mlfleet will not talk to the socket in it", hint)
        _check_ours(folder, st, hint)
    passed, missing = _follow(path.parent)
    if missing:
        return False
    for folder, st in passed[:-1]:
        _check_above(folder, st, hint)
    folder, st = passed[-1]
    _check_ours(folder, st, hint)
    if st.st_mode & 0o022:
        raise UnsafePathError(str(folder), "is writable by other users, so a socket in it could be theirs", hint)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafePathError(str(path), "is not a socket (a link or a file someone may have planted)",
                              "remove it and try again")
    if st.st_uid != os.getuid():
        raise UnsafePathError(str(path), f"is a socket of {user_name(st.st_uid)}, not yours, so mlfleet will not "
                              "send it anything", f"remove it (another user may have planted it), or {hint}")
    return True


def private_agent_state(state_dir: Path, socket_path: Path) -> None:
    """What ``agent serve`` does before its daemon starts: a private state dir and a socket place of ours.

    Here, not in agents/: the agent imports only the protocol and plain
    models, and the entry point runs before the daemon creates anything.
    """
    private_dir(state_dir)
    if not socket_path.parent.exists():
        private_dir(socket_path.parent)
    trusted_socket(socket_path, hint="put the socket in a folder of your own (--socket)")
    left = tighten_tree(state_dir)  # a state dir made before files were private
    if left:
        log.warning("%d file(s) in %s belong to root and were left as they are: %s", len(left), state_dir,
                    ", ".join(map(str, left[:5])))
