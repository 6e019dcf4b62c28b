"""Client RPCs for the audit trail (``audit list``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlfleet.core.audit import records
from mlfleet.core.base.bounds import ListLimit
from mlfleet.core.base.protocol import Peer

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext


class AuditApi:
    def __init__(self, ctx: "ControllerContext") -> None:
        self.ctx = ctx

    async def rpc_audit_list(self, peer: Peer, limit: ListLimit = 200, action: str | None = None) -> list[dict[str, Any]]:
        return await self.ctx.store.read(records.list_audit, limit, action)
