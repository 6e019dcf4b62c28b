"""``mlfleet secrets set|list|rm NAME``: secrets kept by the controller, outside DuckDB (docs/secrets.md).

``set`` reads the value before it reaches the controller: from a prompt
that does not echo when stdin is a terminal, else all of stdin with one
trailing newline removed (so ``echo $TOKEN | mlfleet secrets set hf`` and a
multi-line PEM key both work). The value is never an argument: arguments
are in ``ps`` and shell history.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import sys
from typing import Any

from mlfleet.core.base.errors import EXIT_OK, UsageError
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, client_command, print_json, say
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.team.secret_store import check_name, check_value


def read_value(name: str) -> str:
    """The value typed at a no-echo prompt (a terminal) or piped in (one trailing newline dropped)."""
    if sys.stdin is None:
        raise UsageError(f"no value for secret {name!r}: pipe it in (echo ... | mlfleet secrets set {name})")
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"value of secret {name}: ")
        except EOFError:
            raise UsageError(f"no value for secret {name!r} was typed") from None
    data = sys.stdin.read()
    if data.endswith("\r\n"):
        data = data[:-2]
    elif data.endswith("\n"):
        data = data[:-1]
    return data


def cmd_secrets_set(args: argparse.Namespace) -> int:
    check_name(args.name)  # before a prompt: a bad name is told at once
    value = check_value(args.name, read_value(args.name))

    async def send(client: ControllerClient, args: argparse.Namespace) -> int:
        result = await client.call("secret_set", name=args.name, value=value)
        say(args, result, f"secret {result['name']} {'replaced' if result['replaced'] else 'set'}")
        return EXIT_OK

    return client_command(send)(args)


async def cmd_secrets_list(client: ControllerClient, args: argparse.Namespace) -> int:
    result = await client.call("secret_list")
    if args.json:
        print_json(result)
        return EXIT_OK
    rows: list[list[Any]] = [[s["name"], s["set_by"] or "-", _when(s["set_at"])] for s in result["secrets"]]
    print(render.table(["NAME", "SET BY", "SET AT"], rows) if rows else "no secrets (mlfleet secrets set NAME)")
    return EXIT_OK


async def cmd_secrets_rm(client: ControllerClient, args: argparse.Namespace) -> int:
    result = await client.call("secret_remove", name=args.name)
    say(args, result, f"secret {result['name']} removed")
    return EXIT_OK


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def register(sub: Any, add: Add) -> None:
    """Add the ``secrets`` command group to the top-level subparsers."""
    secrets = sub.add_parser("secrets", help="values jobs get as env without them in any spec, log or table") \
        .add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(secrets, "set", cmd_secrets_set, "set a secret (the value from a hidden prompt, or from stdin)")
    p.add_argument("name")
    add(secrets, "list", client_command(cmd_secrets_list), "list secrets: names, who set them, when (never values)")
    p = add(secrets, "rm", client_command(cmd_secrets_rm), "remove a secret")
    p.add_argument("name")
