"""The controller: one per workstation, the only writer of the DuckDB file.

This loop owns the lock, the store writer, the host links, the socket and
the tick; what happens in a tick is the capabilities' (their services, in
the order core/controller/capabilities.py lists them: the fleet syncs every
host in one request each, then jobs are scheduled and dispatched). Clients
talk to it through :mod:`mlfleet.core.controller.api` on a 0600 Unix
socket, answered by the services' RPC tables.

Crash safety is the services' (core/jobs/service.py says how): everything
they keep in memory is rebuilt from the file at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Callable

from mlfleet.core.audit import records as audit_records
from mlfleet.core.audit.config_change import audit_config_change, os_user
from mlfleet.core.base.errors import UnavailableError, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.settings import Settings, store_memory_limit
from mlfleet.core.controller.service import ControllerContext, Service
from mlfleet.core.controller.team_socket import TeamSocket, prepare_folder
from mlfleet.core.store.db import Store

if TYPE_CHECKING:
    from mlfleet.core.base.listener import UnixListener
    from mlfleet.core.controller.api import ControllerApi

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, home: Home, settings: Settings | None = None,
                 services: Callable[[ControllerContext], list[Service]] | None = None,
                 team: TeamSocket | None = None) -> None:
        """``services`` builds the capabilities' services (core/controller/capabilities.py by default).

        ``team`` (``controller serve --team GROUP``) opens a second socket to that OS group (docs/team.md).
        """
        if services is None:
            from mlfleet.core.controller.capabilities import services
        self.home = home
        self.ctx = ControllerContext(home, settings or Settings())
        self.settings = self.ctx.settings
        self.team = team
        self.ctx.access.team_group = team.group if team is not None else None
        self.services = services(self.ctx)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ lifecycle
    def _take_lock(self) -> None:
        self.home.ensure()
        fd = os.open(self.home.controller_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UnavailableError(f"another controller is already running for {self.home.data_dir}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Serve until stopped (SIGTERM, SIGINT or a client's ``controller stop``)."""
        from mlfleet.core.controller.api import ControllerApi

        ctx = self.ctx
        self._take_lock()
        foreign = await asyncio.to_thread(self.home.tighten)  # an installation made before files were private
        if foreign:
            log.warning("%d file(s) in %s belong to root and were left as they are: %s", len(foreign),
                        self.home.data_dir, ", ".join(map(str, foreign[:5])))
        ctx.access.load()  # a bad policy.yaml stops the start, as a bad config.yaml does
        if self.team is not None:
            prepare_folder(self.team)  # before the store opens: a wrong --socket leaves nothing behind
        for service in self.services:
            service.prepare()
        store = ctx.opened_store = Store(self.home.db_path, query_workers=self.settings.query.workers,
                                         memory_limit=store_memory_limit(self.settings),
                                         spill_limit=int(self.settings.store.spill_limit))
        for service in self.services:
            await service.start()
        # The start and any config change are on record before the socket opens: a client that
        # started this controller (``audit list`` on a stopped installation) must find them.
        await store.run(audit_records.audit, os_user(), "controller.start", None, {"pid": os.getpid()})
        await audit_config_change(store, self.home)
        api = ControllerApi(ctx, self.services)
        server = await api.listen(self.home.controller_socket)
        team_server: UnixListener | None = None
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []
        try:
            team_server = await self._listen_team(api)  # a refusal stops the start, through the same clean stop
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, ctx.stopping.set)
            log.info("controller serving on %s", self.home.controller_socket)
            if ready is not None:
                ready.set()
            tasks.append(loop.create_task(self._tick_loop()))
            tasks += [loop.create_task(beside()) for service in self.services for beside in service.loops()]
            await ctx.stopping.wait()
        finally:
            server.close()
            if team_server is not None:
                team_server.close()
            # Users' queries are interrupted and answer their clients before the connections close.
            await store.queries.stop_all("the controller is stopping")
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await api.close()
            for service in self.services:
                await service.stop()
            for link in ctx.links.values():
                await link.close()
            # On the chain only once it really stopped serving (not when asked: a stop may yet fail).
            try:
                await store.run(audit_records.audit, ctx.stopped_by or os_user(), "controller.stop", None,
                                {"pid": os.getpid(), "how": "request" if ctx.stopped_by else "signal"})
            except Exception:  # a full disk must not keep the controller from stopping; the log says it
                log.exception("could not record controller.stop on the audit chain")
            store.close()
            for path in (self.home.controller_socket, *([self.team.path] if self.team else [])):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            log.info("controller stopped")

    async def _listen_team(self, api: ControllerApi) -> UnixListener | None:
        if self.team is None:
            return None
        try:
            server = await api.listen_team(self.team)
        except OSError as exc:
            raise UsageError(f"--socket {self.team.path}: cannot serve the team there ({exc.strerror}); "
                             f"choose another --socket") from None
        log.info("controller serving team %s on %s", self.team.group, self.team.path)
        return server

    def stop(self, by: str | None = None) -> None:
        """Stop serving; ``by`` is the user who asked (audited as the controller stops)."""
        self.ctx.stop(by)

    # ------------------------------------------------------------ the loop
    async def _tick_loop(self) -> None:
        try:
            while True:
                started = time.monotonic()
                try:
                    for service in self.services:
                        await service.tick()
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad tick must not stop the controller
                    log.exception("controller tick failed")
                # A host with metric lines still waiting gets the next tick at once (after scheduling ran),
                # so ingestion keeps pace with a fast-logging job rather than with the tick.
                backlog = any(link.metrics_backlog for link in self.ctx.links.values())
                interval = self.ctx.tick_interval
                await asyncio.sleep(0 if backlog else max(0.05, interval - (time.monotonic() - started)))
        finally:
            for service in self.services:
                service.ticks_ended()
