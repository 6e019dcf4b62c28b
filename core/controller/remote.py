"""A shared controller reached over SSH: ``--controller ssh://alice@head[:port][/socket]`` (docs/team.md).

The client makes one SSH connection to the head node (strict host keys,
against this installation's own known_hosts, as for hosts: an unknown key
is refused until ``mlfleet controller trust URL`` records it) and opens a
channel to the team socket there (``direct-streamlocal``): sshd connects to
the socket as the authenticated user, so the controller's ``SO_PEERCRED``
names that user, whatever this side says. The protocol runs over the
channel unchanged. A remote controller is never started from here: it is
started on its head node (``mlfleet controller serve --team GROUP``).

Which controller: ``--controller URL`` (sets MLFLEET_CONTROLLER for the
process) > ``MLFLEET_CONTROLLER`` > ``controller.url`` in config.yaml.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import asyncssh

from mlfleet.core.base.controller_url import ControllerUrl
from mlfleet.core.base.errors import UnavailableError, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.protocol import Peer
from mlfleet.core.controller.target import STARTED_ON_HEAD, configured_target, identity_of
from mlfleet.core.fleet import hostkeys
from mlfleet.core.fleet.hostcheck import identity_problem

__all__ = ["STARTED_ON_HEAD", "configured_target", "identity_of"]  # (their home is target.py)

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 15.0
KEEPALIVE_COUNT_MAX = 3
_OPEN_PROHIBITED = 1  # SSH_OPEN_ADMINISTRATIVELY_PROHIBITED

class RemoteHostKeyError(UnavailableError):
    """The head node's key is unknown or changed: refused until ``controller trust`` records it."""

    def __init__(self, target: ControllerUrl, fingerprint: str | None, known: list[str]) -> None:
        self.fingerprint, self.known = fingerprint, known
        shown = fingerprint or "unknown (the host did not show one)"
        where = f"the controller's head {target.host}:{target.port}"
        if known:
            message = (f"the host key of {where} has CHANGED: it is now {shown}, but mlfleet knows "
                       f"{', '.join(known)}; if the head was reinstalled, check the new key and run "
                       f"'mlfleet controller trust {target.url}', otherwise someone may be intercepting the connection")
        else:
            message = (f"{where} presented a host key mlfleet does not know ({shown}); check it and run "
                       f"'mlfleet controller trust {target.url}' to record it")
        super().__init__(message)


async def open_remote(home: Home, target: ControllerUrl) -> tuple[Peer, dict[str, Any], asyncssh.SSHClientConnection]:
    """A greeted protocol peer on the remote controller, its hello answer and the SSH connection under it.

    Closing the peer closes the SSH connection. Every failure is one sentence (UnavailableError).
    """
    conn = await ssh_connect(home, target)
    try:
        try:
            reader, writer = await conn.open_unix_connection(target.socket_path)
        except asyncssh.ChannelOpenError as exc:
            raise await _socket_error(conn, target, exc) from None
        peer = Peer(reader, writer, name=f"the controller at {target.where}")
        peer.on_close(conn.close)
        peer.start()
        try:
            hello = await peer.hello("client")
        except BaseException:
            await peer.close()
            raise
    except BaseException:
        conn.close()
        raise
    return peer, hello, conn


async def ssh_connect(home: Home, target: ControllerUrl) -> asyncssh.SSHClientConnection:
    """An authenticated SSH connection to the head node; its key checked against home's known_hosts."""
    identity = identity_of(home)
    options: dict[str, Any] = {
        "port": target.port, "known_hosts": hostkeys.load_known_hosts(home.known_hosts_file),
        "config": [], "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalive_interval": KEEPALIVE_INTERVAL_S, "keepalive_count_max": KEEPALIVE_COUNT_MAX,
    }
    if target.user:
        options["username"] = target.user
    if identity is not None:
        if problem := identity_problem(identity):
            raise UsageError(f"controller.identity in {home.config_file}: {identity} {problem}")
        options["client_keys"] = [str(identity)]
    try:
        return await asyncssh.connect(target.host, **options)
    except asyncssh.HostKeyNotVerifiable:
        presented = None
        with contextlib.suppress(UnavailableError):
            presented = (await hostkeys.fetch_host_key(target.host, target.port)).fingerprint
        raise RemoteHostKeyError(target, presented, hostkeys.recorded_fingerprints(
            home.known_hosts_file, target.host, target.port)) from None
    except asyncssh.PermissionDenied:
        user = target.user or _local_user()
        key = f"the key {identity}" if identity else "our keys (ssh-agent, ~/.ssh/id_*)"
        raise UnavailableError(f"the controller's head {target.host}:{target.port} refused {key} for user {user}; "
                               f"add the public key to {user}'s authorized_keys there, or set controller.identity "
                               f"in {home.config_file}") from None
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise UnavailableError(f"cannot reach the controller's head {target.host}:{target.port}: {reason}") from None


async def _socket_error(conn: asyncssh.SSHClientConnection, target: ControllerUrl,
                        exc: asyncssh.ChannelOpenError) -> UnavailableError:
    """Why the head's sshd could not open the socket: it says only "open failed", so look (as that user)."""
    user = target.user or _local_user()
    path, host = target.socket_path, target.host
    if exc.code == _OPEN_PROHIBITED:
        return UnavailableError(f"the sshd of {host} does not let {user} open Unix sockets "
                                "(AllowStreamLocalForwarding in its sshd_config); ask its admin to allow it")
    try:
        async with conn.start_sftp_client() as sftp:
            attrs = await sftp.stat(path)
    except asyncssh.SFTPNoSuchFile:
        return UnavailableError(f"nothing is listening at {path} on {host}: no controller serves a team there "
                                "(is it started with 'mlfleet controller serve --team GROUP', and is that its --socket?)")
    except asyncssh.SFTPPermissionDenied:
        return UnavailableError(f"{user} may not open {path} on {host} (permission denied): "
                                f"{user} is not in the controller's team group?")
    except (OSError, asyncssh.Error):
        return UnavailableError(f"cannot open {path} on {host} as {user}: {exc.reason or 'open failed'}")
    member = await _in_group(conn, attrs.gid, attrs.uid)
    if member is False:
        group = await _group_name(conn, attrs.gid)
        return UnavailableError(f"{user} may not open {path} on {host} (permission denied): "
                                f"{user} is not in the controller's team group ({group})?")
    return UnavailableError(f"nothing is listening at {path} on {host} (the socket is there but no controller "
                            "answers: it stopped?)")


async def _in_group(conn: asyncssh.SSHClientConnection, gid: int | None, uid: int | None) -> bool | None:
    """Whether the SSH user is the socket's owner or in its group (None: could not tell)."""
    try:
        result = await asyncio.wait_for(conn.run("id -u; id -G", check=False), 5.0)
        own_uid, *rest = str(result.stdout).split("\n")
        groups = {int(g) for g in " ".join(rest).split()}
        return int(own_uid) == uid or gid in groups
    except (OSError, asyncssh.Error, asyncio.TimeoutError, ValueError):
        return None


async def _group_name(conn: asyncssh.SSHClientConnection, gid: int | None) -> str:
    with contextlib.suppress(OSError, asyncssh.Error, asyncio.TimeoutError, IndexError):
        result = await asyncio.wait_for(conn.run(f"getent group {int(gid or 0)}", check=False), 5.0)
        name = str(result.stdout).split(":")[0].strip()
        if name:
            return name
    return f"gid {gid}"


def quick_ack(conn: asyncssh.SSHClientConnection) -> None:
    """Acknowledge the answer's segments at once (Linux TCP_QUICKACK), once each request is sent.

    Why: the head's sshd does not set TCP_NODELAY on a connection without a
    terminal, so it holds the last small segment of an answer until the
    previous ones are acknowledged; a client that asks again right after an
    answer (a TUI refresh: status, then the jobs) is taken by Linux for an
    interactive peer and delays its ACKs by 40 ms. Measured: status then
    jobs_list took 59 ms over loopback SSH, each alone 3 and 10 ms
    (BENCHMARKS.md, "A team's clients"). The flag is not permanent (sending
    data turns the delay on again), so it is set after every request is
    written; a no-op where the option does not exist.
    """
    option = getattr(socket, "TCP_QUICKACK", None)
    sock = conn.get_extra_info("socket")
    if option is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, 1)


def _local_user() -> str:
    import getpass

    return getpass.getuser()


async def presented_key(target: ControllerUrl) -> hostkeys.PresentedKey:
    """The head node's host key (no authentication happens)."""
    return await hostkeys.fetch_host_key(target.host, target.port, CONNECT_TIMEOUT_S)


def recorded(home: Home, target: ControllerUrl) -> list[str]:
    return hostkeys.recorded_fingerprints(home.known_hosts_file, target.host, target.port)


def record(home: Home, target: ControllerUrl, key: hostkeys.PresentedKey) -> None:
    """Record the head's key in this installation's known_hosts (replacing what was there for it)."""
    home.ensure()
    hostkeys.trust(home.known_hosts_file, target.host, target.port, key)
