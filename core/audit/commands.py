"""``mlfleet audit list|verify|head|export``: the audit chain from the command line (docs/audit.md)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import EXIT_FAILED, EXIT_OK
from mlfleet.core.base.output_path import check_output
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import user_umask
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, client_command, positive, print_json, say
from mlfleet.core.controller.client import ControllerClient


async def cmd_audit_list(client: ControllerClient, args: argparse.Namespace) -> int:
    events = await client.call("audit_list", limit=args.limit, action=args.action_filter)
    if args.json:
        print_json(events)
        return EXIT_OK
    print(render.table(["seq", "when", "who", "action", "target", "detail"],
                       [[e.get("seq") or e["id"], render.when(e["ts"]), e["actor"], e["action"], e["target"],
                         e["detail"]] for e in events]))
    return EXIT_OK


async def cmd_audit_verify(client: ControllerClient, args: argparse.Namespace) -> int:
    """Exit 0 when the chain is intact, 1 when it is broken (the sentence names the first broken row and how)."""
    answer = await client.call("audit_verify", request_timeout=None)
    say(args, answer, answer["message"])
    return EXIT_OK if answer["ok"] else EXIT_FAILED


async def cmd_audit_head(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("audit_head")
    head = answer["head"]
    say(args, answer, head["line"] if head else "the audit chain is empty")
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    from mlfleet.core.base.when import parse_at

    args.since_ts = parse_at(args.since, time.time(), "--since") if args.since else None  # before a controller starts
    args.output = str(check_output(Path(args.output).expanduser().absolute(), Home.from_env().own_folders(),
                                   args.force))  # the controller checks again: scripts call the RPC directly
    return client_command(_audit_export)(args)


async def _audit_export(client: ControllerClient, args: argparse.Namespace) -> int:
    answer = await client.call("audit_export", output=args.output, format=args.format, since=args.since_ts,
                               mode=0o666 & ~user_umask(), force=args.force, request_timeout=None)
    say(args, answer, f"wrote {answer['rows']:,} audit events to {answer['output']} as {answer['format']}")
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``audit`` command group to the top-level subparsers."""
    audit = sub.add_parser("audit", help="the audit chain").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(audit, "list", client_command(cmd_audit_list), "list audit events, newest first")
    p.add_argument("--limit", type=positive, default=200)
    p.add_argument("--action", dest="action_filter", help="only this action, e.g. job.submit")
    add(audit, "verify", client_command(cmd_audit_verify),
        "check the hash chain and the head file; exit 1 naming the first broken row (edited, deleted, inserted, "
        "reordered, tail cut)")
    add(audit, "head", client_command(cmd_audit_head), "print the chain's head (seq, hash, time) for an outside notary")
    p = add(audit, "export", cmd_audit_export, "write the events (all, or since a time) to JSON lines or Parquet")
    p.add_argument("--since", help="only events at or after this time: 2026-01-01, '2026-01-01 14:30', 7d")
    p.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    p.add_argument("--output", "-o", required=True, help="the file to write (never inside mlfleet's folders)")
    p.add_argument("--force", action="store_true", help="replace the file if it exists")
