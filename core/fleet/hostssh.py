"""An SSH connection of one's own to a host, made exactly as the controller makes its host links.

For clients that must reach a node themselves (``mlfleet deploy open``
forwards TCP connections to replicas over SSH): the host's settings come
from the same ``hosts.yaml`` (user, port, identity, jump hosts or proxy
command) and its key is checked as strictly, against mlfleet's own
``known_hosts``, by the same route code (core/fleet/transport/route.py).
Nothing here trusts a key or edits a file: a host the controller would
refuse is refused here too, in the same words.
"""

from __future__ import annotations

import asyncssh

from mlfleet.core.base.errors import NotFoundError, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.fleet.inventory import LOCAL_HOST, HostConfig, load_inventory
from mlfleet.core.fleet.transport import route


def host_config(home: Home, name: str) -> HostConfig:
    """The host ``name`` as hosts.yaml has it now (read each time: the file may have changed)."""
    for host in load_inventory(home.hosts_file):
        if host.name == name:
            return host
    where = "is the embedded host, reached without SSH" if name == LOCAL_HOST else f"is not in {home.hosts_file}"
    raise NotFoundError(f"host {name!r} {where}; 'mlfleet hosts list' shows the hosts")


async def connect_host(home: Home, name: str) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to host ``name`` (through its hops); the caller closes it.

    Raises NotFoundError for a host hosts.yaml lacks, and the route's
    UnavailableError / HostKeyError (with the fingerprint and what to do)
    when it cannot be reached or its key is not the recorded one.
    """
    host = host_config(home, name)
    if host.is_local:
        raise UsageError(f"host {name!r}'s agent runs on the controller's machine (transport: local): there is "
                         "no SSH connection to make; reach it from this machine")
    return await route.connect(host, home.known_hosts_file)
