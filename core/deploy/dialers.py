"""How ``deploy open`` reaches a replica: loopback for the local host, SSH direct-tcpip for the others.

A remote replica listens on the node's 127.0.0.1 only (the agent picks the
port there), so the client asks the node's sshd to connect for it, over an
SSH connection of its own to that host (core/fleet/hostssh.py: the same
settings and strict host keys as the controller's links). One connection
per host carries every forwarded TCP connection as its own channel: opening
a channel is one round trip, an SSH handshake is several plus a key
exchange. A connection that was lost is replaced at the next dial; a dial
that finds the cached connection dead (lost between two checks) retries
once on a fresh one before the endpoint counts as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Awaitable, Callable

import asyncssh

from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.base.paths import Home
from mlfleet.core.deploy.forward import Endpoint, Reader, Writer
from mlfleet.core.fleet.hostssh import connect_host

Connect = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]
RETRY_AFTER_S = 3.0  # a host whose connect failed is not tried again for this long: its dials fail at once


async def dial_local(endpoint: Endpoint) -> tuple[Reader, Writer]:
    reader, writer = await asyncio.open_connection("127.0.0.1", endpoint.port)
    return reader, writer


class SshPool:
    """One SSH connection per host, made on first use, shared by all dials, replaced when lost."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # host -> (when, why) of its last failed connect
        self.connects = 0  # SSH connections made so far (each handshake), for `deploy open`'s own checks

    async def connection(self, host: str) -> asyncssh.SSHClientConnection:
        conn = self._conns.get(host)
        if conn is not None and not conn.is_closed():
            return conn
        lock = self._locks.setdefault(host, asyncio.Lock())
        async with lock:  # fifty dials at once to a new host make one connection, not fifty
            conn = self._conns.get(host)
            if conn is None or conn.is_closed():
                failed = self._failed.get(host)
                if failed is not None and time.monotonic() - failed[0] < RETRY_AFTER_S:
                    raise UnavailableError(failed[1])  # (a host that is down would hold each connection 10 s)
                try:
                    conn = await self._connect(host)
                except Exception as exc:
                    self._failed[host] = (time.monotonic(), str(exc) or type(exc).__name__)
                    raise
                self._failed.pop(host, None)
                self.connects += 1
                self._conns[host] = conn
            return conn

    def forget(self, host: str, conn: asyncssh.SSHClientConnection) -> None:
        if self._conns.get(host) is conn:
            del self._conns[host]
        conn.close()

    async def open(self, host: str, port: int) -> tuple[Reader, Writer]:
        """A direct-tcpip channel to the node's 127.0.0.1:port."""
        conn = await self.connection(host)
        try:
            reader, writer = await conn.open_connection("127.0.0.1", port)
        except asyncssh.ChannelOpenError:
            if not conn.is_closed():
                raise  # the node's sshd said no (nothing listens there): the endpoint failed, not the link
            self.forget(host, conn)
        except (OSError, asyncssh.Error):
            self.forget(host, conn)
        else:
            return reader, writer
        conn = await self.connection(host)
        reader, writer = await conn.open_connection("127.0.0.1", port)
        return reader, writer

    async def close(self) -> None:
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()


class FleetDialer:
    """The dialer ``serve_forward`` is given by the command: local endpoints directly, others over SSH."""

    def __init__(self, home: Home, connect: Connect | None = None) -> None:
        self.ssh = SshPool(connect or (lambda host: connect_host(home, host)))

    async def __call__(self, endpoint: Endpoint) -> tuple[Reader, Writer]:
        if endpoint.local:
            return await dial_local(endpoint)
        return await self.ssh.open(endpoint.host, endpoint.port)

    async def close(self) -> None:
        await self.ssh.close()
