"""How an SSH connection reaches a host: directly, through jump hosts, or through a proxy command.

A host with ``proxy_jump`` is reached the way ``ssh -J`` does it: an SSH
connection to the first hop, a TCP forward over it to the next, and so on,
each hop's key checked against mlfleet's known_hosts as strictly as the
host's own (a jump host is a machine we authenticate to; trusting it blindly
would let it be anyone). The chain is tied together with asyncssh's
``set_tunnel``, so closing the host's connection closes every hop under it.

A host with ``proxy_command`` is reached through the standard input and
output of that command, run as OpenSSH runs it (``/bin/sh -c "exec CMD"``,
``%h %p %r %n %%`` expanded), with asyncssh's ``proxy_command`` option.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from mlfleet.core.fleet import hostkeys
from mlfleet.core.base.errors import UnavailableError
from mlfleet.core.fleet.hostcheck import identity_problem
from mlfleet.core.fleet.inventory import HostConfig

CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_INTERVAL_S = 5.0
KEEPALIVE_COUNT_MAX = 3


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way (a jump host) or at the end (the host itself)."""

    host: str  # the inventory name of the host this route leads to
    address: str
    port: int
    user: str | None
    identity: Path | None
    jump: bool

    @property
    def label(self) -> str:
        where = f"{self.address}:{self.port}"
        return f"the jump host {where} of {self.host}" if self.jump else f"{self.host} ({where})"


def hops(config: HostConfig) -> list[Hop]:
    jumps = [Hop(config.name, j.address, j.port, j.user, j.identity_path, True) for j in config.proxy_jump]
    return [*jumps, Hop(config.name, config.address, config.port, config.user, config.identity_path, False)]


def describe(config: HostConfig) -> str:
    """The address as ``hosts list`` shows it: where the host is, and what it is reached through."""
    where = f"{config.address}:{config.port}"
    if config.proxy_jump:
        return where + " via " + ", ".join(f"{j.address}:{j.port}" for j in config.proxy_jump)
    return where + (" via proxy command" if config.proxy_command else "")


def proxy_argv(config: HostConfig) -> list[str] | None:
    if not config.proxy_command:
        return None
    return ["/bin/sh", "-c", "exec " + expand_tokens(config.proxy_command, config)]


def expand_tokens(command: str, config: HostConfig) -> str:
    """OpenSSH's ProxyCommand tokens; an unknown one is a ValueError (checked when the host is added)."""
    tokens = {"%": "%", "h": config.address, "p": str(config.port), "n": config.name,
              "r": config.user or getpass.getuser()}

    def one(match: re.Match[str]) -> str:
        if match.group(1) not in tokens:
            raise ValueError(f"%{match.group(1)} is not a ProxyCommand token (use %h, %p, %r, %n or %%)")
        return tokens[match.group(1)]

    return re.sub(r"%(.?)", one, command)


def _options(hop: Hop, known_hosts: Any) -> dict[str, Any]:
    options: dict[str, Any] = {
        "port": hop.port,
        "known_hosts": known_hosts,
        "config": [],  # the inventory is the configuration; ~/.ssh/config is imported explicitly
        "connect_timeout": CONNECT_TIMEOUT_S,
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
    }
    if hop.user:
        options["username"] = hop.user
    if hop.identity:
        options["client_keys"] = [str(hop.identity)]
    return options


async def connect(config: HostConfig, known_hosts_file: Path) -> asyncssh.SSHClientConnection:
    """An authenticated connection to the host, through its hops; every failure names the hop and why."""
    known = hostkeys.load_known_hosts(known_hosts_file)
    tunnel: asyncssh.SSHClientConnection | None = None
    proxy = proxy_argv(config)
    for hop in hops(config):
        options = _options(hop, known)
        if tunnel is not None:
            options["tunnel"] = tunnel
        elif proxy and not hop.jump:
            options["proxy_command"] = proxy
        try:
            if hop.identity and (problem := identity_problem(hop.identity)):
                raise UnavailableError(f"cannot connect to {hop.label}: the identity {hop.identity} {problem}")
            conn = await asyncssh.connect(hop.address, **options)
        except BaseException as exc:
            error = exc if isinstance(exc, UnavailableError) or not isinstance(exc, Exception) \
                else await _connect_error(config, hop, exc, known_hosts_file, tunnel)
            if tunnel is not None:
                tunnel.close()
            raise error from None
        if tunnel is not None:
            conn.set_tunnel(tunnel)  # closing the host's connection closes the hops under it
        tunnel = conn
    assert tunnel is not None
    return tunnel


async def _connect_error(config: HostConfig, hop: Hop, exc: Exception, known_hosts_file: Path,
                         tunnel: asyncssh.SSHClientConnection | None) -> UnavailableError:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        presented = None
        try:
            presented = (await presented_key(config, hop, tunnel)).fingerprint
        except UnavailableError:
            pass
        return hostkeys.HostKeyError(config.name, hop.address, hop.port, presented,
                                     hostkeys.recorded_fingerprints(known_hosts_file, hop.address, hop.port),
                                     jump=hop.jump)
    if isinstance(exc, asyncssh.PermissionDenied):
        field = "proxy_jump" if hop.jump else "identity"
        return UnavailableError(f"{hop.label} refused our key for user {hop.user or 'the current user'}; check "
                                f"'{field}' in hosts.yaml and the node's authorized_keys")
    if isinstance(exc, (asyncssh.KeyImportError, ValueError)):
        return UnavailableError(f"cannot use the identity {hop.identity} for {hop.label}: {exc} "
                                "(a passphrase-protected key needs an ssh-agent; leave 'identity' out to use it)")
    if isinstance(exc, asyncssh.ChannelOpenError) and not hop.jump:
        return UnavailableError(f"cannot connect to {hop.label} through its jump host: the jump host could not "
                                f"reach it ({exc.reason})")
    how = " through its proxy command" if config.proxy_command and not hop.jump else ""
    reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return UnavailableError(f"cannot connect to {hop.label}{how}: {reason}")


async def presented_key(config: HostConfig, hop: Hop, tunnel: asyncssh.SSHClientConnection | None,
                        timeout: float = CONNECT_TIMEOUT_S) -> hostkeys.PresentedKey:
    """The key this hop presents, asked over the route to it (no authentication happens)."""
    extra: dict[str, Any] = {}
    if tunnel is not None:
        extra["tunnel"] = tunnel
    elif not hop.jump and config.proxy_command:
        extra["proxy_command"] = proxy_argv(config)
    return await hostkeys.fetch_host_key(hop.address, hop.port, timeout, **extra)


async def first_untrusted(config: HostConfig, known_hosts_file: Path) -> tuple[Hop, hostkeys.PresentedKey, list[str]]:
    """The first hop on the route whose key is not recorded (or the host itself, trusted or not).

    Keys are confirmed one hop at a time, from the nearest: the host's own key
    can only be asked for through jump hosts already trusted.
    """
    known = hostkeys.load_known_hosts(known_hosts_file)
    tunnel: asyncssh.SSHClientConnection | None = None
    try:
        for hop in hops(config):
            key = await presented_key(config, hop, tunnel)
            recorded = hostkeys.recorded_fingerprints(known_hosts_file, hop.address, hop.port)
            if not hop.jump or key.fingerprint not in recorded:
                return hop, key, recorded
            options = _options(hop, known)
            if tunnel is not None:
                options["tunnel"] = tunnel
            try:
                conn = await asyncssh.connect(hop.address, **options)
            except Exception as exc:
                raise await _connect_error(config, hop, exc, known_hosts_file, tunnel) from None
            if tunnel is not None:
                conn.set_tunnel(tunnel)
            tunnel = conn
        raise AssertionError("a route always ends at its host")
    finally:
        if tunnel is not None:
            tunnel.close()
