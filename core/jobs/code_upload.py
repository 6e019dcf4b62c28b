"""Code upload, controller side: a caller who is not the controller's OS user sends their own snapshot.

A team controller runs as its own user (carol) on a head node; alice's
workdir is on alice's machine, and a controller that read a path for alice
would read it as carol (alice could name /home/bob/project and ship bob's
files into her job). So the rule (docs/team.md): such a caller packs the
snapshot herself (core/jobs/code_send.py), sends it here in chunks, and
submits with ``code={"sha256": ...}``; the controller never opens her files.

What an upload must pass before its archive enters the code cache:

- its claimed size is at most ``MAX_SNAPSHOT_BYTES``; a user has at most
  ``MAX_UPLOADS_PER_USER`` uploads open and ``MAX_USER_BYTES`` claimed in them;
- chunks come in order (each at the offset where the last ended) and never past the claim;
- an upload belongs to the connection and user that began it: another
  user's chunk to its id is refused, and a closed connection drops its uploads;
- the received bytes hash to the claimed sha256, and the archive is a
  snapshot (core/jobs/archive_check.py: no escape, no bomb);
- only then: fsync and rename into ``code/<sha256>.tar.gz``.

Partial uploads live in ``code/.incoming/`` and are cleared at start.
Which users sent which archive is kept in ``code/.senders/<sha256>``:
``code_has`` answers yes only for the caller's own uploads, and a submit may
name only an archive its caller sent. Why: knowing a hash must not be a way
to read or run another user's code.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable

from msgspec import Meta

from mlfleet.core.base.bounds import Ident
from mlfleet.core.base.errors import NotFoundError, PermissionDeniedError, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import private_dir, user_name
from mlfleet.core.base.protocol import Peer
from mlfleet.core.jobs.archive_check import check_archive
from mlfleet.core.jobs.snapshot import MAX_SNAPSHOT_BYTES, Snapshot
from mlfleet.core.team.roles import ANY_PROJECT, Permission

CHUNK_BYTES = 1024 * 1024  # what a client sends a request: well under the server's 4 MiB request frame
MAX_CHUNK_BYTES = 2 * CHUNK_BYTES
MAX_UPLOADS_PER_USER = 4
MAX_USER_BYTES = MAX_SNAPSHOT_BYTES  # claimed bytes of one user's open uploads together
MAX_UPLOADS = 64  # open uploads of everyone together
MAX_SKIPPED = 1000  # sentences a client may report as left out of its snapshot
_SHA = re.compile(r"^[0-9a-f]{64}$")
_LINEAGE_KEYS = ("git_repo", "git_commit", "git_branch", "git_dirty", "diff_hash")

Sha256 = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
UploadId = Annotated[str, Meta(pattern="^u[0-9a-f]{32}$")]
ArchiveSize = Annotated[int, Meta(ge=1, le=MAX_SNAPSHOT_BYTES)]
ChunkOffset = Annotated[int, Meta(ge=0, le=MAX_SNAPSHOT_BYTES)]
ChunkData = Annotated[bytes, Meta(min_length=1, max_length=MAX_CHUNK_BYTES)]
ProjectName = Annotated[str, Meta(min_length=1, max_length=256)]


def controller_user() -> str:
    """The controller's OS user: the one whose files it may read (it runs as them)."""
    return user_name(os.getuid())


def must_send_code(actor: str) -> None:
    """Refuse a submit without ``code`` from a caller who is not the controller's user (an older client)."""
    if actor != controller_user():
        raise PermissionDeniedError(
            f"{actor} submitted a workdir path to {controller_user()}'s controller, which does not read other users' "
            "files: the client must pack and send its code (this mlfleet client is older than the controller; "
            "install the same version)")


def must_be_controller_user(actor: str, what: str) -> None:
    """Refuse ``what`` (a request whose workdir the controller itself would pack later) from anyone but its user.

    Why: a deployment applied without sent code has its replicas packed from
    its workdir at each scale-up, by the controller, as its own user; a path
    from another user must not be read (their client sends the code instead:
    ``deploy_apply(code=...)``).
    """
    if actor != controller_user():
        raise PermissionDeniedError(
            f"{actor} may not {what} on {controller_user()}'s controller: its code would be read from the workdir as "
            f"{controller_user()}, and the controller does not read other users' files; ask {controller_user()} "
            "to apply it")


@dataclass
class Upload:
    upload_id: str
    user: str
    peer: Peer
    sha256: str
    size: int
    path: Path
    fd: int
    received: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class CodeUploads:
    """The uploads in progress and the archives users sent: one per controller."""

    def __init__(self, home: Home) -> None:
        self.cache = home.code_cache_dir
        self.incoming = self.cache / ".incoming"
        self.senders = self.cache / ".senders"
        self.uploads: dict[str, Upload] = {}
        self._lock = asyncio.Lock()  # the rename and the senders file: one writer at a time

    def start(self) -> None:
        """At the controller's start (not at construction: building the services touches no file)."""
        if self.incoming.exists():  # what a controller that stopped mid-upload left behind
            shutil.rmtree(self.incoming, ignore_errors=True)
        self._folders()

    def _folders(self) -> None:
        private_dir(self.cache)
        private_dir(self.incoming)
        private_dir(self.senders)

    def archive(self, sha256: str) -> Path:
        return self.cache / f"{sha256}.tar.gz"

    def sent_by(self, sha256: str, user: str) -> bool:
        """Whether ``user`` sent the archive ``sha256`` (and it is still in the cache)."""
        if not _SHA.match(sha256) or not self.archive(sha256).exists():
            return False
        try:
            return user in (self.senders / sha256).read_text().split("\n")
        except OSError:
            return False

    def begin(self, peer: Peer, user: str, sha256: str, size: int) -> str:
        mine = [u for u in self.uploads.values() if u.user == user]
        if len(mine) >= MAX_UPLOADS_PER_USER:
            raise UsageError(f"{user} already has {len(mine)} code uploads in progress (at most "
                             f"{MAX_UPLOADS_PER_USER}); wait for them to finish")
        if sum(u.size for u in mine) + size > MAX_USER_BYTES:
            raise UsageError(f"{user}'s code uploads in progress would hold more than {MAX_USER_BYTES // 1024**2} MiB; "
                             "wait for them to finish")
        if len(self.uploads) >= MAX_UPLOADS:
            raise UsageError(f"the controller has {len(self.uploads)} code uploads in progress; try again in a moment")
        self._folders()
        upload_id = "u" + secrets.token_hex(16)
        path = self.incoming / f"{upload_id}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.uploads[upload_id] = Upload(upload_id, user, peer, sha256, size, path, fd)
        if not peer.info.get("code_uploads_watched"):  # a connection that closes drops what it left half sent
            peer.info["code_uploads_watched"] = True
            peer.on_close(lambda: self.drop_peer(peer))
        return upload_id

    def _mine(self, upload_id: str, user: str, peer: Peer) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise NotFoundError(f"no code upload {upload_id} in progress (it ended, failed, or its connection closed); "
                                "send the code again")
        if upload.user != user or upload.peer is not peer:
            raise PermissionDeniedError(f"code upload {upload_id} is not {user}'s on this connection; "
                                        "a user may add only to an upload they began")
        return upload

    def chunk(self, peer: Peer, user: str, upload_id: str, offset: int, data: bytes) -> int:
        upload = self._mine(upload_id, user, peer)
        if offset != upload.received:
            self.drop(upload)
            raise UsageError(f"code upload {upload_id}: a chunk at byte {offset:,} where byte {upload.received:,} "
                             "was due; the upload was dropped, send the code again")
        if upload.received + len(data) > upload.size:
            self.drop(upload)
            raise UsageError(f"code upload {upload_id}: more bytes than the {upload.size:,} it claimed; "
                             "the upload was dropped, send the code again")
        view = memoryview(data)
        while view:
            view = view[os.write(upload.fd, view):]
        upload.digest.update(data)
        upload.received += len(data)
        return upload.received

    async def end(self, peer: Peer, user: str, upload_id: str) -> dict[str, Any]:
        """Check the whole archive and keep it under its hash; anything wrong drops it and says why."""
        upload = self._mine(upload_id, user, peer)
        self.uploads.pop(upload_id, None)
        try:
            if upload.received != upload.size:
                raise UsageError(f"code upload {upload_id} ended after {upload.received:,} of its {upload.size:,} bytes; "
                                 "send the code again")
            got = upload.digest.hexdigest()
            if got != upload.sha256:
                raise UsageError(f"the code sent hashes to {got[:12]}, not the {upload.sha256[:12]} its upload claimed; "
                                 "nothing was kept, send the code again")
            await asyncio.to_thread(os.fsync, upload.fd)
            os.close(upload.fd)
            upload.fd = -1
            try:
                facts = await asyncio.to_thread(check_archive, upload.path)
            except UsageError as exc:
                raise type(exc)(f"the code sent ({upload.sha256[:12]}) is not a snapshot: it {exc}") from None
            async with self._lock:
                target = self.archive(upload.sha256)
                if target.exists():  # the same bytes (the hash says so): keep the one there
                    upload.path.unlink()
                else:
                    os.replace(upload.path, target)
                    await asyncio.to_thread(_fsync_dir, self.cache)
                self._add_sender(upload.sha256, user)
        except BaseException:
            self.drop(upload)
            raise
        return {"sha256": upload.sha256, "files": facts.files, "size": facts.size}

    def _add_sender(self, sha256: str, user: str) -> None:
        path = self.senders / sha256
        try:
            known = path.read_text().split("\n")
        except FileNotFoundError:
            known = []
        if user in known:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(user + "\n")

    def drop(self, upload: Upload) -> None:
        """Forget ``upload`` and remove its partial file."""
        self.uploads.pop(upload.upload_id, None)
        if upload.fd >= 0:
            os.close(upload.fd)
            upload.fd = -1
        upload.path.unlink(missing_ok=True)

    def drop_peer(self, peer: Peer) -> None:
        for upload in [u for u in self.uploads.values() if u.peer is peer]:
            self.drop(upload)

    async def uploaded(self, code: Any, actor: str) -> tuple[Snapshot, dict[str, Any]]:
        """The snapshot and lineage a submit's ``code`` names; refused unless ``actor`` sent it and it is intact."""
        if not isinstance(code, dict) or not isinstance(code.get("sha256"), str) or not _SHA.match(code["sha256"]):
            raise UsageError("submit: code must be {'sha256': <the uploaded archive's sha256>, ...}")
        sha256 = code["sha256"]
        if not self.sent_by(sha256, actor):
            raise NotFoundError(f"code {sha256[:12]} was not sent by {actor} to this controller; send it first "
                                "(code_upload_begin, code_upload_chunk, code_upload_end)")
        path = self.archive(sha256)
        if await asyncio.to_thread(_file_sha256, path) != sha256:  # a cache changed under us: never ship it
            path.unlink(missing_ok=True)
            raise NotFoundError(f"code {sha256[:12]} in the controller's cache no longer matches its hash and was "
                                "dropped; send it again")
        skipped = code.get("skipped") or []
        if not isinstance(skipped, list) or len(skipped) > MAX_SKIPPED or not all(isinstance(s, str) for s in skipped):
            raise UsageError("submit: code.skipped must be a list of sentences")
        files = code.get("files")
        return (Snapshot(sha256, path, files if isinstance(files, int) and files >= 0 else 0, path.stat().st_size,
                         [s[:1000] for s in skipped]), _lineage(code.get("lineage")))


def _lineage(given: Any) -> dict[str, Any]:
    """The client's git lineage, its known keys only (its claim: the controller cannot see the repository)."""
    given = given if isinstance(given, dict) else {}
    out: dict[str, Any] = {}
    for key in _LINEAGE_KEYS:
        value = given.get(key)
        if key == "git_dirty":
            out[key] = value if isinstance(value, bool) else None
        else:
            out[key] = value[:4096] if isinstance(value, str) else None
    return out


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CodeUploadApi:
    """``rpc_code_has`` and ``rpc_code_upload_*``: the caller is the OS user behind the socket.

    ``code_has`` and ``code_upload_begin`` name the project the code is for,
    so a caller who may not submit there hears the submit's own refusal
    ("may not submit jobs in vision"), before any byte is sent. Code for a
    deployment names it too (``deployment``): then the caller hears
    ``deploy apply``'s refusal ("may not change deployments (web)") instead.
    """

    def __init__(self, uploads: CodeUploads, require: Callable[..., Awaitable[None]]) -> None:
        self.u = uploads
        self.require = require  # ControllerContext.require

    async def _may_send(self, peer: Peer, project: str | None, deployment: str | None) -> None:
        if deployment is not None:  # the code of a deployment's replicas: who may apply it may send it
            await self.require(peer.info["actor"], Permission.DEPLOY, method="deploy_apply",
                               project=project or ANY_PROJECT, target=deployment)
            return
        await self.require(peer.info["actor"], Permission.SUBMIT, method="submit", project=project or ANY_PROJECT)

    async def rpc_code_has(self, peer: Peer, sha256: Sha256, project: ProjectName | None = None,
                           deployment: Ident | None = None) -> dict[str, Any]:
        """Whether the caller already sent this archive (then it need not be sent again)."""
        await self._may_send(peer, project, deployment)
        return {"sha256": sha256, "present": self.u.sent_by(sha256, peer.info["actor"])}

    async def rpc_code_upload_begin(self, peer: Peer, sha256: Sha256, size: ArchiveSize,
                                    project: ProjectName | None = None,
                                    deployment: Ident | None = None) -> dict[str, Any]:
        await self._may_send(peer, project, deployment)
        return {"upload": self.u.begin(peer, peer.info["actor"], sha256, size), "chunk_bytes": CHUNK_BYTES}

    async def rpc_code_upload_chunk(self, peer: Peer, upload: UploadId, offset: ChunkOffset,
                                    data: ChunkData) -> dict[str, Any]:
        return {"upload": upload, "received": self.u.chunk(peer, peer.info["actor"], upload, offset, data)}

    async def rpc_code_upload_end(self, peer: Peer, upload: UploadId) -> dict[str, Any]:
        return await self.u.end(peer, peer.info["actor"], upload)
