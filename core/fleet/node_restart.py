"""Stopping and restarting a host's agent on purpose: after ``hosts bootstrap``, and by hand.

Why a restart after bootstrap: an agent keeps running the code it started
with, so installing a new mlfleet into a venv changed nothing until the old
agent stopped; the link's next connect then starts the agent from the new
venv. The link is held while this happens, so no reconnect in between
starts the old one again. Runs live on through it (their runners are in
sessions of their own, and the new agent re-attaches them from the run
folders), so the same link object is kept, with its runs, and only its
transport is swapped.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec

from mlfleet.core.base.errors import MlfleetError, NotFoundError, UnavailableError, UsageError
from mlfleet.core.fleet.inventory import HostConfig, add_host, remove_host
from mlfleet.core.audit import records as audit_records
from mlfleet.core.fleet.transport.ssh import SshAgentTransport

if TYPE_CHECKING:
    from mlfleet.core.fleet.api import FleetApi
    from mlfleet.core.base.protocol import Peer

START_WAIT_S = 20.0


async def restart_from(api: "FleetApi", peer: "Peer", host: HostConfig, installed: dict[str, str]) -> dict[str, Any]:
    """Point the host at the newly installed agent command and restart its agent from there."""
    c = api.c
    updated = msgspec.structs.replace(host, agent_command=installed["agent_command"])
    transport = SshAgentTransport(updated, c.home.known_hosts_file)
    link = c.links.get(host.name)
    held_before = link.held if link is not None else None
    if link is not None:
        await link.hold(f"restarting its agent from {installed['agent_command']}")
    try:
        try:
            stopped = await transport.stop_agent()  # the new mlfleet stops any older agent (by its lock)
        except MlfleetError as exc:
            raise UnavailableError(f"{installed['version']} is installed on {host.name}, but the agent that runs "
                                   f"there could not be stopped, so it still runs the old one: {exc}") from None
        remove_host(c.home.hosts_file, host.name)
        add_host(c.home.hosts_file, updated)
        if link is not None:
            link.transport = transport
            c.inventory[host.name] = updated  # the same link goes on (with its runs), not a new one
        await api._apply_hosts_file(peer, "host.bootstrap", host.name,
                                    {**installed, "restarted_pid": stopped.get("pid")})
    finally:
        if link is not None and held_before is None:
            link.release()
    return {"restarted": bool(stopped.get("was_running")), "previous_agent_pid": stopped.get("pid")}


async def stop(api: "FleetApi", peer: "Peer", name: str) -> dict[str, Any]:
    """Stop the host's agent and hold its link (the agent is not started again) until :func:`start`."""
    link = _link(api, name)
    busy = api.c.active_on(name)
    if busy:
        raise UsageError(f"host {name} has {len(busy)} run(s) in flight ({', '.join(busy[:3])}), which would go on "
                         f"unwatched; wait for them to end (mlfleet hosts drain {name} stops new ones) or cancel them")
    actor = peer.info["actor"]
    held_before = link.held
    await link.hold(f"its agent was stopped by {actor}; 'mlfleet hosts start-agent {name}' starts it again")
    try:
        stopped = await link.transport.stop_agent()
    except BaseException:
        if held_before is None:
            link.release()
        raise
    await api.store.run(audit_records.audit, actor, "host.stop_agent", name, {"pid": stopped.get("pid")})
    return {"name": name, **stopped}


async def start(api: "FleetApi", peer: "Peer", name: str) -> dict[str, Any]:
    """Let go of a held link and wait a little for the agent to answer."""
    link = _link(api, name)
    was_held = link.held is not None
    link.release()
    if was_held:
        await api.store.run(audit_records.audit, peer.info["actor"], "host.start_agent", name, {})
    deadline = time.monotonic() + START_WAIT_S
    while time.monotonic() < deadline and link.state != "up" and not (link.state == "unreachable" and link.message):
        await asyncio.sleep(0.1)
    return {"name": name, "state": link.state, "message": link.message, "was_stopped": was_held}


def _link(api: "FleetApi", name: str) -> Any:
    link = api.c.links.get(name)
    if link is None:
        raise NotFoundError(f"no host {name!r}; list them with 'mlfleet hosts list'")
    return link
