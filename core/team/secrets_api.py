"""The RPCs of ``mlfleet secrets``: the controller owns the secret store as it owns every other state.

A client sends a value once, over the controller's 0600 socket (or SSH to
it); no answer ever carries one back. Each change is on the audit chain by
name only.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from mlfleet.core.base.paths import Home
from mlfleet.core.base.protocol import Peer
from mlfleet.core.team.secret_store import SecretStore, check_name, check_value


class _Context(Protocol):  # the controller's context (core/controller/service.py)
    home: Home

    async def audit(self, actor: str, action: str, target: str | None,
                    detail: dict[str, Any] | None = None) -> None: ...


class SecretsApi:
    def __init__(self, ctx: _Context) -> None:
        self.ctx = ctx
        self.store = SecretStore(ctx.home.secrets_file)
        self._writing = asyncio.Lock()  # read, change, rename: one change at a time

    async def rpc_secret_set(self, peer: Peer, name: str, value: str) -> dict[str, Any]:
        """Store (or replace) a secret; the answer names it, never its value."""
        check_value(check_name(name), value)
        actor = peer.info["actor"]
        async with self._writing:
            replaced = await asyncio.to_thread(self.store.set, name, value, actor)
        await self.ctx.audit(actor, "secret.set", name, {"replaced": replaced})
        return {"name": name, "replaced": replaced, "set_by": actor}

    async def rpc_secret_list(self, peer: Peer) -> dict[str, Any]:
        return {"secrets": await asyncio.to_thread(self.store.listing)}

    async def rpc_secret_remove(self, peer: Peer, name: str) -> dict[str, Any]:
        check_name(name)
        async with self._writing:
            await asyncio.to_thread(self.store.remove, name)
        await self.ctx.audit(peer.info["actor"], "secret.remove", name, {})
        return {"name": name, "removed": True}
