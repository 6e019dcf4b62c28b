"""Whether an archive a client sent is a snapshot: checked before the controller keeps it.

A team controller takes code archives from other OS users
(core/jobs/code_upload.py); each is hostile until checked. A snapshot (what
core/jobs/snapshot.py makes) is a gzip tar of regular files, folders and
symlinks under relative names without ``..``, whose symlinks resolve inside
it. Anything else (absolute names, ``..``, hard links, devices, FIFOs, a path
through a symlink, a symlink that leads out or loops, more content than a
snapshot may hold, a gzip that inflates past that, a truncated stream) is
refused with one sentence and the archive is never kept.

The node refuses the same things again when it unpacks (agents/codecache.py):
this check is so that a bad archive never enters the shared code cache, where
another job, or the controller's own reading of ``requirements.txt``
(core/environments/prepare.py), could meet it.
"""

from __future__ import annotations

import gzip
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import UsageError
from mlfleet.core.jobs.snapshot import MAX_SNAPSHOT_BYTES

MAX_ENTRIES = 200_000
MAX_LINK_HOPS = 40  # as the kernel's own limit on symlinks followed in one lookup
# Headers are 512 bytes (PAX ones a few more): content plus this much per entry is all a snapshot inflates to.
_HEADER_ALLOWANCE = 3 * 512
MAX_TRAILING = 1024 * 1024  # zeros after a tar's end (its record padding is 10 KiB): any more is not a snapshot


class UnsafeArchive(UsageError):
    """An archive that is not a snapshot: it could write outside its folder, or is not plain code."""


@dataclass(frozen=True)
class ArchiveFacts:
    files: int
    size: int  # bytes of file content


class _Bounded:
    """A reader over the inflated stream that refuses to give more than ``limit`` bytes (a compression bomb)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self.raw, self.limit, self.read_bytes = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size >= 0 else 1 << 20)
        self.read_bytes += len(data)
        if self.read_bytes > self.limit:
            raise UnsafeArchive(f"inflates to more than {self.limit // 1024**2} MiB; a snapshot holds at most "
                                f"{MAX_SNAPSHOT_BYTES // 1024**2} MiB of files")
        return data


def check_archive(path: Path, max_content: int = MAX_SNAPSHOT_BYTES) -> ArchiveFacts:
    """The facts of the snapshot at ``path``, or :class:`UnsafeArchive` saying what makes it not one."""
    links: dict[tuple[str, ...], str] = {}
    kinds: dict[tuple[str, ...], str] = {}
    files = content = 0
    with open(path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as gz:
        bounded = _Bounded(gz, max_content + MAX_ENTRIES * _HEADER_ALLOWANCE)
        try:
            with tarfile.open(fileobj=bounded, mode="r|") as tar:  # type: ignore[call-overload]
                for count, member in enumerate(tar, start=1):
                    if count > MAX_ENTRIES:
                        raise UnsafeArchive(f"holds more than {MAX_ENTRIES:,} entries")
                    parts = _checked_name(member)
                    kind = _kind(member)
                    if kind == "file":
                        files += 1
                        content += member.size
                        if content > max_content:
                            raise UnsafeArchive(f"holds more than {max_content // 1024**2} MiB of files")
                    earlier = kinds.get(parts)
                    if earlier is not None and not (earlier == kind == "dir"):
                        raise UnsafeArchive(f"holds {member.name!r} twice")
                    kinds[parts] = kind
                    if kind == "link":
                        links[parts] = member.linkname
            end = bounded.read_bytes
            while bounded.read(1 << 16):  # the rest of the gzip stream: its CRC and length are checked at its end
                if bounded.read_bytes - end > MAX_TRAILING:
                    raise UnsafeArchive(f"goes on for more than {MAX_TRAILING // 1024} KiB after the end of its tar "
                                        "(a snapshot ends there)")
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError, UnicodeError) as exc:  # a broken header too
            raise UnsafeArchive(f"is not a whole gzip tar ({exc or type(exc).__name__})") from None
    for parts in kinds:
        through = next((parts[:d] for d in range(1, len(parts)) if parts[:d] in links), None)
        if through is not None:
            raise UnsafeArchive(f"holds {'/'.join(parts)!r} under the symlink {'/'.join(through)!r}")
    for parts, target in links.items():
        if leads_outside(parts, target, links):
            raise UnsafeArchive(f"holds a symlink {'/'.join(parts)!r} -> {target!r} that leads outside it or loops")
    return ArchiveFacts(files, content)


def _checked_name(member: tarfile.TarInfo) -> tuple[str, ...]:
    name = member.name
    if "\0" in name or name.startswith("/"):
        raise UnsafeArchive(f"holds an entry with an absolute name {name!r}")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"holds an entry {name!r} that climbs out with '..'")
    if not parts and not member.isdir():
        raise UnsafeArchive(f"holds an entry with no name ({name!r})")
    return parts


def _kind(member: tarfile.TarInfo) -> str:
    if member.isfile():
        return "file"
    if member.isdir():
        return "dir"
    if member.islnk():
        raise UnsafeArchive(f"holds a hard link {member.name!r} -> {member.linkname!r}")
    if member.issym():
        if not member.linkname or "\0" in member.linkname or member.linkname.startswith("/"):
            raise UnsafeArchive(f"holds a symlink {member.name!r} -> {member.linkname!r} that leads outside it")
        return "link"
    what = "a device" if member.ischr() or member.isblk() else "a FIFO" if member.isfifo() else "a special entry"
    raise UnsafeArchive(f"holds {member.name!r}, {what}: a snapshot holds only files, folders and symlinks")


def leads_outside(link: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]) -> bool:
    """Whether the symlink at ``link`` -> ``target`` resolves outside the archive's root (or loops), following
    the archive's other symlinks as the node's file system would once it is unpacked."""
    where = list(link[:-1])
    pending = target.split("/")
    hops = 0
    while pending:
        piece = pending.pop(0)
        if piece in ("", "."):
            continue
        if piece == "..":
            if not where:
                return True
            where.pop()
            continue
        where.append(piece)
        next_target = links.get(tuple(where))
        if next_target is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or next_target.startswith("/"):
                return True
            where.pop()
            pending = next_target.split("/") + pending
    return False
