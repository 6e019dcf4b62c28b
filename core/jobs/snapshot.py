"""Code shipping, controller side: a job's workdir as a content-addressed archive.

At submit, the workdir is packed (respecting .gitignore: the files git would
track, untracked ones included, or every file outside a git repo) into a
deterministic tar.gz (sorted names, zero times and owners, gzip without a
timestamp). The archive's sha256 is the snapshot's identity, so the same
code is uploaded to a host once, the node can verify what it received with
nothing but hashlib, and the run records exactly which code it ran.

A snapshot holds only what lies inside the workdir. The controller may run
as another user than the one who submits (a team controller), so following
a symlink would let a submitter ship any file the controller can read. No
symlink is ever followed: a symlink that resolves inside the workdir is kept
as a symlink (its target rewritten relative, so it means the same on the
node), one that resolves outside is left out and named in ``skipped``, and a
path under a symlinked folder is never read through it. Files are opened
component by component with ``O_NOFOLLOW``, so a folder swapped for a
symlink between listing and packing cannot redirect a read either.
"""

from __future__ import annotations

import contextlib
import fnmatch
import gzip
import hashlib
import io
import os
import secrets
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.private import private_dir
from mlfleet.core.base.tree_hash import TreeError, relative_parts

MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
_ALWAYS_SKIPPED = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs the open


@dataclass(frozen=True)
class Snapshot:
    sha256: str
    path: Path  # the archive in the controller's cache
    files: int
    size: int  # bytes of file content
    skipped: list[str] = field(default_factory=list)  # what was left out and why, one sentence each


@dataclass(frozen=True)
class _Entry:
    rel: str
    size: int = 0
    link: str | None = None  # a symlink's target, relative to its folder
    source: tuple[Path, str] | None = None  # an extra entry's (folder, path below it) to read it from, not the workdir


def snapshot(workdir: Path, cache_dir: Path, private: tuple[Path, ...] = (), exclude: tuple[str, ...] = (),
             extra: Mapping[str, Path] = {}) -> Snapshot:
    """Pack ``workdir`` into ``cache_dir/<sha256>.tar.gz`` (kept once per content).

    ``private`` are mlfleet's own files and folders (``Home.own_paths``):
    never packed. Why: they hold the store, keys and every user's logs,
    which must not travel to a node; and reading the live DuckDB file from
    the controller process would drop its lock on the file (closing any
    descriptor of a file releases a process's POSIX locks on it).

    ``exclude`` are paths relative to the workdir (a file, a folder and all
    under it, or a glob) left out of the archive and so out of its hash: a
    pipeline's declared inputs and outputs (core/pipelines/), so that new
    data never looks like new code to a step that does not read it. Empty by
    default: a job's snapshot hashes exactly as it always did.

    ``extra`` maps workdir-relative paths to absolute source files or
    folders packed there (a pipeline step's *bundle*: its inputs and the
    upstream outputs it reads, at the paths their producers declared). They
    come after the code and replace a code entry at (or under, or above) the
    same path; a link anywhere in a source is refused with a UsageError
    naming it, never followed, and a FIFO or device is never read. They count
    against MAX_SNAPSHOT_BYTES. Empty: the archive is byte for byte what it
    was without the parameter.
    """
    root = Path(os.path.realpath(workdir))
    inside = _private_inside(root, private)
    entries, skipped = _list_entries(root)
    if exclude:
        kept_code = [e for e in entries if not excluded(e.rel, exclude)]
        if len(kept_code) != len(entries):
            skipped.append(f"{len(entries) - len(kept_code)} declared data file(s) ({', '.join(exclude)}): "
                           "a pipeline's inputs and outputs, not code; left out")
        entries = kept_code
    kept = [e for e in entries if not any(e.rel == d or e.rel.startswith(d + "/") for d in inside)]
    if len(kept) != len(entries):
        left = sorted({d for e in entries if e not in kept for d in inside if e.rel == d or e.rel.startswith(d + "/")})
        skipped.append(f"{', '.join(left)}: mlfleet's own (its store, keys and logs); never shipped")
    entries = kept
    if extra:
        added, taken = _extra_entries(extra)
        entries = [e for e in entries if not any(_overlaps(e.rel, rel) for rel in taken)] + added
    total = sum(e.size for e in entries)
    if total > MAX_SNAPSHOT_BYTES and extra:
        raise UsageError(f"workdir {workdir} with the step's inputs holds {total / 1024**2:.0f} MiB of files "
                         f"({MAX_SNAPSHOT_BYTES // 1024**2} MiB at most): data that big belongs on a host path")
    if total > MAX_SNAPSHOT_BYTES:
        raise UsageError(f"workdir {workdir} holds {total / 1024**2:.0f} MiB of files; mlfleet ships code, not data "
                         f"({MAX_SNAPSHOT_BYTES // 1024**2} MiB at most): add data folders to .gitignore")
    buffer = io.BytesIO()
    files = 0
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for entry in entries:
                info = tarfile.TarInfo(entry.rel)
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if entry.link is not None:
                    info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
                    tar.addfile(info)
                    continue
                base, inside_rel = entry.source or (root, entry.rel)
                with _open_inside(base, inside_rel) as fh:
                    if fh is None:  # gone or replaced by something else since it was listed
                        skipped.append(f"{entry.rel} changed while it was packed; left out")
                        continue
                    st = os.fstat(fh.fileno())
                    info.size = st.st_size
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    tar.addfile(info, fh)
                    files += 1
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    private_dir(cache_dir)
    target = cache_dir / f"{digest}.tar.gz"
    if not target.exists():
        # A name of its own: the controller snapshots in threads, and two submits of one workdir at once
        # shared "<digest>.<pid>.tmp": one renamed it away under the other (FileNotFoundError at its rename).
        tmp = target.with_suffix(f".{os.getpid()}.{secrets.token_hex(6)}.tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as fh:
            fh.write(data)  # 0600 whatever the umask: the snapshot is the user's code
        os.replace(tmp, target)
    return Snapshot(digest, target, files, total, skipped)


def _overlaps(code: str, rel: str) -> bool:
    """Whether a code entry at ``code`` collides with an extra entry at ``rel`` (same path, under it, or above it)."""
    return code == rel or code.startswith(rel + "/") or rel.startswith(code + "/")


def _extra_entries(extra: Mapping[str, Path]) -> tuple[list[_Entry], set[str]]:
    """The files of each extra source at their workdir-relative paths, sorted, and the paths the sources take;
    UsageError for a link or a special file."""
    out: list[_Entry] = []
    taken: set[str] = set()
    for rel in sorted(extra):
        try:
            parts = relative_parts(rel)
        except TreeError as exc:
            raise UsageError(f"bundle path {rel!r} {exc.problem}") from None
        rel_clean = "/".join(parts)
        if clash := next((t for t in taken if _overlaps(t, rel_clean)), None):
            raise UsageError(f"bundle paths {clash} and {rel} overlap; each input needs a path of its own")
        taken.add(rel_clean)
        source = Path(extra[rel])
        if not source.is_absolute():
            raise UsageError(f"the source of bundle path {rel} must be an absolute path, not {str(source)!r}")
        base, top = Path(os.path.realpath(source.parent)), source.name  # the folders above may be links; it may not
        for below, size in _walk_source(base, top, str(source)):
            out.append(_Entry(f"{rel_clean}/{below}" if below else rel_clean, size,
                              source=(base, f"{top}/{below}" if below else top)))
    out.sort(key=lambda e: e.rel)
    return out, taken


def _walk_source(base: Path, top: str, shown: str) -> Iterator[tuple[str, int]]:
    """(path below ``base/top``, size) of every file there ("" for a file itself), by descriptors, links refused."""
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UsageError(f"bundle source {shown} cannot be read: {exc.strerror or exc}") from None
    try:
        yield from _walk_entry(fd, top, "", shown)
    finally:
        os.close(fd)


def _walk_entry(dir_fd: int, name: str, below: str, shown: str) -> Iterator[tuple[str, int]]:
    where = f"{shown}/{below}" if below else shown
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise UsageError(f"bundle source {where} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"bundle source {where} is a symbolic link; a bundle holds files, never links")
    if stat.S_ISREG(st.st_mode):
        yield below, st.st_size
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"bundle source {where} is neither a file nor a folder (a FIFO, socket or device is never read)")
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise UsageError(f"bundle source {where} cannot be read: {exc.strerror or exc}") from None
    try:
        with os.scandir(fd) as listing:
            names = sorted(e.name for e in listing)
        for child in names:
            yield from _walk_entry(fd, child, f"{below}/{child}" if below else child, shown)
    finally:
        os.close(fd)


def excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    """Whether the workdir-relative path ``rel`` is one of ``patterns``: the path, a folder above it, or a glob match.

    A ``**/`` also matches no folder at all, as in ``glob(..., recursive=True)``
    (which hashes a pipeline's glob inputs): ``data/**/*.csv`` is
    ``data/x.csv`` too, so that file leaves the code hash as it enters the
    input's.
    """
    for pattern in patterns:
        clean = pattern.strip().strip("/")
        if clean.startswith("./"):
            clean = clean[2:]
        if not clean:
            continue
        if rel == clean or rel.startswith(clean + "/") or any(fnmatch.fnmatchcase(rel, p) for p in _globs(clean)):
            return True
    return False


def _globs(pattern: str) -> list[str]:
    """``pattern`` and each spelling of it with some of its ``**/`` standing for no folder (at most 4 of them)."""
    out = [pattern]
    for _ in range(min(pattern.count("**/"), 4)):
        out = list(dict.fromkeys(out + [p[:i] + p[i + 3:] for p in out for i in _starts(p, "**/")]))
    return out


def _starts(text: str, part: str) -> list[int]:
    return [i for i in range(len(text)) if text.startswith(part, i)]


def _private_inside(root: Path, private: tuple[Path, ...]) -> set[str]:
    """Where under ``root`` the private paths are, as relative paths."""
    found: set[str] = set()
    for path in private:
        real = os.path.realpath(path)
        if real.startswith(str(root) + os.sep):
            found.add(os.path.relpath(real, root))
    return found


@contextlib.contextmanager
def _open_inside(root: Path, rel: str) -> Iterator[io.BufferedReader | None]:
    """``root/rel`` opened for reading without following any symlink on the way; None if it is not a regular file."""
    parts = rel.split("/")
    fds: list[int] = []
    try:
        fds.append(os.open(root, _DIR_FLAGS))
        for part in parts[:-1]:
            fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
        fd = os.open(parts[-1], _FILE_FLAGS, dir_fd=fds[-1])
    except OSError:  # ELOOP / ENOTDIR: a symlink where a folder or the file was; ENOENT: deleted
        for d in fds:
            os.close(d)
        yield None
        return
    for d in fds:
        os.close(d)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        yield None
        return
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as fh:
        yield fh


def _list_entries(root: Path) -> tuple[list[_Entry], list[str]]:
    """What to ship, sorted, and a sentence for each symlink left out."""
    names = _git_files(root)
    if names is None:
        names = []
        for folder, dirs, filenames in os.walk(root):  # never descends into a symlinked folder
            dirs[:] = sorted(d for d in dirs if d not in _ALWAYS_SKIPPED)
            for name in filenames + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
                names.append(os.path.relpath(os.path.join(folder, name), root))
    out: list[_Entry] = []
    skipped: list[str] = []
    linked_folders: dict[str, bool] = {}  # folder -> is a symlink (lstat once per folder)
    warned: set[str] = set()
    listed = set(names)
    for rel in sorted(listed):
        parts = Path(rel).parts
        if not parts or any(part in _ALWAYS_SKIPPED or part == ".." for part in parts):
            continue
        through = _symlinked_parent(root, parts, linked_folders)
        if through is not None:  # e.g. a tracked file under a folder since replaced by a symlink
            if through not in listed and through not in warned:
                warned.add(through)
                skipped.append(f"{through} is a symlinked folder; nothing under it was shipped")
            continue
        full = root / rel
        try:
            st = full.lstat()
        except FileNotFoundError:  # deleted but still in git's index
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(_Entry(rel, st.st_size))
        elif stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(full)
            if target == str(root) or target.startswith(str(root) + os.sep):
                out.append(_Entry(rel, link=os.path.relpath(target, os.path.realpath(full.parent))))
            else:
                skipped.append(f"{rel} -> {os.readlink(full)} points outside the workdir; left out")
    return out, skipped


def _symlinked_parent(root: Path, parts: tuple[str, ...], seen: dict[str, bool]) -> str | None:
    """The first folder on the way to ``parts`` that is a symlink, or None."""
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if folder not in seen:
            try:
                seen[folder] = stat.S_ISLNK((root / folder).lstat().st_mode)
            except OSError:
                seen[folder] = False
        if seen[folder]:
            return folder
    return None


def _git_files(workdir: Path) -> list[str] | None:
    """Files git would ship (tracked + untracked, minus ignored), or None outside a repo."""
    try:
        result = subprocess.run(["git", "-C", str(workdir), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return [name for name in result.stdout.decode("utf-8", "surrogateescape").split("\0") if name]
