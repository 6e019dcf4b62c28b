"""Client RPCs for the audit trail: ``audit list``, ``audit verify``, ``audit head``, ``audit export``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import Meta

from mlfleet.core.audit import chain, export, head_file, records, verify
from mlfleet.core.base.bounds import ListLimit
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.private import user_umask
from mlfleet.core.base.protocol import Peer

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext


class AuditApi:
    def __init__(self, ctx: "ControllerContext") -> None:
        self.ctx = ctx

    async def rpc_audit_list(self, peer: Peer, limit: ListLimit = 200, action: str | None = None) -> list[dict[str, Any]]:
        return await self.ctx.store.read(records.list_audit, limit, action)

    async def rpc_audit_verify(self, peer: Peer) -> dict[str, Any]:
        """The whole chain checked (verify.py); on a reader, so writes go on meanwhile."""
        return await self.ctx.store.read(verify.verify, self.ctx.home.audit_head_file)

    async def rpc_audit_head(self, peer: Peer) -> dict[str, Any]:
        """The table's head and the head file's newest line: what to hand a notary."""
        head = await self.ctx.store.read(chain.read_head)
        path = self.ctx.home.audit_head_file
        newest = await asyncio.to_thread(head_file.read_newest, path)  # ~100 MiB at a million heads: off the loop
        return {"head": None if head is None else {"seq": head.seq, "hash": head.hash,
                                                   "line": head_file.format_line(head).rstrip("\n")},
                "head_file": str(path), "file_head": newest._asdict() if newest else None}

    async def rpc_audit_export(self, peer: Peer, output: Annotated[str, Meta(min_length=1)],
                               format: Literal["jsonl", "parquet"] = "jsonl", since: float | None = None,
                               mode: int | None = None, force: bool = False) -> dict[str, Any]:
        """Write the events since ``since`` (Unix seconds) to ``output`` (an absolute path); the export is audited."""
        if not Path(output).is_absolute():
            raise UsageError(f"the output path must be absolute, got {output!r}")
        if mode is None:
            mode = 0o666 & ~user_umask()
        result = await self.ctx.store.read(export.export_audit, output, format, since, mode & 0o777,
                                           self.ctx.home.own_folders(), force)
        await self.ctx.store.run(records.audit, peer.info["actor"], "audit.export", result["output"],
                                 {"format": format, "since": since, "rows": result["rows"]})
        return result
