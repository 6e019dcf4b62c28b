"""Model files on the node: received by SFTP, verified by sha256, committed once.

``STATE_DIR/models/.incoming/<sha256>`` is where the controller uploads (the
transport writes a ``.part`` name and renames it, so a half-sent file is
never taken for a whole one). :meth:`ModelStore.commit` hashes it, and only
a file whose sha256 is its name is moved to
``STATE_DIR/models/<sha256>/<file_name>``: into a fresh temporary folder
first, which is then renamed into place, so the folder a server reads from
either does not exist or holds the whole verified file. A mismatch deletes
the upload and says so (the controller ships it again, or fails the run
when its own copy is damaged).

The same bytes may be registered under two file names (two models, one
file): the second name is a hard link beside the first in the same folder
(made under a temporary name, then renamed), never a second upload.

Names are checked here because they come over the wire: a sha256 is 64
lowercase hex digits; a file name has no ``/``, no ``..``, no NUL, does not start
with ``.`` (the store's own temporary names) and is at most 255 bytes in UTF-8 (a single path component on every
file system we run on). Why no re-hash at each launch, as code snapshots
have: a model may be many gigabytes; the folder is private to the agent's
user, and the file is hashed at arrival.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from mlfleet.core.base.errors import NotFoundError, UsageError

_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_FILE_NAME = 255


def check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise UsageError(f"invalid model sha256 {str(sha256)[:80]!r}: expected 64 lowercase hex digits")
    return sha256


def check_file_name(name: str) -> str:
    """A model file's name as one safe path component, or a UsageError saying what is wrong with it."""
    if not isinstance(name, str) or not name:
        raise UsageError("a model file needs a name")
    shown = repr(name[:80])
    if "\0" in name:
        raise UsageError(f"model file name {shown} holds a NUL byte")
    if "/" in name:
        raise UsageError(f"model file name {shown} holds a '/': it must be a plain file name")
    if ".." in name:
        raise UsageError(f"model file name {shown} holds '..'")
    if name.startswith("."):
        raise UsageError(f"model file name {shown} starts with '.' (names the agent keeps for its own temporary files)")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UsageError(f"model file name {shown} is not valid UTF-8") from None
    if size > MAX_FILE_NAME:
        raise UsageError(f"model file name {name[:40]!r}... is {size} bytes; {MAX_FILE_NAME} at most")
    return name


class ModelStore:
    """The verified model files of one agent state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"
        self.incoming = self.root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True, mode=0o700)

    def folder(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def path(self, sha256: str, file_name: str) -> Path:
        return self.folder(sha256) / check_file_name(file_name)

    def status(self, sha256: str, file_name: str | None = None) -> dict[str, object]:
        """``present``: the file (any file of that content when no name is given) is committed here."""
        folder = self.folder(sha256)
        any_file = folder.is_dir() and any(p.is_file() for p in folder.iterdir())
        present = self.path(sha256, file_name).is_file() if file_name is not None else any_file
        # same_bytes: committed under another name; a commit links it without an upload
        return {"present": present, "same_bytes": any_file, "incoming": str(self.incoming / sha256)}

    def commit(self, sha256: str, file_name: str) -> dict[str, object]:
        """Verify the upload and move it into place; idempotent (a file already here is simply its path)."""
        target = self.path(sha256, file_name)
        folder = target.parent
        upload = self.incoming / sha256
        if target.is_file():
            upload.unlink(missing_ok=True)
            return {"path": str(target)}
        sibling = next((p for p in folder.iterdir() if p.is_file()), None) if folder.is_dir() else None
        if sibling is not None:  # the same bytes under another name: a link, not a second copy
            self._link(sibling, target)
            upload.unlink(missing_ok=True)
            return {"path": str(target)}
        if not upload.is_file():
            raise NotFoundError(f"model {sha256[:12]} was not uploaded to this host; ship it first")
        digest = hashlib.sha256()
        with open(upload, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            upload.unlink(missing_ok=True)
            raise UsageError(f"model {sha256[:12]} arrived damaged (its sha256 is {digest.hexdigest()[:12]}); "
                             "it was deleted: ship it again")
        os.chmod(upload, 0o600)
        scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=".commit-"))
        try:
            os.replace(upload, scratch / file_name)
            os.rename(scratch, folder)  # atomic: the folder appears holding the whole file
        except OSError:
            if target.is_file():  # another request committed the same model meanwhile
                shutil.rmtree(scratch, ignore_errors=True)
                return {"path": str(target)}
            if folder.is_dir():  # the folder appeared with another name of the same bytes
                kept = scratch / file_name
                os.replace(kept, target)
                shutil.rmtree(scratch, ignore_errors=True)
                return {"path": str(target)}
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return {"path": str(target)}

    @staticmethod
    def _link(existing: Path, target: Path) -> None:
        temp = target.with_name(f".{os.getpid()}.link")
        temp.unlink(missing_ok=True)
        try:
            os.link(existing, temp)
        except OSError:
            shutil.copyfile(existing, temp)
        os.replace(temp, target)
