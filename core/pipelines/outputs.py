"""A step's declared outputs, content-hashed when it ends, and a cache hit's outputs checked before reuse.

"Outputs are content-hashed when the step ends" and "a cache hit whose
outputs are gone or changed is a miss, never a false hit" (issue 17). A
file's hash is the sha256 of its bytes; a folder's is the sha256 over one
line ``RELATIVE/PATH\\0SHA256\\n`` per file, the lines sorted by path (its
UTF-8 bytes), so the same tree hashes the same wherever and however it
was written. Empty folders add nothing (as in git).

Hostile trees are refused, never followed: the walk goes from the workdir
down by directory file descriptors with ``O_NOFOLLOW``, so a symbolic link
anywhere (``out`` -> ``/etc``, a link inside a folder) is an error naming
it, and a FIFO, socket or device is refused without being opened for
reading (it could block, or be endless). Why links are refused rather than
hashed: outputs are copied between hosts, and a link's target is a path on
the host that wrote it. A declared path that is absolute or holds ``..``
is refused before anything is opened.

Every byte is read on each check: no (size, mtime) shortcut, because such
a shortcut is exactly how a changed output could pass as cached.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.pipelines.state import OutputDigest

CHUNK = 4 << 20
MAX_FILES = 1_000_000  # files in one folder output: past this the step is told to write an archive


class OutputError(MlfleetError):
    """A declared output could not be hashed: missing, a link, a special file, or a path leaving the workdir."""

    def __init__(self, name: str, path: str, problem: str) -> None:
        self.name = name
        self.path = path
        self.problem = problem
        super().__init__(f"output {name} ({path}) {problem}")


def hash_outputs(workdir: Path, outputs: Mapping[str, str]) -> dict[str, OutputDigest]:
    """Every declared output (name -> path relative to ``workdir``) hashed; raises OutputError on the first bad one."""
    return {name: hash_output(workdir, name, path) for name, path in outputs.items()}


def hash_output(workdir: Path, name: str, path: str) -> OutputDigest:
    """One output's digest, walked from ``workdir`` without following any link."""
    parts = _parts(name, path)
    sha, size, files = _digest_at(workdir, parts, name, path)
    return OutputDigest(name=name, path=path, sha256=sha, size=size, files=files)


def verify_output(digest: OutputDigest, root: Path | None = None) -> str | None:
    """None when the output is still there with the recorded sha256; else one sentence saying what moved.

    Where it is looked for: ``digest.stored`` (an absolute path the
    controller keeps), or ``root / digest.path`` (the workdir it was written in).
    """
    label = f"output {digest.name} ({digest.stored or digest.path})"
    if digest.stored is not None:
        stored = Path(digest.stored)
        base, parts = stored.parent, [stored.name]
    elif root is not None:
        base, parts = root, None
    else:
        return f"{label} has no known place"
    try:
        if parts is None:
            parts = _parts(digest.name, digest.path)
        sha, size, files = _digest_at(base, parts, digest.name, digest.path)
    except OutputError as exc:
        return f"{label} {exc.problem}"
    if (files is None) != (digest.files is None):
        was, now = ("a file", "a folder") if digest.files is None else ("a folder", "a file")
        return f"{label} was {was} and is now {now}"
    if sha != digest.sha256:
        return f"{label} changed (sha256 {_short(digest.sha256, sha)} → {_short(sha, digest.sha256)})"
    return None


def verify_outputs(outputs: Mapping[str, OutputDigest], root: Path | None = None) -> list[str]:
    """The problems of a cache hit's outputs, one sentence each; empty: every output is there, unchanged."""
    return [problem for digest in outputs.values() if (problem := verify_output(digest, root)) is not None]


# ------------------------------------------------------------------ the walk

def _parts(name: str, path: str) -> list[str]:
    if not path or "\0" in path:
        raise OutputError(name, path, "is not a path")
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts:
        raise OutputError(name, path, "is not a path inside the workdir")
    parts = [p for p in pure.parts if p not in ("", ".")]
    if not parts:
        raise OutputError(name, path, "names the workdir itself; name a file or folder in it")
    return parts


def _digest_at(base: Path, parts: list[str], name: str, path: str) -> tuple[str, int, int | None]:
    """(sha256, size, files or None) of ``base/parts...``, each component opened below the last, never through a link."""
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise OutputError(name, path, f"cannot be read: its folder {base} {_why(exc)}") from None
    try:
        walked = []
        for part in parts[:-1]:
            walked.append(part)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise OutputError(name, path, _component_problem(exc, "/".join(walked), fd, part)) from None
            os.close(fd)
            fd = inner
        return _digest_entry(fd, parts[-1], name, path, "/".join(parts))
    finally:
        os.close(fd)


def _digest_entry(dir_fd: int, entry: str, name: str, path: str, shown: str) -> tuple[str, int, int | None]:
    try:
        info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise OutputError(name, path, _why_missing(exc, shown)) from None
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(name, path, _link(shown))
    if stat.S_ISREG(info.st_mode):
        sha, size = _hash_file(dir_fd, entry, name, path, shown)
        return sha, size, None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(name, path, _special(shown))
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        raise OutputError(name, path, _why_missing(exc, shown)) from None
    try:
        lines: list[tuple[bytes, str]] = []
        total = _walk(fd, "", lines, name, path, shown)
    finally:
        os.close(fd)
    h = hashlib.sha256()
    for rel, sha in sorted(lines):
        h.update(rel + b"\0" + sha.encode("ascii") + b"\n")
    return h.hexdigest(), total, len(lines)


def _walk(fd: int, prefix: str, lines: list[tuple[bytes, str]], name: str, path: str, shown: str) -> int:
    total = 0
    with os.scandir(fd) as entries:
        listed = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False))
                        for e in entries)
    for entry, is_link, is_dir, is_file in listed:
        rel = f"{prefix}{entry}"
        where = f"{shown}/{rel}"
        if is_link:
            raise OutputError(name, path, _link(where))
        if is_file:
            sha, size = _hash_file(fd, entry, name, path, where)
            lines.append((os.fsencode(rel), sha))
            total += size
            if len(lines) > MAX_FILES:
                raise OutputError(name, path, f"holds more than {MAX_FILES} files; write an archive instead")
        elif is_dir:
            try:
                inner = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise OutputError(name, path, _why_missing(exc, where)) from None
            try:
                total += _walk(inner, rel + "/", lines, name, path, shown)
            finally:
                os.close(inner)
        else:
            raise OutputError(name, path, _special(where))
    return total


def _hash_file(dir_fd: int, entry: str, name: str, path: str, shown: str) -> tuple[str, int]:
    """sha256 and size of a regular file, opened without following a link and checked to be one once open."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise OutputError(name, path, _link(shown) if exc.errno == errno.ELOOP else _why_missing(exc, shown)) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else after the listing
            raise OutputError(name, path, _special(shown))
        h = hashlib.sha256()
        size = 0
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
            size += len(chunk)
        return h.hexdigest(), size
    finally:
        os.close(fd)


def _component_problem(exc: OSError, walked: str, fd: int, part: str) -> str:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                return f"is under {walked}, a symbolic link; outputs are never read through links"
        except OSError:
            pass
        return f"is under {walked}, which is not a folder"
    return _why_missing(exc, walked)


def _why_missing(exc: OSError, shown: str) -> str:
    if exc.errno == errno.ENOENT:
        return "is missing"
    return f"cannot be read ({shown}: {_why(exc)})"


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _link(shown: str) -> str:
    return (f"holds a symbolic link ({shown}); outputs are copied between hosts, so a step writes files, "
            "not links")


def _special(shown: str) -> str:
    return f"holds {shown}, which is neither a file nor a folder (a FIFO, socket or device is never read)"


def _short(text: str, other: str, keep: int = 8) -> str:
    differ = next((i for i, (a, b) in enumerate(zip(text, other)) if a != b), min(len(text), len(other)))
    keep = max(keep, differ + 1)
    return text if len(text) <= keep else text[:keep] + "…"
