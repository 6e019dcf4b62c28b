"""A job step's outputs brought from the host it ran on into the controller's OutputStore.

When a job step ends succeeded (docs/pipelines.md, "Where outputs live"):
the agent hashes and packs each declared output (``outputs_pack``), and the
controller reads each tar in chunks (``outputs_read``, raw bytes in the
frame) into a temporary file inside the store, which unpacks, re-hashes and
keeps it (core/pipelines/output_store.py). Content the store already holds
is not read again: the same model written by two runs crosses the network
once (the kept copy is re-hashed first: one changed in the store is fetched
again). A missing, linked or special output fails with the agent's sentence.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any, Protocol

from mlfleet.core.base.bounds import MAX_CHUNK
from mlfleet.core.base.errors import ProtocolError
from mlfleet.core.pipelines.output_store import OutputStore
from mlfleet.core.pipelines.outputs import verify_output
from mlfleet.core.pipelines.state import OutputDigest

CHUNK = MAX_CHUNK  # bytes per outputs_read: what an agent reads at most
PACK_TIMEOUT_S = 600.0  # hashing and packing a big output reads every byte of it once


class Link(Protocol):
    """What collect_outputs needs of a HostLink (core/fleet/hostlink.py)."""

    async def request(self, method: str, request_timeout: float = ..., **params: Any) -> Any: ...


async def collect_outputs(link: Link, run_id: str, outputs: Mapping[str, str], store: OutputStore,
                          host: str) -> dict[str, OutputDigest]:
    """Each declared output (name -> path) of run ``run_id`` on ``host`` kept in ``store``; their digests."""
    packed = await link.request("outputs_pack", run_id=run_id, outputs=dict(outputs), request_timeout=PACK_TIMEOUT_S)
    digests: dict[str, OutputDigest] = {}
    for name, path in outputs.items():
        answer = packed.get(name) if isinstance(packed, dict) else None
        if not isinstance(answer, dict):
            raise ProtocolError(f"host {host} packed no output {name} of run {run_id}")
        digest = OutputDigest(name=name, path=path, sha256=str(answer["sha256"]), size=int(answer["size"]),
                              files=None if answer.get("files") is None else int(answer["files"]), host=host)
        stored = store.path_of(digest.sha256, digest.path)
        if not await asyncio.to_thread(_kept_intact, store, digest, stored):
            await _fetch(link, run_id, digest, int(answer.get("archive_size") or 0), store, host)
        digests[name] = OutputDigest(name=name, path=path, sha256=digest.sha256, size=digest.size, files=digest.files,
                                     host=host, stored=str(stored))
    return digests


def _kept_intact(store: OutputStore, digest: OutputDigest, stored: object) -> bool:
    """Whether the store already holds this content, re-hashed: a copy changed in place is dropped, to be fetched again.

    ``store.has`` looks at the kind and size only; a stored file edited with
    its size kept would otherwise be what the next reader is shipped, under
    the key of the bytes its host reported.
    """
    if not store.has(digest):
        return False
    kept = OutputDigest(name=digest.name, path=digest.path, sha256=digest.sha256, size=digest.size,
                        files=digest.files, stored=str(stored))
    if verify_output(kept) is None:
        return True
    store.remove(digest.sha256)
    return False


async def _fetch(link: Link, run_id: str, digest: OutputDigest, archive_size: int, store: OutputStore,
                 host: str) -> None:
    incoming = await asyncio.to_thread(store.incoming)
    fd = os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            offset = 0
            while True:
                chunk = await link.request("outputs_read", run_id=run_id, name=digest.name, offset=offset,
                                           max_bytes=CHUNK, request_timeout=120)
                data = chunk.get("data") if isinstance(chunk, dict) else None
                if not isinstance(data, (bytes, bytearray)) or int(chunk.get("offset", -1)) != offset:
                    raise ProtocolError(f"host {host} answered outputs_read of {digest.name} with no bytes at {offset}")
                await asyncio.to_thread(fh.write, data)
                offset += len(data)
                if chunk.get("eof"):
                    break
                if not data:
                    raise ProtocolError(f"host {host} sent no bytes of output {digest.name} at {offset} before its end")
                if archive_size and offset > archive_size:
                    raise ProtocolError(f"host {host} sent more of output {digest.name} than the "
                                        f"{archive_size} bytes it packed")
        await asyncio.to_thread(store.put, digest, incoming)
    finally:
        incoming.unlink(missing_ok=True)
