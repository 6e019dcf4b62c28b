"""How a capability plugs into the controller: a :class:`Service` with periodic work and an RPC table.

The loop (core/controller/loop.py) owns the tick, the store writer, the host
links, the lock and the socket, and nothing a capability does: each tick it
calls every registered service's :meth:`Service.tick` in order, and the RPC
server answers a client from the services' tables. The services are listed
in core/controller/capabilities.py, so a new capability (deployments, pipelines)
plugs in by adding one there; the loop does not change.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from mlfleet.core.base.paths import Home
from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.base.settings import Settings
from mlfleet.core.team.access import Access

if TYPE_CHECKING:
    from mlfleet.core.fleet.hostlink import HostLink
    from mlfleet.core.team.roles import Permission
    from mlfleet.core.store.db import Store

Rpc = Callable[..., Awaitable[Any]]  # async def handler(peer, **params), parameters checked by its type hints


class ControllerContext:
    """What every service may use: the installation, its settings, the store writer and the host links.

    One per controller. ``links`` is the loop's (closed by it at stop); the
    fleet service keeps it in step with the inventory.
    """

    def __init__(self, home: Home, settings: Settings) -> None:
        self.home = home
        self.settings = settings
        self.tick_interval = float(settings.controller.tick)
        self.answer_timeout = float(settings.controller.answer_timeout)  # unanswered: the link is torn down
        self.links: dict[str, HostLink] = {}
        self.started_at = time.time()
        self.opened_store: Store | None = None  # set by the loop once the file is open
        self.stopping = asyncio.Event()
        self.stopped_by: str | None = None  # who asked (controller stop); None: a signal
        self.access = Access(home.config_dir)  # policy.yaml as it is now, and OS groups (docs/team.md)

    @property
    def store(self) -> Store:
        assert self.opened_store is not None, "the store is opened before any service uses it"
        return self.opened_store

    async def audit(self, actor: str, action: str, target: str | None, detail: dict[str, Any] | None = None) -> None:
        """One row on the audit trail, written by the store's writer."""
        from mlfleet.core.audit.records import audit

        await self.store.run(audit, actor, action, target, detail)

    async def require(self, actor: str, permission: "Permission", *, method: str, project: str | None = None,
                      owner: str | None = None, target: str | None = None) -> None:
        """Refuse (PermissionDeniedError, exit 6, a ``policy.denied`` audit row) unless the policy allows it.

        The handlers' finer check where the target decides (whose job, which
        project, a protected alias); the method's base permission was checked
        before the handler ran (core/controller/api.py).
        """
        await self.access.check(self.audit, actor, permission, method=method, project=project, owner=owner,
                                target=target)

    def may_touch_server_files(self, actor: str) -> bool:
        """Whether ``actor`` may have the controller open files on its machine (db query's file readers)."""
        from mlfleet.core.team.roles import Permission

        return self.access.decide(actor, Permission.SERVER_FILES).allowed

    async def require_server_files(self, actor: str, method: str) -> None:
        from mlfleet.core.team.roles import Permission

        await self.require(actor, Permission.SERVER_FILES, method=method)

    def stop(self, by: str | None = None) -> None:
        """Stop serving; ``by`` is the user who asked (audited as the controller stops)."""
        self.stopped_by = self.stopped_by or by
        self.stopping.set()


class Service(Protocol):
    """One capability inside the controller. Every hook is called in the order the services are listed."""

    name: str

    def prepare(self) -> None:
        """Before the store opens: read what the capability needs from config files (a bad one stops the start)."""

    async def start(self) -> None:
        """The store is open and no client is served yet: rebuild in-memory state from the file (after a crash too)."""

    async def tick(self) -> None:
        """Periodic work, once per controller tick; an exception ends this tick for the services after it too."""

    def loops(self) -> list[Callable[[], Awaitable[None]]]:
        """Loops of their own cadence that run beside the tick until the controller stops (they are cancelled)."""

    def ticks_ended(self) -> None:
        """The tick loop has stopped: cancel work a tick left running in the background."""

    async def stop(self) -> None:
        """Clients are gone and the links are not closed yet: write what must not be lost."""

    def status(self) -> dict[str, Any]:
        """Facts for ``controller status`` (in service order)."""

    def rpcs(self) -> dict[str, Rpc]:
        """The client requests this capability answers: ``{method: handler}``."""

    def permissions(self) -> dict[str, "Permission"]:
        """Base permissions of RPCs not in core/team/permissions.py (a plug-in's, a test's own): ``{method: p}``."""


class BaseService:
    """A :class:`Service` whose hooks do nothing: a capability overrides the ones it needs."""

    name = "service"

    def prepare(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def tick(self) -> None:
        return None

    def loops(self) -> list[Callable[[], Awaitable[None]]]:
        return []

    def ticks_ended(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {}

    def rpcs(self) -> dict[str, Rpc]:
        return {}

    def permissions(self) -> dict[str, "Permission"]:
        return {}


class RpcService(BaseService):
    """A capability that only answers clients: its API object's ``rpc_*`` methods are its table."""

    def __init__(self, name: str, api: object, permissions: "dict[str, Permission] | None" = None) -> None:
        self.name = name
        self.api = api
        self._permissions = dict(permissions or {})

    def permissions(self) -> dict[str, "Permission"]:
        return self._permissions

    def rpcs(self) -> dict[str, Rpc]:
        return rpc_methods(self.api)
