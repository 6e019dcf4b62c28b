"""The fleet inventory: ``hosts.yaml`` in the config dir.

```yaml
hosts:
  - name: gpu-a
    address: 10.0.0.12
    port: 22
    user: ml
    identity: ~/.ssh/id_ed25519
    labels: {region: eu-west, provider: baremetal}
    agent_command: mlfleet              # how to run mlfleet on the node
    state_dir: ~/.mlfleet/agent         # the agent's journal on the node
    simulate_gpus: /etc/mlfleet/gpus.yaml   # optional: simulated GPUs (demos, tests)
    artifact_roots: [/data/models]      # optional: folders whose files runs may share as artifacts
    proxy_jump:                         # optional: reached through these SSH hops, in order (ssh -J)
      - {address: bastion.example.com, port: 22, user: ops, identity: ~/.ssh/id_bastion}
    # proxy_command: ssh -W %h:%p bastion   # or: the output of this command is the connection (not both)
  - name: cluster                       # a Slurm cluster whose login node runs this controller (docs/slurm.md)
    transport: local                    # its agent is on this machine, started like the host "local"'s, no SSH
    state_dir: /shared/home/ml/.mlfleet/cluster   # on the filesystem the compute nodes share
    slurm: {partition: gpu}
```

Edits made by ``mlfleet hosts add|remove`` keep the rest of the file as the
user wrote it (comments included): an added host is appended as text, a
removed one has exactly its own lines taken out.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml
from msgspec import Meta

from mlfleet.core.base.validation import AbsolutePath, check_absolute_paths, spec_error_from_validation
from mlfleet.core.base.errors import SpecError, UsageError
from mlfleet.core.base.models import Name, spec_dec_hook
from mlfleet.core.base.yamlsource import read_yaml

LOCAL_HOST = "local"


Port = Annotated[int, Meta(ge=1, le=65535)]
# A DNS name (ASCII labels; one that is all digits and dots must be an IPv4 address), an IPv4 address, or an
# IPv6 address without brackets. Why so strict: "127.0.0.1:22", "http://gpu", "a b" or a U+FFFD from a bad
# decode were accepted and could only fail later, at connect time, in asyncssh's words.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
ADDRESS_PATTERN = (rf"^(?:(?:{_OCTET}\.){{3}}{_OCTET}"
                   rf"|(?=[^:]*[A-Za-z_-])(?:{_LABEL}\.)*{_LABEL}\.?"
                   r"|[0-9A-Fa-f]*:[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?)$")
Address = Annotated[str, Meta(min_length=1, max_length=255, pattern=ADDRESS_PATTERN)]


class JumpHost(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One SSH hop on the way to a host (OpenSSH's ProxyJump); its key is checked like any host's."""

    address: Address
    port: Port = 22
    user: str | None = None
    identity: str | None = None

    @property
    def identity_path(self) -> Path | None:
        return Path(self.identity).expanduser() if self.identity else None


# A Slurm partition or GPU type name as sinfo prints it (no spaces, commas or colons: sbatch's lists use those).
SlurmWord = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.+-]+$")]
# sbatch --partition takes a list: one word or several separated by commas.
SlurmWords = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")]


class SlurmDefaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """A ``slurm`` host's sbatch defaults: the host is a cluster's login node, whose agent submits with sbatch.

    ``gpu_partitions`` maps a GPU type to the partition whose nodes have it,
    for clusters whose GRES names no type (``gpu:4``): a job asking for
    ``gpu_type: a100`` goes to that partition with ``--gres=gpu:N``
    (docs/slurm.md, "GPU types by partition").
    """

    partition: SlurmWords | None = None
    account: SlurmWord | None = None
    qos: SlurmWord | None = None
    gpu_partitions: dict[SlurmWord, SlurmWord] = msgspec.field(default_factory=dict)


# Fields that only say how to reach a host over SSH: meaningless for an agent on the controller's machine.
SSH_ONLY_FIELDS = ("address", "user", "identity", "proxy_jump", "proxy_command", "agent_command", "simulate_gpus")


class HostConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One SSH-managed host (a Slurm cluster's login node when ``slurm`` is set: docs/slurm.md).

    ``transport: local`` is the one other kind: a Slurm cluster whose login
    node is the controller's own machine, its agent started here without
    SSH (a second agent beside the embedded host ``local``, with its own
    state dir on the shared filesystem).
    """

    name: Name
    address: Address | None = None  # required for transport ssh (checked below, in words)
    transport: Literal["ssh", "local"] = "ssh"
    port: Port = 22
    user: str | None = None
    identity: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    agent_command: Annotated[str, Meta(min_length=1)] = "mlfleet"
    state_dir: Annotated[str, Meta(min_length=1)] = ".mlfleet/agent"
    simulate_gpus: str | None = None
    # Folders on the node, beyond each run's folder and workdir, whose files runs may share as artifacts.
    artifact_roots: list[AbsolutePath] = msgspec.field(default_factory=list)
    # How the connection is made when the host is not reached directly (docs/fleet.md, "Jump hosts").
    proxy_jump: Annotated[list[JumpHost], Meta(max_length=8)] = msgspec.field(default_factory=list)
    proxy_command: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    slurm: SlurmDefaults | None = None  # runs here are submitted to Slurm (agents/slurm.py)

    @property
    def kind(self) -> str:
        return "slurm" if self.slurm is not None else "ssh"

    def __post_init__(self) -> None:
        if self.transport == "local":
            self._check_local()
        elif self.address is None:
            raise ValueError("address is missing: give the host name or IP address mlfleet reaches it at over SSH")
        if self.proxy_jump and self.proxy_command:
            raise ValueError("give proxy_jump or proxy_command, not both (ssh uses only the first one written)")

    def _check_local(self) -> None:
        """A local host is a Slurm login node reached without SSH: no SSH field, a slurm block, a state dir."""
        if self.slurm is None:
            raise ValueError("transport: local is for a Slurm cluster whose login node runs the controller (give "
                             "slurm:); this machine's own agent is already the host 'local'")
        given = [f for f in SSH_ONLY_FIELDS
                 if getattr(self, f) not in (None, [], "mlfleet" if f == "agent_command" else None)]
        if self.port != 22:
            given.insert(1 if self.address else 0, "port")
        if given:
            names = ", ".join(given[:-1]) + f" and {given[-1]}" if len(given) > 1 else given[0]
            raise ValueError(f"{names} only {'says' if len(given) == 1 else 'say'} how to reach a host over SSH, and "
                             "a transport: local host's agent runs on the controller's machine; leave "
                             f"{'it' if len(given) == 1 else 'them'} out, or give transport: ssh")

    @property
    def is_local(self) -> bool:
        """Its agent runs on the controller's machine (transport: local): started here, never over SSH."""
        return self.transport == "local"

    @property
    def identity_path(self) -> Path | None:
        return Path(self.identity).expanduser() if self.identity else None


def local_state_dir(host: HostConfig) -> Path:
    """A transport: local host's state dir on this machine: relative to the user's home, as over SSH."""
    path = Path(host.state_dir).expanduser()
    return path if path.is_absolute() else Path.home() / path


class Inventory(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hosts: list[HostConfig] = msgspec.field(default_factory=list)


def load_inventory(path: Path) -> list[HostConfig]:
    """The hosts in ``path`` (none when it does not exist); mistakes are SpecErrors with their line."""
    if not path.exists():
        return []
    located = read_yaml(path, allow_empty=True)
    data = located.data
    if data is None or data == {}:
        return []
    if not isinstance(data, dict):
        raise SpecError(located.path, located.line_of(()), None, "must be a mapping with a 'hosts:' list",
                        "see docs/fleet.md")
    hosts = data.get("hosts")
    if isinstance(hosts, list):
        for i, host in enumerate(hosts):
            if isinstance(host, dict) and isinstance(host.get("labels"), dict):
                host["labels"] = {k: located.as_typed(("hosts", i, "labels", k), v) for k, v in host["labels"].items()}
    try:
        inventory = msgspec.convert(data, Inventory, dec_hook=spec_dec_hook, str_keys=True)
    except msgspec.ValidationError as exc:
        from mlfleet.core.fleet.hostcheck import reword_inventory_error  # (hostcheck imports this module)

        error = spec_error_from_validation(str(exc), data, located, {(): Inventory, ("hosts", "*"): HostConfig})
        raise reword_inventory_error(error, str(exc), data) from None
    seen: dict[str, int] = {}
    for i, host in enumerate(inventory.hosts):
        check_absolute_paths(located, ("hosts", i, "artifact_roots"), f"hosts[{i}].artifact_roots", host.artifact_roots)
        line = located.line_of(("hosts", i, "name"))
        if host.name == LOCAL_HOST:
            raise SpecError(located.path, line, f"hosts[{i}].name", f"'{LOCAL_HOST}' is the embedded host",
                            "choose another name")
        if host.name in seen:
            raise SpecError(located.path, line, f"hosts[{i}].name",
                            f"host {host.name!r} appears twice (first on line {seen[host.name]})", "keep one")
        seen[host.name] = line or 0
    first_in: dict[Path, HostConfig] = {}  # two agents in one state dir would take each other's runs
    for i, host in enumerate(inventory.hosts):
        if not host.is_local:
            continue
        twin = first_in.setdefault(local_state_dir(host), host)
        if twin is not host:
            raise SpecError(located.path, located.line_of(("hosts", i, "state_dir")), f"hosts[{i}].state_dir",
                            f"host {twin.name!r} has the same state dir {local_state_dir(host)} on this machine",
                            "give each transport: local host a state dir of its own")
    return inventory.hosts


def add_host(path: Path, host: HostConfig) -> None:
    """Append one host to the file as text, keeping everything else as it is."""
    existing = load_inventory(path)
    if host.name == LOCAL_HOST or any(h.name == host.name for h in existing):
        raise UsageError(f"a host named {host.name!r} already exists; remove it first or choose another name")
    entry = yaml.safe_dump([msgspec.to_builtins(host)], sort_keys=False, default_flow_style=False)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if not existing:  # "hosts: []" (left by removing the last host) becomes a block list again
        text = "".join("hosts:\n" if line.strip() == "hosts: []" else line for line in text.splitlines(keepends=True))
    if not existing and "hosts:" not in text:
        text = (text.rstrip("\n") + "\n" if text.strip() else "") + "hosts:\n"
    elif not text.endswith("\n"):
        text += "\n"
    indented = "".join(f"  {line}\n" for line in entry.splitlines())
    _write_atomic(path, text + indented)
    load_inventory(path)  # what we wrote must read back


def remove_host(path: Path, name: str) -> HostConfig:
    """Take out exactly the lines of one host's entry (a flow-style list is rewritten whole)."""
    hosts = load_inventory(path)
    index = next((i for i, h in enumerate(hosts) if h.name == name), None)
    if index is None:
        raise UsageError(f"no host named {name!r} in {path}")
    located = read_yaml(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [located.lines[("hosts", i)] - 1 for i in range(len(hosts))]
    if len(set(starts)) != len(starts) or not lines[starts[index]].lstrip().startswith("-"):
        remaining = [msgspec.to_builtins(h) for h in hosts if h.name != name]
        _write_atomic(path, yaml.safe_dump({"hosts": remaining}, sort_keys=False))
        return hosts[index]
    start = starts[index]
    end = starts[index + 1] if index + 1 < len(hosts) else _end_of_item(lines, start)
    kept = lines[:start] + lines[end:]
    if len(hosts) == 1:
        kept = [("hosts: []\n" if line.rstrip() == "hosts:" else line) for line in kept]
    _write_atomic(path, "".join(kept))
    load_inventory(path)  # what we wrote must read back
    return hosts[index]


def _end_of_item(lines: list[str], start: int) -> int:
    """The line after the last list item starting at ``start`` (its "- " sets the indent)."""
    dash = len(lines[start]) - len(lines[start].lstrip())
    i = start + 1
    while i < len(lines):
        text = lines[i].strip()
        indent = len(lines[i]) - len(lines[i].lstrip())
        if text and not text.startswith("#") and (indent < dash or (indent == dash and not text.startswith("-"))):
            break
        i += 1
    return i


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
