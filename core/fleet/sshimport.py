"""``mlfleet hosts import-ssh-config``: fleet hosts from the Host entries of an OpenSSH config.

What is carried into hosts.yaml: HostName, Port, User, the first usable
IdentityFile, and how the host is reached: ProxyJump (every hop resolved
through the same config, its own ProxyJump chain first) or ProxyCommand
(kept with its ``%`` tokens, expanded at each connection), whichever the
config gives first, as ssh does.

What is not a fleet host: patterns (``Host *.lab``), and a host used only as
a jump host by the hosts being imported. A bastion is a door, not a place
to run jobs; name it with ``--host`` to import it in its own right.

A host whose settings cannot be honoured (a missing key, a port that is not
one, a ProxyCommand token mlfleet does not expand, a jump loop, ...) is not
imported; it is reported by name with the reason, and the others are.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import UsageError
from mlfleet.core.fleet.hostcheck import host_from_request, identity_problem
from mlfleet.core.fleet.inventory import LOCAL_HOST
from mlfleet.core.base.models import NAME_PATTERN
from mlfleet.core.fleet.sshconfig import Line, Resolved, SshConfig, TokenError, is_pattern

MAX_HOPS = 8
PROXY_TOKENS = set("hprn%")
# Directives that change how ssh connects but that hosts.yaml does not carry: the host is imported, with a note.
NOT_CARRIED = {
    "hostkeyalias": ("HostKeyAlias", "mlfleet records host keys by address and port in its own known_hosts"),
    "certificatefile": ("CertificateFile", "mlfleet authenticates with the private key alone"),
    "pkcs11provider": ("PKCS11Provider", "keys on a PKCS#11 token are not used; give an IdentityFile"),
    "stricthostkeychecking": ("StrictHostKeyChecking", "mlfleet always checks host keys; record them with "
                              "'mlfleet hosts trust NAME'"),
    "bindaddress": ("BindAddress", "connections leave from the default address"),
}


class Refused(Exception):
    """One host's settings cannot be honoured; the message is the reason."""


@dataclass
class ImportPlan:
    hosts: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # alias -> why it was not imported
    jump_hosts: dict[str, list[str]] = field(default_factory=dict)  # alias -> the imported hosts that use it
    warnings: list[str] = field(default_factory=list)


def is_port(text: str) -> bool:
    """ASCII digits 1 to 65535: ``str.isdigit`` and ``int`` also accept '٣٣' (Arabic-Indic 33) and '²'."""
    return re.fullmatch(r"[0-9]{1,5}", text) is not None and 1 <= int(text) <= 65535


def parse_jump(spec: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` or ``ssh://[user@]host[:port]`` (``[::1]:22`` for IPv6) -> (user, host, port)."""
    text = spec.strip()
    text = text[len("ssh://"):] if text.startswith("ssh://") else text
    user, _, rest = text.rpartition("@")
    port: int | None = None
    if m := re.fullmatch(r"\[([^\]]+)\](?::([^:]+))?", rest):
        host, port_text = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, None
    if port_text is not None:
        if not is_port(port_text):
            raise ValueError(f"{spec!r}: {port_text!r} is not a TCP port (1 to 65535)")
        port = int(port_text)
    if not host or "/" in host or " " in host:
        raise ValueError(f"{spec!r} is not [user@]host[:port]")
    return user or None, host, port


def plan_import(path: Path, only: list[str] | None = None) -> ImportPlan:
    """What importing ``path`` would add, refuse and leave out (reads files, connects nowhere)."""
    config = SshConfig(path)
    config.checked_keys = {}  # a key shared by thousands of hosts is read once
    concrete = [a for a in config.aliases() if not is_pattern(a)]
    plan = ImportPlan()
    selected = [a for a in concrete if not only or any(fnmatch.fnmatchcase(a, p) for p in only)]
    for pattern in only or []:
        if not any(fnmatch.fnmatchcase(a, pattern) for a in concrete):
            plan.refused[pattern] = f"no Host entry in {path} matches {pattern!r}"
    notes: dict[str, tuple[str, list[str]]] = {}
    for alias in selected:
        jumps: list[str] = []  # filled as the route is read, so a host refused half-way still names its bastion
        try:
            plan.hosts.append(_host(config, alias, concrete, notes, jumps))
        except (Refused, UsageError) as exc:
            plan.refused[alias] = str(exc)
        for jump in dict.fromkeys(jumps):
            plan.jump_hosts.setdefault(jump, []).append(alias)
    named = set(only or [])
    doors = {j for j in plan.jump_hosts if j not in named}  # a bastion is a fleet host only when asked by name
    plan.hosts = [h for h in plan.hosts if h["name"] not in doors]
    plan.jump_hosts = {j: users for j, users in plan.jump_hosts.items() if j in doors and j not in plan.refused}
    imported = {h["name"] for h in plan.hosts}
    plan.warnings = [*config.warnings.values(),
                     *(f"{where}: {text} ({', '.join(h for h in hosts if h in imported)})"
                       for where, (text, hosts) in notes.items() if imported.intersection(hosts))]
    return plan


def _host(config: SshConfig, alias: str, concrete: list[str], notes: dict[str, tuple[str, list[str]]],
          jumps: list[str]) -> dict[str, Any]:
    if alias == LOCAL_HOST:
        raise Refused(f"'{LOCAL_HOST}' is mlfleet's embedded host; give the entry another Host name to import it")
    if not re.match(NAME_PATTERN, alias) or len(alias) > 128:
        raise Refused("not a valid mlfleet host name (letters, digits, '.', '_' and '-', starting with a letter or "
                      "digit, 128 characters at most); add a Host alias that is")
    resolved = config.resolve(alias)
    for keyword, (shown, why) in NOT_CARRIED.items():
        line = resolved.options.get(keyword)
        if line and not (keyword == "stricthostkeychecking" and line.raw.lower() in ("yes", "ask")):
            notes.setdefault(line.where, (f"{shown} {line.raw} is not carried into hosts.yaml: {why}", []))[1] \
                .append(alias)
    host: dict[str, Any] = {"name": alias, **_endpoint(config, resolved, f"host {alias}"),
                            "labels": {"imported-from": "ssh-config"}}
    route = _route(resolved)
    if route is not None and route.keyword == "proxyjump":
        host["proxy_jump"] = _hops(config, route, alias, [alias], concrete, jumps)
    elif route is not None:
        _check_proxy_command(route, alias)
        host["proxy_command"] = route.raw
        jumps += [a for a in concrete if a != alias and a in _words(route.raw)]
    host_from_request(host, lambda path: _key_problem(config, path))  # the same checks as 'hosts add', same words
    return host


def _key_problem(config: SshConfig, path: Path) -> str | None:
    if path not in config.checked_keys:
        config.checked_keys[path] = identity_problem(path)
    return config.checked_keys[path]


def _route(resolved: Resolved) -> Line | None:
    """ProxyJump or ProxyCommand, whichever ssh would use (the first one given); None for a direct connection."""
    for keyword, line in resolved.options.items():
        if keyword in ("proxyjump", "proxycommand"):
            return None if line.raw.lower() == "none" else line
    return None


def _endpoint(config: SshConfig, resolved: Resolved, who: str) -> dict[str, Any]:
    """address, port, user and identity of one SSH server as the config describes it."""
    written = resolved.options.get("hostname")
    if written is not None and (bad := re.findall(r"%([^h%]|$)", written.raw)):
        raise Refused(f"{who}: HostName {written.raw} ({written.where}) uses %{bad[0]}, which ssh does not expand "
                      "there (only %h and %%)")
    out: dict[str, Any] = {"address": config.hostname(resolved)}
    port = resolved.options.get("port")
    if port is not None:
        if not is_port(port.raw):
            raise Refused(f"{who}: Port {port.raw} ({port.where}) is not a TCP port; use 1 to 65535")
        out["port"] = int(port.raw)
    if resolved.value("user"):
        out["user"] = resolved.value("user")
    identity = _identity(config, resolved, who)
    if identity:
        out["identity"] = identity
    return out


def _identity(config: SshConfig, resolved: Resolved, who: str) -> str | None:
    """The first IdentityFile that is a usable key; refused when some are given and none is."""
    problems = []
    for line in resolved.identity_files:
        if line.raw.lower() == "none":
            continue
        try:
            path = Path(config.expand(line.raw, resolved, env=True)).expanduser()
        except TokenError as exc:
            problems.append(f"IdentityFile {line.raw} ({line.where}): {exc}")
            continue
        problem = _key_problem(config, path)
        if problem is None:
            return str(path.absolute())
        problems.append(f"IdentityFile {path} ({line.where}) {problem}")
    if problems:
        raise Refused(f"{who}: " + "; ".join(problems))
    return None


def _hops(config: SshConfig, line: Line, alias: str, chain: list[str], concrete: list[str],
          jumps: list[str]) -> list[dict[str, Any]]:
    """Every hop to ``alias``, nearest first: each hop's own ProxyJump chain comes before it, as with ssh."""
    out: list[dict[str, Any]] = []
    for spec in line.raw.split(","):
        try:
            user, name, port = parse_jump(spec)
        except ValueError as exc:
            raise Refused(f"host {chain[0]}: ProxyJump ({line.where}) {exc}") from None
        if name in chain:
            raise Refused(f"host {chain[0]}: ProxyJump loops ({' -> '.join([*chain, name])}, {line.where})")
        if name in concrete:
            jumps.append(name)
        resolved = config.resolve(name, user, str(port) if port else None)
        hop = _endpoint(config, resolved, f"host {chain[0]}: jump host {name}")
        below = _route(resolved)
        if below is not None and below.keyword == "proxycommand":
            raise Refused(f"host {chain[0]}: its jump host {name} is reached through a ProxyCommand "
                          f"({below.where}), which mlfleet cannot combine with ProxyJump; use ProxyJump for both")
        if below is not None:
            out += _hops(config, below, name, [*chain, name], concrete, jumps)
        out.append(hop)
    if len(out) > MAX_HOPS:
        raise Refused(f"host {chain[0]}: {len(out)} jump hosts ({line.where}); mlfleet goes through {MAX_HOPS} at most")
    return out


def _check_proxy_command(line: Line, alias: str) -> None:
    unknown = sorted({t for t in re.findall(r"%(.?)", line.raw) if t not in PROXY_TOKENS})
    if unknown:
        raise Refused(f"host {alias}: ProxyCommand ({line.where}) uses {', '.join('%' + t for t in unknown)}, which "
                      "mlfleet does not expand (it expands %h, %p, %r, %n and %%)")


def _words(command: str) -> set[str]:
    """The words of a command, a ``user@`` taken off: how an alias used as a bastion shows in a ProxyCommand."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    return {w.rpartition("@")[2] for w in words}
