"""Where a command may write a file the user named (``--output``), and how it gets there.

One check for every writer (``runs export`` on the controller, ``drift export``
and ``runs artifact get`` in the client), because each of them once replaced
whatever the path named: the live ``mlfleet.duckdb`` (every job, run and audit
record gone after a restart), ``hosts.yaml``, a symlink, the user's own file.
The rules (docs/cli.md, "Files a command writes"):

- never inside mlfleet's own folders (config, data, sockets), by the path's
  real location, so ``..`` and symlinked folders do not get around it;
- never over an existing file unless ``--force``; with ``--force`` only a
  regular file is replaced (atomically, by rename), never a symlink, folder,
  device or pipe, and a link is never followed;
- every OS error is one sentence naming the path, and no temporary file stays.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path
from typing import Iterable

from mlfleet.core.base.errors import MlfleetError, UsageError

FORCE_HINT = "pass --force to replace it, or choose another name"
# Errors the user fixes by choosing another path (exit 2); the rest (a full disk, an I/O error) exit 1.
_USAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP,
                 errno.ENAMETOOLONG, errno.ENOENT, errno.EXDEV, errno.ETXTBSY}
_HINTS = {errno.EACCES: "check the permissions of the file and its folder, or choose another path",
          errno.EPERM: "check the file's permissions and attributes (lsattr; chattr -i), or choose another path",
          errno.EROFS: "that file system is read-only; choose another path",
          errno.ENOSPC: "free some space or choose another disk",
          errno.EDQUOT: "your disk quota is full; free some space or choose another disk"}


def os_failure(exc: OSError, what: str, target: Path | str) -> MlfleetError:
    """One sentence for an OS error on ``target``: what failed, where, what to do."""
    reason = exc.strerror or type(exc).__name__
    hint = _HINTS.get(exc.errno or 0, "choose another path")
    cls = UsageError if exc.errno in _USAGE_ERRNOS else MlfleetError
    return cls(f"cannot {what} {target}: {reason.lower()}; {hint}")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_output(path: str | Path, own_folders: Iterable[Path], force: bool = False) -> Path:
    """The absolute path to write, with its folder's symlinks resolved; or a UsageError saying why not.

    ``own_folders`` are mlfleet's (Home.own_folders()). The name itself is
    not resolved: a symlink there is refused, not followed.
    """
    target = Path(path)
    if not target.is_absolute():
        raise UsageError(f"the output path must be absolute, got {str(path)!r}")
    if target.name in ("", ".", ".."):
        raise UsageError(f"{path} names a folder; give a file name")
    try:
        parent = _real(target.parent)
    except OSError as exc:  # a symlink loop in the folder part
        raise os_failure(exc, "write", target) from None
    resolved = parent / target.name
    for folder in own_folders:
        own = _real(folder)
        if resolved == own or own in resolved.parents:
            raise UsageError(f"{target} is inside mlfleet's own folder {folder}, where it keeps the store and its "
                             "configuration; nothing was written: choose a path outside it")
    if not parent.is_dir():
        raise UsageError(f"{target.parent} is not a folder; create it first")
    _refuse_existing(resolved, force)
    return resolved


def _refuse_existing(target: Path, force: bool) -> None:
    """Nothing there, or (with ``force``) a regular file: anything else is one sentence."""
    try:
        found = os.lstat(target)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise os_failure(exc, "write", target) from None
    if stat.S_ISLNK(found.st_mode):
        raise UsageError(f"{target} is a symbolic link; mlfleet does not write through links, even with --force: "
                         "give the path of a plain file")
    if stat.S_ISDIR(found.st_mode):
        raise UsageError(f"{target} is a folder; give a file name")
    if not stat.S_ISREG(found.st_mode):
        raise UsageError(f"{target} is not a regular file (a device, pipe or socket); mlfleet replaces only "
                         "regular files, even with --force: choose another path")
    if not force:
        raise UsageError(f"{target} already exists; nothing was written: {FORCE_HINT}")


def temp_beside(target: Path) -> Path:
    """A fresh name next to ``target`` (same file system, so the final rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def open_temp(target: Path) -> tuple[Path, int]:
    """Create the temporary file beside ``target`` (never an existing name, never through a link)."""
    tmp = temp_beside(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise os_failure(exc, "write", target) from None
    return tmp, fd


def place(tmp: Path, target: Path, force: bool) -> None:
    """Put the finished ``tmp`` at ``target``; ``tmp`` is gone afterwards either way.

    Without ``force`` a hard link makes the name, which fails if something
    appeared there since the check, so nothing is ever replaced. With
    ``force`` the rename replaces a regular file; what is there is checked
    again first, and rename replaces a link planted since, never its target.
    """
    try:
        if force:
            _refuse_existing(target, force=True)
            os.replace(tmp, target)
            return
        try:
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            raise UsageError(f"{target} appeared while it was being written and was kept; the new file was not "
                             f"written: {FORCE_HINT}") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            _refuse_existing(target, force=False)  # no hard links here (some FUSE, vfat): check, then rename
            os.replace(tmp, target)
    except OSError as exc:
        raise os_failure(exc, "write", target) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def write_bytes(target: Path, data: bytes, force: bool) -> None:
    """Write a small file whole (``drift export``): a temporary file beside it, then :func:`place`."""
    tmp, fd = open_temp(target)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except OSError as exc:
        os.unlink(tmp)
        raise os_failure(exc, "write", target) from None
    place(tmp, target, force)
