"""The audit capability in the controller: the chain sealed and its head file caught up at start, then kept.

Listed first among the services (core/controller/capabilities.py), so the
head file's hook is on the store before any other service's start writes
an event.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mlfleet.core.audit import chain
from mlfleet.core.audit.api import AuditApi
from mlfleet.core.audit.head_file import HeadFile
from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext, Rpc

log = logging.getLogger(__name__)


class AuditService(BaseService):
    """Seals rows from before the chain, appends the head file after every write that moved the head."""

    name = "audit"

    def __init__(self, ctx: "ControllerContext") -> None:
        self.ctx = ctx
        self.api = AuditApi(ctx)
        self.head = HeadFile(ctx.home.audit_head_file)
        self.sealed = 0

    async def start(self) -> None:
        store = self.ctx.store
        self.sealed = await store.run(chain.seal_unchained)
        if self.sealed:
            log.info("chained %d audit events written before the chain existed", self.sealed)
        await store.run(self.head.catch_up)
        store.after_write.append(self.head.after_write)

    def rpcs(self) -> dict[str, "Rpc"]:
        return rpc_methods(self.api)
