"""Client RPCs of the model registry: register, list, show, versions, alias, history, resolve.

Registering reads the artifact chunk by chunk through the run's agent (the
same ``artifact_read`` as ``runs artifact get``: the agent serves only files
the run logged, inside the folders it may share), writes it into the model
store (core/registry/model_store.py) verified against the sha256 the run
logged, and only then numbers the version, in one store transaction. Names,
aliases and reasons are checked here, in the controller, so the CLI, the TUI
and scripts get the same sentence.
"""

from __future__ import annotations

import asyncio
import base64
from typing import TYPE_CHECKING, Annotated, Any

from msgspec import Meta

from mlfleet.core.base.bounds import ListLimit, MAX_CHUNK
from mlfleet.core.base.errors import NotFoundError, UnavailableError, UsageError
from mlfleet.core.base.protocol import Peer
from mlfleet.core.registry import model_store, records, refs
from mlfleet.core.team.roles import Permission
from mlfleet.core.tracking import records as tracking

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext

Text = Annotated[str, Meta(min_length=1, max_length=4096)]  # a name, ref or path as typed: checked in words below
CHUNK = MAX_CHUNK  # bytes per artifact_read: what an agent reads at most


class RegistryApi:
    """``rpc_model_*`` and ``rpc_models_list``: what the registry's clients ask."""

    def __init__(self, ctx: "ControllerContext") -> None:
        self.c = ctx

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.c.store

    async def rpc_model_register(self, peer: Peer, name: Text, run: Text, artifact: Text, alias: Text | None = None,
                                 reason: str | None = None) -> dict[str, Any]:
        """Version N+1 of ``name`` from an artifact ``run`` logged, copied into the model store and verified."""
        return await self.register(peer.info["actor"], name, run, artifact, alias, reason)

    async def register(self, actor: str, name: str, run: str, artifact: str, alias: str | None = None,
                       reason: str | None = None) -> dict[str, Any]:
        """The registration as ``actor``: what ``model_register`` does, for a caller inside the controller too.

        PUBLIC for core/pipelines (a register step registers through this, so the checks, the permission and
        the audit are the RPC's).
        """
        refs.check_name(name)
        if alias is not None:
            refs.check_alias(alias)
        reason = refs.check_reason(reason)
        found = await self.store.read(tracking.find_artifact, run, artifact)
        await self.c.require(actor, Permission.REGISTER_MODEL, method="model_register",
                             project=await self.store.read(_run_project, found["run_id"]))
        if not found.get("sha256") or found.get("size") is None:
            raise UsageError(f"artifact {found['path']} of run {found['run_id']} was logged without a sha256; "
                             "log it with track.log_artifact, which hashes it")
        name_in_store = model_store.file_name(found["path"])
        facts = await self.store.read(records.run_facts, found["run_id"])
        copied = await self._fetch(found, name_in_store)
        version = await self.store.run(records.insert_version, name, found, name_in_store, facts, actor, alias,
                                       reason)
        version["copied"] = copied
        version["store_path"] = str(model_store.target(self.c.home.model_store_dir, found["sha256"], name_in_store))
        return version

    async def _fetch(self, artifact: dict[str, Any], name: str) -> bool:
        """Make sure the store holds the artifact's bytes; True when they were copied now (False: already there)."""
        final = model_store.target(self.c.home.model_store_dir, artifact["sha256"], name)
        if await asyncio.to_thread(model_store.present, final, artifact["sha256"]):
            return False
        link = self.c.links.get(artifact["host"])
        if link is None:
            raise NotFoundError(f"host {artifact['host']} of run {artifact['run_id']} is no longer configured, and "
                                "the model store has no copy of its artifact")
        if not link.up:
            raise UnavailableError(f"host {artifact['host']} is {link.state}; its artifact is there, register again "
                                   "once it is up")
        incoming = await asyncio.to_thread(model_store.Incoming, final)
        try:
            offset = 0
            while True:
                chunk = await link.request("artifact_read", run_id=artifact["run_id"], path=artifact["path"],
                                           offset=offset, max_bytes=CHUNK, request_timeout=120)
                data = base64.b64decode(chunk["data"])
                await asyncio.to_thread(incoming.write, data)
                offset = int(chunk["end"])
                if chunk["eof"] or not data or offset > artifact["size"]:  # longer than logged: it changed
                    break
            what = f"{artifact['path']} on {artifact['host']}"
            await asyncio.to_thread(incoming.place, artifact["sha256"], int(artifact["size"]), what)
        except BaseException:
            await asyncio.to_thread(incoming.discard)
            raise
        return True

    async def rpc_models_list(self, peer: Peer, limit: ListLimit = 200) -> list[dict[str, Any]]:
        return await self.store.read(records.list_models, limit)

    async def rpc_model_show(self, peer: Peer, model: Text) -> dict[str, Any]:
        """``NAME`` (its latest version), ``NAME:3`` or ``NAME@ALIAS``: the version, its lineage, the aliases."""
        return await self.store.read(records.show, model)

    async def rpc_model_versions(self, peer: Peer, name: Text) -> list[dict[str, Any]]:
        return await self.store.read(records.list_versions, name)

    async def rpc_model_resolve(self, peer: Peer, model: Text) -> dict[str, Any]:
        return await self.store.read(records.resolve, model)

    async def rpc_model_alias(self, peer: Peer, name: Text, alias: Text, version: int,
                              reason: str | None = None) -> dict[str, Any]:
        """Point ``NAME@ALIAS`` at ``version``; the move is appended to the alias history (who, when, from, to, why)."""
        return await self.move_alias(peer.info["actor"], name, alias, version, reason)

    async def move_alias(self, actor: str, name: str, alias: str, version: int,
                         reason: str | None = None) -> dict[str, Any]:
        """The alias move as ``actor``, protected aliases included: what ``model_alias`` does.

        PUBLIC for core/pipelines (a promote step moves its alias through this).
        """
        refs.check_name(name)
        refs.check_alias(alias)
        refs.check_version(version)
        reason = refs.check_reason(reason)
        loaded = self.c.access.loaded
        protected = loaded.policy.protected_aliases if loaded.policy is not None else ["production"]
        permission = Permission.MOVE_PROTECTED_ALIAS if alias in protected else Permission.MOVE_ALIAS
        await self.c.require(actor, permission, method="model_alias",
                             project=await self.store.read(_version_project, name, version),
                             target=f"{name}@{alias}")
        return await self.store.run(records.move_alias, name, alias, version, actor, reason)

    async def rpc_model_history(self, peer: Peer, name: Text, at: float | None = None,
                                alias: Text | None = None) -> dict[str, Any]:
        """The alias history (newest first); with ``at`` (Unix seconds), where each alias pointed then."""
        refs.check_name(name)
        if alias is not None:
            refs.check_alias(alias)
        if at is not None:
            if at != at or at in (float("inf"), float("-inf")):
                raise UsageError("at must be a time, got a number that is none")
            return {"kind": "at", **await self.store.read(records.aliases_at, name, at, alias)}
        return {"kind": "moves", "name": name, "moves": await self.store.read(records.history, name, alias)}


def _run_project(con: Any, run_id: str) -> str | None:
    """The project of the run a version comes from: a maintainer there may register it."""
    found = con.execute("select project from runs where run_id = ?", [run_id]).fetchall()
    return found[0][0] if found else None


def _version_project(con: Any, name: str, version: int) -> str | None:
    """The project of the run behind ``name:version`` (None: no such version, or its run is gone)."""
    found = con.execute("select r.project from model_versions v join runs r on r.run_id = v.run_id "
                        "where v.name = ? and v.version = ?", [name, version]).fetchall()
    return found[0][0] if found else None
