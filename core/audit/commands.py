"""``mlfleet audit list``: the audit trail, newest first (who did what to which job, host or run)."""

from __future__ import annotations

import argparse
from typing import Any

from mlfleet.core.base.errors import EXIT_OK
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, client_command, positive, print_json
from mlfleet.core.controller.client import ControllerClient


async def cmd_audit_list(client: ControllerClient, args: argparse.Namespace) -> int:
    events = await client.call("audit_list", limit=args.limit, action=args.action_filter)
    if args.json:
        print_json(events)
        return EXIT_OK
    print(render.table(["id", "when", "who", "action", "target", "detail"],
                       [[e["id"], render.when(e["ts"]), e["actor"], e["action"], e["target"], e["detail"]] for e in events]))
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``audit`` command group to the top-level subparsers."""
    audit = sub.add_parser("audit", help="the audit trail").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(audit, "list", client_command(cmd_audit_list), "list audit events, newest first")
    p.add_argument("--limit", type=positive, default=200)
    p.add_argument("--action", dest="action_filter", help="only this action, e.g. job.submit")
