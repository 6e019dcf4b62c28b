"""``mlfleet hosts ...``: the fleet, by hand: add, check, trust, drain, bootstrap and import hosts.

``hosts add`` and ``hosts import-ssh-config`` read their input here (labels,
jump hosts, the OpenSSH config: core/fleet/sshimport.py) and refuse it in
one sentence before any controller is started; the controller checks the
host again when it writes hosts.yaml. ``hosts trust`` shows each key,
the jump hosts' first, and records it only once the user confirms.
``hosts stop-agent`` and ``start-agent`` are in agent_commands.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, MlfleetError, UsageError
from mlfleet.core.base.words import plural
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, client_command, confirm_key, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.fleet import agent_commands, hostseen, slurm_cluster


async def cmd_hosts_list(client: ControllerClient, args: argparse.Namespace) -> int:
    hosts = await client.call("hosts_list")
    if args.json:
        print_json(hosts)
        return EXIT_OK
    rows = []
    for h in hosts:
        t = h["telemetry"] or {}
        mem = f"{render.format_size(t.get('memory_used'))}/{render.format_size(t.get('memory_total'))}" if t else "-"
        gpus = str(len(t.get("gpus", []))) if t.get("gpu_state") == "ok" else t.get("gpu_state", "-").replace("_", " ")
        if h.get("simulated") and t.get("gpu_state") == "ok":
            gpus += " (simulated)"
        if h["kind"] == "slurm":  # the cluster's GPUs, not the login node's
            gpus = slurm_cluster.cluster_gpus_cell((h.get("info") or {}).get("slurm"))
        state = f"{h['state']}, drained" if h.get("drained") else h["state"]
        rows.append([h["name"], h["kind"], state, render.percent(t.get("cpu_percent")) if t else "-", mem, gpus,
                     h["running_jobs"], h["agent_version"], hostseen.seen_text(h), h["message"] or ""])
    print(render.table(["host", "kind", "state", "cpu", "memory", "gpus", "jobs", "agent", "seen", "problem"], rows))
    for h in hosts:  # a cluster's partitions under the table: nodes idle/allocated/down, GPUs free/total by type
        shape = (h.get("info") or {}).get("slurm")
        if h["kind"] == "slurm" and isinstance(shape, dict):
            print(f"\n{h['name']}: Slurm cluster ({slurm_cluster.age_text(shape)})")
            print(render.table(slurm_cluster.PARTITION_HEADERS, slurm_cluster.partition_rows(shape)))
    return EXIT_OK


def _identity_here_only(args: argparse.Namespace, command: str) -> None:
    """``--identity`` names a file on this machine; a shared controller reads hosts' keys on its own: say so.

    WHY: the path would be resolved here (this user's ``~``, this folder) and then opened by the controller
    on the head node, as its own user: another file, or none.
    """
    if not args.identity:
        return
    from mlfleet.core.base.paths import Home
    from mlfleet.core.controller.client import shared_controller

    shared = shared_controller(Home.from_env())
    if shared is not None:
        raise UsageError(f"{command} --identity names a key file on this machine, but the controller is shared "
                         f"({shared.url}) and opens hosts' keys on {shared.host} as its own user: run "
                         f"'mlfleet {command}' on {shared.host}, with a key file there")


def cmd_hosts_add(args: argparse.Namespace) -> int:
    _identity_here_only(args, "hosts add")
    labels = {}
    for item in args.label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--label {item!r}: write it as KEY=VALUE, e.g. --label region=eu-west")
        labels[key] = value
    identity = str(Path(args.identity).expanduser().absolute()) if args.identity else None
    host = {"name": args.name, "address": args.address, "port": args.port, "user": args.user, "identity": identity,
            "labels": labels, "agent_command": args.agent_command, "state_dir": args.state_dir,
            "simulate_gpus": args.simulate_gpus, "proxy_command": args.proxy_command,
            "proxy_jump": _jump_hops(args.proxy_jump, identity) if args.proxy_jump else None}
    host = {k: v for k, v in host.items() if v is not None}
    return client_command(_hosts_add)(argparse.Namespace(**vars(args), host=host))


def cmd_hosts_add_slurm(args: argparse.Namespace) -> int:
    """A Slurm cluster reached through its login node's agent (docs/slurm.md); no ``--login``: this machine is it."""
    _identity_here_only(args, "hosts add-slurm")
    if args.login is None:
        given = [f"--{flag}" for flag, value in (("port", args.port), ("identity", args.identity),
                                                 ("agent-command", args.agent_command)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} only say how to reach a login node over SSH; give --login too, "
                             "or leave them out when the controller runs on the login node itself")
        user, sep, address = "", "", None
    else:
        user, sep, address = args.login.rpartition("@")
        if not address:
            raise UsageError(f"--login {args.login!r}: write it as [user@]login-node, e.g. --login ml@login1")
    labels = {"backend": "slurm"}
    for item in args.label or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"--label {item!r}: write it as KEY=VALUE, e.g. --label region=eu-west")
        labels[key] = value
    identity = str(Path(args.identity).expanduser().absolute()) if args.identity else None
    slurm: dict[str, Any] = {k: v for k, v in {"partition": args.partition, "account": args.account,
                                                 "qos": args.qos}.items() if v}
    for item in args.gpu_partition or []:
        gtype, eq, part = item.partition("=")
        if not eq or not gtype or not part:
            raise UsageError(f"--gpu-partition {item!r}: write it as GPU_TYPE=PARTITION, e.g. --gpu-partition "
                             "a100=gpu-a100")
        slurm.setdefault("gpu_partitions", {})[gtype] = part
    host = {"name": args.name, "address": address, "port": args.port, "user": user if sep else None,
            "identity": identity, "labels": labels, "state_dir": args.state_dir, "slurm": slurm,
            "agent_command": args.agent_command}
    if address is None:  # the controller is on the login node: its agent starts here, no SSH (transport: local)
        host.update(transport="local", state_dir=args.state_dir or f".mlfleet/slurm/{args.name}")
    host = {k: v for k, v in host.items() if v is not None}
    return client_command(_hosts_add)(argparse.Namespace(**vars(args), host=host))


def _jump_hops(text: str, identity: str | None) -> list[dict[str, Any]]:
    """``--proxy-jump [user@]host[:port],...`` as hosts.yaml's proxy_jump (each hop with the host's --identity)."""
    from mlfleet.core.fleet.sshimport import parse_jump

    hops = []
    for spec in text.split(","):
        try:
            user, address, port = parse_jump(spec)
        except ValueError as exc:
            raise UsageError(f"--proxy-jump {exc}; write it as [user@]host[:port], several separated by commas") from None
        hops.append({k: v for k, v in {"address": address, "port": port, "user": user, "identity": identity}.items()
                     if v is not None})
    return hops


async def _hosts_add(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_add", host=args.host)
    if args.host.get("transport") == "local":
        say(args, answer, f"added {args.name}; its agent starts on this machine, in {args.host['state_dir']} "
                          f"(see it with 'mlfleet hosts list')")
        return EXIT_OK
    say(args, answer, f"added {args.name}; next: 'mlfleet hosts trust {args.name}' to check and record its host key")
    return EXIT_OK


async def cmd_hosts_remove(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_remove", name=args.name)
    say(args, answer, f"removed {args.name}")
    return EXIT_OK


async def cmd_hosts_check(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("hosts_check", name=args.name, request_timeout=60)
    if args.json:
        print_json(answer)
    elif answer["ok"]:
        print(f"{args.name}: ok; connected in {answer['connect_s']:.2f} s, round trip {answer['round_trip_ms']:.1f} ms, "
              f"agent {answer['agent_version']}" + (" (simulated GPUs)" if answer["simulated_gpus"] else ""))
    else:
        print(f"{args.name}: {answer['problem']}", file=sys.stderr)
    return EXIT_OK if answer["ok"] else EXIT_UNAVAILABLE


async def cmd_hosts_bootstrap(client: ControllerClient, args: argparse.Namespace) -> int:
    if not args.json:
        print(f"building a wheel and installing the agent on {args.name} (this takes a minute)...", file=sys.stderr)
    answer = await client.call("hosts_bootstrap", name=args.name, prefix=args.prefix, python=args.python,
                               request_timeout=1800)
    say(args, answer, f"{args.name}: {answer['version']} installed; agent_command is now {answer['agent_command']}")
    return EXIT_OK


async def cmd_hosts_drain(client: ControllerClient, args: argparse.Namespace) -> int:
    drain = args.action == "drain"
    answer = await client.call("hosts_drain", name=args.name, reason=getattr(args, "reason", "") or "", drain=drain)
    running = answer.get("running", 0)
    text = (f"{args.name} drained: no new jobs; {plural(running, 'run')} in flight {'goes' if running == 1 else 'go'} on"
            if drain
            else f"{args.name} takes jobs again")
    say(args, answer, text)
    return EXIT_OK


async def cmd_hosts_trust(client: ControllerClient, args: argparse.Namespace) -> int:
    hops: list[dict[str, Any]] = []  # jump hosts recorded on the way: their keys are confirmed first, one by one
    while True:
        key = await client.call("host_key", name=args.name)
        where = (f"the jump host {key['address']}:{key['port']} of {args.name}" if key.get("jump_host")
                 else f"{args.name} ({key['address']}:{key['port']})")
        extra = {"jump_hosts": hops} if hops else {}
        if key["trusted"]:
            say(args, {**key, "recorded": False, **extra},
                f"{where} is already trusted: {key['key_type']} {key['fingerprint']}")
            return EXIT_OK
        if not confirm_key(args, where, key["key_type"], key["fingerprint"], key["known"]):
            return EXIT_FAILED
        result = await client.call("host_trust", name=args.name, fingerprint=key["fingerprint"])
        if result.get("jump_host"):
            hops.append({**result, "address": key["address"], "port": key["port"]})
            if not args.json:
                print(f"recorded {key['fingerprint']} for {where}")
            continue
        say(args, {**result, "recorded": True, **extra}, f"recorded {key['fingerprint']} for {args.name}")
        return EXIT_OK


def cmd_hosts_import_ssh_config(args: argparse.Namespace) -> int:
    from mlfleet.core.fleet.sshimport import plan_import

    plan = plan_import(Path(args.file).expanduser(), args.host or None)
    if not plan.hosts and not plan.refused:
        for line in plan.warnings:
            print(f"mlfleet: warning: {line}", file=sys.stderr)
        raise UsageError(f"no concrete Host entries to import in {args.file}"
                         + (f" matching {', '.join(args.host)}" if args.host else ""))
    args = argparse.Namespace(**vars(args), plan=plan)
    return client_command(_import_hosts)(args) if plan.hosts else _import_report(args, [], [])


async def _import_hosts(client: ControllerClient, args: argparse.Namespace) -> int:
    existing = {h["name"] for h in await client.call("hosts_list")}
    added, skipped = [], []
    for host in args.plan.hosts:
        if host["name"] in existing:
            skipped.append(host["name"])
            continue
        try:
            await client.call("hosts_add", host=host)
        except MlfleetError as exc:  # the controller's own check (e.g. a key it cannot read): this host only
            if exc.exit_code != EXIT_USAGE:
                raise
            args.plan.refused[host["name"]] = str(exc)
            continue
        added.append(host["name"])
    return _import_report(args, added, skipped)


def _import_report(args: argparse.Namespace, added: list[str], skipped: list[str]) -> int:
    """Added and already there on stdout; each host not imported, by name and why, on stderr (exit 2)."""
    plan = args.plan
    if args.json:
        print_json({"added": added, "skipped": skipped, "refused": plan.refused, "jump_hosts": plan.jump_hosts,
                    "warnings": plan.warnings})
    else:
        for line in plan.warnings:
            print(f"mlfleet: warning: {line}", file=sys.stderr)
        for door, users in plan.jump_hosts.items():
            print(f"mlfleet: {door} is the jump host of {', '.join(users)}, not a fleet host: not imported "
                  f"(add --host {door} to import it too)", file=sys.stderr)
        for name, why in plan.refused.items():
            shown = name if len(name) <= 40 else f"{name[:30]}... ({len(name)} characters)"
            print(f"mlfleet: {shown} not imported: {why}", file=sys.stderr)
        print(f"added {', '.join(added) or 'nothing'}" + (f"; already there: {', '.join(skipped)}" if skipped else ""))
    return EXIT_USAGE if plan.refused else EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``hosts`` command group to the top-level subparsers."""
    hosts = sub.add_parser("hosts", help="the fleet").add_subparsers(dest="action", metavar="ACTION", required=True)
    add(hosts, "list", client_command(cmd_hosts_list), "list hosts with live telemetry")
    p = add(hosts, "add", cmd_hosts_add, "add an SSH host to hosts.yaml")
    p.add_argument("name")
    p.add_argument("--address", required=True, help="host name or IP address")
    p.add_argument("--port", type=bounded(1, 65535), default=22)
    p.add_argument("--user")
    p.add_argument("--identity", help="private key file")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="e.g. region=eu-west (repeatable)")
    p.add_argument("--agent-command", help="how to run mlfleet on the node (default: mlfleet)")
    p.add_argument("--state-dir", help="the agent's folder on the node (default: ~/.mlfleet/agent)")
    p.add_argument("--simulate-gpus", metavar="FILE", help="simulated GPUs described in FILE on the node")
    route = p.add_mutually_exclusive_group()
    route.add_argument("--proxy-jump", metavar="[USER@]HOST[:PORT],...",
                       help="reach the host through these SSH jump hosts, like ssh -J (they use --identity too)")
    route.add_argument("--proxy-command", metavar="COMMAND",
                       help="reach the host through this command's input and output, e.g. 'ssh -W %%h:%%p bastion'")
    p = add(hosts, "add-slurm", cmd_hosts_add_slurm, "add a Slurm cluster, reached through its login node")
    p.add_argument("name")
    p.add_argument("--login", metavar="[USER@]HOST",
                   help="the login node, where mlfleet's agent runs (leave out when this machine is the login node)")
    p.add_argument("--port", type=bounded(1, 65535), help="the login node's SSH port (default 22)")
    p.add_argument("--identity", help="private key file")
    p.add_argument("--partition", help="sbatch --partition (default: the cluster's default partition)")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument("--qos", help="sbatch --qos")
    p.add_argument("--gpu-partition", action="append", metavar="GPU_TYPE=PARTITION",
                   help="jobs asking for this GPU type go to this partition, for a cluster whose GRES has no GPU "
                        "types, e.g. a100=gpu-a100 (repeatable)")
    p.add_argument("--state-dir", help="the agent's folder, on the filesystem the compute nodes share "
                   "(default: ~/.mlfleet/agent over SSH, ~/.mlfleet/slurm/NAME without --login)")
    p.add_argument("--agent-command", help="how to run mlfleet on the login node (default: mlfleet)")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help="e.g. region=eu-west (repeatable)")
    add(hosts, "remove", client_command(cmd_hosts_remove), "remove a host from hosts.yaml").add_argument("name")
    add(hosts, "check", client_command(cmd_hosts_check), "connect to a host now and report").add_argument("name")
    p = add(hosts, "trust", client_command(cmd_hosts_trust), "show a host's key and record it once you confirm")
    p.add_argument("name")
    p.add_argument("--yes", action="store_true", help="record without asking (batch mode)")
    p = add(hosts, "drain", client_command(cmd_hosts_drain), "stop placing jobs on a host (runs in flight go on)")
    p.add_argument("name")
    p.add_argument("--reason", default="")
    add(hosts, "undrain", client_command(cmd_hosts_drain), "place jobs on a drained host again").add_argument("name")
    p = add(hosts, "bootstrap", client_command(cmd_hosts_bootstrap),
            "install mlfleet's agent on a host that only has Python (into a venv)")
    p.add_argument("name")
    p.add_argument("--prefix", default=".mlfleet", help="folder on the node, relative to its home (default .mlfleet)")
    p.add_argument("--python", default="python3", help="the node's Python 3.11+ (default python3)")
    agent_commands.register_hosts(hosts, add)
    p = add(hosts, "import-ssh-config", cmd_hosts_import_ssh_config, "add the hosts of an OpenSSH config file")
    p.add_argument("--file", default="~/.ssh/config")
    p.add_argument("--host", action="append", help="only these Host aliases (repeatable)")
