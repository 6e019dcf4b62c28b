"""The client RPC for a user's own read-only SQL (``db query``); core/store/user_query.py has the rules."""

from __future__ import annotations

from typing import Any, Protocol

from mlfleet.core.base.bounds import QueryRows
from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.protocol import Peer
from mlfleet.core.base.settings import Settings
from mlfleet.core.store.db import Store
from mlfleet.core.store.user_query import FileReadsOff


class _Context(Protocol):  # the controller's context (core/controller/service.py): core/store imports no capability
    @property
    def store(self) -> Store: ...

    settings: Settings

    def may_touch_server_files(self, actor: str) -> bool: ...

    async def require_server_files(self, actor: str, method: str) -> None: ...


class StoreApi:
    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx

    async def rpc_db_query(self, peer: Peer, sql: str, limit: QueryRows = 10_000) -> dict[str, Any]:
        """One read-only statement (core/store/user_query.py has the rules); interrupted if this client goes away."""
        if not isinstance(sql, str) or not sql.strip():
            raise UsageError("give a SQL query, e.g. mlfleet db query \"select count(*) from metrics\"")
        if limit < 1:
            raise UsageError(f"--limit must be at least 1, got {limit}")
        settings = self.ctx.settings.query
        actor = peer.info["actor"]
        # Files on the controller's machine are the controller user's to open: in team mode only admins may
        # (the rules refuse INSTALL, LOAD, COPY, ATTACH and every write for everyone, admins too).
        may_read_files = self.ctx.may_touch_server_files(actor)
        try:
            return await self.ctx.store.query(sql, limit, time_limit=float(settings.time_limit),
                                              allow_file_reads=settings.allow_file_reads and may_read_files)
        except FileReadsOff:
            if not may_read_files:
                await self.ctx.require_server_files(actor, "db_query")  # the permission's sentence, exit 6, audited
            raise
