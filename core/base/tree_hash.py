"""The canonical content hash of a file or a folder tree: one hash, wherever the bytes are.

Pipelines key their steps on output hashes, the controller re-hashes what
an agent packed, and lineage records what a job read: all three must agree
on what "the same tree" is, so they share this one walk (the controller in
core/pipelines/, the agent in agents/ — which is why it lives in base).

A file's hash is the sha256 of its bytes; a folder's is the sha256 over one
line ``RELATIVE/PATH\\0SHA256\\n`` per file, the lines sorted by path (its
bytes), so the same tree hashes the same however it was written. Empty
folders add nothing (as in git).

Hostile trees are refused, never followed: the walk goes from a base folder
down by directory file descriptors with ``O_NOFOLLOW``, so a symbolic link
anywhere (``out`` -> ``/etc``, a link inside a folder) is an error naming
it, and a FIFO, socket or device is refused without being opened for
reading (it could block, or be endless). Why links are refused rather than
hashed: trees are copied between hosts, and a link's target is a path on
the host that wrote it. A relative path that is absolute or holds ``..`` is
refused before anything is opened.

Every byte is read on each hash: no (size, mtime) shortcut here; a caller
with a cache of its own (agents/lineage.py) passes ``file_hash``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from mlfleet.core.base.errors import MlfleetError

CHUNK = 4 << 20
MAX_FILES = 1_000_000  # files in one folder: past this the writer is told to write an archive

# (open regular file's descriptor, its path inside the folder hashed ("" for a file hashed alone), its stat) -> (sha256, size).
FileHash = Callable[[int, str, os.stat_result], tuple[str, int]]


class TreeDigest(NamedTuple):
    sha256: str
    size: int  # bytes of file content
    files: int | None  # None for a file, the file count for a folder


class TreeError(MlfleetError):
    """A tree could not be hashed; ``problem`` reads after the tree's name ("is missing", "holds a symbolic link ...")."""

    def __init__(self, problem: str, missing: bool = False) -> None:
        self.problem = problem
        self.missing = missing
        super().__init__(problem)


def relative_parts(path: str) -> list[str]:
    """The components of a path meant to stay inside its base; TreeError for an absolute one, ``..`` or nothing."""
    if not path or "\0" in path:
        raise TreeError("is not a path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise TreeError("is not a path inside the workdir")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise TreeError("names the workdir itself; name a file or folder in it")
    return parts


def tree_digest(base: Path, path: str, file_hash: FileHash | None = None) -> TreeDigest:
    """The digest of ``base/path`` (``path`` relative, checked by :func:`relative_parts`)."""
    return digest_at(base, relative_parts(path), file_hash)


def folder_sha256(lines: Sequence[tuple[bytes, str]]) -> str:
    """A folder's hash from its (relative path bytes, file sha256) pairs, in any order."""
    h = hashlib.sha256()
    for rel, sha in sorted(lines):
        h.update(rel + b"\0" + sha.encode("ascii") + b"\n")
    return h.hexdigest()


def digest_at(base: Path, parts: Sequence[str], file_hash: FileHash | None = None) -> TreeDigest:
    """The digest of ``base/parts...``, each component opened below the last, never through a link.

    ``file_hash`` is called for each regular file with its open descriptor
    (default: read it all); what it answers is what the tree hash is made of,
    so a caller that copies while it hashes (agents/outputs.py) hashes exactly
    what it copied.
    """
    hasher = file_hash or _read_hash
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise TreeError(f"cannot be read: its folder {base} {_why(exc)}", exc.errno == errno.ENOENT) from None
    try:
        walked = []
        for part in parts[:-1]:
            walked.append(part)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise _component_problem(exc, "/".join(walked), fd, part) from None
            os.close(fd)
            fd = inner
        return _digest_entry(fd, parts[-1], "/".join(parts), hasher)
    finally:
        os.close(fd)


def _digest_entry(dir_fd: int, entry: str, shown: str, hasher: FileHash) -> TreeDigest:
    try:
        info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise _missing(exc, shown) from None
    if stat.S_ISLNK(info.st_mode):
        raise TreeError(_link(shown))
    if stat.S_ISREG(info.st_mode):
        sha, size = _hash_file(dir_fd, entry, shown, "", hasher)
        return TreeDigest(sha, size, None)
    if not stat.S_ISDIR(info.st_mode):
        raise TreeError(_special(shown))
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise _missing(exc, shown) from None
    try:
        lines: list[tuple[bytes, str]] = []
        total = _walk(fd, "", lines, shown, hasher)
    finally:
        os.close(fd)
    return TreeDigest(folder_sha256(lines), total, len(lines))


def _walk(fd: int, prefix: str, lines: list[tuple[bytes, str]], shown: str, hasher: FileHash) -> int:
    total = 0
    with os.scandir(fd) as entries:
        listed = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                        for e in entries)
    for entry, is_link, is_dir, is_file in listed:
        rel = f"{prefix}{entry}"
        where = f"{shown}/{rel}"
        if is_link:
            raise TreeError(_link(where))
        if is_file:
            sha, size = _hash_file(fd, entry, where, rel, hasher)
            lines.append((os.fsencode(rel), sha))
            total += size
            if len(lines) > MAX_FILES:
                raise TreeError(f"holds more than {MAX_FILES} files; write an archive instead")
        elif is_dir:
            try:
                inner = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise _missing(exc, where) from None
            try:
                total += _walk(inner, rel + "/", lines, shown, hasher)
            finally:
                os.close(inner)
        else:
            raise TreeError(_special(where))
    return total


def _hash_file(dir_fd: int, entry: str, shown: str, rel: str, hasher: FileHash) -> tuple[str, int]:
    """sha256 and size of a regular file, opened without following a link and checked to be one once open."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise (TreeError(_link(shown)) if exc.errno == errno.ELOOP else _missing(exc, shown)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped for something else after the listing
            raise TreeError(_special(shown))
        os.set_blocking(fd, True)
        return hasher(fd, rel, info)
    finally:
        os.close(fd)


def _read_hash(fd: int, rel: str, info: os.stat_result) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _component_problem(exc: OSError, walked: str, fd: int, part: str) -> TreeError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                return TreeError(f"is under {walked}, a symbolic link; outputs are never read through links")
        except OSError:
            pass
        return TreeError(f"is under {walked}, which is not a folder")
    return _missing(exc, walked)


def _missing(exc: OSError, shown: str) -> TreeError:
    if exc.errno == errno.ENOENT:
        return TreeError("is missing", missing=True)
    return TreeError(f"cannot be read ({shown}: {_why(exc)})")


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _link(shown: str) -> str:
    return (f"holds a symbolic link ({shown}); outputs are copied between hosts, so a step writes files, "
            "not links")


def _special(shown: str) -> str:
    return f"holds {shown}, which is neither a file nor a folder (a FIFO, socket or device is never read)"
