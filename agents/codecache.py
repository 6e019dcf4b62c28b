"""Code shipping, node side: snapshots received by SFTP, verified, unpacked once.

``STATE_DIR/code/.incoming/<sha256>.tar.gz`` is where the controller
uploads; :meth:`CodeCache.unpack` checks the archive's sha256 against its
name, extracts it to a temporary folder and renames that to
``STATE_DIR/code/<sha256>/``, so a half-unpacked tree is never used. A
snapshot already present is never uploaded again. Unpacked files keep only
their owner's bits (0600, 0700 for executables): the agent's state dir is private.

The verified archive is kept beside the tree (``code/<sha256>.tar.gz``),
and every run starts in a fresh extraction of it, checked against
its sha256 first (:meth:`CodeCache.verified_archive`). Why not a copy of the
unpacked tree: a job runs as the agent's user and can find and edit that
shared tree (an attacker appended to ``train.py``, and the next run of the
"same" code ran the edit). A changed archive is found by its hash: the
snapshot is dropped and the controller ships it again.

An archive is treated as hostile: it may hold only regular files, folders
and symlinks, under relative names without ``..``. Extraction never follows
a symlink: every folder is entered with ``O_NOFOLLOW`` relative to its
parent's descriptor and every file is created with ``O_EXCL | O_NOFOLLOW``;
symlinks are made last, so nothing is ever written through one, and each
must then resolve inside the snapshot (checked on the real tree, which
catches chains that a check of the link text alone would miss). Anything
else refuses the whole snapshot; nothing is ever written outside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from mlfleet.core.base.errors import NotFoundError, UsageError

_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_UNPACKED_BYTES = 1024**3  # the controller ships at most 256 MiB: anything far larger is not a snapshot
MAX_ENTRIES = 200_000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeArchive(UsageError):
    """An archive entry that could write outside its folder or is not plain code."""


class CodeCache:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "code"
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def _check(self, sha256: str) -> str:
        if not _SHA.match(sha256 or ""):
            raise UsageError(f"invalid snapshot id {sha256!r}")
        return sha256

    def path(self, sha256: str) -> Path:
        return self.root / self._check(sha256)

    def archive(self, sha256: str) -> Path:
        return self.root / f"{self._check(sha256)}.tar.gz"

    def present(self, sha256: str) -> bool:
        """Both the tree and its verified archive (a cache from before archives were kept is shipped again)."""
        return self.path(sha256).is_dir() and self.archive(sha256).is_file()

    def status(self, sha256: str) -> dict[str, object]:
        present = self.present(sha256)
        return {"present": present, "path": str(self.path(sha256)),
                "incoming": str(self.incoming / f"{sha256}.tar.gz")}

    def unpack(self, sha256: str) -> dict[str, object]:
        target = self.path(sha256)
        if self.present(sha256):
            return {"present": True, "path": str(target)}
        if target.is_dir():  # unpacked before archives were kept: unpacked again from the upload
            shutil.rmtree(target, ignore_errors=True)
        archive = self.incoming / f"{sha256}.tar.gz"
        if not archive.exists():
            raise NotFoundError(f"snapshot {sha256[:12]} was not uploaded")
        digest = hashlib.sha256()
        with open(archive, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            archive.unlink()
            raise UsageError(f"snapshot {sha256[:12]} arrived damaged (sha256 {digest.hexdigest()[:12]}); upload it again")
        scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=".unpack-"))
        try:
            with tarfile.open(archive, "r:gz") as tar:
                extract(tar, scratch)
            os.replace(scratch, target)
        except UnsafeArchive as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise UsageError(f"snapshot {sha256[:12]} {exc}; it was not unpacked") from None
        except FileExistsError:
            shutil.rmtree(scratch, ignore_errors=True)  # unpacked meanwhile by another request
        except (OSError, tarfile.TarError, EOFError) as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            if self.present(sha256):
                return {"present": True, "path": str(target)}
            raise UsageError(f"cannot unpack snapshot {sha256[:12]}: {exc}") from None
        if archive.exists():
            os.chmod(archive, 0o600)  # as SFTP left it (0644 with the node's umask): the user's code is private
            os.replace(archive, self.archive(sha256))  # kept, verified: each run starts from it
        return {"present": True, "path": str(target)}

    def verified_archive(self, sha256: str) -> bytes:
        """The snapshot's archive, checked against its sha256; a run's copy is extracted from these bytes.

        An archive that no longer matches its name (a job wrote into the
        cache) is dropped with its tree and reported as not here, so the
        controller ships it again and launches the run from the fresh one.
        """
        archive = self.archive(sha256)
        try:
            data = archive.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"snapshot {sha256[:12]} is not on this host; ship it first") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            shutil.rmtree(self.path(sha256), ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise NotFoundError(f"snapshot {sha256[:12]} on this host changed after it arrived (something wrote into "
                                "the agent's code cache); it was dropped: ship it again")
        return data

    @staticmethod
    def extract_copy(data: bytes, dest: Path) -> Path:
        """A run's own copy: ``data`` (from verified_archive) extracted into the new folder ``dest``."""
        dest.mkdir(mode=0o700)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            extract(tar, dest)
        return dest


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract ``tar`` into the empty folder ``dest``, refusing anything that could reach outside it."""
    members = _checked_members(tar)
    root_fd = os.open(dest, _DIR_FLAGS)
    try:
        links = []
        for parts, member in members:
            if member.issym():
                links.append((parts, member))
                continue
            parent = _enter(root_fd, parts[:-1] if member.isfile() else parts)
            try:
                if member.isfile():
                    _write_file(tar, member, parent, parts[-1])
            finally:
                if parent != root_fd:
                    os.close(parent)
        for parts, member in links:  # last: no file or folder is ever made through a symlink
            parent = _enter(root_fd, parts[:-1])
            try:
                os.symlink(member.linkname, parts[-1], dir_fd=parent)
            except FileExistsError:
                raise UnsafeArchive(f"holds a symlink {member.name!r} over another entry") from None
            finally:
                if parent != root_fd:
                    os.close(parent)
    finally:
        os.close(root_fd)
    real_root = os.path.realpath(dest)
    for parts, member in links:
        resolved = os.path.realpath(os.path.join(dest, *parts))
        if resolved != real_root and not resolved.startswith(real_root + os.sep):
            raise UnsafeArchive(f"holds a symlink {member.name!r} -> {member.linkname!r} that leads outside it")


def _checked_members(tar: tarfile.TarFile) -> list[tuple[tuple[str, ...], tarfile.TarInfo]]:
    """Every member with its name split, after the checks that need no file system."""
    out = []
    seen: set[tuple[str, ...]] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > MAX_ENTRIES:
            raise UnsafeArchive(f"holds more than {MAX_ENTRIES} entries")
        name = member.name
        if "\0" in name or name.startswith("/"):
            raise UnsafeArchive(f"holds an entry with an absolute name {name!r}")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise UnsafeArchive(f"holds an entry {name!r} that climbs out with '..'")
        if not parts and not member.isdir():
            raise UnsafeArchive(f"holds an entry with no name ({name!r})")
        if member.islnk():
            raise UnsafeArchive(f"holds a hard link {name!r} -> {member.linkname!r}")
        if member.issym():
            target = member.linkname
            if not target or "\0" in target or target.startswith("/"):
                raise UnsafeArchive(f"holds a symlink {name!r} -> {target!r} that leads outside it")
            depth = len(parts) - 1  # a lexical check first; the real tree is checked after extraction
            for piece in target.split("/"):
                depth += -1 if piece == ".." else 0 if piece in ("", ".") else 1
                if depth < 0:
                    raise UnsafeArchive(f"holds a symlink {name!r} -> {target!r} that leads outside it")
        elif not (member.isfile() or member.isdir()):
            raise UnsafeArchive(f"holds {name!r}, which is neither a file, a folder nor a symlink")
        if parts in seen and not member.isdir():
            raise UnsafeArchive(f"holds {name!r} twice")
        seen.add(parts)
        total += max(0, member.size) if member.isfile() else 0
        if total > MAX_UNPACKED_BYTES:
            raise UnsafeArchive(f"would unpack to more than {MAX_UNPACKED_BYTES // 1024**2} MiB")
        out.append((parts, member))
    return out


def _enter(root_fd: int, parts: tuple[str, ...]) -> int:
    """A descriptor of folder ``parts`` under ``root_fd``, made as needed, never through a symlink."""
    fd = root_fd
    for part in parts:
        try:
            os.mkdir(part, 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError:  # ELOOP / ENOTDIR: a file or a symlink where a folder should be
            if fd != root_fd:
                os.close(fd)
            raise UnsafeArchive(f"holds a path through {part!r}, which is not a folder") from None
        if fd != root_fd:
            os.close(fd)
        fd = child
    return fd


def _write_file(tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str) -> None:
    source = tar.extractfile(member)
    assert source is not None  # a regular member always has a body
    mode = 0o700 if member.mode & 0o111 else 0o600  # the owner's bits only: code on the node is private
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=parent)
    except FileExistsError:
        raise UnsafeArchive(f"holds {member.name!r} over another entry") from None
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, 1 << 20)
