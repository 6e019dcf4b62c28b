"""Code shipping, controller side: a job's workdir as a content-addressed archive.

At submit, the workdir is packed (respecting .gitignore: the files git would
track, untracked ones included, or every file outside a git repo) into a
deterministic tar.gz (sorted names, zero times and owners, gzip without a
timestamp). The archive's sha256 is the snapshot's identity, so the same
code is uploaded to a host once, the node can verify what it received with
nothing but hashlib, and the run records exactly which code it ran.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .private import private_dir

MAX_SNAPSHOT_BYTES = 256 * 1024 * 1024
_ALWAYS_SKIPPED = {".git", "__pycache__", ".venv", ".mypy_cache", ".pytest_cache"}


@dataclass(frozen=True)
class Snapshot:
    sha256: str
    path: Path  # the archive in the controller's cache
    files: int
    size: int  # bytes of file content


def snapshot(workdir: Path, cache_dir: Path) -> Snapshot:
    """Pack ``workdir`` into ``cache_dir/<sha256>.tar.gz`` (kept once per content)."""
    files = _list_files(workdir)
    total = sum(size for _, size in files)
    if total > MAX_SNAPSHOT_BYTES:
        raise UsageError(f"workdir {workdir} holds {total / 1024**2:.0f} MiB of files; mlfleet ships code, not data "
                         f"({MAX_SNAPSHOT_BYTES // 1024**2} MiB at most): add data folders to .gitignore")
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel, size in files:
                full = workdir / rel
                info = tarfile.TarInfo(rel)
                info.size = size
                info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
                info.mtime = 0
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    private_dir(cache_dir)
    target = cache_dir / f"{digest}.tar.gz"
    if not target.exists():
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as fh:
            fh.write(data)  # 0600 whatever the umask: the snapshot is the user's code
        os.replace(tmp, target)
    return Snapshot(digest, target, len(files), total)


def _list_files(workdir: Path) -> list[tuple[str, int]]:
    """(relative path, size) of the regular files to ship, sorted."""
    names = _git_files(workdir)
    if names is None:
        names = []
        for root, dirs, filenames in os.walk(workdir):
            dirs[:] = sorted(d for d in dirs if d not in _ALWAYS_SKIPPED)
            for name in filenames:
                names.append(os.path.relpath(os.path.join(root, name), workdir))
    out = []
    for rel in sorted(set(names)):
        full = workdir / rel
        if any(part in _ALWAYS_SKIPPED for part in Path(rel).parts):
            continue
        try:
            st = full.lstat()
        except FileNotFoundError:  # deleted but still in git's index
            continue
        if full.is_file() and not full.is_symlink():
            out.append((rel, st.st_size))
    return out


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
