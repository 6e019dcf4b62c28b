"""The controller's RPC server: what clients (CLI, TUI) may ask, over its 0600 Unix socket (and a team's 0660 one).

Each capability answers its own requests (its service's ``rpcs()`` table:
core/jobs/api.py, core/fleet/api.py, core/tracking/api.py, ...); this
server merges the tables, checks each request's parameters against its
handler's type hints (core/base/bounds.py: a bad one is one sentence, exit
2) and answers hello, status and shutdown itself. The caller's identity for
the audit trail is the OS user behind the socket (SO_PEERCRED), not
anything the client says about itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlfleet import __version__
from mlfleet.core.base.bounds import usage_dispatcher
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.listener import HELLO_DEADLINE_S, UnixListener
from mlfleet.core.base.protocol import SERVER_FRAME_DEADLINE_S, SERVER_MAX_REQUEST, Handler, Peer
from mlfleet.core.base.rpc import method_dispatcher, rpc_methods
from mlfleet.core.base.send_budget import SendBudget
from mlfleet.core.base.errors import PermissionDeniedError
from mlfleet.core.controller import team_socket
from mlfleet.core.team.permissions import HANDLER_CHECKED, METHOD_PERMISSIONS, gate_project
from mlfleet.core.team.roles import ANY_PROJECT, Permission

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext, Rpc, Service
    from mlfleet.core.controller.team_socket import TeamSocket


def _peer_user(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
    except (OSError, AttributeError):
        uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


class ControllerApi:
    def __init__(self, ctx: "ControllerContext", services: "list[Service]") -> None:
        self.c = ctx
        self.services = services
        self.peers: set[Peer] = set()
        self.listener: UnixListener | None = None
        self.team_listener: UnixListener | None = None  # controller serve --team: the group's 0660 socket
        self.team: "TeamSocket | None" = None
        self._send_budget = SendBudget()  # answers made and not read, all clients together
        self.table = self._table()
        self.permissions = self._permissions()
        self.handler = self._gated(usage_dispatcher(self.table, method_dispatcher(self.table)))  # bad parameter: exit 2

    def _gated(self, inner: "Handler") -> "Handler":
        """``inner`` behind each method's base permission (core/team/permissions.py); an unlisted method is refused.

        Checked before the parameters, so a caller without the role learns
        nothing about the method's shape. The handlers in HANDLER_CHECKED
        check themselves, where the target decides (whose job, which project);
        a caller with no role anywhere is refused before them all the same.
        """
        async def handle(peer: Peer, method: str, params: dict[str, Any]) -> Any:
            permission = self.permissions.get(method)
            if permission is None:
                if method in self.table:  # answered but never given a permission: a bug, refused safely
                    raise PermissionDeniedError(f"the request {method!r} has no permission in "
                                                "core/team/permissions.py, so no one may call it")
                return await inner(peer, method, params)  # unknown: the dispatcher's own answer
            actor = peer.info["actor"]
            if permission.role is None:
                pass
            elif method not in HANDLER_CHECKED:
                await self.c.require(actor, permission, method=method, project=gate_project(method))
            elif not self.c.access.decide(actor, Permission.READ, project=ANY_PROJECT).allowed:
                # no role anywhere: refused here (nothing of the target is looked up); else the handler decides
                await self.c.require(actor, permission, method=method, project=ANY_PROJECT)
            return await inner(peer, method, params)

        return handle

    def _permissions(self) -> "dict[str, Permission]":
        """core/team/permissions.py's table and what services declare for RPCs of their own (never a core one)."""
        table = dict(METHOD_PERMISSIONS)
        for service in self.services:
            for method, permission in getattr(service, "permissions", dict)().items():  # optional hook
                if method in table or method not in service.rpcs():
                    raise RuntimeError(f"service {service.name!r} declares a permission for {method!r}, which is "
                                       "already in core/team/permissions.py or not one of its RPCs")
                table[method] = permission
        return table

    def _table(self) -> "dict[str, Rpc]":
        """Every service's requests and this server's own; two answering the same name is a bug, found at start."""
        table: dict[str, Rpc] = dict(rpc_methods(self))
        for service in self.services:
            for method, handler in service.rpcs().items():
                if method in table:
                    raise RuntimeError(f"the RPC {method!r} of service {service.name!r} is answered twice")
                table[method] = handler
        return table

    async def listen(self, path: Path) -> UnixListener:
        """Serve clients on ``path`` (0600), at most ``controller.max_connections`` at a time."""
        self.listener = UnixListener(path, self._on_connect, name="the controller",
                                     max_connections=self.c.settings.controller.max_connections,
                                     setting="controller.max_connections in config.yaml")
        return await self.listener.start()

    async def listen_team(self, team: "TeamSocket") -> UnixListener:
        """Serve the team too, on ``team.path`` (0660, group ``team.group``), by the same handler.

        Both sockets share one cap on clients each; the identity is SO_PEERCRED on either.
        """
        self.team = team
        self.team_listener = UnixListener(team.path, self._on_connect, name="the team's controller",
                                          max_connections=self.c.settings.controller.max_connections,
                                          setting="controller.max_connections in config.yaml",
                                          mode=team_socket.SOCKET_MODE, group=team.gid)
        return await self.team_listener.start()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer, self.handler, name="client", hello_deadline=HELLO_DEADLINE_S,
                    max_incoming=SERVER_MAX_REQUEST, frame_deadline=SERVER_FRAME_DEADLINE_S, require_hello=True,
                    send_budget=self._send_budget)
        peer.info["actor"] = _peer_user(writer)
        self.peers.add(peer)
        peer.start()
        try:
            await peer.wait_closed()
        finally:
            self.peers.discard(peer)

    async def close(self) -> None:
        for peer in list(self.peers):
            await peer.close()

    # ------------------------------------------------------------ basics
    async def rpc_hello(self, peer: Peer, protocol: int, role: str = "") -> dict[str, Any]:
        for listener in (self.listener, self.team_listener):
            if listener is not None:
                listener.greeted(peer)  # a client, not a bare socket: evicted for a newcomer only when idle
        return {"protocol": PROTOCOL_VERSION, "role": "controller", "version": __version__,
                **self.who(peer.info["actor"])}

    def who(self, user: str) -> dict[str, Any]:
        """The caller as this controller sees them, and whose controller it is (docs/team.md, the wire)."""
        access = self.c.access
        return {"user": user, "user_role": access.role_of(user), "owner": access.controller_user,
                "team": access.team_group, "host": socket.gethostname(), "policy": access.loaded.active}

    async def rpc_whoami(self, peer: Peer) -> dict[str, Any]:
        """The caller as the controller sees them: groups, role everywhere and per project, with the rules."""
        return self.c.access.whoami(peer.info["actor"])

    async def rpc_status(self, peer: Peer) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        for service in self.services:  # the fleet's hosts, the jobs' pending and active counts
            facts.update(service.status())
        store = self.c.store
        return {
            "pid": os.getpid(), "version": __version__, "started_at": self.c.started_at,
            "db": str(self.c.home.db_path), "socket": str(self.c.home.controller_socket),
            **facts, "schema_version": store.version,
            "db_queries": store.queries.running,
            **(self.listener.facts() if self.listener is not None else {}),
            **team_socket.facts(self.team),
            **({"team_connections": self.team_listener.open_count} if self.team_listener is not None else {}),
            "log": str(self.c.home.log_dir / "controller.log"), "log_max_size": int(self.c.settings.controller.log_max_size),
            "log_backups": self.c.settings.controller.log_backups,
            "policy_path": str(self.c.access.path), "policy": self.c.access.loaded.active,
            "policy_error": self.c.access.error, "team": self.c.access.team_group,
        }

    async def rpc_shutdown(self, peer: Peer, stop_local_agent: bool = True) -> dict[str, Any]:
        agent_stopping = False
        local = self.c.links.get("local")
        if stop_local_agent and local is not None and local.up:
            with contextlib.suppress(Exception):
                answer = await local.request("shutdown", only_if_idle=True, request_timeout=5)
                agent_stopping = bool(answer.get("stopping"))
        asyncio.get_running_loop().call_later(0.05, self.c.stop, peer.info["actor"])
        return {"stopping": True, "local_agent_stopping": agent_stopping}
