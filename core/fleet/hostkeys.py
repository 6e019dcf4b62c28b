"""mlfleet's own known_hosts file: strict host keys, trusted only on a user's word.

The file (``CONFIG_DIR/known_hosts``) is in OpenSSH's format, so ``ssh -o
UserKnownHostsFile=...`` can use it too. Nothing is ever added to it
silently: ``mlfleet hosts trust NAME`` shows the key's fingerprint and
records it only after the user confirms (or passes ``--yes``).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from mlfleet.core.base.errors import UnavailableError


class HostKeyError(UnavailableError):
    """The host's key is unknown, or not the one recorded: we refuse to talk to it."""

    def __init__(self, host: str, address: str, port: int, fingerprint: str | None, known: list[str],
                 jump: bool = False) -> None:
        self.host, self.fingerprint, self.known = host, fingerprint, known
        where = f"the jump host {address}:{port} of {host}" if jump else f"{host} ({address}:{port})"
        shown = fingerprint or "unknown (the host did not show one)"
        if known:
            message = (f"the host key of {where} has CHANGED: it is now {shown}, but mlfleet knows "
                       f"{', '.join(known)}; if the host was reinstalled, check the new key and run "
                       f"'mlfleet hosts trust {host}', otherwise someone may be intercepting the connection")
        else:
            message = (f"{where} presented a host key mlfleet does not know ({shown}); check it and run "
                       f"'mlfleet hosts trust {host}' to record it")
        super().__init__(message)


@dataclass(frozen=True)
class PresentedKey:
    fingerprint: str
    line: str  # "ssh-ed25519 AAAA..." without a comment


def pattern(address: str, port: int) -> str:
    """How OpenSSH names a host in known_hosts."""
    return address if port == 22 else f"[{address}]:{port}"


def load_known_hosts(path: Path) -> asyncssh.SSHKnownHosts | tuple[list, list, list]:
    """What asyncssh checks against: the file, or nothing trusted at all when there is none."""
    if path.exists():
        return asyncssh.read_known_hosts(str(path))
    return ([], [], [])


def recorded_fingerprints(path: Path, address: str, port: int) -> list[str]:
    """Fingerprints recorded for this address and port."""
    wanted = pattern(address, port)
    found = []
    for entry in _entries(path):
        hosts, key = entry
        if wanted in hosts.split(","):
            try:
                found.append(asyncssh.import_public_key(key).get_fingerprint("sha256"))
            except (asyncssh.KeyImportError, ValueError):
                continue
    return found


async def fetch_host_key(address: str, port: int, timeout: float = 10.0, **route: Any) -> PresentedKey:
    """Ask the server for its host key (no authentication happens).

    ``route`` is asyncssh's ``tunnel`` (an SSH connection to a trusted jump
    host) or ``proxy_command`` (an argv), for hosts not reached directly.
    """
    try:
        key = await asyncssh.get_server_host_key(address, port, config=[], options=asyncssh.SSHClientConnectionOptions(
            connect_timeout=timeout), **route)
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        how = " through its jump host" if route.get("tunnel") else " through its proxy command" if route else ""
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__
        raise UnavailableError(f"cannot reach {address}:{port}{how} to read its host key: {reason}") from None
    if key is None:
        raise UnavailableError(f"{address}:{port} did not present a host key")
    line = key.export_public_key("openssh").decode().split()
    return PresentedKey(fingerprint=key.get_fingerprint("sha256"), line=" ".join(line[:2]))


def trust(path: Path, address: str, port: int, key: PresentedKey) -> None:
    """Record ``key`` for this address and port, replacing what was recorded before."""
    wanted = pattern(address, port)
    kept = []
    if path.exists():
        for raw in path.read_text(encoding="utf-8").splitlines():
            fields = raw.split()
            if fields and not raw.startswith("#") and wanted in fields[0].split(","):
                continue
            kept.append(raw)
    kept.append(f"{wanted} {key.line}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(kept) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _entries(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        fields = raw.split()
        if len(fields) >= 3 and not raw.startswith("#") and not fields[0].startswith("@"):
            out.append((fields[0], f"{fields[1]} {fields[2]}"))
    return out
