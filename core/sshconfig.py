"""``mlfleet hosts import-ssh-config``: hosts from an OpenSSH client config.

paramiko's SSHConfig does the one job paramiko has in mlfleet: it resolves
a ``Host`` alias the way OpenSSH would (Match-less: HostName, Port, User,
IdentityFile, wildcards and defaults). asyncssh carries all SSH traffic.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import paramiko

from .errors import SpecError
from .models import NAME_PATTERN

import re


def hosts_from_ssh_config(path: Path, only: list[str] | None = None) -> list[dict[str, Any]]:
    """One host dict (as ``hosts add`` takes) per concrete Host alias in the file."""
    if not path.exists():
        raise SpecError(str(path), None, None, "file not found", "pass --file with your ssh config")
    try:
        config = paramiko.SSHConfig.from_path(str(path))
    except Exception as exc:  # paramiko raises plain exceptions for syntax it cannot read
        raise SpecError(str(path), None, None, f"cannot be read as an ssh config: {exc}") from None
    out = []
    for alias in sorted(config.get_hostnames()):
        if any(ch in alias for ch in "*?!") or alias == "*":
            continue  # patterns are defaults, not hosts
        if only and not any(fnmatch.fnmatch(alias, pattern) for pattern in only):
            continue
        if not re.match(NAME_PATTERN, alias) or alias == "local":
            continue
        entry = config.lookup(alias)
        host: dict[str, Any] = {"name": alias, "address": entry.get("hostname", alias),
                                "port": int(entry.get("port", 22)), "labels": {"imported-from": "ssh-config"}}
        if entry.get("user"):
            host["user"] = entry["user"]
        identities = entry.get("identityfile") or []
        if identities:
            host["identity"] = str(Path(identities[0]).expanduser())
        out.append(host)
    return out
