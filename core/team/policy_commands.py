"""``mlfleet policy show|check``: who the controller takes you for, and whether a policy file is right (docs/team.md).

``show`` asks the controller (``whoami``): the identity is the OS user
behind the socket, so only the controller can say it. ``check`` reads a
file here, offline, before an admin puts it in force: one sentence per
mistake, at its line, exit 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import EXIT_OK, EXIT_USAGE, UsageError
from mlfleet.core.base.paths import Home
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, client_command, print_json
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.team.policy import POLICY_FILE, load_policy, policy_mistakes


async def cmd_policy_show(client: ControllerClient, args: argparse.Namespace) -> int:
    me = await client.call("whoami")
    if args.json:
        print_json(me)
        return EXIT_OK
    print(show_words(me))
    return EXIT_OK


def show_words(me: dict[str, Any]) -> str:
    """The lines ``policy show`` prints: you, your groups, your roles with their rules, the controller's facts."""
    role = me["role"] or "no role"
    lines = [f"you: {me['user']} ({role}{', ' + me['rule'] if me.get('rule') else ''})",
             f"groups: {', '.join(me['groups']) or '-'}",
             f"controller: {me['owner']}'s" + (f", team {me['team']}" if me.get("team") else "")
             + f"; policy {me['policy_path']} " + ("in force" if me["policy"] else "absent (no policy file)")]
    if me.get("policy_error"):
        lines.append(f"policy error: {me['policy_error']} (the last good policy stays in force)")
    if me["projects"]:
        rows = [[p["project"], p["role"] or "-", p["rule"] or "-"] for p in me["projects"]]
        lines.append(render.table(["PROJECT", "ROLE", "RULE"], rows))
    return "\n".join(lines)


def cmd_policy_check(args: argparse.Namespace) -> int:
    path = Path(args.file) if args.file else Home.from_env().config_dir / POLICY_FILE
    if not path.exists():
        raise UsageError(f"no policy file {path}" + ("" if args.file else " (give a FILE to check another)"))
    mistakes = policy_mistakes(path)
    if args.json:
        print_json({"path": str(path), "ok": not mistakes, "mistakes": [str(m) for m in mistakes]})
    elif mistakes:
        for mistake in mistakes:
            print(f"mlfleet: {mistake}")
    else:
        loaded = load_policy(path)
        policy = loaded.policy
        assert policy is not None
        print(f"{path}: ok ({len(policy.roles)} role rules, {len(policy.quotas)} quotas, "
              f"{len(policy.residency)} residency rules; protected aliases: {', '.join(policy.protected_aliases) or '-'})")
    return EXIT_USAGE if mistakes else EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``policy`` command group to the top-level subparsers."""
    policy = sub.add_parser("policy", help="roles in team mode: who you are to the controller, and policy.yaml checks") \
        .add_subparsers(dest="action", metavar="ACTION", required=True)
    add(policy, "show", client_command(cmd_policy_show),
        "you as the controller sees you: groups, role everywhere and per project, and the rules behind them")
    p = add(policy, "check", cmd_policy_check, "check a policy file offline: one sentence per mistake, exit 2")
    p.add_argument("file", nargs="?", help="the file (default: policy.yaml beside config.yaml)")
