"""The fleet inside the controller: links that match hosts.yaml, one sync per host and tick, telemetry windows.

Each tick picks up a hand edit of hosts.yaml, then syncs every host: one
``poll`` request per host carries its telemetry and whatever the
capabilities with work there ask for (:class:`HostWork`: the jobs service's
runs and their metrics). A host whose sync is slow keeps it running in the
background for as long as it takes; the others, and the services after this
one, go on after a tick at most.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from mlfleet.core.audit.config_change import audit_config_change
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.protocol import Peer
from mlfleet.core.base.settings import file_digest
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.fleet import records
from mlfleet.core.fleet.hostlink import HostLink
from mlfleet.core.fleet.inventory import HostConfig, load_inventory, local_state_dir
from mlfleet.core.fleet.slurm_cluster import ClusterRefresh
from mlfleet.core.fleet.telemetry_flush import flush_telemetry, telemetry_loop
from mlfleet.core.fleet.transport.local import SLURM_VARIABLES, LocalAgentTransport
from mlfleet.core.fleet.transport.ssh import SshAgentTransport
from mlfleet.core.store.rows import rows

if TYPE_CHECKING:
    from mlfleet.core.base.paths import Home

log = logging.getLogger(__name__)


class PollPart(Protocol):
    """One capability's share of a host's ``poll``: what it asks, and what it makes of the answer."""

    def params(self) -> dict[str, Any]:
        """Parameters of the next poll (asked again while :meth:`absorb` says more is waiting)."""

    async def absorb(self, answer: dict[str, Any]) -> bool:
        """Take this capability's part of the answer; whether more is waiting on the host (ask again)."""


class HostWork(Protocol):
    """A capability with work on the hosts (runs), taking part in every host's connection and sync."""

    def busy_on(self, host: str) -> list[str]:
        """What is in flight on ``host`` (its link is kept while there is any)."""

    async def fence(self, link: HostLink, peer: Peer) -> None:
        """On every new connection, before anything else uses it (raising fails the connection)."""

    async def host_unreachable(self, link: HostLink) -> None:
        """The host did not connect, or is not answering, this tick."""

    async def before_poll(self, link: HostLink) -> PollPart:
        """The host is connected: work before its poll (cancels, launches), and this capability's part of it."""


class FleetService(BaseService):
    name = "fleet"

    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx
        self.links = ctx.links
        self.home: Home = ctx.home
        self.settings = ctx.settings
        self.inventory: dict[str, HostConfig] = {}
        self.drained: dict[str, str] = {}  # host -> why (who and reason)
        self.work: list[HostWork] = []
        self._inventory_digest: str | None = None
        self._syncing: dict[str, asyncio.Task[None]] = {}  # a host's sync goes on across ticks while it is slow
        self._first = True
        self.clusters = ClusterRefresh()  # Slurm clusters' sinfo, refreshed now and then (core/fleet/slurm_cluster.py)
        settings = ctx.settings
        self.links["local"] = HostLink(
            LocalAgentTransport(ctx.home, "local", sample_interval=float(settings.telemetry.sample_interval),
                                simulate_gpus=settings.local.simulate_gpus,
                                log_max_size=int(settings.controller.log_max_size),
                                log_backups=settings.controller.log_backups),
            labels={"provider": "local", **settings.local.labels}, on_connect=self._fence)

    def take_part(self, work: HostWork) -> None:
        """``work`` rides every host's connection and sync from now on."""
        self.work.append(work)

    # ------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        self.apply_inventory(load_inventory(self.home.hosts_file))
        self._inventory_digest = file_digest(self.home.hosts_file)

    async def start(self) -> None:
        store = self.ctx.store
        for name, link in self.links.items():
            await store.run(records.upsert_host, name, link.transport.kind, link.transport.address,
                            link.labels, "connecting")
        for row in await store.read(rows, "select name, drained_by, drain_reason from hosts "
                                          "where drained_by is not null"):
            self.drained[row["name"]] = f"by {row['drained_by']}: {row['drain_reason'] or 'no reason given'}"

    async def tick(self) -> None:
        await self._watch_inventory()
        # The first placement after a start waits for every host's first connection (up to
        # answer_timeout): a retry that prefers another host must not go back to the failed
        # one only because the other was still connecting.
        await self._sync_hosts(self.ctx.answer_timeout if self._first else self.ctx.tick_interval)
        self._first = False

    def loops(self) -> list[Callable[[], Awaitable[None]]]:
        return [lambda: telemetry_loop(self.ctx.store, self.links, self.settings)]

    def ticks_ended(self) -> None:
        for task in self._syncing.values():
            task.cancel()
        self.clusters.cancel()

    async def stop(self) -> None:
        await flush_telemetry(self.ctx.store, self.links, self.settings)

    def status(self) -> dict[str, Any]:
        return {"hosts": {name: link.state for name, link in self.links.items()}}

    def rpcs(self) -> dict[str, Rpc]:
        from mlfleet.core.base.rpc import rpc_methods
        from mlfleet.core.fleet.api import FleetApi

        return rpc_methods(FleetApi(self))

    # ------------------------------------------------------------ inventory
    def apply_inventory(self, hosts: list[HostConfig]) -> None:
        """Make the links match the inventory: new hosts get a link, removed or changed ones lose theirs."""
        wanted = {h.name: h for h in hosts}
        for name in list(self.inventory):
            if name not in wanted or wanted[name] != self.inventory[name]:
                if self.active_on(name):
                    log.error("host %s left hosts.yaml with runs in flight; keeping its link until they end", name)
                    continue
                link = self.links.pop(name, None)
                if link is not None:
                    asyncio.get_event_loop().create_task(link.close())
                del self.inventory[name]
        for name, host in wanted.items():
            if name not in self.links:
                self.links[name] = HostLink(self._transport(host), labels=dict(host.labels), on_connect=self._fence)
                self.inventory[name] = host

    def _transport(self, host: HostConfig) -> SshAgentTransport | LocalAgentTransport:
        """How the controller reaches the host's agent: SSH, or (transport: local) an agent it starts here."""
        if not host.is_local:
            return SshAgentTransport(host, self.home.known_hosts_file)
        settings = self.settings
        local = LocalAgentTransport(self.home, host.name, sample_interval=float(settings.telemetry.sample_interval),
                                    log_max_size=int(settings.controller.log_max_size),
                                    log_backups=settings.controller.log_backups, state_dir=local_state_dir(host),
                                    keep_env=SLURM_VARIABLES)
        local.kind = host.kind  # "slurm": hosts list and the TUI show the cluster, however it is reached
        return local

    def active_on(self, host: str) -> list[str]:
        """Runs in flight on ``host``."""
        return [item for work in self.work for item in work.busy_on(host)]

    def note_inventory_written(self) -> None:
        """The controller itself changed hosts.yaml (and audited why): not a hand edit."""
        self._inventory_digest = file_digest(self.home.hosts_file)

    async def _watch_inventory(self) -> None:
        """Pick up hand edits of hosts.yaml; a broken edit keeps the fleet as it was and says why."""
        digest = file_digest(self.home.hosts_file)
        if digest == self._inventory_digest:
            return
        self._inventory_digest = digest
        try:
            hosts = load_inventory(self.home.hosts_file)
        except MlfleetError as exc:
            log.error("hosts.yaml not applied: %s", exc)
            return
        self.apply_inventory(hosts)
        await audit_config_change(self.ctx.store, self.home)

    # ------------------------------------------------------------ sync
    async def _fence(self, link: HostLink, peer: Peer) -> None:
        for work in self.work:
            await work.fence(link, peer)

    async def _sync_hosts(self, wait: float) -> None:
        """Sync every host, waiting a tick at most: one frozen host never holds up the others or the scheduler.

        A host whose sync is still under way (a poll waiting out
        ``controller.answer_timeout``, a connect to a dead address) keeps it
        running in the background and gets no second one; the rest are
        polled, and the queue scheduled, every tick as if it were not there.
        """
        syncing = self._syncing
        for name, link in self.links.items():
            if name not in syncing:
                syncing[name] = asyncio.get_running_loop().create_task(self._sync_host(link), name=f"sync {name}")
        await asyncio.wait(list(syncing.values()), timeout=max(wait, 0.5))
        for name, task in list(syncing.items()):
            if not task.done():
                continue
            del syncing[name]
            if not task.cancelled() and task.exception() is not None:  # one host's trouble never stops the others
                log.error("sync of %s failed: %r", name, task.exception(), exc_info=task.exception())

    async def _sync_host(self, link: HostLink) -> None:
        store = self.ctx.store
        link.metrics_backlog = False  # set again below only by a poll that left lines waiting
        up = await link.ensure_connected()
        if link.state != "up" and link.down_since is None:
            link.down_since = time.time()  # reset only by an answered poll: a link that connects and stalls is down
        if not up or link.state != "up":
            for work in self.work:
                await work.host_unreachable(link)
        if link.state != link.recorded_state:  # write host rows on changes only, not every tick
            await store.run(records.upsert_host, link.name, link.transport.kind, link.transport.address,
                            link.labels, link.state, link.info.get("version") if up else None,
                            link.info if up else None, up)
            link.recorded_state = link.state
        if not up:
            return
        config = self.inventory.get(link.name)
        if config is not None and config.slurm is not None:  # the cluster's shape, every REFRESH_S, in the background
            self.clusters.refresh_soon(link)
        parts = [await work.before_poll(link) for work in self.work]
        # A run that writes faster than one answer per tick carries is drained by asking again at once
        # (for up to half a tick, so scheduling and cancels elsewhere are not held back), so ingestion keeps up
        # with the job, not with the tick. Only a run whose chunk was taken asks again: one that failed would
        # otherwise be re-read in a loop.
        drain_until = time.monotonic() + self.ctx.tick_interval / 2
        while True:
            asked: dict[str, Any] = {}
            for part in parts:
                asked.update(part.params())
            try:
                answer = await link.request("poll", request_timeout=self.ctx.answer_timeout,
                                            telemetry_since=link.telemetry_seq, **asked)
            except MlfleetError as exc:
                # Unanswered: HostLink.request has torn the link down (it reconnects next tick). Answered
                # with an error: shown like lost, but the connection and the runs are left alone.
                log.warning("poll of %s failed: %s", link.name, exc)
                link.mark_slow(str(exc))
                return
            link.mark_answering()
            link.down_since = None
            link.absorb_telemetry(answer.get("telemetry", []), answer.get("agent_started_at", 0.0))
            more = False
            for part in parts:
                more = await part.absorb(answer) or more
            link.metrics_backlog = more
            if not more or time.monotonic() > drain_until:
                break
