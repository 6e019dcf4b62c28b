"""Code upload, client side: pack the workdir here and send it, when the controller is someone else's.

A controller run by another OS user (a team controller on a head node, or
one reached over SSH) never reads the caller's files (core/jobs/code_upload.py).
So the client packs the snapshot itself, with the same
:func:`~mlfleet.core.jobs.snapshot.snapshot` the controller would use (the
same bytes, so the same hash), computes the git lineage itself, and sends the
archive in chunks unless the controller says it already has it from this
user. The submit then carries ``code={"sha256", "files", "skipped", "lineage"}``;
so does ``deploy apply`` (its replicas run that code: core/deploy/api.py).

The archive is made in a private folder of the client's own data dir (a
private temp folder when that home is not the caller's) and removed once
sent: the controller's cache is where it lives from then on.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import private_dir, user_name
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.jobs.snapshot import snapshot
from mlfleet.core.tracking.lineage import git_lineage

CHUNK_BYTES = 1024 * 1024  # one request's bytes: far under the controller's 4 MiB request frame
UPLOAD_TIMEOUT_S = 120.0


def must_send_own_code(hello: dict[str, Any], me: str, remote: bool = False) -> bool:
    """Whether this client packs and sends its code: the controller runs as someone else, or is reached over SSH.

    A controller that names no ``owner`` (older than team mode) is one's own: it reads the workdir as before.
    """
    owner = hello.get("owner")
    return remote or (owner is not None and owner != me)


def sends_own_code(client: ControllerClient) -> bool:
    return must_send_own_code(client.hello, user_name(os.getuid()), client.remote is not None)


async def with_code(client: ControllerClient, params: dict[str, Any], home: Home | None = None) -> dict[str, Any]:
    """``params`` of a submit, with ``code`` for its workdir when this client must send its own; else as they are."""
    if not sends_own_code(client):
        return params
    workdir = (params.get("spec") or {}).get("workdir")
    if not workdir:
        return params
    project = (params.get("spec") or {}).get("project")
    return {**params, "code": await send_code(client, Path(workdir), home or client.home, project)}


async def send_code(client: ControllerClient, workdir: Path, home: Home, project: str | None = None,
                    deployment: str | None = None) -> dict[str, Any]:
    """Snapshot ``workdir`` here, send it unless the controller has it from us, and say what a submit names.

    ``project``: the job's, so a caller who may not submit there is refused before anything is sent;
    ``deployment``: the code is a deployment's (``deploy apply``), so one who may not apply it is refused."""
    outgoing = _outgoing(home)
    scope = {"project": project, **({"deployment": deployment} if deployment is not None else {})}
    try:
        snap, lineage = await asyncio.gather(asyncio.to_thread(snapshot, workdir, outgoing, home.own_paths()),
                                             asyncio.to_thread(git_lineage, workdir))
        has = await client.call("code_has", sha256=snap.sha256, **scope)
        if not has["present"]:
            await upload(client, snap.path, snap.sha256, project=project, deployment=deployment)
    finally:
        shutil.rmtree(outgoing, ignore_errors=True)
    return {"sha256": snap.sha256, "files": snap.files, "skipped": snap.skipped, "lineage": lineage}


def _outgoing(home: Home) -> Path:
    """A new private folder for one archive: in the caller's data dir, or a temp one when that is not theirs.

    (A client may use a home it does not own: the shared controller's, opened to its team.)
    """
    try:
        base: Path | None = private_dir(home.data_dir / "outgoing-code") if private_dir(home.data_dir) else None
    except (MlfleetError, OSError):
        base = None
    return Path(tempfile.mkdtemp(prefix="mlfleet-code-", dir=base))  # 0700, this submit's own


async def upload(client: ControllerClient, archive: Path, sha256: str, chunk_bytes: int = CHUNK_BYTES,
                 project: str | None = None, deployment: str | None = None) -> dict[str, Any]:
    """Send ``archive`` in order, ``chunk_bytes`` a request; the controller checks it whole at the end."""
    size = archive.stat().st_size
    begun = await client.call("code_upload_begin", sha256=sha256, size=size, project=project,
                              **({"deployment": deployment} if deployment is not None else {}))
    upload_id = begun["upload"]
    with open(archive, "rb") as fh:
        offset = 0
        while block := fh.read(chunk_bytes):
            await client.call("code_upload_chunk", request_timeout=UPLOAD_TIMEOUT_S, upload=upload_id,
                              offset=offset, data=block)
            offset += len(block)
    return await client.call("code_upload_end", request_timeout=UPLOAD_TIMEOUT_S, upload=upload_id)
