"""``mlfleet db query SQL``: a read-only SQL query on the DuckDB file, through the controller.

It lives with the store because the store owns the file and the rules of
what a user's SQL may do (core/store/user_query.py, run on the query pool
of core/store/query_pool.py); the CLI only sends the text and prints the
table, with the columns' names as SQL gave them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from mlfleet.core.base import bounds
from mlfleet.core.base.errors import EXIT_OK
from mlfleet.core.cli import render
from mlfleet.core.cli.output import Add, bounded, client_command, print_json
from mlfleet.core.controller.client import ControllerClient


async def cmd_db_query(client: ControllerClient, args: argparse.Namespace) -> int:
    try:
        result = await client.call("db_query", sql=args.sql, limit=args.limit, request_timeout=None)
    except asyncio.CancelledError:  # Ctrl-C: closing the connection makes the controller interrupt the query
        print("mlfleet: query cancelled; the controller stops it as this connection closes", file=sys.stderr)
        raise
    if args.json:
        print_json(result)
        return EXIT_OK
    print(render.table(render.names(result["columns"]), result["rows"]))  # SQL names keep their case
    if result["truncated"]:
        print(f"(first {len(result['rows'])} rows only; use --limit, or page with LIMIT and OFFSET)",
              file=sys.stderr)
    return EXIT_OK


def register(sub: Any, add: Add) -> None:
    """Add the ``db`` command group to the top-level subparsers."""
    db = sub.add_parser("db", help="the DuckDB file").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add(db, "query", client_command(cmd_db_query), "run a read-only SQL query through the controller")
    p.add_argument("sql")
    p.add_argument("--limit", type=bounded(1, bounds.MAX_QUERY_ROWS), default=10_000)
