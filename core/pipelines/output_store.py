"""Where the controller keeps pipeline step outputs: ``DATA_DIR/pipeline-outputs/<sha256>/<basename>``.

Content-addressed (docs/pipelines.md, "Where outputs live"), so a cache hit
never depends on a host still having its run folder, and a step on another
host reads what its upstream wrote. Bytes come in as the agent's tar
(agents/outputs.py) and are trusted for nothing: the tar is unpacked into a
temporary folder beside the store with strict checks (regular files and
folders only, every name under the output's basename, no absolute name, no
``..``, no more bytes or files than the digest says), re-hashed with the
shared tree hash, refused on any mismatch, and only then renamed into
place. A rename is atomic, so two puts of the same content at once leave
one copy and both succeed; a reader never sees half an output.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tarfile
from pathlib import Path, PurePosixPath

from mlfleet.core.base.errors import MlfleetError, UsageError
from mlfleet.core.base.private import private_dir
from mlfleet.core.base.tree_hash import TreeError, digest_at
from mlfleet.core.pipelines.state import OutputDigest

_SHA = re.compile(r"^[0-9a-f]{64}$")
_COPY = 1 << 20


class OutputStoreError(MlfleetError):
    """What an agent sent is not the output it said (a tampered or broken tar, a hash that does not match)."""


class OutputStore:
    """The content-addressed folder of step outputs under ``root`` (``Home.data_dir / "pipeline-outputs"``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha256: str, declared_path: str) -> Path:
        """Where an output with this content and declared path is (or would be) kept."""
        return self.root / _checked_sha(sha256) / _basename(declared_path)

    def has(self, digest: OutputDigest) -> bool:
        """Whether the store holds this output, as a file or a folder as recorded (put checked its bytes)."""
        path = self.path_of(digest.sha256, digest.path)
        try:
            st = path.lstat()
        except OSError:
            return False
        if digest.files is None:
            return path.is_file() and not path.is_symlink() and st.st_size == digest.size
        return path.is_dir() and not path.is_symlink()

    def incoming(self) -> Path:
        """A fresh temporary file name inside the store, for a tar being fetched (same file system as the store)."""
        private_dir(self.root)
        return self.root / f".incoming-{secrets.token_hex(8)}.tar"

    def put(self, digest: OutputDigest, tar_file: Path) -> Path:
        """Unpack ``tar_file`` (the agent's tar of this output), check it hashes as ``digest`` says, keep it; its path."""
        final = self.path_of(digest.sha256, digest.path)
        top = final.name
        private_dir(self.root)
        tmp = self.root / f".unpack-{digest.sha256[:16]}-{secrets.token_hex(6)}"
        tmp.mkdir(mode=0o700)
        try:
            _unpack(tar_file, tmp, top, digest)
            try:
                got = digest_at(tmp, [top])
            except TreeError as exc:
                raise OutputStoreError(f"output {digest.name} as received {exc.problem}") from None
            if (got.files is None) != (digest.files is None):
                was, now = ("a file", "a folder") if digest.files is None else ("a folder", "a file")
                raise OutputStoreError(f"output {digest.name} was reported as {was} and arrived as {now}")
            if got.sha256 != digest.sha256:
                raise OutputStoreError(f"output {digest.name} arrived with sha256 {got.sha256[:12]}…, not the "
                                       f"{digest.sha256[:12]}… its host reported; it was not kept")
            folder = final.parent
            folder.mkdir(mode=0o700, exist_ok=True)
            try:
                os.rename(tmp / top, final)
            except OSError as exc:  # a put of the same content won the race: keep its copy if it is what we hold
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                    raise
                if not self.has(digest):
                    raise OutputStoreError(f"output {digest.name}: {final} is already taken by something else "
                                           "(an empty file and an empty folder share one sha256)") from None
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def remove(self, sha256: str) -> None:
        """Forget content ``sha256`` (every basename kept for it); nothing when it is not there."""
        shutil.rmtree(self.root / _checked_sha(sha256), ignore_errors=True)


def _unpack(tar_file: Path, into: Path, top: str, digest: OutputDigest) -> None:
    """Extract only regular files and folders named under ``top``, within the digest's size and file count."""
    limit_bytes, limit_files = digest.size, (1 if digest.files is None else digest.files)
    seen_bytes = seen_files = 0
    try:
        with tarfile.open(tar_file, mode="r:") as tar:
            for member in tar:
                name = member.name
                pure = PurePosixPath(name)
                if pure.is_absolute() or ".." in pure.parts or not pure.parts or pure.parts[0] != top \
                        or "\0" in name:
                    raise OutputStoreError(f"output {digest.name}'s tar names {name!r}, outside {top}")
                if member.isdir():
                    (into / pure).mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise OutputStoreError(f"output {digest.name}'s tar holds {name!r}, which is not a file or folder "
                                           "(links and special files are never kept)")
                seen_files += 1
                seen_bytes += member.size
                if seen_files > limit_files or seen_bytes > limit_bytes:
                    raise OutputStoreError(f"output {digest.name}'s tar holds more than the {limit_files} file(s) "
                                           f"and {limit_bytes} bytes its host reported")
                target = into / pure
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular member always has a file
                mode = 0o700 if member.mode & 0o111 else 0o600
                with source, open(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode),
                                  "wb") as out:
                    shutil.copyfileobj(source, out, _COPY)
    except (tarfile.TarError, EOFError) as exc:
        raise OutputStoreError(f"output {digest.name}'s tar cannot be read: {exc}") from None
    except FileExistsError:
        raise OutputStoreError(f"output {digest.name}'s tar names one file twice") from None
    except NotADirectoryError:
        raise OutputStoreError(f"output {digest.name}'s tar puts a file where a folder is") from None


def _checked_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA.match(sha256):
        raise UsageError(f"{sha256!r} is not a sha256 (64 lowercase hex digits)")
    return sha256


def _basename(declared_path: str) -> str:
    parts = [p for p in PurePosixPath(declared_path).parts if p not in ("", ".", "/")]
    if not parts or parts[-1] == "..":
        raise UsageError(f"output path {declared_path!r} has no file or folder name")
    return parts[-1]
