"""Client RPCs for the fleet: list, add, remove, drain, trust, bootstrap, check hosts.

Changes to hosts.yaml made here are applied to the links at once and
audited with the caller (the OS user behind the socket); the fleet service
(core/fleet/service.py) then knows them for its own and does not take them
for a hand edit.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import Meta

from mlfleet.core.audit import records as audit_records
from mlfleet.core.base.bounds import History, Ident
from mlfleet.core.base.errors import MlfleetError, NotFoundError, UsageError
from mlfleet.core.base.protocol import Peer
from mlfleet.core.base.words import plural
from mlfleet.core.fleet import hostkeys, hostseen, node_restart
from mlfleet.core.fleet import records as fleet_records
from mlfleet.core.fleet.hostcheck import host_from_request
from mlfleet.core.fleet.inventory import LOCAL_HOST, HostConfig, add_host, load_inventory, remove_host
from mlfleet.core.fleet.transport import route
from mlfleet.core.fleet.transport.ssh import SshAgentTransport

if TYPE_CHECKING:
    from mlfleet.core.fleet.service import FleetService


async def _round_trip(peer: Peer) -> float:
    started = time.monotonic()
    await peer.request("telemetry", request_timeout=10, since=1 << 62)
    return time.monotonic() - started


class FleetApi:
    """``rpc_hosts_*`` and ``rpc_host_*``; ``self.c`` is the fleet service (links, inventory, drains)."""

    def __init__(self, fleet: "FleetService") -> None:
        self.c = fleet

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.c.ctx.store

    async def rpc_hosts_list(self, peer: Peer, history: History = 0) -> list[dict[str, Any]]:
        out = []
        for link in self.c.links.values():
            item = link.summary()
            item.update(hostseen.freshness(link.state, link.last_seen, self.c.ctx.tick_interval))
            item["running_jobs"] = len(self.c.active_on(link.name))
            item["drained"] = self.c.drained.get(link.name)
            if history:
                item["history"] = link.history_series(history)
            out.append(item)
        return out

    async def rpc_hosts_add(self, peer: Peer, host: dict[str, Any]) -> dict[str, Any]:
        config = host_from_request(host)  # every field and key file checked now, in the user's words
        add_host(self.c.home.hosts_file, config)
        await self._apply_hosts_file(peer, "host.add", config.name, msgspec.to_builtins(config))
        return {"name": config.name, "added": True, "known_hosts": str(self.c.home.known_hosts_file)}

    async def rpc_hosts_remove(self, peer: Peer, name: Ident) -> dict[str, Any]:
        busy = self.c.active_on(name)
        if busy:
            raise UsageError(f"host {name} has {plural(len(busy), 'run')} in flight ({', '.join(busy[:3])}); "
                             "cancel them or wait for them to end")
        remove_host(self.c.home.hosts_file, name)
        await self._apply_hosts_file(peer, "host.remove", name, {})
        await self.store.run(fleet_records.set_host_state, name, "removed")
        return {"name": name, "removed": True}

    async def _apply_hosts_file(self, peer: Peer, action: str, target: str, detail: dict[str, Any]) -> None:
        self.c.apply_inventory(load_inventory(self.c.home.hosts_file))
        self.c.note_inventory_written()
        await self.store.run(audit_records.audit, peer.info["actor"], action, target, detail)

    async def rpc_hosts_drain(self, peer: Peer, name: Ident, reason: Annotated[str, Meta(max_length=500)] = "",
                              drain: bool = True) -> dict[str, Any]:
        """No new placements on the host (runs in flight go on); ``drain=False`` undoes it."""
        if name not in self.c.links:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        actor = peer.info["actor"]
        if drain:
            self.c.drained[name] = f"by {actor}: {reason or 'no reason given'}"
        else:
            self.c.drained.pop(name, None)
        await self.store.run(fleet_records.set_drain, name, actor if drain else None, reason if drain else None)
        await self.store.run(audit_records.audit, actor, "host.drain" if drain else "host.undrain", name, {"reason": reason})
        return {"name": name, "drained": drain, "running": len(self.c.active_on(name))}

    def _ssh_host(self, name: str) -> HostConfig:
        if name == LOCAL_HOST:
            raise UsageError(f"'{LOCAL_HOST}' is reached without SSH; it has no host key")
        host = self.c.inventory.get(name)
        if host is None:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        if host.is_local:
            raise UsageError(f"{name}'s agent runs on the controller's machine (transport: local), reached without "
                             "SSH; it has no host key and needs no bootstrap")
        return host

    async def rpc_host_key(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """The key the host presents now, and what we have recorded for it."""
        hop, presented, known = await route.first_untrusted(self._ssh_host(name), self.c.home.known_hosts_file)
        return {"name": name, "address": hop.address, "port": hop.port, "fingerprint": presented.fingerprint,
                "key_type": presented.line.split()[0], "known": known, "trusted": presented.fingerprint in known,
                "jump_host": hop.jump}

    async def rpc_host_trust(self, peer: Peer, name: Ident, fingerprint: Ident) -> dict[str, Any]:
        """Record the host's key, but only if it is still the one the user was shown."""
        # the key asked about is the first on the route not yet recorded: a jump host's, then the host's own
        host, presented, previous = await route.first_untrusted(self._ssh_host(name), self.c.home.known_hosts_file)
        if presented.fingerprint != fingerprint:
            raise UsageError(f"{name} now presents {presented.fingerprint}, not the {fingerprint} you confirmed; "
                             "nothing was recorded: run 'mlfleet hosts trust' again and check the key")
        hostkeys.trust(self.c.home.known_hosts_file, host.address, host.port, presented)
        await self.store.run(audit_records.audit, peer.info["actor"], "host.trust", name,
                             {"fingerprint": fingerprint, "previous": previous,
                              **({"jump_host": f"{host.address}:{host.port}"} if host.jump else {})})
        link = self.c.links.get(name)
        if link is not None:
            link.retry_now()
        return {"name": name, "fingerprint": fingerprint, "replaced": previous, "jump_host": host.jump}

    async def rpc_hosts_bootstrap(self, peer: Peer, name: Ident, prefix: Ident = ".mlfleet",
                                  python: Ident = "python3") -> dict[str, Any]:
        """Install the agent on the node, then point the host's agent_command at it."""
        from mlfleet.core.fleet.bootstrap import bootstrap, check_node_path

        check_node_path("--prefix", prefix, ".mlfleet or /opt/mlfleet")
        check_node_path("--python", python, "python3 or /usr/bin/python3.11")
        host = self._ssh_host(name)
        result = await bootstrap(SshAgentTransport(host, self.c.home.known_hosts_file), self.c.home.wheel_cache_dir,
                                 prefix, python)
        return {"name": name, **result, **await node_restart.restart_from(self, peer, host, result)}

    async def rpc_hosts_stop_agent(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Stop the host's agent and keep its link down until ``hosts start-agent`` (runs must have ended)."""
        return await node_restart.stop(self, peer, name)

    async def rpc_hosts_start_agent(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Let go of a link held by ``hosts stop-agent``: the next connect starts the agent."""
        return await node_restart.start(self, peer, name)

    async def rpc_hosts_check(self, peer: Peer, name: Ident) -> dict[str, Any]:
        """Connect afresh, say hello, read the agent's facts; report each step."""
        link = self.c.links.get(name)
        if link is None:
            raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
        started = time.monotonic()
        # A transport of its own: the probe must not replace the link's connection (uploads use it).
        config = self.c.inventory.get(name)
        transport = SshAgentTransport(config, self.c.home.known_hosts_file) \
            if config is not None and not config.is_local else link.transport
        try:
            probe = await transport.connect()
        except MlfleetError as exc:
            return {"name": name, "ok": False, "problem": str(exc), "state": link.state}
        try:
            info = await probe.request("info", request_timeout=10)
            latency = await _round_trip(probe)
        finally:
            await probe.close()
        return {"name": name, "ok": True, "connect_s": round(time.monotonic() - started, 3),
                "round_trip_ms": round(latency * 1000, 2), "agent_version": info.get("version"),
                "simulated_gpus": bool(info.get("simulated_gpus")), "info": info, "state": link.state}
