"""Code shipping, node side: snapshots received by SFTP, verified, unpacked once.

``STATE_DIR/code/.incoming/<sha256>.tar.gz`` is where the controller
uploads; :meth:`CodeCache.unpack` checks the archive's sha256 against its
name, extracts it to a temporary folder and renames that to
``STATE_DIR/code/<sha256>/``, so a half-unpacked tree is never used. A
snapshot already present is never uploaded again. Unpacked files keep only
their owner's bits (0600, 0700 for executables): tar would otherwise
restore the archive's 0644 inside the agent's private state dir.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from mlfleet.core.errors import NotFoundError, UsageError

_SHA = re.compile(r"^[0-9a-f]{64}$")


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

    def status(self, sha256: str) -> dict[str, object]:
        present = self.path(sha256).is_dir()
        return {"present": present, "path": str(self.path(sha256)),
                "incoming": str(self.incoming / f"{sha256}.tar.gz")}

    def unpack(self, sha256: str) -> dict[str, object]:
        target = self.path(sha256)
        if target.is_dir():
            return {"present": True, "path": str(target)}
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
                for member in tar.getmembers():
                    if not member.isfile() or member.name.startswith("/") or ".." in Path(member.name).parts:
                        raise UsageError(f"snapshot {sha256[:12]} holds an unsafe entry {member.name!r}")
                    member.mode = (member.mode & 0o700) | 0o600  # the owner's bits only (x kept): code is private
                tar.extractall(scratch, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(scratch)
            os.replace(scratch, target)
        except FileExistsError:
            shutil.rmtree(scratch, ignore_errors=True)  # unpacked meanwhile by another request
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            if target.is_dir():
                return {"present": True, "path": str(target)}
            raise UsageError(f"cannot unpack snapshot {sha256[:12]}: {exc}") from None
        archive.unlink(missing_ok=True)
        return {"present": True, "path": str(target)}
