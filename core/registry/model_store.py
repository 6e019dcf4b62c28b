"""The content-addressed model store: ``<data>/models/sha256/<sha256>/<file name>``, written only verified.

A node may vanish; a registered model must not, so registering copies the
artifact here. A file lands under its final name only after its bytes were
written to a temporary file in the same folder, flushed to disk and found to
have the sha256 the run logged (then renamed, which is atomic, and the folder
flushed too): a crash or a changed file leaves at most a ``.incoming-*``
file, never a wrong model under a right name. Two registrations of the same
file at once each write their own temporary file; the second rename replaces
the first with the same bytes. Blocking calls: run them in a thread.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from mlfleet.core.base.errors import MlfleetError, UsageError
from mlfleet.core.base.private import open_private, private_dir

_READ = 1 << 20


def file_name(artifact_path: str) -> str:
    """The base name a logged artifact keeps in the store; one that could climb out of its folder is refused."""
    name = artifact_path.rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "\0" in name or name.startswith(".incoming-"):
        raise UsageError(f"artifact {artifact_path!r} has no file name the model store can keep; "
                         "log the model file itself (track.log_artifact('model.bin'))")
    return name


def target(root: Path, sha256: str, name: str) -> Path:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise UsageError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
    return root / sha256 / file_name(name)


def sha256_of(path: Path) -> str | None:
    """The file's sha256, or None when it is missing or not a regular file of ours to read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_READ):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def present(path: Path, sha256: str) -> bool:
    """Whether ``path`` is already there with the right bytes (a damaged copy is not: it is written again)."""
    return path.is_file() and not path.is_symlink() and sha256_of(path) == sha256


class Incoming:
    """A temporary file in the final folder, hashed as it is written; :meth:`place` or :meth:`discard` it."""

    def __init__(self, final: Path) -> None:
        self.final = final
        private_dir(final.parent)
        self.path = final.parent / f".incoming-{os.getpid()}-{id(self):x}-{final.name}"
        self.fd = open_private(self.path, os.O_WRONLY | os.O_TRUNC)
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.digest.update(data)
        self.size += len(data)

    def place(self, sha256: str, size: int, what: str) -> Path:
        """Flush, check the bytes are the logged ones (else one sentence and nothing kept), rename, flush the folder."""
        try:
            os.fsync(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        got = self.digest.hexdigest()
        if got != sha256 or self.size != size:
            self.path.unlink(missing_ok=True)
            raise MlfleetError(f"{what} is not what the run logged (sha256 {got[:12]}, {self.size} bytes; logged "
                               f"{sha256[:12]}, {size} bytes): it changed since it was logged, so nothing was "
                               "registered; log the file again from a run and register that")
        os.replace(self.path, self.final)
        folder = os.open(self.final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return self.final

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)
