"""A host's fields checked once, in the user's words, wherever they come from.

``hosts add``, ``hosts import-ssh-config`` and ``hosts.yaml`` all describe
a :class:`HostConfig`; msgspec's own messages ("Expected `str` matching
regex ...") never reach the user: each host field has a sentence here, and
an identity file is opened at once, not at the first connection minutes
later (a key that does not exist, is not a key, or needs a passphrase
mlfleet cannot type would only show up as an unreachable host).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

import asyncssh
import msgspec

from mlfleet.core.base.validation import spec_error_from_validation
from mlfleet.core.base.errors import SpecError, UsageError
from mlfleet.core.fleet.inventory import LOCAL_HOST, HostConfig, JumpHost
from mlfleet.core.base.models import NAME_PATTERN

# field -> (problem, what to do); the value given is shown before the problem
RULES: dict[str, tuple[str, str]] = {
    "name": ("is not a valid host name", "use letters, digits, '.', '_' and '-', starting with a letter or digit "
             "(128 characters at most)"),
    "address": ("is not a host name or IP address", "write e.g. 10.0.0.12, gpu-a.example.com or fd00::12, without "
                "a scheme, brackets or a port (give the port with --port; 255 characters at most)"),
    "transport": ("is not a transport", "write ssh (the default) or local (a Slurm cluster whose login node runs "
                  "the controller)"),
    "port": ("is not a TCP port", "use a number from 1 to 65535 (SSH's is 22)"),
    "user": ("is not a user name", "write the login name on the node, e.g. ml"),
    "identity": ("is not a file name", "name the private key file, e.g. ~/.ssh/id_ed25519"),
    "agent_command": ("is not a command", "write how to run mlfleet on the node, e.g. mlfleet"),
    "state_dir": ("is not a folder", "name the agent's folder on the node, e.g. .mlfleet/agent"),
    "labels": ("is not a label", "labels are KEY=VALUE text, e.g. region=eu-west"),
    "proxy_jump": ("is not a list of jump hosts", "give at most 8 hops, each [user@]host[:port]"),
    "gpu_partitions": ("is not a Slurm partition name", "map each GPU type to a partition as sinfo names them, "
                       "e.g. a100=gpu-a100 (letters, digits, '.', '_', '+' and '-')"),
    "proxy_command": ("is not a command", "write the command whose input and output reach the host, "
                      "e.g. ssh -W %h:%p bastion (4096 characters at most)"),
}
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def field_problem(message: str, data: Any) -> tuple[str, str, str] | None:
    """(dotted field, problem, hint) for a msgspec message about a host field; None when it has no rule here."""
    match = _PATH.search(message)
    if not match or not message.startswith(("Expected", "Invalid enum value")):
        return None  # unknown and missing fields, proxy_jump with proxy_command: already in words
    path = match.group("path")
    parts = [p for p in re.split(r"[.\[\]]+", path) if p]
    rule = next((RULES[p] for p in reversed(parts) if p in RULES), None)
    if rule is None:
        return None
    value: Any = data
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            value = None
    dotted = path.lstrip(".").replace("[...]", "")
    if isinstance(value, (dict, list)) or value is None or isinstance(value, bool):
        return dotted, rule[0].replace("is not a", "holds something that is not a", 1), rule[1]
    if value == "":
        return dotted, "is empty", rule[1]
    shown = f"{value[:24]!r}... ({len(value)} characters)" if isinstance(value, str) and len(value) > 60 else repr(value)
    return dotted, f"{shown} {rule[0]}", rule[1]


def host_from_request(data: dict[str, Any],
                      check_identity: Callable[[Path], str | None] | None = None) -> HostConfig:
    """A HostConfig from a client's mapping, or one sentence naming the host, the field and what to do."""
    label = data.get("name") if isinstance(data, dict) else None
    subject = f"host {label}" if isinstance(label, str) and re.fullmatch(NAME_PATTERN, label) else "the new host"
    try:
        config = msgspec.convert(data, HostConfig)
    except msgspec.ValidationError as exc:
        found = field_problem(str(exc), data)
        if found is None:
            error = spec_error_from_validation(str(exc), data, None, {(): HostConfig, ("proxy_jump", "*"): JumpHost})
            found = (f"{error.field}:" if error.field else "", error.problem, error.hint)
        dotted, problem, hint = found
        where = "" if dotted == "name" and not problem.startswith("is") else f"{subject}: {dotted + ' ' if dotted else ''}"
        raise UsageError(f"{where}{problem}" + (f"; {hint}" if hint else "")) from None
    if config.name == LOCAL_HOST:
        raise UsageError(f"'{LOCAL_HOST}' is the embedded host; choose another name")
    unknown = sorted({t for t in re.findall(r"%(.?)", config.proxy_command or "") if t not in "hprn%" or not t})
    if unknown:
        raise UsageError(f"host {config.name}: proxy_command uses {', '.join('%' + t for t in unknown)}, which mlfleet "
                         "does not expand; use %h (address), %p (port), %r (user), %n (name) or %% (a %)")
    for where, path in identities(config):
        problem = (check_identity or identity_problem)(path)
        if problem:
            raise UsageError(f"host {config.name}: the {where} {path} {problem}")
    return config


def reword_inventory_error(error: SpecError, message: str, data: Any) -> SpecError:
    """hosts.yaml's errors in the same words as ``hosts add`` uses (the file and line kept)."""
    match = re.match(r"hosts\[(\d+)\]", error.field or "")
    hosts = data.get("hosts") if isinstance(data, dict) else None
    if not match or not isinstance(hosts, list) or int(match.group(1)) >= len(hosts):
        return error
    index = int(match.group(1))
    found = field_problem(re.sub(r"\$\.hosts\[\d+\]", "$", message), hosts[index])
    if found is None:
        return error
    dotted, problem, hint = found
    return SpecError(error.path, error.line, f"hosts[{index}].{dotted}", problem, hint)


def identities(config: HostConfig) -> list[tuple[str, Path]]:
    """Every key file the connection to this host would read: its own and each jump host's."""
    out = [("identity", config.identity_path)] if config.identity_path else []
    out += [(f"identity of jump host {hop.address}", hop.identity_path)
            for hop in config.proxy_jump if hop.identity_path]
    return out


def identity_problem(path: Path) -> str | None:
    """Why this private key cannot be used (None when it can), as the end of a sentence."""
    try:
        if not path.is_file():
            return "is not a file (name the private key file, e.g. ~/.ssh/id_ed25519)" if path.exists() \
                else "does not exist; check the path, or leave the identity out to use ssh-agent and ~/.ssh/id_*"
        if not os.access(path, os.R_OK):
            return "cannot be read by the controller's user; fix its permissions (0600, owned by that user)"
        if path.stat().st_size > 1024 * 1024:
            return "is larger than any private key; name the private key file, e.g. ~/.ssh/id_ed25519"
        asyncssh.read_private_key(str(path))
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError, ValueError) as exc:
        if "passphrase" in str(exc).lower():
            return ("is protected by a passphrase, which mlfleet cannot type; load it into ssh-agent (ssh-add) "
                    "and leave the identity out")
        public = f" (that is a public key: name {path.with_suffix('')})" if path.suffix == ".pub" else ""
        return f"is not a private key{public}"
    return None
